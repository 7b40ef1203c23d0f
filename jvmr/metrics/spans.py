"""Span geometry: temporal IoU, greedy temporal NMS, ranking by score and padding (numpy only).

Spans are ``[start, end]`` in seconds. ``temporal_iou`` / ``pairwise_temporal_iou``
compute the IoU with the exact or the hull union, ``iou_passes`` applies a
``'>='`` / ``'>'`` threshold without epsilon, ``temporal_nms`` is the one-query
reference NMS and ``batched_temporal_nms`` its vectorised form (same ties,
bitwise-equal IoUs), ``_rank_by_score`` sorts candidates by score with either
tie order, and ``pad_rows`` / ``pad_spans`` turn ragged per-query lists into
padded arrays with a validity mask. Every other module of ``jvmr.metrics``
builds on these; this one imports none of them.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

IOU_COMPARISONS = (">=", ">")
#: The largest time (seconds, about 31 years) the readers accept: beyond it, span arithmetic in float64
#: overflows (a [-1e308, 1e308] window has an infinite length) and IoUs would silently come out 0 or NaN.
MAX_SECONDS = 1e9


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
# Ranking and padding


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
