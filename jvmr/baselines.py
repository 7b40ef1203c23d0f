"""Trivial moment-retrieval baselines: how far can one get without looking?

A benchmark split is only informative if these stay well below the models:

* ``random_span``: k spans drawn uniformly at random inside each video.
* ``fixed_prior_span``: the best *fixed* normalised span(s) learned on the
  train split (moment-position prior), predicted for every test query.

(The third trivial baseline, a query-blind model, is a model ablation trained
elsewhere.)

CLI (absl flags)::

    python -m jvmr.baselines --data_dir=DIR [--train_split=train] \\
        [--eval_split=test] [--output=FILE.json]

reads the TFRecord splits with ``jvmr.data.schema.read_split`` and prints both
baselines' R@k / mIoU tables (default protocol of ``jvmr.metrics``: IoU ``>=``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NamedTuple, Sequence

import numpy as np

from jvmr import metrics

_MAX_CHUNK_ELEMENTS = 1 << 22  # IoU entries per vectorised grid-search chunk (~32 MB float64)


def _as_padded(gt_spans: Any, gt_valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """[Q, G, 2] + [Q, G] from either a padded array (+ validity) or a ragged list."""
    if gt_valid is None and not isinstance(gt_spans, np.ndarray):
        return metrics.pad_spans(gt_spans)
    spans = np.asarray(gt_spans, np.float64)
    if spans.ndim == 2:
        spans = spans[:, None, :]
    if spans.ndim != 3 or spans.shape[-1] != 2:
        raise ValueError(f"expected gt spans [Q, G, 2], got {spans.shape}")
    valid = np.ones(spans.shape[:2], bool) if gt_valid is None else np.asarray(gt_valid).astype(bool)
    return spans, valid


def _as_durations(durations: Sequence[float], num_q: int) -> np.ndarray:
    d = np.asarray(durations, np.float64).reshape(-1)
    if d.shape[0] != num_q:
        raise ValueError(f"{d.shape[0]} durations for {num_q} queries")
    bad = ~(np.isfinite(d) & (d > 0))
    if bad.any():
        q = int(np.flatnonzero(bad)[0])
        raise ValueError(f"durations must be positive and finite, query {q} has {d[q]}")
    return d


def random_span_predictions(durations: Sequence[float], seed: int, k: int = 5) -> np.ndarray:
    """k uniformly random spans per video.

    Each span is the sorted pair of two independent uniforms on [0, duration].

    Args:
      durations: [Q] seconds.
      seed: Seed of ``np.random.default_rng``.
      k: Spans per query.

    Returns:
      float64 [Q, k, 2] spans in seconds.
    """
    d = np.asarray(durations, np.float64).reshape(-1)
    u = np.sort(np.random.default_rng(seed).uniform(size=(d.shape[0], k, 2)), axis=-1)
    return u * d[:, None, None]


def random_span(durations: Sequence[float], gt_spans: Any, gt_valid: np.ndarray | None = None, seed: int = 0,
                k: int = 5, *, ks: Sequence[int] = metrics.DEFAULT_KS,
                iou_thresholds: Sequence[float] = metrics.DEFAULT_IOU_THRESHOLDS,
                iou_comparison: str = ">=") -> dict[str, float]:
    """Recall of k uniformly random spans per query (no NMS).

    Args:
      durations: [Q] video durations in seconds.
      gt_spans: [Q, G, 2] ground-truth spans in seconds, or a ragged list of
        [G_i, 2] arrays (then ``gt_valid`` must be ``None``).
      gt_valid: [Q, G] validity, ``None`` for all valid / ragged input.
      seed: Random seed.
      k: Random spans per query (the ranking is their draw order).
      ks, iou_thresholds, iou_comparison: As in ``metrics.recall_at_k``.

    Returns:
      The ``metrics.recall_at_k`` dict (percent).
    """
    spans, valid = _as_padded(gt_spans, gt_valid)
    d = _as_durations(durations, spans.shape[0])
    pred = random_span_predictions(d, seed, k)
    return metrics.recall_at_k(pred, None, spans, valid, ks, iou_thresholds, iou_comparison)


def span_grid(step: float = 0.02) -> np.ndarray:
    """All normalised spans ``[s, e]``, ``0 <= s < e <= 1``, on a grid of ``step``.

    Args:
      step: Grid step; ``1 / step`` must be (close to) an integer.

    Returns:
      float64 [C, 2] spans ordered by start then end (C = n (n + 1) / 2, n = 1 / step).
    """
    n = int(round(1.0 / step))
    if n < 1 or abs(n * step - 1.0) > 1e-6:
        raise ValueError(f"1 / step must be an integer, got step={step}")
    points = np.linspace(0.0, 1.0, n + 1)
    s, e = np.triu_indices(n + 1, k=1)
    return np.stack([points[s], points[e]], axis=-1)


class FixedPrior(NamedTuple):
    """The output of ``fixed_prior_span``.

    Attributes:
      metrics: Test ``recall_at_k`` dict (percent).
      span: float64 [2] the chosen normalised span (the R@1 prediction).
      spans: float64 [K, 2] the normalised spans predicted for R@k (K <= k,
        ``spans[0] == span``).
      train_recall: Train R@1 (percent) of ``span`` at the selection threshold.
    """

    metrics: dict[str, float]
    span: np.ndarray
    spans: np.ndarray
    train_recall: float


def _grid_scores(grid: np.ndarray, gt_norm: np.ndarray, gt_valid: np.ndarray, threshold: float,
                 iou_comparison: str) -> tuple[np.ndarray, np.ndarray]:
    """Per grid span: number of train queries hit at R@1 and summed best IoU."""
    num_c = grid.shape[0]
    num_q, num_g = gt_valid.shape
    hits = np.zeros(num_c, np.int64)
    iou_sum = np.zeros(num_c)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, num_c * num_g))
    for lo in range(0, num_q, chunk):
        gt = gt_norm[lo:lo + chunk]
        iou = metrics.temporal_iou(grid[:, None, None, :], gt[None])  # [C, q, G]
        best = np.where(gt_valid[None, lo:lo + chunk], iou, -1.0).max(axis=2)  # [C, q]
        hits += metrics.iou_passes(best, threshold, iou_comparison).sum(axis=1)
        iou_sum += np.maximum(best, 0.0).sum(axis=1)
    return hits, iou_sum


def fixed_prior_span(train_durations: Sequence[float], train_gt: Any, test_durations: Sequence[float],
                     test_gt: Any, *, train_gt_valid: np.ndarray | None = None,
                     test_gt_valid: np.ndarray | None = None, step: float = 0.02, k: int = 5,
                     nms_threshold: float | None = 0.5, selection_threshold: float = 0.5,
                     ks: Sequence[int] = metrics.DEFAULT_KS,
                     iou_thresholds: Sequence[float] = metrics.DEFAULT_IOU_THRESHOLDS,
                     iou_comparison: str = ">=") -> FixedPrior:
    """The best fixed normalised span(s) learned on train, evaluated on test.

    Every normalised grid span ``[s, e]`` (step ``step``) is scored on the train
    split by its R@1 at IoU (``iou_comparison``) ``selection_threshold``
    (ties: higher mean IoU, then grid order). The best one, times each test
    duration, is the R@1 prediction of every test query; for R@k the grid spans
    ranked this way go through greedy NMS (``nms_threshold``) and the first
    ``k`` survivors are predicted.

    Args:
      train_durations: [Q_train] seconds.
      train_gt: [Q_train, G, 2] spans in seconds, or a ragged list of [G_i, 2].
      test_durations: [Q_test] seconds.
      test_gt: [Q_test, G, 2] spans in seconds, or a ragged list.
      train_gt_valid: [Q_train, G] validity (padded input only).
      test_gt_valid: [Q_test, G] validity (padded input only).
      step: Grid step of the normalised start / end.
      k: Number of spans predicted per query.
      nms_threshold: NMS among the ranked grid spans, ``None`` for none.
      selection_threshold: IoU threshold of the train R@1 being maximised.
      ks, iou_thresholds, iou_comparison: Test metrics, as in
        ``metrics.recall_at_k``.

    Returns:
      ``FixedPrior(metrics, span, spans, train_recall)``.
    """
    tr_spans, tr_valid = _as_padded(train_gt, train_gt_valid)
    tr_d = _as_durations(train_durations, tr_spans.shape[0])
    te_spans, te_valid = _as_padded(test_gt, test_gt_valid)
    te_d = _as_durations(test_durations, te_spans.shape[0])
    if tr_spans.shape[0] == 0:
        raise ValueError("empty train split")
    grid = span_grid(step)
    hits, iou_sum = _grid_scores(grid, tr_spans / tr_d[:, None, None], tr_valid, selection_threshold,
                                 iou_comparison)
    # Rank: most train hits, then highest mean IoU, then grid order.
    order = np.lexsort((np.arange(grid.shape[0]), -iou_sum, -hits))
    rank_score = np.empty(grid.shape[0])
    rank_score[order] = np.arange(grid.shape[0], 0, -1, dtype=np.float64)
    kept = metrics.temporal_nms(grid, rank_score, nms_threshold, k)
    spans = grid[kept]
    pred = spans[None] * te_d[:, None, None]
    test_metrics = metrics.recall_at_k(pred, None, te_spans, te_valid, ks, iou_thresholds, iou_comparison)
    train_recall = float(100.0 * hits[order[0]] / tr_spans.shape[0])
    return FixedPrior(test_metrics, grid[order[0]].copy(), spans, train_recall)


# ---------------------------------------------------------------------------
# CLI


def load_split(data_dir: str, split: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Durations [Q] and ragged gt spans (seconds) of a TFRecord split."""
    from jvmr.data import schema
    durations, spans = [], []
    for ex in schema.read_split(data_dir, split):
        durations.append(float(ex.duration))
        spans.append(np.asarray(ex.gt_spans, np.float64).reshape(-1, 2))
    return np.asarray(durations, np.float64), spans


def run_baselines(data_dir: str, train_split: str = "train", eval_split: str = "test", seed: int = 0,
                  ks: Sequence[int] = metrics.DEFAULT_KS,
                  iou_thresholds: Sequence[float] = metrics.DEFAULT_IOU_THRESHOLDS,
                  iou_comparison: str = ">=", grid_step: float = 0.02,
                  nms_threshold: float | None = 0.5) -> dict[str, Any]:
    """Both baselines on a dataset directory; the JSON-serialisable report of the CLI.

    Returns:
      ``{"data_dir", "train_split", "eval_split", "num_train", "num_eval",
      "protocol", "random_span": {"seed", "k", "metrics"},
      "fixed_prior_span": {"span", "spans", "train_recall", "metrics"}}``
      (spans normalised to the duration).
    """
    k = max(int(x) for x in ks)
    tr_d, tr_gt = load_split(data_dir, train_split)
    te_d, te_gt = load_split(data_dir, eval_split)
    for name, gt in ((train_split, tr_gt), (eval_split, te_gt)):
        if not gt:
            raise ValueError(f"split {name!r} in {data_dir} has no examples")
    common = dict(ks=tuple(ks), iou_thresholds=tuple(iou_thresholds), iou_comparison=iou_comparison)
    rand = random_span(te_d, te_gt, None, seed=seed, k=k, **common)
    prior = fixed_prior_span(tr_d, tr_gt, te_d, te_gt, step=grid_step, k=k, nms_threshold=nms_threshold,
                             **common)
    return {
        "data_dir": data_dir, "train_split": train_split, "eval_split": eval_split,
        "num_train": len(tr_gt), "num_eval": len(te_gt),
        "protocol": {**{key: list(v) if isinstance(v, tuple) else v for key, v in common.items()},
                     "nms_threshold": nms_threshold, "grid_step": grid_step},
        "random_span": {"seed": seed, "k": k, "metrics": rand},
        "fixed_prior_span": {"span": [round(float(x), 4) for x in prior.span],
                             "spans": [[round(float(x), 4) for x in s] for s in prior.spans],
                             "train_recall": prior.train_recall, "metrics": prior.metrics},
    }


def format_report(report: dict[str, Any]) -> str:
    """Human-readable text of a ``run_baselines`` report."""
    rs, fp = report["random_span"], report["fixed_prior_span"]
    s, e = fp["span"]
    thr = "selection R@1 IoU>=0.5" if report["protocol"]["iou_comparison"] == ">=" else "selection R@1 IoU>0.5"
    return "\n".join([
        f"== random span (seed {rs['seed']}, k={rs['k']}) on {report['eval_split']} "
        f"({report['num_eval']} queries) ==",
        metrics.format_metrics_table(rs["metrics"]),
        "",
        f"== fixed prior span [{s:.2f}, {e:.2f}] x duration, learned on {report['train_split']} "
        f"({report['num_train']} queries, train {thr} = {fp['train_recall']:.2f}), "
        f"on {report['eval_split']} ==",
        metrics.format_metrics_table(fp["metrics"]),
    ])


def _define_flags() -> None:
    from absl import flags
    flags.DEFINE_string("data_dir", None, "Directory of the TFRecord splits (jvmr.data.schema).")
    flags.DEFINE_string("train_split", "train", "Split the fixed prior is learned on.")
    flags.DEFINE_string("eval_split", "test", "Split the baselines are evaluated on.")
    flags.DEFINE_string("output", None, "Optional JSON file for the report.")
    flags.DEFINE_integer("seed", 0, "Seed of the random-span baseline.")
    flags.DEFINE_list("ks", [str(x) for x in metrics.DEFAULT_KS], "The k of R@k.")
    flags.DEFINE_list("iou_thresholds", [str(x) for x in metrics.DEFAULT_IOU_THRESHOLDS], "IoU thresholds.")
    flags.DEFINE_enum("iou_comparison", ">=", list(metrics.IOU_COMPARISONS), "Correct if IoU (cmp) threshold.")
    flags.DEFINE_float("grid_step", 0.02, "Grid step of the fixed-prior search (normalised).")
    flags.DEFINE_float("nms_threshold", 0.5, "NMS among the fixed-prior grid spans for R@k (<0: none).")
    flags.mark_flag_as_required("data_dir")


def main(argv: Sequence[str]) -> None:
    """absl entry point (flags are defined only when run as ``__main__``)."""
    from absl import app, flags
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    report = run_baselines(
        f.data_dir, f.train_split, f.eval_split, seed=f.seed, ks=[int(x) for x in f.ks],
        iou_thresholds=[float(x) for x in f.iou_thresholds], iou_comparison=f.iou_comparison,
        grid_step=f.grid_step, nms_threshold=None if f.nms_threshold < 0 else f.nms_threshold)
    print(format_report(report))
    if f.output:
        os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
        with open(f.output, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, allow_nan=False)
            fh.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main)
