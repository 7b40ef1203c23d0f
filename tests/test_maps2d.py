"""2D temporal maps (jvmr.models.maps2d) against brute-force numpy constructions from the definitions."""

import jax.numpy as jnp
import numpy as np
import pytest

from jvmr.models import maps2d


def prefix_mask(lengths, size):
    return (np.arange(size)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


def brute_force_map(x, length):
    """F[a, b] = max(x[a..b]) for a <= b < length, 0 elsewhere; cell mask likewise."""
    n, d = x.shape
    f = np.zeros((n, n, d), np.float32)
    m = np.zeros((n, n), np.float32)
    for a in range(length):
        for b in range(a, length):
            f[a, b] = x[a:b + 1].max(axis=0)
            m[a, b] = 1
    return f, m


@pytest.mark.parametrize("n,lengths", [(1, [1]), (5, [5, 3, 1]), (8, [8, 7, 2]), (13, [13, 6, 9]), (32, [32, 17, 31])])
def test_moment_map_matches_brute_force(n, lengths):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(len(lengths), n, 4)).astype(np.float32)
    got, got_mask = maps2d.moment_map(jnp.asarray(x), jnp.asarray(prefix_mask(lengths, n)))
    for b, length in enumerate(lengths):
        ref, ref_mask = brute_force_map(x[b], length)
        np.testing.assert_array_equal(np.asarray(got_mask[b]), ref_mask)
        np.testing.assert_allclose(np.asarray(got[b]), ref, rtol=0, atol=0)


def test_padding_never_changes_the_valid_cells():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    lengths = [6, 4]
    small, small_mask = maps2d.moment_map(jnp.asarray(x), jnp.asarray(prefix_mask(lengths, 6)))
    padded = np.concatenate([x, rng.normal(size=(2, 10, 3)).astype(np.float32) * 100], axis=1)  # garbage padding
    big, big_mask = maps2d.moment_map(jnp.asarray(padded), jnp.asarray(prefix_mask(lengths, 16)))
    np.testing.assert_array_equal(np.asarray(big)[:, :6, :6], np.asarray(small))
    np.testing.assert_array_equal(np.asarray(big_mask)[:, :6, :6], np.asarray(small_mask))
    assert not np.asarray(big_mask)[:, 6:].any() and not np.asarray(big)[:, :, 6:].any()


@pytest.mark.parametrize("stride,lengths", [(1, [12, 5]), (2, [12, 5]), (3, [12, 7]), (4, [12, 1])])
def test_pool_sequence_max_pools_valid_clips(stride, lengths):
    rng = np.random.default_rng(stride)
    x = rng.normal(size=(len(lengths), 12, 3)).astype(np.float32)
    got, got_mask = maps2d.pool_sequence(jnp.asarray(x), jnp.asarray(prefix_mask(lengths, 12)), stride)
    assert got.shape == (len(lengths), 12 // stride, 3)
    for b, length in enumerate(lengths):
        for w in range(12 // stride):
            clips = [t for t in range(w * stride, (w + 1) * stride) if t < length]
            assert got_mask[b, w] == (1.0 if clips else 0.0)
            expected = x[b, clips].max(axis=0) if clips else np.zeros(3, np.float32)
            np.testing.assert_array_equal(np.asarray(got[b, w]), expected)
    with pytest.raises(ValueError, match="multiple of stride"):
        maps2d.pool_sequence(jnp.asarray(x), jnp.asarray(prefix_mask(lengths, 12)), 5)


@pytest.mark.parametrize("n,dense", [(16, 0), (16, 16), (64, 16), (48, 8)])
def test_sparse_cells_layout(n, dense):
    keep = maps2d.sparse_cells(n, dense)
    for a in range(n):
        for b in range(n):
            length = b - a + 1
            if length < 1:
                expected = False
            elif dense == 0 or length <= dense:
                expected = True
            else:
                band = 1
                while dense * 2 ** band < length:
                    band += 1
                expected = a % 2 ** band == 0 and (b + 1) % 2 ** band == 0
            assert keep[a, b] == expected, (a, b)
    if dense and n > dense:
        assert keep.sum() < n * (n + 1) // 2
    assert keep[0, n - 1]  # the whole video stays a candidate on these grids


def test_cell_spans():
    spans = np.asarray(maps2d.cell_spans(jnp.ones((1, 4)), 4, 1))[0]  # a full video: fractions of the grid
    np.testing.assert_allclose(spans[1, 2], [0.25, 0.75])
    np.testing.assert_allclose(spans[0, 3], [0.0, 1.0])
