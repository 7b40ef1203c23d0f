"""Clip-grid span labels and start/end decoding shared by the boundary-prediction models.

Convention: clip t of the n valid clips of a [B, T] prefix mask covers
[t/n, (t+1)/n] of the video; a span is an inclusive clip pair (i, j), i <= j.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jvmr.models.layers import masked_log_softmax, sequence_lengths

Array = jax.Array

MASKED_SCORE = -jnp.inf  # score of impossible candidates in predict_fn: never ranked, never kept.
BOUNDARY_TOLERANCE = 1e-4  # in clips: a GT boundary this close to a clip edge is on the edge.


def boundary_indices(gt_span: Array, video_mask: Array) -> tuple[Array, Array]:
    """Ground-truth start / end clips (inclusive) of [B, 2] fractions on a [B, T] prefix mask.

    Clip t of the n valid clips covers [t/n, (t+1)/n]: i* = floor(s n), j* =
    ceil(e n) - 1 (within ``BOUNDARY_TOLERANCE`` clips of an edge counts as on
    it), clipped to [0, n - 1] with j* >= i*. Returns two [B] int32 arrays.
    """
    n = sequence_lengths(video_mask)
    nf = jnp.maximum(n, 1).astype(jnp.float32)
    last = jnp.maximum(n - 1, 0)
    gt = gt_span.astype(jnp.float32)
    start = jnp.floor(gt[:, 0] * nf + BOUNDARY_TOLERANCE).astype(jnp.int32)
    end = jnp.ceil(gt[:, 1] * nf - BOUNDARY_TOLERANCE).astype(jnp.int32) - 1
    start = jnp.clip(start, 0, last)
    end = jnp.clip(end, start, last)
    return start, end


def temporal_iou(spans: Array, gt: Array) -> Array:
    """Continuous temporal IoU of [..., 2] spans with broadcastable [..., 2] ground truth (0 where the union is 0)."""
    inter = jnp.maximum(0.0, jnp.minimum(spans[..., 1], gt[..., 1]) - jnp.maximum(spans[..., 0], gt[..., 0]))
    union = (spans[..., 1] - spans[..., 0]) + (gt[..., 1] - gt[..., 0]) - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def nms_top_k(scores: Array, spans: Array, k: int, threshold: float) -> tuple[Array, Array]:
    """Greedy temporal NMS that keeps k candidates per row, vectorised over the batch (k steps, no loop over
    candidates): scores [B, C] (-inf = not a candidate), spans [B, C, 2]. Each step keeps the best remaining
    candidate and drops those with IoU > ``threshold`` with it; ``threshold >= 1`` is a plain top-k.

    Returns indices [B, k] (int32) and a [B, k] float mask (0 where fewer than k candidates survived).
    """
    if threshold >= 1.0:
        top, index = jax.lax.top_k(scores, k)
        return index.astype(jnp.int32), jnp.isfinite(top).astype(jnp.float32)

    def pick(i, carry):
        remaining, index, kept = carry
        best = jnp.argmax(remaining, axis=1).astype(jnp.int32)  # [B]
        top = jnp.take_along_axis(remaining, best[:, None], axis=1)[:, 0]
        chosen = jnp.take_along_axis(spans, best[:, None, None], axis=1)  # [B, 1, 2]
        drop = (temporal_iou(spans, chosen) > threshold) | (jnp.arange(scores.shape[1])[None] == best[:, None])
        return (jnp.where(drop, -jnp.inf, remaining), index.at[:, i].set(best),
                kept.at[:, i].set(jnp.isfinite(top).astype(jnp.float32)))

    b = scores.shape[0]
    init = (scores, jnp.zeros((b, k), jnp.int32), jnp.zeros((b, k), jnp.float32))
    _, index, kept = jax.lax.fori_loop(0, k, pick, init)
    return index, kept


def segment_labels(start: Array, end: Array, num_clips: int) -> Array:
    """[B, T] float labels: 1 on clips start..end (inclusive), 0 elsewhere."""
    t = jnp.arange(num_clips)[None, :]
    return ((t >= start[:, None]) & (t <= end[:, None])).astype(jnp.float32)


def boundary_evidence(start_logits: Array, end_logits: Array, video_mask: Array) -> dict[str, Array]:
    """The per-clip curves [B, T] behind :func:`decode_spans`: P_start and P_end (softmax over the valid
    clips; 0 at padded clips), for pictures (``evidence_fn``)."""
    return {"start probability": jnp.exp(masked_log_softmax(start_logits, video_mask)) * (video_mask > 0),
            "end probability": jnp.exp(masked_log_softmax(end_logits, video_mask)) * (video_mask > 0)}


def decode_spans(
    start_logits: Array,
    end_logits: Array,
    video_mask: Array,
    *,
    min_span_len: int = 1,
    max_span_len: int = 0,
    num_candidates: int = 100,
) -> tuple[Array, Array]:
    """The most likely (start <= end) clip pairs under P_start(i) P_end(j).

    Args:
      start_logits, end_logits: [B, T] scores c^start, c^end.
      video_mask: [B, T] prefix mask.
      min_span_len: keep pairs with j - i + 1 >= min_span_len clips.
      max_span_len: keep pairs with j - i + 1 <= max_span_len clips (0 = no limit).
      num_candidates: N pairs returned per example (at most T * T).

    Returns:
      spans [B, N, 2] ([i/n, (j+1)/n], fractions of the n valid clips, in [0, 1])
      and scores [B, N] (log P_start(i) + log P_end(j), descending; ``MASKED_SCORE``
      with span [0, 0] where fewer than N pairs are possible).
    """
    b, t = start_logits.shape
    log_start = masked_log_softmax(start_logits, video_mask)
    log_end = masked_log_softmax(end_logits, video_mask)
    i = jnp.arange(t)[:, None]
    j = jnp.arange(t)[None, :]
    allowed = j - i + 1 >= max(int(min_span_len), 1)
    if max_span_len > 0:
        allowed = allowed & (j - i < max_span_len)
    valid = video_mask > 0
    allowed = allowed[None] & valid[:, :, None] & valid[:, None, :]
    joint = jnp.where(allowed, log_start[:, :, None] + log_end[:, None, :], MASKED_SCORE)
    scores, flat = jax.lax.top_k(joint.reshape(b, t * t), min(int(num_candidates), t * t))
    n = jnp.maximum(sequence_lengths(video_mask), 1).astype(jnp.float32)[:, None]
    spans = jnp.stack([(flat // t) / n, (flat % t + 1) / n], axis=-1)
    spans = jnp.where(jnp.isfinite(scores)[..., None], jnp.clip(spans, 0.0, 1.0), 0.0)
    return spans, scores
