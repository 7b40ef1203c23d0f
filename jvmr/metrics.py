"""Evaluation metrics for temporal sentence grounding (numpy only).

Everything works on continuous spans ``[start, end]`` in seconds; nothing here
imports jax or tensorflow, so the module can be used by the training loop, by
tools and by a standalone evaluator alike.

Default protocol (``DEFAULT_PROTOCOL``, what ``evaluate_predictions`` does by
default):

1. Greedy temporal NMS over each query's scored candidates with threshold 0.5
   (a candidate is suppressed if its IoU with an already kept one is
   ``> 0.5``), keeping ``max(ks)`` spans (2D-TAN ``lib/core/eval.py``).
2. ``R@k,IoU=t``: a query is correct if any of its top-k kept spans has
   IoU ``>= t`` with any of its valid ground-truth spans (TVR / moment_detr /
   UnLoc comparison; 2D-TAN itself uses the strict ``>``).
3. ``mIoU``: mean over queries of the best IoU between the top-1 span and the
   ground-truth spans.

All values are percentages. The field's evaluators differ in exactly two knobs,
which are therefore parameters everywhere: ``iou_comparison`` (``'>='`` or
``'>'``) and ``nms_threshold`` (``None`` = no NMS, plain top-k by score). A
``Protocol`` bundles them with the ``ks`` and IoU thresholds, so named protocols
(2D-TAN, TVR, moment_detr) are just further ``Protocol`` instances.

IoU uses the exact union ``len_a + len_b - inter`` (moment_detr); 2D-TAN and TVR
use the hull ``max(e) - min(s)``, which equals it whenever ``inter > 0`` and
gives the same IoU of 0 otherwise. No epsilon is added to comparisons: an IoU
that is exactly ``t`` counts for ``'>='`` and not for ``'>'``.

NMS and top-k break score ties deterministically by candidate index (earlier
first). Note that 2D-TAN's ``np.argsort(...)[::-1]`` puts the *later* flat index
first; a 2D-TAN parity protocol has to reverse its candidate order to match.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, NamedTuple, Sequence

import numpy as np

IOU_COMPARISONS = (">=", ">")
DEFAULT_KS = (1, 5)
DEFAULT_IOU_THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


def _check_ks_thresholds(ks: Sequence[int], iou_thresholds: Sequence[float], iou_comparison: str) -> None:
    if iou_comparison not in IOU_COMPARISONS:
        raise ValueError(f"iou_comparison must be one of {IOU_COMPARISONS}, got {iou_comparison!r}")
    if not len(ks) or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)!r}")
    if not len(iou_thresholds) or any(not 0.0 <= t <= 1.0 for t in iou_thresholds):
        raise ValueError(f"iou_thresholds must be in [0, 1], got {tuple(iou_thresholds)!r}")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: how predictions are post-processed and compared.

    Attributes:
      name: Short identifier used in logs.
      ks: The k of R@k.
      iou_thresholds: IoU thresholds t of ``R@k,IoU=t``.
      iou_comparison: ``'>='`` (TVR, moment_detr, UnLoc) or ``'>'`` (2D-TAN,
        mmaction2).
      nms_threshold: Greedy NMS threshold applied to the candidates before R@k,
        or ``None`` for plain top-k by score.
    """

    name: str = "default"
    ks: tuple[int, ...] = DEFAULT_KS
    iou_thresholds: tuple[float, ...] = DEFAULT_IOU_THRESHOLDS
    iou_comparison: str = ">="
    nms_threshold: float | None = 0.5

    def __post_init__(self):
        _check_ks_thresholds(self.ks, self.iou_thresholds, self.iou_comparison)
        if self.nms_threshold is not None and not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in [0, 1] or None, got {self.nms_threshold!r}")

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``evaluate_predictions`` (everything but the name)."""
        return dict(ks=tuple(self.ks), iou_thresholds=tuple(self.iou_thresholds),
                    iou_comparison=self.iou_comparison, nms_threshold=self.nms_threshold)


DEFAULT_PROTOCOL = Protocol()


def recall_key(k: int, threshold: float) -> str:
    """The metrics-dict key of R@k at an IoU threshold, e.g. ``'R@1,IoU=0.5'``."""
    return f"R@{int(k)},IoU={float(threshold):g}"


# ---------------------------------------------------------------------------
# IoU


def temporal_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of spans, broadcasting over the leading dimensions.

    ``inter = max(0, min(e_a, e_b) - max(s_a, s_b))``,
    ``union = len_a + len_b - inter`` with ``len = max(0, e - s)``; the IoU is 0
    where the union is 0 (two zero-length spans).

    Args:
      a: [..., 2] spans ``[start, end]``.
      b: [..., 2] spans, broadcastable against ``a``.

    Returns:
      float64 [...] IoU in [0, 1] (the broadcast shape without the last axis).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape[-1:] != (2,) or b.shape[-1:] != (2,):
        raise ValueError(f"spans must have a last axis of size 2, got {a.shape} and {b.shape}")
    inter = np.maximum(0.0, np.minimum(a[..., 1], b[..., 1]) - np.maximum(a[..., 0], b[..., 0]))
    len_a = np.maximum(0.0, a[..., 1] - a[..., 0])
    len_b = np.maximum(0.0, b[..., 1] - b[..., 0])
    union = len_a + len_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def pairwise_temporal_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every span of ``a`` with every span of ``b``.

    Args:
      a: [N, 2] spans.
      b: [M, 2] spans.

    Returns:
      float64 [N, M] IoU matrix.
    """
    a = np.asarray(a, np.float64).reshape(-1, 2)
    b = np.asarray(b, np.float64).reshape(-1, 2)
    return temporal_iou(a[:, None, :], b[None, :, :])


def iou_passes(iou: np.ndarray, threshold: float, iou_comparison: str) -> np.ndarray:
    """Elementwise ``iou >= threshold`` or ``iou > threshold`` (no epsilon)."""
    if iou_comparison == ">=":
        return iou >= threshold
    if iou_comparison == ">":
        return iou > threshold
    raise ValueError(f"iou_comparison must be one of {IOU_COMPARISONS}, got {iou_comparison!r}")


# ---------------------------------------------------------------------------
# NMS


def temporal_nms(spans: np.ndarray, scores: np.ndarray, threshold: float | None,
                 max_keep: int | None = None) -> np.ndarray:
    """Greedy temporal NMS of one query's candidates (reference implementation).

    Candidates are visited by score descending, ties broken by the original
    index (earlier first, i.e. a stable sort). A candidate is suppressed if its
    IoU with an already kept candidate is ``> threshold`` (an IoU equal to the
    threshold is kept). Candidates with score ``-inf`` are invalid and never
    kept.

    Args:
      spans: [N, 2] candidate spans.
      scores: [N] candidate scores.
      threshold: NMS IoU threshold, or ``None`` for no suppression (plain top-k).
      max_keep: Stop after this many kept candidates (``None``: no limit).

    Returns:
      int64 [K] indices into the candidates of the kept ones, in kept order
      (score descending), ``K <= max_keep``.

    Raises:
      ValueError: On NaN scores.
    """
    spans = np.asarray(spans, np.float64).reshape(-1, 2)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if spans.shape[0] != scores.shape[0]:
        raise ValueError(f"{spans.shape[0]} spans but {scores.shape[0]} scores")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"NMS threshold must be in [0, 1] or None, got {threshold!r}")
    if np.isnan(scores).any():
        raise ValueError(f"NaN score at candidate index {int(np.flatnonzero(np.isnan(scores))[0])}")
    limit = scores.shape[0] if max_keep is None else int(max_keep)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    for i in order:
        if len(keep) >= limit or scores[i] == -np.inf:
            break
        if threshold is not None and keep:
            if np.any(temporal_iou(spans[keep], spans[i]) > threshold):
                continue
        keep.append(int(i))
    return np.asarray(keep, np.int64)


class NmsResult(NamedTuple):
    """The output of ``batched_temporal_nms``.

    Attributes:
      spans: float64 [Q, max_keep, 2] kept spans by rank (0 in invalid slots).
      scores: float64 [Q, max_keep] their scores (-inf in invalid slots).
      valid: bool [Q, max_keep], a prefix of True per query.
      indices: int64 [Q, max_keep] candidate index of each kept span (-1 if
        invalid).
    """

    spans: np.ndarray
    scores: np.ndarray
    valid: np.ndarray
    indices: np.ndarray


def batched_temporal_nms(spans: np.ndarray, scores: np.ndarray, threshold: float | None, max_keep: int,
                         valid: np.ndarray | None = None) -> NmsResult:
    """Greedy temporal NMS of many queries at once, vectorised across queries.

    Identical to ``temporal_nms`` on each query (same tie-breaking: highest
    score first, then the earliest index), but each of the ``max_keep`` rounds
    is one numpy pass over all queries: pick every query's best surviving
    candidate (``argmax`` returns the first maximum, which is the stable
    tie-break), then drop the candidates whose IoU with it is ``> threshold``.
    Cost O(max_keep * Q * N); no sort.

    Args:
      spans: [Q, N, 2] candidate spans.
      scores: [Q, N] candidate scores; ``-inf`` marks an invalid candidate.
      threshold: NMS IoU threshold, or ``None`` for plain top-k by score.
      max_keep: Number of spans to keep per query.
      valid: Optional [Q, N] candidate validity (bool or 0/1); invalid
        candidates are treated as score ``-inf`` (their scores may be NaN).

    Returns:
      ``NmsResult(spans, scores, valid, indices)``; the result unpacks as
      ``kept_spans, kept_scores, kept_valid, kept_indices``.

    Raises:
      ValueError: On a NaN score of a valid candidate (naming the query index)
        or on bad shapes.
    """
    spans = np.asarray(spans)
    scores = np.asarray(scores)
    if spans.ndim != 3 or spans.shape[-1] != 2 or scores.shape != spans.shape[:2]:
        raise ValueError(f"expected spans [Q, N, 2] and scores [Q, N], got {spans.shape} and {scores.shape}")
    if max_keep < 1:
        raise ValueError(f"max_keep must be >= 1, got {max_keep}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"NMS threshold must be in [0, 1] or None, got {threshold!r}")
    num_q, num_c = scores.shape
    # float64 working copies (the only large allocations besides two IoU buffers).
    masked = scores.astype(np.float64)  # -inf = invalid, already kept or suppressed
    if valid is not None:
        valid = np.asarray(valid).astype(bool)
        if valid.shape != scores.shape:
            raise ValueError(f"valid has shape {valid.shape}, expected {scores.shape}")
        np.copyto(masked, -np.inf, where=~valid)
    nan_rows = np.isnan(masked).any(axis=1)
    if nan_rows.any():
        q = int(np.flatnonzero(nan_rows)[0])
        raise ValueError(f"NaN candidate score in query {q} "
                         f"(candidate {int(np.flatnonzero(np.isnan(masked[q]))[0])}); "
                         f"{int(nan_rows.sum())} queries affected")
    rows = np.arange(num_q)
    if num_c == 0:
        spans = np.zeros((num_q, 1, 2))
        masked = np.full((num_q, 1), -np.inf)
    starts = spans[..., 0].astype(np.float64)  # contiguous copies
    ends = spans[..., 1].astype(np.float64)
    lengths = np.maximum(0.0, ends - starts)
    kept_spans = np.zeros((num_q, max_keep, 2))
    kept_scores = np.full((num_q, max_keep), -np.inf)
    kept_valid = np.zeros((num_q, max_keep), bool)
    kept_idx = np.full((num_q, max_keep), -1, np.int64)
    inter = np.empty_like(masked)
    union = np.empty_like(masked)
    suppress = np.empty(masked.shape, bool)
    for r in range(max_keep):
        idx = np.argmax(masked, axis=1)  # first maximum: ties -> earliest candidate
        has = masked[rows, idx] > -np.inf
        if not has.any():
            break
        kept_valid[:, r] = has
        kept_idx[:, r] = np.where(has, idx, -1)
        kept_spans[has, r, 0] = starts[rows[has], idx[has]]
        kept_spans[has, r, 1] = ends[rows[has], idx[has]]
        kept_scores[has, r] = masked[rows[has], idx[has]]
        masked[rows, idx] = -np.inf
        if threshold is not None and r + 1 < max_keep:
            s = starts[rows, idx][:, None]
            e = ends[rows, idx][:, None]
            # Same arithmetic as ``temporal_iou`` (bitwise equal IoU), in place. Where
            # union == 0 the division gives NaN, and NaN > threshold is False, like IoU 0.
            np.minimum(ends, e, out=inter)
            np.subtract(inter, np.maximum(starts, s, out=union), out=inter)
            np.maximum(inter, 0.0, out=inter)
            np.add(np.maximum(0.0, e - s), lengths, out=union)
            np.subtract(union, inter, out=union)
            with np.errstate(divide="ignore", invalid="ignore"):
                np.divide(inter, union, out=inter)
            np.greater(inter, threshold, out=suppress)
            np.copyto(masked, -np.inf, where=suppress)
    return NmsResult(kept_spans, kept_scores, kept_valid, kept_idx)


# ---------------------------------------------------------------------------
# Recall


def _check_gt(gt_spans: np.ndarray, gt_valid: np.ndarray | None, num_q: int) -> tuple[np.ndarray, np.ndarray]:
    gt_spans = np.asarray(gt_spans, np.float64)
    if gt_spans.ndim == 2 and gt_spans.shape[-1] == 2:
        gt_spans = gt_spans[:, None, :]
    if gt_spans.ndim != 3 or gt_spans.shape[-1] != 2 or gt_spans.shape[0] != num_q:
        raise ValueError(f"expected gt_spans [Q={num_q}, G, 2], got {gt_spans.shape}")
    gt_valid = (np.ones(gt_spans.shape[:2], bool) if gt_valid is None
                else np.asarray(gt_valid).astype(bool).reshape(gt_spans.shape[:2]))
    missing = ~gt_valid.any(axis=1)
    if missing.any():
        raise ValueError(f"query {int(np.flatnonzero(missing)[0])} has no valid ground-truth span "
                         f"({int(missing.sum())} queries affected)")
    return gt_spans, gt_valid


def best_gt_iou(pred_spans: np.ndarray, pred_valid: np.ndarray | None, gt_spans: np.ndarray,
                gt_valid: np.ndarray | None) -> np.ndarray:
    """Each prediction's best IoU over its query's valid ground-truth spans.

    Args:
      pred_spans: [Q, K, 2] predicted spans.
      pred_valid: [Q, K] validity or ``None`` (all valid).
      gt_spans: [Q, G, 2] ground-truth spans (or [Q, 2] for one span each).
      gt_valid: [Q, G] validity or ``None`` (all valid).

    Returns:
      float64 [Q, K]: the max IoU over valid gt spans, -1 for invalid predictions.

    Raises:
      ValueError: If a query has no valid ground-truth span, or on bad shapes.
    """
    pred_spans = np.asarray(pred_spans, np.float64)
    if pred_spans.ndim != 3 or pred_spans.shape[-1] != 2:
        raise ValueError(f"expected pred_spans [Q, K, 2], got {pred_spans.shape}")
    num_q, num_k = pred_spans.shape[:2]
    pred_valid = (np.ones((num_q, num_k), bool) if pred_valid is None
                  else np.asarray(pred_valid).astype(bool))
    if pred_valid.shape != (num_q, num_k):
        raise ValueError(f"pred_valid has shape {pred_valid.shape}, expected {(num_q, num_k)}")
    gt_spans, gt_valid = _check_gt(gt_spans, gt_valid, num_q)
    iou = temporal_iou(pred_spans[:, :, None, :], gt_spans[:, None, :, :])  # [Q, K, G]
    iou = np.where(gt_valid[:, None, :], iou, -1.0)
    best = iou.max(axis=2) if iou.shape[2] else np.full((num_q, num_k), -1.0)
    return np.where(pred_valid, best, -1.0)


def recall_at_k(pred_spans: np.ndarray, pred_valid: np.ndarray | None, gt_spans: np.ndarray,
                gt_valid: np.ndarray | None, ks: Sequence[int] = DEFAULT_KS,
                iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
                iou_comparison: str = ">=") -> dict[str, float]:
    """R@k at IoU thresholds and mIoU of ranked predictions.

    The predictions of a query are ranked by position; invalid slots are
    skipped, so "top-k" means the first k *valid* predictions. A query is
    correct at (k, t) if any of them has IoU (``iou_comparison``) t with any of
    its valid ground-truth spans. A query with no valid prediction is a miss
    with IoU 0. No NMS and no re-sorting happens here.

    Args:
      pred_spans: [Q, K, 2] ranked predicted spans (seconds).
      pred_valid: [Q, K] validity (bool or 0/1), or ``None`` for all valid.
      gt_spans: [Q, G, 2] ground-truth spans (seconds); [Q, 2] means G = 1.
      gt_valid: [Q, G] validity, or ``None`` for all valid. Every query needs at
        least one valid gt span.
      ks: The k of R@k.
      iou_thresholds: IoU thresholds.
      iou_comparison: ``'>='`` or ``'>'``.

    Returns:
      ``{'R@k,IoU=t': percent, ..., 'mIoU': percent}`` (python floats), keys
      ordered by k then threshold, ``'mIoU'`` last; mIoU is the mean over
      queries of the best gt IoU of the top-1 valid prediction. With Q = 0 all
      values are NaN.

    Raises:
      ValueError: On bad shapes or parameters, or a query without valid gt.
    """
    _check_ks_thresholds(ks, iou_thresholds, iou_comparison)
    best = best_gt_iou(pred_spans, pred_valid, gt_spans, gt_valid)  # [Q, K], -1 invalid
    valid = best > -1.0
    num_q = best.shape[0]
    rank = np.cumsum(valid, axis=1)  # 1-based rank among valid predictions
    out: dict[str, float] = {}
    for k in ks:
        in_top = valid & (rank <= k)
        for t in iou_thresholds:
            hit = np.any(in_top & iou_passes(best, float(t), iou_comparison), axis=1)
            out[recall_key(k, t)] = float(100.0 * np.count_nonzero(hit) / num_q) if num_q else math.nan
    if num_q:
        has = valid.any(axis=1)
        top1 = best[np.arange(num_q), np.argmax(valid, axis=1)] if best.shape[1] else np.zeros(num_q)
        out["mIoU"] = float(100.0 * np.where(has, np.maximum(top1, 0.0), 0.0).mean())
    else:
        out["mIoU"] = math.nan
    return out


class EvaluationResult(NamedTuple):
    """The output of ``evaluate_predictions``.

    Attributes:
      metrics: The ``recall_at_k`` dict (percent).
      spans: float64 [Q, max(ks), 2] kept (post-NMS / top-k) spans by rank.
      scores: float64 [Q, max(ks)] their scores (-inf in invalid slots).
      valid: bool [Q, max(ks)] validity of the kept slots.
      indices: int64 [Q, max(ks)] candidate index of each kept span (-1 invalid).
    """

    metrics: dict[str, float]
    spans: np.ndarray
    scores: np.ndarray
    valid: np.ndarray
    indices: np.ndarray


def evaluate_predictions(cand_spans: np.ndarray, cand_scores: np.ndarray, gt_spans: np.ndarray,
                         gt_valid: np.ndarray | None = None, cand_valid: np.ndarray | None = None, *,
                         ks: Sequence[int] = DEFAULT_KS,
                         iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
                         iou_comparison: str = ">=",
                         nms_threshold: float | None = 0.5) -> EvaluationResult:
    """Scored candidates -> kept top-k -> R@k / mIoU (the training loop's entry point).

    Default protocol (``DEFAULT_PROTOCOL``): greedy NMS with threshold 0.5
    keeping ``max(ks)`` spans per query, then R@k with IoU ``>=`` t. With
    ``nms_threshold=None`` the kept spans are simply the top ``max(ks)`` by
    score (ties: earlier candidate first). Pass ``**protocol.kwargs()`` to use
    another ``Protocol``.

    Args:
      cand_spans: [Q, N, 2] candidate spans in seconds.
      cand_scores: [Q, N] candidate scores (higher is better; ``-inf`` = invalid).
      gt_spans: [Q, G, 2] ground-truth spans in seconds ([Q, 2] means G = 1).
      gt_valid: [Q, G] gt validity (bool or 0/1), ``None`` for all valid.
      cand_valid: [Q, N] candidate validity, ``None`` for all valid.
      ks: The k of R@k; ``max(ks)`` spans are kept.
      iou_thresholds: IoU thresholds.
      iou_comparison: ``'>='`` or ``'>'``.
      nms_threshold: NMS IoU threshold or ``None`` (no NMS).

    Returns:
      ``EvaluationResult(metrics, spans, scores, valid, indices)``.

    Raises:
      ValueError: On NaN scores of valid candidates (naming the query), bad
        shapes or parameters.
    """
    _check_ks_thresholds(ks, iou_thresholds, iou_comparison)
    kept = batched_temporal_nms(cand_spans, cand_scores, nms_threshold, max(int(k) for k in ks), cand_valid)
    metrics = recall_at_k(kept.spans, kept.valid, gt_spans, gt_valid, ks, iou_thresholds, iou_comparison)
    return EvaluationResult(metrics, kept.spans, kept.scores, kept.valid, kept.indices)


# ---------------------------------------------------------------------------
# Ragged helpers


def pad_spans(spans_list: Sequence[np.ndarray], min_len: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pads a ragged list of [G_i, 2] span arrays.

    Args:
      spans_list: Q arrays of shape [G_i, 2] (or [2] for one span).
      min_len: Minimum padded length G.

    Returns:
      ``(spans [Q, G, 2] float64, valid [Q, G] bool)`` with ``G = max(min_len, max G_i)``.
    """
    arrs = [np.asarray(s, np.float64).reshape(-1, 2) for s in spans_list]
    g = max([min_len] + [a.shape[0] for a in arrs])
    spans = np.zeros((len(arrs), g, 2))
    valid = np.zeros((len(arrs), g), bool)
    for i, a in enumerate(arrs):
        spans[i, :a.shape[0]] = a
        valid[i, :a.shape[0]] = True
    return spans, valid


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


def _r4(x: float) -> float:
    return round(float(x), 4)


def _write_jsonl(path: str, rows: list[dict]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, allow_nan=False, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_predictions_jsonl(path: str, qids: Sequence[Any], vids: Sequence[Any], durations: Sequence[float],
                            spans: np.ndarray, scores: np.ndarray, valid: np.ndarray | None,
                            queries: Sequence[Any] | None = None) -> int:
    """Writes ranked predictions as JSON lines (moment_detr / lighthouse format).

    One row per query: ``{"qid", "vid", "duration", "query" (if given),
    "pred_relevant_windows": [[st, ed, score], ...]}`` with the valid windows
    sorted by score descending (stable), all numbers rounded to 4 decimals.

    Args:
      path: Output file (written atomically).
      qids: [Q] query ids (str / int / bytes).
      vids: [Q] video ids.
      durations: [Q] seconds.
      spans: [Q, K, 2] predicted spans in seconds.
      scores: [Q, K] scores.
      valid: [Q, K] validity, ``None`` for all valid.
      queries: Optional [Q] query sentences.

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
        if not np.all(np.isfinite(scores[i, idx])) or not np.all(np.isfinite(spans[i, idx])):
            raise ValueError(f"non-finite prediction for qid {_py(qids[i])!r}")
        row: dict[str, Any] = {"qid": _py(qids[i]), "vid": _py(vids[i]), "duration": _r4(durations[i])}
        if queries is not None:
            row["query"] = _py(queries[i])
        row["pred_relevant_windows"] = [[_r4(spans[i, j, 0]), _r4(spans[i, j, 1]), _r4(scores[i, j])]
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
    order, rounded to 4 decimals; ``"query"`` is ``""`` when not given).

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
            "qid": _py(qids[i]), "vid": _py(vids[i]), "duration": _r4(durations[i]),
            "query": "" if queries is None else _py(queries[i]),
            "relevant_windows": [[_r4(s), _r4(e)] for (s, e), ok in zip(gt_spans[i], gt_valid[i]) if ok],
        })
    _write_jsonl(path, rows)
    return len(rows)


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
