"""2D temporal maps: every candidate moment of a clip sequence as one cell of a [start, end] grid.

For a sequence of n clip features f_0 .. f_{n-1}, the map F [n, n, d] holds, as MS-2D
(seed 003) and 2D-TAN define it,

    F[x, y] = maxpool(f_x, f_{x+1}, ..., f_y)   for x <= y,   0 elsewhere,

with a cell mask of the cells that are moments of the valid (unpadded) clips (their spans:
:func:`cell_spans`, fractions of the valid clips). It is
built without a loop over cells: a sparse table of max-pools over windows of 2^k clips
(``floor(log2 n) + 1`` levels), each cell the maximum of the two windows of 2^k clips that
start at x and end at y (k = floor(log2(y - x + 1))), which together cover x .. y.

Large maps keep a sparse cell layout (:func:`sparse_cells`, 2D-TAN's dilation): every
moment up to ``dense_lengths`` clips, then moments of up to twice that length whose
start and end fall on every 2nd clip boundary, and so on. Multi-scale maps (MS-2D's
N_s sampling scales) come from :func:`pool_sequence`: scale j max-pools windows of
r_j clips into n / r_j clips, then builds its own map.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jvmr.models.layers import sequence_lengths

Array = jax.Array


def pool_sequence(x: Array, mask: Array, stride: int) -> tuple[Array, Array]:
    """Max-pools windows of ``stride`` clips: x [B, T, d], mask [B, T] (prefix) -> [B, T / stride, d] and
    its prefix mask (a window is valid when any of its clips is; padded clips never enter a maximum).

    T must be a multiple of ``stride`` (static shapes: pad the clip grid to a multiple of every scale).
    """
    b, t, d = x.shape
    if stride < 1 or t % stride:
        raise ValueError(f"pool_sequence: {t} clips are not a multiple of stride {stride}")
    if stride == 1:
        return jnp.where(mask[..., None] > 0, x, 0.0), (mask > 0).astype(x.dtype)
    valid = (mask > 0).reshape(b, t // stride, stride)
    windows = jnp.where(valid[..., None], x.reshape(b, t // stride, stride, d), -jnp.inf)
    any_valid = jnp.any(valid, axis=-1)
    return jnp.where(any_valid[..., None], jnp.max(windows, axis=2), 0.0), any_valid.astype(x.dtype)


def _shift_left(x: Array, s: int) -> Array:
    """y[:, t] = x[:, t + s] (the last s positions repeat the last row; they are never read as a window
    that leaves the sequence, since cells with y >= n do not exist)."""
    if s == 0:
        return x
    return jnp.concatenate([x[:, s:], jnp.repeat(x[:, -1:], s, axis=1)], axis=1)


def moment_map(x: Array, mask: Array) -> tuple[Array, Array]:
    """The dense 2D map of a sequence: x [B, n, d], mask [B, n] (prefix) -> F [B, n, n, d] (cell (x, y):
    max-pool of clips x..y, zero unless x <= y < valid length) and its cell mask [B, n, n]."""
    b, n, d = x.shape
    valid = mask > 0
    x = jnp.where(valid[..., None], x, 0.0)
    levels = [x]  # levels[k][:, t] = max(x[t .. t + 2^k - 1])
    for k in range(1, n.bit_length()):  # levels 0 .. floor(log2 n)
        levels.append(jnp.maximum(levels[-1], _shift_left(levels[-1], 1 << (k - 1))))
    table = jnp.stack(levels, axis=1)  # [B, L, n, d]
    start, end = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    length = np.maximum(end - start + 1, 1)
    level = np.floor(np.log2(length)).astype(np.int32)  # [n, n]
    second = np.clip(end - (1 << level) + 1, 0, n - 1)  # the window of 2^k clips that ends at y
    cells = jnp.maximum(table[:, level, start], table[:, level, second])  # [B, n, n, d]
    cell_mask = (start <= end)[None] & valid[:, None, :]  # y valid implies x valid (prefix masks)
    return jnp.where(cell_mask[..., None], cells, 0.0), cell_mask.astype(x.dtype)


def sparse_cells(n: int, dense_lengths: int = 0) -> np.ndarray:
    """[n, n] bool layout of the kept cells (x, y), x <= y. ``dense_lengths`` 0 keeps every cell; else
    every moment of up to D = ``dense_lengths`` clips, and for b = 1, 2, ... the moments of
    D 2^(b-1) < y - x + 1 <= D 2^b clips whose start x and end y + 1 are multiples of 2^b."""
    start, end = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    length = end - start + 1
    keep = length >= 1
    if dense_lengths <= 0:
        return keep
    band = np.where(length <= dense_lengths, 0,
                    np.ceil(np.log2(np.maximum(length, 1) / dense_lengths)).astype(np.int64))
    stride = 1 << band
    return keep & (start % stride == 0) & ((end + 1) % stride == 0)


def cell_spans(video_mask: Array, n: int, stride: int) -> Array:
    """[B, n, n, 2] spans of a scale's cells as fractions of each video's valid clips: cell (x, y) covers
    clips x r .. (y + 1) r - 1 of the grid, i.e. [x r / len, min((y + 1) r, len) / len]."""
    length = jnp.maximum(sequence_lengths(video_mask), 1).astype(jnp.float32)[:, None, None]
    x = jnp.arange(n, dtype=jnp.float32)[None, :, None] * stride
    y = (jnp.arange(n, dtype=jnp.float32)[None, None, :] + 1) * stride
    start = jnp.broadcast_to(x / length, (video_mask.shape[0], n, n))
    end = jnp.broadcast_to(jnp.minimum(y, length) / length, (video_mask.shape[0], n, n))
    return jnp.stack([jnp.minimum(start, 1.0), end], axis=-1)
