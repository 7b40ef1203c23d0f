"""Reproduction of jayleicn/TVRetrieval ``standalone_eval/eval.py`` (video corpus moment retrieval).

The ``'tvr'`` protocol covers per-query windows (TVR's SVMR task,
``_tvr_svmr_result``); a TVR submission carries video ids as well as spans and
three tasks (VCMR / SVMR / VR), so it has its own entry points:
``tvr_temporal_iou`` (the reference's float32 hull IoU), ``tvr_correct`` (video
match and IoU correctness per prediction, with DiDeMo's two-window rule),
``evaluate_tvr_task`` (R@k of one task plus the by-type breakdown) and
``evaluate_tvr`` (``eval_retrieval`` on arrays); ``jvmr.evaluate
--protocol=tvr`` is the command-line front end.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from jvmr.metrics.protocols import (TVR_DESC_TYPES, TVR_IOU_THRESHOLDS, TVR_MAX_PRED_PER_QUERY,
                                    TVR_MIN_OVERLAPS, TVR_MULTI_WINDOW_MIN, TVR_RECALL_TOPKS, TVR_TASK_TYPES,
                                    Protocol)


def tvr_temporal_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """TVRetrieval's ``compute_temporal_iou_batch``, broadcasting, in float32.

    ``inter = max(0, min(e_p, e_g) - max(s_p, s_g))``, ``union = max(e_p, e_g)
    - min(s_p, s_g)`` (the hull; equal to the true union whenever ``inter > 0``),
    IoU 0 where ``union == 0``. Spans are cast to float32 first and all the
    arithmetic is float32, as in the reference (its prediction matrix and GT
    ``ts`` are ``np.float32``), so boundary cases decide identically.

    Args:
      pred: [..., 2] spans.
      gt: [..., 2] spans, broadcastable against ``pred``.

    Returns:
      float32 [...] IoU.
    """
    pred = np.asarray(pred, np.float32)
    gt = np.asarray(gt, np.float32)
    if pred.shape[-1:] != (2,) or gt.shape[-1:] != (2,):
        raise ValueError(f"spans must have a last axis of size 2, got {pred.shape} and {gt.shape}")
    inter = np.maximum(np.float32(0), np.minimum(pred[..., 1], gt[..., 1]) - np.maximum(pred[..., 0], gt[..., 0]))
    union = np.maximum(pred[..., 1], gt[..., 1]) - np.minimum(pred[..., 0], gt[..., 0])
    return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)


def tvr_correct(pred_vid: np.ndarray, pred_spans: np.ndarray, pred_valid: np.ndarray, gt_vid: np.ndarray,
                gt_spans: np.ndarray, gt_valid: np.ndarray,
                iou_thresholds: Sequence[float] = TVR_IOU_THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """Per-prediction video match and IoU correctness (TVR semantics).

    A prediction's IoU with a GT window is ``tvr_temporal_iou`` times "its video
    is the GT video" (a wrong video has IoU 0); it is correct at threshold t if
    ``IoU >= t`` (compared in float32, as the reference does) with one GT window,
    or with at least ``TVR_MIN_OVERLAPS`` (2) windows when the query has
    ``>= TVR_MULTI_WINDOW_MIN`` (4) valid GT windows (DiDeMo). Invalid (padding)
    predictions are never matched nor correct.

    Args:
      pred_vid: int [Q, P] predicted video index per rank.
      pred_spans: [Q, P, 2] predicted spans (seconds).
      pred_valid: bool [Q, P] (a prefix of True per query).
      gt_vid: int [Q] GT video index.
      gt_spans: [Q, G, 2] GT windows.
      gt_valid: bool [Q, G].
      iou_thresholds: The thresholds t.

    Returns:
      ``(vid_match, correct)``: bool [Q, P] and bool [T, Q, P].
    """
    pred_vid = np.asarray(pred_vid)
    pred_valid = np.asarray(pred_valid, bool)
    gt_valid = np.asarray(gt_valid, bool)
    vid_match = (pred_vid == np.asarray(gt_vid)[:, None]) & pred_valid  # [Q, P]
    iou = tvr_temporal_iou(np.asarray(pred_spans)[:, :, None, :], np.asarray(gt_spans)[:, None, :, :])  # [Q, P, G]
    iou = iou * vid_match[:, :, None].astype(np.float32)
    n_windows = gt_valid.sum(axis=1)  # [Q]
    need = np.where(n_windows >= TVR_MULTI_WINDOW_MIN, TVR_MIN_OVERLAPS, 1)[:, None]  # [Q, 1]
    correct = np.stack([
        ((iou >= np.float32(t)) & gt_valid[:, None, :]).sum(axis=2) >= need for t in iou_thresholds
    ]) & vid_match[None]
    return vid_match, correct


def _tvr_pct(x: Any) -> float:
    # The reference's get_rounded_percentage on a numpy float64 (np.round semantics).
    return float(np.round(np.float64(x) * 100, 2))


def evaluate_tvr_task(task: str, vid_match: np.ndarray, correct: np.ndarray, desc_types: np.ndarray | None = None,
                      iou_thresholds: Sequence[float] = TVR_IOU_THRESHOLDS,
                      recall_topks: Sequence[int] = TVR_RECALL_TOPKS) -> tuple[dict[str, Any], dict[str, Any]]:
    """R@k of one TVR task from ``tvr_correct``'s output (vectorised over queries).

    * ``VCMR``: a query is a hit at (t, k) if any of its top-k predictions is
      correct (right video and IoU >= t). Keys ``"{t}-r{k}"``.
    * ``SVMR``: the predictions are first restricted to those on the GT video
      (keeping their order), then the same top-k rule. Keys ``"{t}-r{k}"``.
    * ``VR``: a hit at k if any of the top-k predicted videos is the GT video.
      Keys ``"r{k}"``.

    Values are ``round(100 * mean, 2)``. The by-type dict has the reference's
    flat keys ``"{type}-{t}-r{k}"`` (``"{type}-r{k}"`` for VR) for type in
    v / t / vt (NaN for a type with no query) and ``"desc_type_ratio"``
    (``"v 74.32 t 8.85 vt 16.83"``).

    Args:
      task: ``'VCMR'``, ``'SVMR'`` or ``'VR'``.
      vid_match: bool [Q, P].
      correct: bool [T, Q, P].
      desc_types: Optional [Q] query types (strings in v / t / vt); ``None``
        for no by-type breakdown (empty dict).
      iou_thresholds: The thresholds of ``correct``'s first axis.
      recall_topks: The k.

    Returns:
      ``(metrics, metrics_by_type)``.
    """
    if task not in TVR_TASK_TYPES:
        raise ValueError(f"task must be one of {TVR_TASK_TYPES}, got {task!r}")
    vid_match = np.asarray(vid_match, bool)
    correct = np.asarray(correct, bool)
    num_q, num_p = vid_match.shape
    if task == "VR":
        rank = np.broadcast_to(np.arange(1, num_p + 1), vid_match.shape)
        hits = {f"r{k}": (vid_match & (rank <= k)).any(axis=1) for k in recall_topks}
    else:
        if task == "SVMR":  # rank among the predictions on the GT video
            rank = np.cumsum(vid_match, axis=1)
        else:
            rank = np.broadcast_to(np.arange(1, num_p + 1), vid_match.shape)
        hits = {f"{t}-r{k}": (correct[ti] & vid_match & (rank <= k)).any(axis=1)
                for ti, t in enumerate(iou_thresholds) for k in recall_topks}
    metrics = {key: _tvr_pct(np.mean(h)) if num_q else math.nan for key, h in hits.items()}
    by_type: dict[str, Any] = {}
    if desc_types is not None:
        desc_types = np.asarray(desc_types)
        for dt in TVR_DESC_TYPES:
            in_type = desc_types == dt
            n = int(in_type.sum())
            for key, h in hits.items():
                by_type[f"{dt}-{key}"] = _tvr_pct(np.sum(h & in_type) / n) if n else math.nan
        if num_q:
            by_type["desc_type_ratio"] = "v {} t {} vt {}".format(
                *[_tvr_pct(np.sum(desc_types == dt) / num_q) for dt in TVR_DESC_TYPES])
    return metrics, by_type


def evaluate_tvr(blocks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], gt_vid: np.ndarray,
                 gt_spans: np.ndarray, gt_valid: np.ndarray, desc_types: np.ndarray | None = None,
                 iou_thresholds: Sequence[float] = TVR_IOU_THRESHOLDS,
                 recall_topks: Sequence[int] = TVR_RECALL_TOPKS,
                 max_pred_per_query: int = TVR_MAX_PRED_PER_QUERY) -> dict[str, Any]:
    """TVRetrieval ``eval_retrieval`` on arrays.

    Args:
      blocks: Task name (``'VCMR'`` / ``'SVMR'`` / ``'VR'``) ->
        ``(pred_vid int [Q, P], pred_spans [Q, P, 2], pred_valid bool [Q, P])``
        with the predictions in rank order, query-aligned with the GT arrays
        (a query without predictions has an all-False row: a miss). Only the
        first ``max_pred_per_query`` columns are used.
      gt_vid: int [Q] GT video index (in the submission's ``video2idx``).
      gt_spans: [Q, G, 2] GT windows.
      gt_valid: bool [Q, G].
      desc_types: Optional [Q] query types for the ``*_by_type`` breakdown.
      iou_thresholds: TVR: (0.5, 0.7).
      recall_topks: TVR: (1, 5, 10, 100).
      max_pred_per_query: TVR: 100.

    Returns:
      ``{task: metrics for each task present (in VCMR, SVMR, VR order),
      task + "_by_type": ... (only with desc_types)}``, the reference's
      structure and key names.
    """
    out: dict[str, Any] = {}
    by_type: dict[str, Any] = {}
    for task in TVR_TASK_TYPES:
        if task not in blocks:
            continue
        pred_vid, pred_spans, pred_valid = blocks[task]
        m = max_pred_per_query
        vid_match, correct = tvr_correct(pred_vid[:, :m], np.asarray(pred_spans)[:, :m], pred_valid[:, :m],
                                         gt_vid, gt_spans, gt_valid, iou_thresholds)
        out[task], by_type[task + "_by_type"] = evaluate_tvr_task(
            task, vid_match, correct, desc_types, iou_thresholds, recall_topks)
    if desc_types is not None:
        out.update(by_type)
    return out


def _tvr_svmr_result(ranked: np.ndarray, valid: np.ndarray, gt_spans: np.ndarray, gt_valid: np.ndarray,
                     protocol: Protocol, desc_types: np.ndarray | None = None) -> dict[str, Any]:
    """TVR's SVMR block for predictions on the GT video ([Q, P, 2] in rank order)."""
    m = protocol.max_pred_windows or ranked.shape[1]
    num_q = ranked.shape[0]
    vid = np.zeros((num_q, min(m, ranked.shape[1])), np.int64)
    vid_match, correct = tvr_correct(vid, ranked[:, :m], valid[:, :m], np.zeros(num_q, np.int64), gt_spans, gt_valid,
                                     protocol.iou_thresholds)
    svmr, by_type = evaluate_tvr_task("SVMR", vid_match, correct, desc_types, protocol.iou_thresholds, protocol.ks)
    out: dict[str, Any] = {"SVMR": svmr}
    if desc_types is not None:
        out["SVMR_by_type"] = by_type
    return out
