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

All values are percentages. The field's evaluators differ in a few knobs, which
are therefore parameters everywhere: ``iou_comparison`` (``'>='`` or ``'>'``),
``nms_threshold`` (``None`` = no NMS, plain top-k by score), the IoU's union
(``'exact'`` ``len_a + len_b - inter`` or the ``'hull'`` ``max(e) - min(s)``:
equal on paper whenever the spans overlap, but they round apart, and real
predictions sit on thresholds), the order of score ties, and whether rows are
re-ranked by score or taken as given. A ``Protocol`` bundles them with the
``ks`` and IoU thresholds. No epsilon is added to comparisons: an IoU that is
exactly ``t`` counts for ``'>='`` and not for ``'>'``.

NMS and top-k break score ties deterministically by candidate index (earlier
first). 2D-TAN's ``np.argsort(...)[::-1]`` puts the *later* flat index first;
the ``'2dtan'`` protocol (``tie_break='later'``) reverses the candidate order
before its stable ranking to match.

Named protocols live in ``PROTOCOLS`` (``get_protocol(name)``): ``'jvmr'`` (the
default above), ``'2dtan'`` (microsoft/2D-TAN ``lib/core/eval.py``),
``'moment_detr'`` (jayleicn/moment_detr ``standalone_eval/eval.py``: R1 of the
first row plus ActivityNet-style mAP, per GT length range) and ``'tvr'``
(jayleicn/TVRetrieval ``standalone_eval/eval.py``). ``evaluate_candidates``
scores a model's candidates under one (the training loop), ``evaluate_windows``
ragged per-query windows, ``evaluate_tvr`` a TVR submission; ``jvmr.evaluate``
is the command-line front end.
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
PROTOCOL_OUTPUTS = ("flat", "moment_detr", "tvr")
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
      tie_break: Order of equal-score candidates when ranking by score:
        ``'earlier'`` (stable, the library default) or ``'later'`` (2D-TAN's
        ``np.argsort(...)[::-1]``).
      rank_by: ``'score'`` (candidates ranked by score, then NMS / top-k) or
        ``'given'`` (predictions used in the order given, first row = top-1,
        as moment_detr's ``compute_mr_r1``; ``evaluate_candidates`` ranks by
        score first).
      map_iou_thresholds: IoU thresholds of the moment_detr-style mAP; empty
        for no mAP.
      max_pred_windows: Number of leading prediction rows used for the mAP
        (moment_detr ``max_pred_windows=10``), ``None`` for all.
      iou_union: How the IoU with the ground truth divides: ``'exact'``
        (``len_a + len_b - inter``) or ``'hull'`` (``max(e) - min(s)``); equal
        in exact arithmetic when the spans overlap, but they round apart on
        threshold boundaries, so each protocol uses its reference's.
      gt_select: With several GT windows, ``None`` takes the best IoU; a union
        name picks the window by that IoU first (moment_detr R1: ``'exact'``).
      output: The result's structure: ``'flat'`` (``{'R@1,IoU=0.5': .., 'mIoU':
        ..}``), ``'moment_detr'`` (``{'brief': .., 'full': .., 'short': ..}``)
        or ``'tvr'`` (``{'SVMR': {'0.5-r1': ..}}``), each as its reference
        evaluator writes it. ``flat_metrics`` turns any of them into flat keys.
      reference: The reference evaluator the protocol reproduces (free text).
    """

    name: str = "jvmr"
    ks: tuple[int, ...] = DEFAULT_KS
    iou_thresholds: tuple[float, ...] = DEFAULT_IOU_THRESHOLDS
    iou_comparison: str = ">="
    nms_threshold: float | None = 0.5
    tie_break: str = "earlier"
    rank_by: str = "score"
    map_iou_thresholds: tuple[float, ...] = ()
    max_pred_windows: int | None = None
    iou_union: str = "exact"
    gt_select: str | None = None
    output: str = "flat"
    reference: str = ""

    def __post_init__(self):
        _check_ks_thresholds(self.ks, self.iou_thresholds, self.iou_comparison)
        if self.nms_threshold is not None and not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in [0, 1] or None, got {self.nms_threshold!r}")
        if self.tie_break not in ("earlier", "later"):
            raise ValueError(f"tie_break must be 'earlier' or 'later', got {self.tie_break!r}")
        if self.rank_by not in ("score", "given"):
            raise ValueError(f"rank_by must be 'score' or 'given', got {self.rank_by!r}")
        if self.rank_by == "given" and self.nms_threshold is not None:
            raise ValueError("rank_by='given' cannot be combined with NMS")
        if any(not 0.0 <= t <= 1.0 for t in self.map_iou_thresholds):
            raise ValueError(f"map_iou_thresholds must be in [0, 1], got {self.map_iou_thresholds!r}")
        if self.max_pred_windows is not None and self.max_pred_windows < 1:
            raise ValueError(f"max_pred_windows must be >= 1 or None, got {self.max_pred_windows!r}")
        if self.iou_union not in ("exact", "hull") or self.gt_select not in (None, "exact", "hull"):
            raise ValueError(f"iou_union / gt_select must be 'exact' or 'hull', got {self.iou_union!r} / "
                             f"{self.gt_select!r}")
        if self.output not in PROTOCOL_OUTPUTS:
            raise ValueError(f"output must be one of {PROTOCOL_OUTPUTS}, got {self.output!r}")
        if self.output == "moment_detr" and not self.map_iou_thresholds:
            raise ValueError("output='moment_detr' needs map_iou_thresholds")

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``evaluate_predictions`` (everything but the name)."""
        return dict(ks=tuple(self.ks), iou_thresholds=tuple(self.iou_thresholds),
                    iou_comparison=self.iou_comparison, nms_threshold=self.nms_threshold,
                    iou_union=self.iou_union, gt_select=self.gt_select)


DEFAULT_PROTOCOL = Protocol(
    name="jvmr", reference="2D-TAN's NMS 0.5 then R@{1,5}, counting IoU >= t as TVR / moment_detr / UnLoc do")


def recall_key(k: int, threshold: float) -> str:
    """The metrics-dict key of R@k at an IoU threshold, e.g. ``'R@1,IoU=0.5'``."""
    return f"R@{int(k)},IoU={float(threshold):g}"


# ---------------------------------------------------------------------------
# IoU


def temporal_iou(a: np.ndarray, b: np.ndarray, union: str = "exact") -> np.ndarray:
    """IoU of spans, broadcasting over the leading dimensions.

    ``inter = max(0, min(e_a, e_b) - max(s_a, s_b))``, and the union is
    ``len_a + len_b - inter`` with ``len = max(0, e - s)`` (``union='exact'``)
    or the hull ``max(e_a, e_b) - min(s_a, s_b)`` (``union='hull'``, as 2D-TAN,
    TVRetrieval and moment_detr's R1 compute it). The two agree in exact
    arithmetic whenever ``inter > 0`` but round differently, which decides
    IoUs that sit on a threshold. The IoU is 0 where the union is 0.

    Args:
      a: [..., 2] spans ``[start, end]``.
      b: [..., 2] spans, broadcastable against ``a``.
      union: ``'exact'`` or ``'hull'``.

    Returns:
      float64 [...] IoU in [0, 1] (the broadcast shape without the last axis).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape[-1:] != (2,) or b.shape[-1:] != (2,):
        raise ValueError(f"spans must have a last axis of size 2, got {a.shape} and {b.shape}")
    inter = np.maximum(0.0, np.minimum(a[..., 1], b[..., 1]) - np.maximum(a[..., 0], b[..., 0]))
    if union == "exact":
        len_a = np.maximum(0.0, a[..., 1] - a[..., 0])
        len_b = np.maximum(0.0, b[..., 1] - b[..., 0])
        total = len_a + len_b - inter
    elif union == "hull":
        total = np.maximum(a[..., 1], b[..., 1]) - np.minimum(a[..., 0], b[..., 0])
    else:
        raise ValueError(f"union must be 'exact' or 'hull', got {union!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(total > 0, inter / np.where(total > 0, total, 1.0), 0.0)
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


# ---------------------------------------------------------------------------
# Ragged helpers


def pad_rows(rows_list: Sequence[np.ndarray], cols: int, min_len: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pads a ragged list of [N_i, cols] arrays to ``([Q, N, cols] float64, valid [Q, N] bool)``.

    ``N = max(min_len, max N_i)``; a 1-D entry of ``cols`` values is one row.
    """
    arrs = [np.asarray(r, np.float64).reshape(-1, cols) for r in rows_list]
    n = max([min_len] + [a.shape[0] for a in arrs])
    out = np.zeros((len(arrs), n, cols))
    valid = np.zeros((len(arrs), n), bool)
    for i, a in enumerate(arrs):
        out[i, :a.shape[0]] = a
        valid[i, :a.shape[0]] = True
    return out, valid


def pad_spans(spans_list: Sequence[np.ndarray], min_len: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pads Q ragged [G_i, 2] span arrays: ``(spans [Q, G, 2], valid [Q, G])``, G = max(min_len, max G_i)."""
    return pad_rows(spans_list, 2, min_len)


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
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, allow_nan=False, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


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
    tmp = submission_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"video2idx": video2idx, "SVMR": entries}, f)
    os.replace(tmp, submission_path)
    if ground_truth_path and not os.path.exists(ground_truth_path):
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


# ---------------------------------------------------------------------------
# Named protocols (parity with the field's reference evaluators)

#: moment_detr's ``np.linspace(0.5, 0.95, 10)`` rounded as ``float(f"{e:.2f}")``.
MOMENT_DETR_IOU_THRESHOLDS = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))

TVR_TASK_TYPES = ("VCMR", "SVMR", "VR")
TVR_DESC_TYPES = ("v", "t", "vt")
TVR_IOU_THRESHOLDS = (0.5, 0.7)
TVR_RECALL_TOPKS = (1, 5, 10, 100)
TVR_MAX_PRED_PER_QUERY = 100
#: A GT row with at least this many windows (DiDeMo) needs a prediction that
#: matches at least ``TVR_MIN_OVERLAPS`` of them; otherwise 1.
TVR_MULTI_WINDOW_MIN = 4
TVR_MIN_OVERLAPS = 2
#: moment_detr's length ranges of GT windows (seconds, ``min < length <= max``);
#: ``"full"`` keeps every window.
MOMENT_DETR_LENGTH_RANGES = (("short", 0.0, 10.0), ("middle", 10.0, 30.0), ("long", 30.0, 150.0),
                             ("full", 0.0, 150.0))

PROTOCOLS: dict[str, Protocol] = {
    # The library default (the embedded benchmark's tables): 2D-TAN's NMS then
    # top-5, with the >= of the other evaluators and earlier-first ties.
    "jvmr": DEFAULT_PROTOCOL,
    # microsoft/2D-TAN lib/core/eval.py (eval / nms / iou) with the candidate
    # ranking of moment_localization/test.py (np.argsort(score)[::-1]).
    "2dtan": Protocol(
        name="2dtan", ks=(1, 5), iou_thresholds=(0.1, 0.3, 0.5, 0.7), iou_comparison=">",
        nms_threshold=0.5, tie_break="later", rank_by="score", iou_union="hull",
        reference="microsoft/2D-TAN lib/core/eval.py"),
    # jayleicn/moment_detr standalone_eval/eval.py (eval_submission: compute_mr_r1
    # and compute_mr_ap with max_pred_windows=10, over the short / middle / long /
    # full GT length ranges).
    "moment_detr": Protocol(
        name="moment_detr", ks=(1,), iou_thresholds=MOMENT_DETR_IOU_THRESHOLDS, iou_comparison=">=",
        nms_threshold=None, tie_break="earlier", rank_by="given", iou_union="hull", gt_select="exact",
        map_iou_thresholds=MOMENT_DETR_IOU_THRESHOLDS, max_pred_windows=10, output="moment_detr",
        reference="jayleicn/moment_detr standalone_eval/eval.py"),
    # jayleicn/TVRetrieval standalone_eval/eval.py: R@{1,5,10,100} over the first
    # 100 predictions as given, IoU >= 0.5 / 0.7, no NMS. On per-query windows
    # (the video known) this is its SVMR task; corpus submissions (VCMR / VR)
    # go through evaluate_tvr (``jvmr.evaluate --protocol=tvr``).
    "tvr": Protocol(
        name="tvr", ks=TVR_RECALL_TOPKS, iou_thresholds=TVR_IOU_THRESHOLDS, iou_comparison=">=",
        nms_threshold=None, tie_break="earlier", rank_by="given", max_pred_windows=TVR_MAX_PRED_PER_QUERY,
        iou_union="hull", output="tvr", reference="jayleicn/TVRetrieval standalone_eval/eval.py"),
}

#: The protocol each dataset's published tables use (``dataset.protocol`` when empty).
DATASET_PROTOCOLS: dict[str, str] = {
    "synthetic": "jvmr",
    "synthetic_corpus": "tvr",
    "charades_sta": "2dtan",
    "activitynet_captions": "2dtan",
    "tacos": "2dtan",
    "tvr": "tvr",
}


def protocol_for_dataset(dataset: str, protocol: str = "") -> Protocol:
    """``protocol`` if given, else the protocol of ``dataset`` (``DATASET_PROTOCOLS``)."""
    if protocol:
        return get_protocol(protocol)
    if dataset not in DATASET_PROTOCOLS:
        raise ValueError(f"no default protocol for dataset {dataset!r}; set dataset.protocol to one of "
                         f"{sorted(PROTOCOLS)}")
    return PROTOCOLS[DATASET_PROTOCOLS[dataset]]


def get_protocol(name: str | Protocol) -> Protocol:
    """Looks up a named protocol.

    Args:
      name: A key of ``PROTOCOLS`` (``'jvmr'``, ``'2dtan'``, ``'moment_detr'``
        or ``'tvr'``); a ``Protocol`` instance is returned unchanged.

    Returns:
      The ``Protocol``.

    Raises:
      ValueError: For an unknown name (the message lists the known ones).
    """
    if isinstance(name, Protocol):
        return name
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}") from None


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


def _windows(w: Any, cols: int, what: str) -> np.ndarray:
    arr = np.asarray([] if w is None else w, np.float64)
    if arr.size == 0:
        return np.zeros((0, cols))
    if arr.ndim != 2 or arr.shape[1] < cols:
        raise ValueError(f"{what} must be a list of [start, end{', score' if cols == 3 else ''}] rows, "
                         f"got shape {arr.shape}")
    return arr[:, :cols]


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


def _rank_by_score(spans: np.ndarray, scores: np.ndarray, valid: np.ndarray,
                   tie_break: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sorts each query's candidates by score (valid first); ties per ``tie_break``."""
    n = scores.shape[1]
    key = np.where(valid, scores, -np.inf)
    if tie_break == "later":
        order = n - 1 - np.argsort(-key[:, ::-1], axis=1, kind="stable")
    else:
        order = np.argsort(-key, axis=1, kind="stable")
    # Invalid candidates last, whatever their score.
    order = np.take_along_axis(order, np.argsort(~np.take_along_axis(valid, order, 1), axis=1, kind="stable"), 1)
    return (np.take_along_axis(spans, order[..., None], 1), np.take_along_axis(scores, order, 1),
            np.take_along_axis(valid, order, 1), order)


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
    tvr_types = types if types is not None and set(types) <= set(TVR_DESC_TYPES) else None
    full, scored = evaluate_candidates(protocol, cand_spans, cand_scores, gt_spans, gt_valid, desc_types=tvr_types)
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


# ---------------------------------------------------------------------------
# TVR (video corpus moment retrieval): jayleicn/TVRetrieval standalone_eval/eval.py
#
# The ``'tvr'`` protocol covers per-query windows (its SVMR task); a TVR
# submission carries video ids as well as spans and three tasks (VCMR / SVMR /
# VR), so it has its own entry points ``tvr_correct`` / ``evaluate_tvr_task`` /
# ``evaluate_tvr``; ``jvmr.evaluate --protocol=tvr`` is its command-line front end.



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
