"""Writing predictions and metrics out: prediction / ground-truth files and the log table.

``write_predictions_jsonl`` and ``write_ground_truth_jsonl`` write the
moment_detr / lighthouse JSON-lines format at full precision (re-scoring a file
reproduces the logged numbers, score ties included), ``write_tvr_files`` a TVR
submission (``video2idx`` + ``SVMR`` block) with its ground truth as TVR
release rows, and ``format_metrics_table`` the aligned text table of a metrics
dict printed in logs. Files are written atomically (a temporary file, then a
rename); ``jvmr.evaluate`` reads them back.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

import numpy as np

from jvmr import fs
from jvmr.metrics.protocols import TVR_DESC_TYPES
from jvmr.metrics.spans import pad_spans


# ---------------------------------------------------------------------------
# JSONL writers (moment_detr / lighthouse convention)


def _py(value: Any) -> Any:
    """Converts numpy scalars / bytes to JSON-friendly python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        value = value.item()
        return value.decode("utf-8") if isinstance(value, bytes) else value
    return value


def _write_jsonl(path: str, rows: list[dict]) -> None:
    fs.makedirs(os.path.dirname(fs.abspath(path)))
    fs.write_text_atomic(path, "".join(json.dumps(row, allow_nan=False, ensure_ascii=False) + "\n" for row in rows))


def _tie_groups_reversed(idx: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``idx`` (sorted by score, descending) with every run of equal scores reversed."""
    out, start = [], 0
    for k in range(1, len(idx) + 1):
        if k == len(idx) or scores[idx[k]] != scores[idx[start]]:
            out.extend(idx[start:k][::-1])
            start = k
    return np.asarray(out, np.int64)


def write_predictions_jsonl(path: str, qids: Sequence[Any], vids: Sequence[Any], durations: Sequence[float],
                            spans: np.ndarray, scores: np.ndarray, valid: np.ndarray | None,
                            queries: Sequence[Any] | None = None, tie_break: str = "earlier") -> int:
    """Writes ranked predictions as JSON lines (moment_detr / lighthouse format).

    One row per query: ``{"qid", "vid", "duration", "query" (if given),
    "pred_relevant_windows": [[st, ed, score], ...]}`` with the valid windows
    sorted by score descending (stable). Numbers are written at full precision
    (``repr`` round-trips), so re-scoring the file reproduces the IoUs and
    score ties the training loop saw. With ``tie_break='later'`` (the
    ``2dtan`` protocol) each run of equal scores is written in reverse, so that
    a reader ranking later rows first among ties recovers the given order.

    Args:
      path: Output file (written atomically).
      qids: [Q] query ids (str / int / bytes).
      vids: [Q] video ids.
      durations: [Q] seconds.
      spans: [Q, K, 2] predicted spans in seconds.
      scores: [Q, K] scores.
      valid: [Q, K] validity, ``None`` for all valid.
      queries: Optional [Q] query sentences.
      tie_break: the ``Protocol.tie_break`` of the reader the file is for.

    Returns:
      The number of rows written.

    Raises:
      ValueError: On mismatched lengths or a non-finite score of a valid window.
    """
    spans = np.asarray(spans, np.float64)
    scores = np.asarray(scores, np.float64)
    num_q = spans.shape[0]
    valid = np.ones(scores.shape, bool) if valid is None else np.asarray(valid).astype(bool)
    if spans.shape[:2] != scores.shape or valid.shape != scores.shape:
        raise ValueError(f"spans {spans.shape}, scores {scores.shape}, valid {valid.shape} do not match")
    for name, seq in (("qids", qids), ("vids", vids), ("durations", durations), ("queries", queries)):
        if seq is not None and len(seq) != num_q:
            raise ValueError(f"{name} has {len(seq)} entries, expected {num_q}")
    rows = []
    for i in range(num_q):
        idx = np.flatnonzero(valid[i])
        idx = idx[np.argsort(-scores[i, idx], kind="stable")]
        if tie_break == "later":
            idx = _tie_groups_reversed(idx, scores[i])
        if not np.all(np.isfinite(scores[i, idx])) or not np.all(np.isfinite(spans[i, idx])):
            raise ValueError(f"{path}: non-finite prediction for qid {_py(qids[i])!r}")
        row: dict[str, Any] = {"qid": _py(qids[i]), "vid": _py(vids[i]), "duration": float(durations[i])}
        if queries is not None:
            row["query"] = _py(queries[i])
        row["pred_relevant_windows"] = [[float(spans[i, j, 0]), float(spans[i, j, 1]), float(scores[i, j])]
                                        for j in idx]
        rows.append(row)
    _write_jsonl(path, rows)
    return len(rows)


def write_ground_truth_jsonl(path: str, qids: Sequence[Any], vids: Sequence[Any], durations: Sequence[float],
                             gt_spans: np.ndarray, gt_valid: np.ndarray | None,
                             queries: Sequence[Any] | None = None) -> int:
    """Writes ground truth as JSON lines (moment_detr / lighthouse format).

    One row per query: ``{"qid", "vid", "duration", "query",
    "relevant_windows": [[st, ed], ...]}`` (valid windows in their original
    order, at full precision; ``"query"`` is ``""`` when not given).

    Args:
      path: Output file (written atomically).
      qids: [Q] query ids.
      vids: [Q] video ids.
      durations: [Q] seconds.
      gt_spans: [Q, G, 2] spans in seconds, or a ragged list of [G_i, 2].
      gt_valid: [Q, G] validity, ``None`` for all valid.
      queries: Optional [Q] query sentences.

    Returns:
      The number of rows written.
    """
    if gt_valid is None and not isinstance(gt_spans, np.ndarray):
        gt_spans, gt_valid = pad_spans(gt_spans)
    gt_spans = np.asarray(gt_spans, np.float64)
    if gt_spans.ndim == 2:
        gt_spans = gt_spans[:, None, :]
    gt_valid = np.ones(gt_spans.shape[:2], bool) if gt_valid is None else np.asarray(gt_valid).astype(bool)
    num_q = gt_spans.shape[0]
    for name, seq in (("qids", qids), ("vids", vids), ("durations", durations), ("queries", queries)):
        if seq is not None and len(seq) != num_q:
            raise ValueError(f"{name} has {len(seq)} entries, expected {num_q}")
    rows = []
    for i in range(num_q):
        rows.append({
            "qid": _py(qids[i]), "vid": _py(vids[i]), "duration": float(durations[i]),
            "query": "" if queries is None else _py(queries[i]),
            "relevant_windows": [[float(s), float(e)] for (s, e), ok in zip(gt_spans[i], gt_valid[i]) if ok],
        })
    _write_jsonl(path, rows)
    return len(rows)


def _tvr_desc_id(qid: Any) -> Any:
    qid = _py(qid)
    return int(qid) if isinstance(qid, str) and qid.isdigit() else qid


def write_tvr_files(submission_path: str, ground_truth_path: str | None, qids: Sequence[Any],
                    vids: Sequence[Any], queries: Sequence[Any], query_types: Sequence[Any],
                    durations: Sequence[float], spans: np.ndarray, scores: np.ndarray, valid: np.ndarray,
                    gt_spans: np.ndarray, gt_valid: np.ndarray) -> None:
    """Writes single-video predictions as a TVR submission and the GT as TVR release rows.

    The submission is ``{"video2idx": {vid: idx}, "SVMR": [{"desc_id", "desc",
    "predictions": [[vid_idx, st, ed, score], ...]}]}`` (ranked rows on the
    query's own video); the ground truth has one ``{"desc_id", "vid_name",
    "duration", "ts", "desc", "type"}`` row per query (``ts`` = ``[st, ed]``, or
    a list of windows when there are several). Numeric qids are written as
    integer desc_ids, as in the TVR release, so the files also evaluate against
    it. ``python -m jvmr.evaluate --protocol=tvr`` reads both.
    """
    video2idx: dict[str, int] = {}
    for v in vids:
        video2idx.setdefault(str(_py(v)), len(video2idx))
    entries, gt_rows = [], []
    for i, qid in enumerate(qids):
        vid = str(_py(vids[i]))
        preds = [[video2idx[vid], float(s), float(e), float(c)]
                 for (s, e), c, ok in zip(spans[i], scores[i], valid[i]) if ok]
        entries.append({"desc_id": _tvr_desc_id(qid), "desc": _py(queries[i]), "predictions": preds})
        windows = [[float(s), float(e)] for (s, e), ok in zip(gt_spans[i], gt_valid[i]) if ok]
        qtype = _py(query_types[i])
        row = {"desc_id": _tvr_desc_id(qid), "vid_name": vid, "duration": float(durations[i]),
               "ts": windows[0] if len(windows) == 1 else windows, "desc": _py(queries[i])}
        if qtype in TVR_DESC_TYPES:
            row["type"] = qtype
        gt_rows.append(row)
    fs.write_text_atomic(submission_path, json.dumps({"video2idx": video2idx, "SVMR": entries}))
    if ground_truth_path and not fs.exists(ground_truth_path):
        _write_jsonl(ground_truth_path, gt_rows)


# ---------------------------------------------------------------------------
# Logging

_RECALL_RE = re.compile(r"^R@(\d+),IoU=(.+)$")


def format_metrics_table(metrics: dict[str, Any], precision: int = 2) -> str:
    """Formats a metrics dict as a compact aligned text table.

    ``R@k,IoU=t`` keys become a grid (one row per k, one column per t); every
    other key (``mIoU`` and whatever else) follows on its own line.

    Example::

              IoU=0.3  IoU=0.5  IoU=0.7
        R@1     59.45    44.51    26.54
        R@5     85.53    77.13    61.96
        mIoU    42.10

    Args:
      metrics: Name -> value (numbers are printed with ``precision`` decimals).
      precision: Decimals of floats.

    Returns:
      The table (no trailing newline).
    """
    def fmt(v: Any) -> str:
        if isinstance(v, (bool, np.bool_)):
            return str(bool(v))
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.{precision}f}"
        return str(v)

    ks: list[str] = []
    thrs: list[str] = []
    grid: dict[tuple[str, str], Any] = {}
    others: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        m = _RECALL_RE.match(str(key))
        if m:
            k, t = f"R@{m.group(1)}", f"IoU={m.group(2)}"
            if k not in ks:
                ks.append(k)
            if t not in thrs:
                thrs.append(t)
            grid[(k, t)] = value
        else:
            others.append((str(key), value))
    first = max([len(k) for k in ks] + [len(k) for k, _ in others] + [0])
    lines = []
    if ks:
        cells = {kt: fmt(v) for kt, v in grid.items()}
        width = max([len(t) for t in thrs] + [len(c) for c in cells.values()])
        lines.append(" " * first + "".join(f"  {t:>{width}}" for t in thrs))
        for k in ks:
            lines.append(f"{k:<{first}}" + "".join(f"  {cells.get((k, t), '-'):>{width}}" for t in thrs))
    else:
        width = 0
    other_width = max([width] + [len(fmt(v)) for _, v in others])
    for key, value in others:
        lines.append(f"{key:<{first}}  {fmt(value):>{other_width}}")
    return "\n".join(lines)
