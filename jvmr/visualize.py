"""Pictures of what a model predicts: a timeline per query and CMIN's video-to-word attention.

A timeline (:func:`timeline_png`) stacks, on one time axis in seconds:

* the ground-truth span(s) when known and the top-k predicted spans (score, and IoU with the
  ground truth when known);
* the model's per-clip evidence, as its ``evidence_fn`` gives it (``jvmr.registry``): curves
  (P_start / P_end, the segmentation probability, anchor confidences, ReLoCLNet's clip
  similarities), 2D score maps (MS-2D: start time across, end time up; the ground truth is a
  cross, the top prediction a circle) and attention maps (CMIN: one row per word).

:func:`attention_png` draws one attention map alone, words against time (the seed's qualitative
figure). :func:`example_evidence` cuts one example's evidence out of a batch. Drawing uses
matplotlib's object API (no pyplot, no display), so it runs in any process.
"""

from __future__ import annotations

import dataclasses
import io
import textwrap
from typing import Any, Mapping, Sequence

import numpy as np

from jvmr import metrics

GROUND_TRUTH_COLOR = "#2ca02c"
PREDICTION_COLOR = "#1f77b4"


@dataclasses.dataclass
class Timeline:
    """One query in one video, and what the model made of it.

    ``moments``: predicted (start, end, score) in seconds, best first. ``ground_truth``: (start, end)
    spans in seconds (empty when unknown). ``evidence``: one example's evidence cut to its valid
    clips (:func:`example_evidence`); ``words``: the query words the attention rows stand for.
    """
    query: str
    vid: str
    duration: float
    moments: Sequence[tuple[float, float, float]]
    ground_truth: Sequence[tuple[float, float]] = ()
    evidence: Mapping[str, Mapping[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    words: Sequence[str] = ()
    title: str = ""


def example_evidence(evidence: Mapping[str, Mapping[str, Any]], batch: Mapping[str, Any], row: int,
                     vocab: Sequence[str]) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Example ``row`` of a batch's evidence (``evidence_fn`` output, numpy), cut to its valid clips
    and words, and the words of its query (the vocabulary's, as the model read them)."""
    clips = int(np.sum(np.asarray(batch["video_mask"][row]) > 0))
    length = int(np.sum(np.asarray(batch["query_mask"][row]) > 0))
    ids = np.asarray(batch["query_tokens"][row])[:length]
    words = [vocab[int(i)] if 0 <= int(i) < len(vocab) else "?" for i in ids]
    out: dict[str, dict[str, np.ndarray]] = {}
    for kind, block in evidence.items():
        cut = {"curves": lambda a: a[:clips], "maps": lambda a: a[:clips, :clips],
               "attention": lambda a: a[:clips, :length]}[kind]
        out[kind] = {name: cut(np.asarray(values[row], np.float32)) for name, values in
                     sorted(block.items(), key=lambda item: _display_rank(item[0]))}
    return out, words


def _display_rank(name: str) -> tuple[int, str]:
    """Start before end before the rest (jax returns a dict's keys sorted)."""
    return (0 if name.startswith("start") else 1 if name.startswith("end") else 2, name)


def best_iou(window: Sequence[float], spans: Sequence[tuple[float, float]]) -> float:
    """The best IoU of ``window`` (start, end, ...) with any of ``spans`` (0 without spans)."""
    if not spans:
        return 0.0
    ious = metrics.temporal_iou(np.asarray([window[:2]] * len(spans), np.float64), np.asarray(spans, np.float64))
    return float(np.max(ious))


def _clip_edges(duration: float, clips: int) -> np.ndarray:
    return np.linspace(0.0, duration, clips + 1)


def _draw_spans(ax, t: Timeline) -> None:
    rows = [("ground truth", s, e, GROUND_TRUTH_COLOR, 1.0) for s, e in t.ground_truth]
    for rank, (s, e, score) in enumerate(t.moments, 1):
        label = f"#{rank}  {score:.3g}"
        if t.ground_truth:
            label += f"  IoU {best_iou((s, e), t.ground_truth):.2f}"
        rows.append((label, s, e, PREDICTION_COLOR, max(0.35, 1.0 - 0.12 * (rank - 1))))
    for y, (label, s, e, color, alpha) in enumerate(rows):
        ax.barh(y, max(e - s, t.duration * 2e-3), left=s, height=0.7, color=color, alpha=alpha)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, t.duration)
    ax.grid(axis="x", alpha=0.3)


def _mark_ground_truth(ax, t: Timeline) -> None:
    for s, e in t.ground_truth:
        ax.axvspan(s, e, color=GROUND_TRUTH_COLOR, alpha=0.12, lw=0)
    if t.moments:
        for x in t.moments[0][:2]:
            ax.axvline(x, color=PREDICTION_COLOR, ls="--", lw=0.8)


def _draw_curve(ax, t: Timeline, name: str, values: np.ndarray) -> None:
    edges = _clip_edges(t.duration, len(values))
    ax.stairs(values, edges, color="#444444", lw=1.2)
    _mark_ground_truth(ax, t)
    ax.set_ylabel(textwrap.fill(name, 16), fontsize=8)
    ax.set_xlim(0, t.duration)
    top = float(np.nanmax(values)) if np.any(np.isfinite(values)) else 1.0
    low = min(0.0, float(np.nanmin(values))) if np.any(np.isfinite(values)) else 0.0
    ax.set_ylim(low, top * 1.1 if top > 0 else 1.0)


def _draw_map(fig, ax, t: Timeline, name: str, values: np.ndarray) -> None:
    import matplotlib
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(values.T), origin="lower", extent=(0, t.duration, 0, t.duration),
                      aspect="auto", cmap=cmap, interpolation="nearest")  # colours span the map's own range
    for s, e in t.ground_truth:
        ax.plot([s], [e], marker="x", color=GROUND_TRUTH_COLOR, ms=9, mew=2)
    if t.moments:
        ax.plot([t.moments[0][0]], [t.moments[0][1]], marker="o", mfc="none", color="red", ms=9, mew=1.5)
    ax.set_ylabel(textwrap.fill(name, 16) + "\nend (s)", fontsize=8)
    fig.colorbar(image, ax=ax, pad=0.01, fraction=0.03)


def _draw_attention(fig, ax, t: Timeline, name: str, values: np.ndarray, words: Sequence[str]) -> None:
    length = values.shape[1]
    image = ax.imshow(values.T, origin="upper", extent=(0, t.duration, length, 0), aspect="auto", cmap="magma",
                      interpolation="nearest")
    labels = list(words)[:length] + ["?"] * (length - len(words))
    ax.set_yticks(np.arange(length) + 0.5, labels, fontsize=7)
    ax.set_ylabel(textwrap.fill(name, 16), fontsize=8)
    for s, e in t.ground_truth:
        ax.axvline(s, color=GROUND_TRUTH_COLOR, lw=1.2)
        ax.axvline(e, color=GROUND_TRUTH_COLOR, lw=1.2)
    fig.colorbar(image, ax=ax, pad=0.01, fraction=0.03)


def figure(height: float, width: float = 9.0):
    """A matplotlib Figure (object API: no pyplot, no display), laid out by matplotlib."""
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def timeline_png(t: Timeline) -> bytes:
    """The PNG of a query's timeline: spans on top, then every piece of evidence, on one time axis."""
    panels = [("spans", None, 0.45 + 0.22 * (len(t.ground_truth) + len(t.moments)))]
    for kind, height in (("curves", 1.1), ("maps", 2.6), ("attention", None)):
        for name, values in t.evidence.get(kind, {}).items():
            panels.append((kind, name, height if height else 0.5 + 0.16 * values.shape[1]))
    fig = figure(0.7 + sum(h for _, _, h in panels))
    axes = fig.subplots(len(panels), 1, sharex=True, height_ratios=[h for _, _, h in panels], squeeze=False)[:, 0]
    for ax, (kind, name, _) in zip(axes, panels):
        if kind == "spans":
            _draw_spans(ax, t)
        elif kind == "curves":
            _draw_curve(ax, t, name, t.evidence["curves"][name])
        elif kind == "maps":
            _draw_map(fig, ax, t, name, t.evidence["maps"][name])
        else:
            _draw_attention(fig, ax, t, name, t.evidence["attention"][name], t.words)
    axes[-1].set_xlabel("time (s)")
    title = t.title or f"{t.vid}: {t.query}"
    fig.suptitle(textwrap.fill(title, 100), fontsize=10)
    return png(fig)


def attention_png(t: Timeline, name: str | None = None) -> bytes:
    """One attention map of ``t.evidence`` (default: the first) alone: words down, time across."""
    block = t.evidence.get("attention", {})
    if not block:
        raise ValueError(f"{t.vid}: this model's evidence has no attention map (it has {sorted(t.evidence)})")
    name = name or next(iter(block))
    values = block[name]
    fig = figure(1.2 + 0.22 * values.shape[1])
    ax = fig.subplots()
    _draw_attention(fig, ax, t, name, values, t.words)
    ax.set_xlabel("time (s)")
    fig.suptitle(textwrap.fill(t.title or f"{t.vid}: {t.query}", 100), fontsize=10)
    return png(fig)


def timeline_image(t: Timeline) -> np.ndarray:
    """The timeline as an RGB array [H, W, 3] uint8 (for TensorBoard)."""
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(timeline_png(t))).convert("RGB"))
