"""Reproduction of jayleicn/moment_detr ``standalone_eval/eval.py`` (its moment retrieval metrics).

``interpolated_average_precision`` and ``detection_average_precision`` follow
the reference's ``standalone_eval/utils.py`` one query at a time;
``batched_detection_average_precision`` is their vectorised form, equal bit for
bit (``_numpy_pairwise_sum`` adds in numpy's pairwise order, as the
reference's ``np.sum`` does); ``moment_detr_result`` assembles R1 of the first
row and mAP over the first ``max_pred_windows`` rows, per GT length range, into
``eval_submission``'s ``brief`` / ``full`` / ``short`` / ``middle`` / ``long``
structure, rounded as the reference rounds.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jvmr.metrics.protocols import MOMENT_DETR_LENGTH_RANGES, Protocol, get_protocol
from jvmr.metrics.recall import best_gt_iou
from jvmr.metrics.spans import _rank_by_score, iou_passes, pairwise_temporal_iou, temporal_iou


def interpolated_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-style interpolated AP (moment_detr ``interpolated_precision_recall``).

    The precision is padded with 0 at both ends and the recall with 0 and 1,
    the precision is made monotonically non-increasing from the right, and the
    AP is the sum of ``(r_i - r_{i-1}) * p_i`` over the points where the recall
    changes.

    Args:
      precision: [P] precision after each ranked prediction.
      recall: [P] recall after each ranked prediction.

    Returns:
      The AP in [0, 1].
    """
    mprec = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def detection_average_precision(gt_windows: np.ndarray, pred_windows: np.ndarray,
                                iou_thresholds: Sequence[float]) -> np.ndarray:
    """ActivityNet-style AP of one query's predictions (moment_detr parity).

    Reproduces ``compute_average_precision_detection`` of moment_detr
    ``standalone_eval/utils.py``: predictions are sorted by score descending
    (stable: ties keep their given order); each prediction tries the GT windows
    by IoU descending (ties: the later GT window first, as ``argsort()[::-1]``)
    and becomes a true positive on the first one that has IoU ``>= t`` and is
    not matched yet (each GT window is matched at most once); otherwise it is a
    false positive. AP is ``interpolated_average_precision`` of the cumulative
    precision / recall (recall = TP / number of GT windows).

    Args:
      gt_windows: [G, 2] ground-truth windows, G >= 1.
      pred_windows: [P, 3] predicted ``[start, end, score]`` (already truncated
        to the windows to use, e.g. the first 10).
      iou_thresholds: The IoU thresholds t.

    Returns:
      float64 [T] AP per threshold (zeros when P = 0).
    """
    gt = np.asarray(gt_windows, np.float64).reshape(-1, 2)
    pred = np.asarray(pred_windows, np.float64).reshape(-1, 3)
    num_t = len(iou_thresholds)
    if pred.shape[0] == 0 or gt.shape[0] == 0:
        return np.zeros(num_t)
    pred = pred[np.argsort(-pred[:, 2], kind="stable")]
    iou = pairwise_temporal_iou(pred[:, :2], gt)  # [P, G]
    tp = np.zeros((num_t, pred.shape[0]))
    locked = np.zeros((num_t, gt.shape[0]), bool)
    for p in range(pred.shape[0]):
        gt_order = np.argsort(iou[p], kind="stable")[::-1]
        for ti, t in enumerate(iou_thresholds):
            for g in gt_order:
                if iou[p, g] < t:
                    break
                if locked[ti, g]:
                    continue
                tp[ti, p] = 1.0
                locked[ti, g] = True
                break
    tp_cum = np.cumsum(tp, axis=1)
    fp_cum = np.cumsum(1.0 - tp, axis=1)
    recall = tp_cum / gt.shape[0]
    precision = tp_cum / (tp_cum + fp_cum)
    return np.array([interpolated_average_precision(precision[ti], recall[ti]) for ti in range(num_t)])


def batched_detection_average_precision(gt_spans: np.ndarray, gt_valid: np.ndarray, pred: np.ndarray,
                                        pred_valid: np.ndarray, iou_thresholds: Sequence[float]) -> np.ndarray:
    """``detection_average_precision`` of many queries at once (vectorised over queries and thresholds).

    Same semantics, bit for bit up to float summation order: each query's valid
    predictions sorted by score (stable), greedy matching rank by rank to the
    unmatched GT window of highest IoU ``>= t`` (ties: the later window), then
    the interpolated AP. Loops only over the P ranks.

    Args:
      gt_spans: [Q, G, 2] GT windows; gt_valid: bool [Q, G] (>= 1 per query).
      pred: [Q, P, 3] ``[start, end, score]`` rows (already truncated, e.g. to 10);
      pred_valid: bool [Q, P].
      iou_thresholds: [T] thresholds.

    Returns:
      float64 [Q, T] AP (0 for a query without predictions).
    """
    gt_spans = np.asarray(gt_spans, np.float64)
    gt_valid = np.asarray(gt_valid, bool)
    pred = np.asarray(pred, np.float64)
    pred_valid = np.asarray(pred_valid, bool)
    num_q, num_p = pred_valid.shape
    thr = np.asarray(iou_thresholds, np.float64)
    if num_p == 0:
        return np.zeros((num_q, len(thr)))
    spans, _, pred_valid, _ = _rank_by_score(pred[..., :2], pred[..., 2], pred_valid, "earlier")
    iou = temporal_iou(spans[:, :, None, :], gt_spans[:, None, :, :])  # [Q, P, G]
    num_g = gt_spans.shape[1]
    locked = np.zeros((len(thr), num_q, num_g), bool)
    tp = np.zeros((len(thr), num_q, num_p))
    for p in range(num_p):
        ok = (iou[None, :, p, :] >= thr[:, None, None]) & ~locked & gt_valid[None] & pred_valid[None, :, p, None]
        cand = np.where(ok, iou[None, :, p, :], -np.inf)[..., ::-1]
        g = num_g - 1 - np.argmax(cand, axis=-1)  # [T, Q]: highest IoU, later window on ties
        has = ok.any(axis=-1)
        tp[:, :, p] = has
        t_idx, q_idx = np.nonzero(has)
        locked[t_idx, q_idx, g[t_idx, q_idx]] = True
    fp = (1.0 - tp) * pred_valid[None]
    tp_cum = np.cumsum(tp, axis=-1)
    fp_cum = np.cumsum(fp, axis=-1)
    recall = tp_cum / gt_valid.sum(axis=1)[None, :, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp_cum + fp_cum > 0, tp_cum / (tp_cum + fp_cum), 0.0)
    zeros = np.zeros(precision.shape[:2] + (1,))
    mprec = np.concatenate([zeros, precision, zeros], axis=-1)
    mrec = np.concatenate([zeros, recall, zeros + 1.0], axis=-1)
    mprec = np.maximum.accumulate(mprec[..., ::-1], axis=-1)[..., ::-1]
    terms = (mrec[..., 1:] - mrec[..., :-1]) * mprec[..., 1:]  # [T, Q, P + 1]
    changed = mrec[..., 1:] != mrec[..., :-1]
    # The reference sums only the terms where the recall changes (np.sum of the compacted
    # array); compact them to the left and sum them in numpy's order, bit for bit.
    order = np.argsort(~changed, axis=-1, kind="stable")
    compact = np.where(np.take_along_axis(changed, order, -1), np.take_along_axis(terms, order, -1), 0.0)
    return _numpy_pairwise_sum(compact, changed.sum(axis=-1)).T


def _numpy_pairwise_sum(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``np.sum(x[..., :n])`` per row, in the order numpy's pairwise summation adds (rows of <= 128).

    Zero padding after the n values changes nothing: adding 0.0 is exact. Below 8
    values numpy adds left to right; from 8 on it keeps 8 running sums, combines
    them as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then adds the rest.
    """
    if x.shape[-1] > 128:
        raise ValueError("rows longer than numpy's pairwise block (128) are not supported")
    width = max(x.shape[-1], 8)
    x = np.concatenate([x, np.zeros(x.shape[:-1] + (width - x.shape[-1],))], axis=-1)
    sequential = np.zeros(x.shape[:-1])
    for k in range(width):
        sequential = sequential + x[..., k]
    r = x[..., :8].copy()
    blocks = (n - n % 8)[..., None]  # values summed in the 8 accumulators
    for start in range(8, width - 7, 8):
        take = (np.arange(start, start + 8) < blocks)
        r = np.where(take, r + x[..., start:start + 8], r)
    paired = ((r[..., 0] + r[..., 1]) + (r[..., 2] + r[..., 3])) + ((r[..., 4] + r[..., 5]) + (r[..., 6] + r[..., 7]))
    for k in range(8, width):
        paired = np.where(k >= blocks[..., 0], paired + x[..., k], paired)
    return np.where(n < 8, sequential, paired)


def _pct2(x: float) -> float:
    return round(float(x) * 100.0, 2)


def _moment_detr_block(pred: np.ndarray, pred_valid: np.ndarray, gt_spans: np.ndarray, gt_valid: np.ndarray,
                       protocol: Protocol) -> dict[str, dict[str, float]]:
    """``{"MR-mAP": .., "MR-R1": ..}`` of moment_detr for one length range (padded arrays)."""
    has = pred_valid[:, 0]
    top1_iou = np.where(has, best_gt_iou(pred[:, :1, :2], pred_valid[:, :1], gt_spans, gt_valid,
                                         protocol.iou_union, protocol.gt_select)[:, 0], 0.0)
    r1 = {str(t): _pct2(np.mean(iou_passes(top1_iou, t, protocol.iou_comparison))) for t in protocol.iou_thresholds}
    limit = protocol.max_pred_windows or pred.shape[1]
    aps = batched_detection_average_precision(gt_spans, gt_valid, pred[:, :limit], pred_valid[:, :limit],
                                              protocol.map_iou_thresholds)
    ap_thds = aps.mean(axis=0)
    mr_map = {str(t): _pct2(v) for t, v in zip(protocol.map_iou_thresholds, ap_thds)}
    mr_map["average"] = _pct2(np.mean(ap_thds))
    return {"MR-mAP": mr_map, "MR-R1": r1}


def _moment_detr_empty_block() -> dict[str, dict[str, float]]:
    # moment_detr's placeholder for a length range without queries: float keys
    # np.linspace(0.5, 0.95, 19) (json writes them as repr strings) and "average", all 0.
    dummy = {repr(float(k)): 0.0 for k in np.linspace(0.5, 0.95, 19)}
    dummy["average"] = 0.0
    return {"MR-mAP": dict(dummy), "MR-R1": dict(dummy)}


def moment_detr_result(pred: np.ndarray, pred_valid: np.ndarray, gt_spans: np.ndarray, gt_valid: np.ndarray,
                       protocol: str | Protocol = "moment_detr") -> dict[str, Any]:
    """moment_detr ``eval_submission``'s moment-retrieval output.

    Args:
      pred: [Q, P, 3] prediction rows ``[start, end, score]`` in rank order
        (first row = top-1); pred_valid: bool [Q, P], a prefix per query (none
        = a miss).
      gt_spans: [Q, G, 2] GT windows; gt_valid: bool [Q, G] (>= 1 per query).
      protocol: A protocol with ``output='moment_detr'``.

    Returns:
      ``{"brief": {"MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP",
      "MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-short-mAP", "MR-middle-mAP",
      "MR-long-mAP"}, "full" | "short" | "middle" | "long": {"MR-mAP": {"0.5":
      .., "average": ..}, "MR-R1": {"0.5": .., ...}}}``. A length range keeps
      the queries with a GT window of length in ``(min, max]`` and only those
      windows; "full" keeps everything.
    """
    protocol = get_protocol(protocol)
    pred, pred_valid = np.asarray(pred, np.float64), np.asarray(pred_valid, bool)
    gt_spans, gt_valid = np.asarray(gt_spans, np.float64), np.asarray(gt_valid, bool)
    if pred.shape[0] == 0:
        raise ValueError("no queries to evaluate")
    length = gt_spans[..., 1] - gt_spans[..., 0]
    out: dict[str, Any] = {}
    for name, lo, hi in MOMENT_DETR_LENGTH_RANGES:
        keep = gt_valid if name == "full" else gt_valid & (length > lo) & (length <= hi)
        sel = keep.any(axis=1)
        if not sel.any():
            out[name] = _moment_detr_empty_block()
            continue
        out[name] = _moment_detr_block(pred[sel], pred_valid[sel], gt_spans[sel], keep[sel], protocol)
    full = out["full"]
    brief = {
        "MR-full-mAP": full["MR-mAP"]["average"],
        "MR-full-mAP@0.5": full["MR-mAP"].get("0.5"),
        "MR-full-mAP@0.75": full["MR-mAP"].get("0.75"),
        "MR-short-mAP": out["short"]["MR-mAP"]["average"],
        "MR-middle-mAP": out["middle"]["MR-mAP"]["average"],
        "MR-long-mAP": out["long"]["MR-mAP"]["average"],
        "MR-full-R1@0.5": full["MR-R1"].get("0.5"),
        "MR-full-R1@0.7": full["MR-R1"].get("0.7"),
    }
    brief = {k: v for k, v in sorted(brief.items()) if v is not None}
    return {"brief": brief, **{k: out[k] for k in sorted(out)}}
