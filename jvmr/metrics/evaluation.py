"""Evaluation under a named protocol: the entry points that apply a ``Protocol`` to predictions.

``evaluate_candidates`` scores a model's candidate moments (the training
loop), ``evaluate_split`` adds the per-query-type headline numbers as
``eval_metrics.jsonl`` logs them, ``evaluate_windows`` scores ragged per-query
windows (the standalone evaluator), and ``flat_metrics`` /
``primary_metric_key`` flatten any protocol's result structure for logs. Each
ranks the predictions as the protocol says, then dispatches on
``Protocol.output`` to ``recall`` (``'flat'``), ``moment_detr`` or ``tvr``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jvmr.metrics.moment_detr import moment_detr_result
from jvmr.metrics.protocols import TVR_DESC_TYPES, TVR_TASK_TYPES, Protocol, get_protocol
from jvmr.metrics.recall import EvaluationResult, _check_gt, evaluate_predictions, recall_at_k, recall_key
from jvmr.metrics.spans import _rank_by_score, batched_temporal_nms, pad_rows, pad_spans
from jvmr.metrics.tvr import _tvr_svmr_result


def evaluate_candidates(protocol: str | Protocol, cand_spans: np.ndarray, cand_scores: np.ndarray,
                        gt_spans: np.ndarray, gt_valid: np.ndarray | None = None,
                        cand_valid: np.ndarray | None = None,
                        desc_types: np.ndarray | None = None) -> tuple[dict[str, Any], EvaluationResult]:
    """Scores a model's candidate moments under a named protocol (the training loop's entry point).

    The candidates are ranked by score (ties per the protocol), then:
    ``'flat'`` protocols apply their NMS / top-k and R@k / mIoU
    (``evaluate_predictions``); ``'moment_detr'`` takes the first
    ``max_pred_windows`` ranked rows (``moment_detr_result``); ``'tvr'`` the
    first 100 as TVR's SVMR task (the video is known).

    Args:
      protocol: A ``PROTOCOLS`` name or a ``Protocol``.
      cand_spans: [Q, N, 2] candidate spans in seconds.
      cand_scores: [Q, N] scores (higher is better).
      gt_spans: [Q, G, 2] ground-truth spans in seconds.
      gt_valid: [Q, G] or ``None`` (all valid).
      cand_valid: [Q, N] or ``None`` (all valid; ``-inf`` scores are invalid).
      desc_types: Optional [Q] TVR query types (v / t / vt) for ``SVMR_by_type``.

    Returns:
      ``(metrics in the protocol's own structure, EvaluationResult of the
      ranked predictions to write: spans [Q, K, 2], scores, valid, indices)``.
    """
    protocol = get_protocol(protocol)
    cand_spans = np.asarray(cand_spans, np.float64)
    cand_scores = np.asarray(cand_scores, np.float64)
    valid = ~np.isneginf(cand_scores)  # -inf marks impossible candidates; NaN is an error below
    if cand_valid is not None:
        valid &= np.asarray(cand_valid, bool)
    nan = np.isnan(cand_scores) & valid
    if nan.any():
        raise ValueError(f"NaN score for query {int(np.flatnonzero(nan.any(axis=1))[0])}")
    gt_spans, gt_valid = _check_gt(np.asarray(gt_spans, np.float64), gt_valid, cand_spans.shape[0])
    if protocol.output == "flat":
        spans, scores, valid, order = cand_spans, cand_scores, valid, None
        if protocol.tie_break == "later":  # NMS breaks ties by index, earlier first
            spans, scores, valid = spans[:, ::-1], scores[:, ::-1], valid[:, ::-1]
        result = evaluate_predictions(spans, scores, gt_spans, gt_valid, valid, **protocol.kwargs())
        if protocol.tie_break == "later":
            result = result._replace(indices=np.where(result.valid, cand_spans.shape[1] - 1 - result.indices, -1))
        return result.metrics, result
    spans, scores, valid, order = _rank_by_score(cand_spans, cand_scores, valid, protocol.tie_break)
    k = min(protocol.max_pred_windows or spans.shape[1], spans.shape[1])
    spans, scores, valid, order = spans[:, :k], scores[:, :k], valid[:, :k], order[:, :k]
    if protocol.output == "moment_detr":
        metrics = moment_detr_result(np.concatenate([spans, scores[..., None]], axis=-1), valid, gt_spans, gt_valid,
                                     protocol)
    else:
        metrics = _tvr_svmr_result(spans, valid, gt_spans, gt_valid, protocol, desc_types)
    return metrics, EvaluationResult(metrics, spans, np.where(valid, scores, -np.inf), valid,
                                     np.where(valid, order, -1))


def rank_candidates(protocol: str | Protocol, cand_spans: np.ndarray, cand_scores: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``k`` of each query's candidates as ``protocol`` ranks them for scoring (no ground truth):
    a ``'flat'`` protocol's NMS / top-k, else the candidates by score (``evaluate_candidates``'s ranking).

    Args: cand_spans [Q, N, 2]; cand_scores [Q, N] (``-inf`` = impossible). Returns spans [Q, k, 2],
    scores [Q, k] (``-inf`` in empty slots) and valid [Q, k] (a prefix of True per query)."""
    protocol = get_protocol(protocol)
    spans = np.asarray(cand_spans, np.float64)
    scores = np.asarray(cand_scores, np.float64)
    valid = ~np.isneginf(scores)
    if protocol.output == "flat":
        if protocol.tie_break == "later":  # as evaluate_candidates: NMS breaks ties by index, earlier first
            spans, scores, valid = spans[:, ::-1], scores[:, ::-1], valid[:, ::-1]
        kept = batched_temporal_nms(spans, scores, protocol.nms_threshold, k, valid)
        return kept.spans, kept.scores, kept.valid
    spans, scores, valid, _ = _rank_by_score(spans, scores, valid, protocol.tie_break)
    return spans[:, :k], np.where(valid, scores, -np.inf)[:, :k], valid[:, :k]


def flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """One level of ``{key: number}`` from any protocol's result (for logs and TensorBoard).

    ``'flat'`` results are returned as they are; moment_detr's ``brief`` block
    is used as it is (``MR-full-R1@0.5``, ...); TVR blocks become
    ``"{task}-{key}"`` (``SVMR-0.5-r1``); other nested blocks and strings are
    left out.
    """
    if "brief" in metrics:
        return dict(metrics["brief"])
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            if key in TVR_TASK_TYPES:
                out.update({f"{key}-{k}": v for k, v in value.items()})
        elif isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            out[key] = value
    return out


def tvr_desc_types(query_types: Sequence[str] | None) -> np.ndarray | None:
    """The query types as TVR's description types [Q] when every one is v / t / vt (and there is one),
    else None (no by-type breakdown)."""
    types = None if query_types is None else np.asarray(query_types)
    return types if types is not None and len(types) and set(types) <= set(TVR_DESC_TYPES) else None


def tvr_type_headlines(metrics: dict[str, Any]) -> dict[str, float]:
    """``{type}/{task}-0.5-r1`` (``{type}/VR-r1``) of a TVR result's ``{task}_by_type`` blocks, for every
    description type that has queries (the reference writes NaN for the others)."""
    out = {}
    for task in TVR_TASK_TYPES:
        key = "r1" if task == "VR" else "0.5-r1"
        for dt in TVR_DESC_TYPES:
            value = metrics.get(f"{task}_by_type", {}).get(f"{dt}-{key}")
            if value is not None and np.isfinite(value):
                out[f"{dt}/{task}-{key}"] = value
    return out


def primary_metric_key(protocol: str | Protocol) -> str:
    """The flat key of a protocol's headline number (R@1 at IoU 0.5)."""
    protocol = get_protocol(protocol)
    return {"flat": recall_key(1, 0.5), "moment_detr": "MR-full-R1@0.5", "tvr": "SVMR-0.5-r1"}[protocol.output]


def evaluate_split(protocol: str | Protocol, cand_spans: np.ndarray, cand_scores: np.ndarray,
                   gt_spans: np.ndarray, gt_valid: np.ndarray | None = None,
                   query_types: Sequence[str] | None = None) -> tuple[dict[str, Any], dict[str, Any], EvaluationResult]:
    """A split's numbers as ``eval_metrics.jsonl`` logs them, from scored candidates.

    Runs ``evaluate_candidates`` (TVR's by-type block when the query types are
    v / t / vt) and adds, when there are several query types, the headline
    metric of each as ``{type}/{key}`` (e.g. ``ordinal/R@1,IoU=0.5``).

    Returns:
      (flat metrics with the per-type keys, the protocol's full result, the ranked predictions).
    """
    protocol = get_protocol(protocol)
    types = None if query_types is None else np.asarray(query_types)
    full, scored = evaluate_candidates(protocol, cand_spans, cand_scores, gt_spans, gt_valid,
                                       desc_types=tvr_desc_types(types))
    result = flat_metrics(full)
    if types is not None and len(set(types)) > 1:
        key = primary_metric_key(protocol)
        gt_valid = None if gt_valid is None else np.asarray(gt_valid)
        for qtype in sorted(set(types)):
            sel = types == qtype
            sub, _ = evaluate_candidates(protocol, np.asarray(cand_spans)[sel], np.asarray(cand_scores)[sel],
                                         np.asarray(gt_spans)[sel], None if gt_valid is None else gt_valid[sel])
            result[f"{qtype}/{key}"] = flat_metrics(sub)[key]
    return result, full, scored


def evaluate_windows(protocol: str | Protocol, pred_windows: Sequence[Any],
                     gt_windows: Sequence[Any]) -> dict[str, Any]:
    """Evaluates ragged per-query predictions under a (named) protocol.

    For protocols with ``rank_by='score'`` (e.g. ``'2dtan'``) each query's
    candidates are ranked by score descending (ties per ``tie_break``), then
    ``evaluate_predictions`` runs with the protocol's NMS / ks / thresholds /
    comparison. Under ``'2dtan'`` this reproduces 2D-TAN ``lib/core/eval.py``:
    NMS 0.5 keeping 5, ``R@{1,5},IoU={0.1,0.3,0.5,0.7}`` with strict ``>``, and
    ``mIoU`` of the top-1 kept window (with several GT windows, the best IoU
    over them; 2D-TAN has one). The result is flat:
    ``{'R@1,IoU=0.5': pct, ..., 'mIoU': pct}`` (unrounded percentages).

    Under ``'moment_detr'`` the result follows moment_detr
    ``standalone_eval/eval.py`` ``eval_submission`` (no NMS; see
    ``moment_detr_result``)::

        {"brief": {"MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP",
                   "MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-short-mAP",
                   "MR-middle-mAP", "MR-long-mAP"},
         "full": {"MR-mAP": {"0.5": .., ..., "average": ..},
                  "MR-R1": {"0.5": .., ...}},
         "long": .., "middle": .., "short": ..}

    R1 takes the *first* prediction row (no re-sorting) and its IoU with the
    GT window it overlaps most, correct if ``>= t``. mAP is
    ``detection_average_precision`` on the first ``max_pred_windows`` rows,
    averaged over queries, then over thresholds (``"average"``). Values are
    ``round(100 * x, 2)``.

    Under ``'tvr'`` the rows are taken as given (first 100) and scored as TVR's
    SVMR task: ``{"SVMR": {"0.5-r1": .., ..., "0.7-r100": ..}}``.

    A query whose prediction is ``None`` or empty is a miss (IoU 0, AP 0);
    moment_detr itself requires a prediction for every query.

    Args:
      protocol: A ``PROTOCOLS`` name or a ``Protocol``.
      pred_windows: [Q] per-query ``[[start, end, score], ...]`` (any order;
        under ``rank_by='given'`` the first row is the top-1), or ``None``.
      gt_windows: [Q] per-query ``[[start, end], ...]``, at least one each.

    Returns:
      The metrics dict described above.

    Raises:
      ValueError: On mismatched lengths, bad window shapes, NaN scores or a
        query without GT windows.
    """
    protocol = get_protocol(protocol)
    if len(pred_windows) != len(gt_windows):
        raise ValueError(f"{len(pred_windows)} prediction entries but {len(gt_windows)} ground-truth entries")
    preds = [_windows(p, 3, f"predictions of query {i}") for i, p in enumerate(pred_windows)]
    gts = [_windows(g, 2, f"ground truth of query {i}") for i, g in enumerate(gt_windows)]
    for i, (p, g) in enumerate(zip(preds, gts)):
        if g.shape[0] == 0:
            raise ValueError(f"query {i} has no ground-truth window")
        if np.isnan(p[:, 2]).any():
            raise ValueError(f"NaN prediction score in query {i}")
    gt_spans, gt_valid = pad_spans(gts)
    rows, valid = pad_rows(preds, 3)
    if protocol.output == "moment_detr" and protocol.rank_by == "given":
        return moment_detr_result(rows, valid, gt_spans, gt_valid, protocol)
    cand, scores = rows[..., :2], np.where(valid, rows[..., 2], -np.inf)
    if protocol.rank_by == "given":  # positions are the ranks
        if protocol.output == "tvr":
            return _tvr_svmr_result(cand, valid, gt_spans, gt_valid, protocol)
        k = max(protocol.ks)
        return recall_at_k(cand[:, :k], valid[:, :k], gt_spans, gt_valid, protocol.ks,
                           protocol.iou_thresholds, protocol.iou_comparison, protocol.iou_union, protocol.gt_select)
    return evaluate_candidates(protocol, cand, scores, gt_spans, gt_valid, valid)[0]


def _windows(w: Any, cols: int, what: str) -> np.ndarray:
    arr = np.asarray([] if w is None else w, np.float64)
    if arr.size == 0:
        return np.zeros((0, cols))
    if arr.ndim != 2 or arr.shape[1] < cols:
        raise ValueError(f"{what} must be a list of [start, end{', score' if cols == 3 else ''}] rows, "
                         f"got shape {arr.shape}")
    return arr[:, :cols]
