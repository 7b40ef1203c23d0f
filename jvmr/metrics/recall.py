"""R@k at IoU thresholds and mIoU of ranked predictions (the flat protocols' metrics).

``best_gt_iou`` gives each prediction its IoU with its query's ground truth
(best window, or the window another union selects), ``recall_at_k`` turns
ranked predictions into ``{'R@k,IoU=t': pct, ..., 'mIoU': pct}`` (keys from
``recall_key``), and ``evaluate_predictions`` first runs NMS / top-k over
scored candidates and returns an ``EvaluationResult`` with the kept spans. The
default ``ks`` / IoU thresholds and their validation live here as well, since
``protocols.Protocol`` checks its fields with them.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from jvmr.metrics.spans import IOU_COMPARISONS, batched_temporal_nms, iou_passes, temporal_iou

DEFAULT_KS = (1, 5)
DEFAULT_IOU_THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


def _check_ks_thresholds(ks: Sequence[int], iou_thresholds: Sequence[float], iou_comparison: str) -> None:
    if iou_comparison not in IOU_COMPARISONS:
        raise ValueError(f"iou_comparison must be one of {IOU_COMPARISONS}, got {iou_comparison!r}")
    if not len(ks) or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)!r}")
    if not len(iou_thresholds) or any(not 0.0 <= t <= 1.0 for t in iou_thresholds):
        raise ValueError(f"iou_thresholds must be in [0, 1], got {tuple(iou_thresholds)!r}")


def recall_key(k: int, threshold: float) -> str:
    """The metrics-dict key of R@k at an IoU threshold, e.g. ``'R@1,IoU=0.5'``."""
    return f"R@{int(k)},IoU={float(threshold):g}"


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
                gt_valid: np.ndarray | None, iou_union: str = "exact", gt_select: str | None = None) -> np.ndarray:
    """Each prediction's best IoU over its query's valid ground-truth spans.

    Args:
      pred_spans: [Q, K, 2] predicted spans.
      pred_valid: [Q, K] validity or ``None`` (all valid).
      gt_spans: [Q, G, 2] ground-truth spans (or [Q, 2] for one span each).
      gt_valid: [Q, G] validity or ``None`` (all valid).
      iou_union: ``temporal_iou``'s union of the reported IoU.
      gt_select: ``None``: the max over GT spans of that IoU; ``'exact'`` /
        ``'hull'``: the GT span that maximises *this* IoU (first on ties), then
        its ``iou_union`` IoU (moment_detr's R1 picks with the exact union and
        scores with the hull).

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
    iou = temporal_iou(pred_spans[:, :, None, :], gt_spans[:, None, :, :], iou_union)  # [Q, K, G]
    iou = np.where(gt_valid[:, None, :], iou, -1.0)
    if not iou.shape[2]:
        best = np.full((num_q, num_k), -1.0)
    elif gt_select is None or gt_select == iou_union:
        best = iou.max(axis=2)
    else:
        select = temporal_iou(pred_spans[:, :, None, :], gt_spans[:, None, :, :], gt_select)
        pick = np.argmax(np.where(gt_valid[:, None, :], select, -1.0), axis=2)
        best = np.take_along_axis(iou, pick[..., None], 2)[..., 0]
    return np.where(pred_valid, best, -1.0)


def recall_at_k(pred_spans: np.ndarray, pred_valid: np.ndarray | None, gt_spans: np.ndarray,
                gt_valid: np.ndarray | None, ks: Sequence[int] = DEFAULT_KS,
                iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
                iou_comparison: str = ">=", iou_union: str = "exact",
                gt_select: str | None = None) -> dict[str, float]:
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
      iou_union, gt_select: see ``best_gt_iou``.

    Returns:
      ``{'R@k,IoU=t': percent, ..., 'mIoU': percent}`` (python floats), keys
      ordered by k then threshold, ``'mIoU'`` last; mIoU is the mean over
      queries of the best gt IoU of the top-1 valid prediction. With Q = 0 all
      values are NaN.

    Raises:
      ValueError: On bad shapes or parameters, or a query without valid gt.
    """
    _check_ks_thresholds(ks, iou_thresholds, iou_comparison)
    best = best_gt_iou(pred_spans, pred_valid, gt_spans, gt_valid, iou_union, gt_select)  # [Q, K], -1 invalid
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
                         nms_threshold: float | None = 0.5, iou_union: str = "exact",
                         gt_select: str | None = None) -> EvaluationResult:
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
      nms_threshold: NMS IoU threshold or ``None`` (no NMS; NMS IoUs use the
        exact union, as 2D-TAN's and moment_detr's ``nms``).
      iou_union, gt_select: the IoU against the ground truth (``best_gt_iou``).

    Returns:
      ``EvaluationResult(metrics, spans, scores, valid, indices)``.

    Raises:
      ValueError: On NaN scores of valid candidates (naming the query), bad
        shapes or parameters.
    """
    _check_ks_thresholds(ks, iou_thresholds, iou_comparison)
    kept = batched_temporal_nms(cand_spans, cand_scores, nms_threshold, max(int(k) for k in ks), cand_valid)
    metrics = recall_at_k(kept.spans, kept.valid, gt_spans, gt_valid, ks, iou_thresholds, iou_comparison,
                          iou_union, gt_select)
    return EvaluationResult(metrics, kept.spans, kept.scores, kept.valid, kept.indices)
