"""Tests of jvmr.models.layers against plain numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvmr.models import layers
from reference import FAST_COMPILE, prefix_mask, sigmoid, to_numpy

jax.config.update("jax_default_matmul_precision", "highest")

RTOL = 1e-4
ATOL = 1e-5


def jit_init(module, *args, seed=0, **kwargs):
    return jax.jit(lambda key: module.init(key, *args, **kwargs), compiler_options=FAST_COMPILE)(jax.random.key(seed))


def jit_apply(module, params, *args, **kwargs):
    return jax.jit(lambda p: module.apply(p, *args, **kwargs), compiler_options=FAST_COMPILE)(params)


def test_sequence_lengths_and_mask_fill():
    mask = prefix_mask([3, 0, 5], 5)
    np.testing.assert_array_equal(layers.sequence_lengths(mask), [3, 0, 5])
    x = np.full((3, 5, 2), np.nan, np.float32)
    x[mask > 0] = 1.0
    out = np.asarray(layers.mask_fill(jnp.asarray(x), mask))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out.sum(axis=(1, 2)), [6, 0, 10])


def test_masked_softmax_matches_numpy_and_handles_empty_rows():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 7)).astype(np.float32)
    mask = rng.random((3, 4, 7)) > 0.4
    mask[1, 2] = False  # a fully masked row
    out = np.asarray(layers.masked_softmax(jnp.asarray(logits), jnp.asarray(mask), axis=-1))
    e = np.exp(logits - logits.max(-1, keepdims=True)) * mask
    s = e.sum(-1, keepdims=True)
    ref = np.where(s > 0, e / np.where(s > 0, s, 1), 0)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(out[1, 2], 0.0)
    grad = jax.grad(lambda z: jnp.sum(layers.masked_softmax(z, jnp.asarray(mask)) ** 2))(jnp.asarray(logits))
    assert np.all(np.isfinite(np.asarray(grad)))


def _mha_reference(p, xq, xkv, key_mask, query_mask, num_heads, window):
    def dense(x, name):
        return x @ p[name]["kernel"] + p[name]["bias"]

    b, tq, _ = xq.shape
    tk = xkv.shape[1]
    q, k, v = dense(xq, "query"), dense(xkv, "key"), dense(xkv, "value")
    dh = q.shape[-1] // num_heads
    q = q.reshape(b, tq, num_heads, dh)
    k = k.reshape(b, tk, num_heads, dh)
    v = v.reshape(b, tk, num_heads, dh)
    out = np.zeros((b, tq, num_heads * dh), np.float64)
    weights = np.zeros((b, num_heads, tq, tk))
    for bi in range(b):
        for h in range(num_heads):
            for i in range(tq):
                allowed = [j for j in range(tk) if key_mask[bi, j] > 0 and (window <= 0 or abs(i - j) <= window)]
                if not allowed:
                    continue
                s = np.array([q[bi, i, h] @ k[bi, j, h] / np.sqrt(dh) for j in allowed])
                w = np.exp(s - s.max())
                w /= w.sum()
                weights[bi, h, i, allowed] = w
                out[bi, i, h * dh:(h + 1) * dh] = w @ v[bi, allowed, h]
    out = dense(out, "out")
    return out * query_mask[..., None], weights


@pytest.mark.parametrize("window", [0, 2])
def test_multi_head_attention_matches_numpy(window):
    rng = np.random.default_rng(1)
    b, t, d, heads = 2, 9, 8, 2
    x = rng.normal(size=(b, t, d)).astype(np.float32)
    mask = prefix_mask([9, 5], t)
    x[mask == 0] = 1e6  # garbage in padding
    mha = layers.MultiHeadAttention(num_heads=heads, window=window)
    params = jit_init(mha, x, key_mask=mask)
    out, w = jit_apply(mha, params, x, key_mask=mask, query_mask=mask, return_weights=True)
    x_clean = np.where(mask[..., None] > 0, x, 0.0)
    ref, ref_w = _mha_reference(to_numpy(params["params"]), x_clean, x_clean, mask, mask, heads, window)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(w), ref_w * mask[:, None, :, None], rtol=RTOL, atol=ATOL)


def test_multi_head_cross_attention_fully_masked_rows_are_finite():
    rng = np.random.default_rng(2)
    xq = rng.normal(size=(2, 4, 6)).astype(np.float32)
    xkv = rng.normal(size=(2, 5, 10)).astype(np.float32)
    key_mask = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], np.float32)  # example 1 has no valid key
    mha = layers.MultiHeadAttention(num_heads=3, head_dim=4, out_features=7)
    params = jit_init(mha, xq, xkv, key_mask=key_mask, seed=1)
    out = np.asarray(jit_apply(mha, params, xq, xkv, key_mask=key_mask))
    assert out.shape == (2, 4, 7) and np.all(np.isfinite(out))
    np.testing.assert_allclose(out[1], np.broadcast_to(params["params"]["out"]["bias"], (4, 7)), atol=1e-6)
    ref, _ = _mha_reference(to_numpy(params["params"]), xq, np.where(key_mask[..., None] > 0, xkv, 0), key_mask,
                            np.ones((2, 4), np.float32), 3, 0)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)

    def f(p):
        return jnp.sum(mha.apply(p, xq, xkv, key_mask=key_mask) ** 2)

    grads = jax.jit(jax.grad(f), compiler_options=FAST_COMPILE)(params)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))


def test_multi_head_attention_dropout_only_in_training():
    x = np.random.default_rng(3).normal(size=(2, 6, 8)).astype(np.float32)
    mha = layers.MultiHeadAttention(num_heads=2, dropout_rate=0.5)
    params = jit_init(mha, x)
    a = jit_apply(mha, params, x, deterministic=True)
    b = jit_apply(mha, params, x, deterministic=True)
    c = jit_apply(mha, params, x, deterministic=False, rngs={"dropout": jax.random.key(5)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def _gru_step(p, h, x):
    r = sigmoid(x @ p["ir"]["kernel"] + p["ir"]["bias"] + h @ p["hr"]["kernel"])
    z = sigmoid(x @ p["iz"]["kernel"] + p["iz"]["bias"] + h @ p["hz"]["kernel"])
    n = np.tanh(x @ p["in"]["kernel"] + p["in"]["bias"] + r * (h @ p["hn"]["kernel"] + p["hn"]["bias"]))
    return (1 - z) * n + z * h


def test_bigru_matches_numpy_with_lengths():
    rng = np.random.default_rng(4)
    b, t, d, hidden = 3, 7, 5, 4
    lengths = [7, 4, 1]
    x = rng.normal(size=(b, t, d)).astype(np.float32)
    mask = prefix_mask(lengths, t)
    x[mask == 0] = 1e3  # garbage in padding
    gru = layers.BiGRU(hidden)
    params = jit_init(gru, x, mask)
    out = np.asarray(jit_apply(gru, params, x, mask))
    p = to_numpy(params["params"]["bidirectional"])
    ref = np.zeros((b, t, 2 * hidden))
    for bi, n in enumerate(lengths):
        h = np.zeros(hidden)
        for i in range(n):
            h = _gru_step(p["forward_rnn"]["cell"], h, x[bi, i])
            ref[bi, i, :hidden] = h
        h = np.zeros(hidden)
        for i in reversed(range(n)):
            h = _gru_step(p["backward_rnn"]["cell"], h, x[bi, i])
            ref[bi, i, hidden:] = h
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


def test_bigru_padding_invariance():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    mask = prefix_mask([6, 3], 6)
    gru = layers.BiGRU(4)
    params = jit_init(gru, x, mask)
    out = np.asarray(jit_apply(gru, params, x, mask))
    x_big = np.concatenate([x, rng.normal(size=(2, 4, 3)).astype(np.float32) * 50], axis=1)
    mask_big = prefix_mask([6, 3], 10)
    out_big = np.asarray(jit_apply(gru, params, x_big, mask_big))
    np.testing.assert_allclose(out_big[:, :6] * mask[..., None], out * mask[..., None], atol=1e-6)
    np.testing.assert_array_equal(out_big[mask_big == 0], 0.0)


def test_additive_attention_matches_numpy():
    rng = np.random.default_rng(6)
    b, tq, tk, dq, dk, f = 2, 5, 4, 6, 3, 8
    q = rng.normal(size=(b, tq, dq)).astype(np.float32)
    k = rng.normal(size=(b, tk, dk)).astype(np.float32)
    kmask = prefix_mask([4, 2], tk)
    qmask = prefix_mask([5, 3], tq)
    att = layers.AdditiveAttention(f)
    params = jit_init(att, q, k, kmask, query_mask=qmask)
    agg, w = jit_apply(att, params, q, k, kmask, query_mask=qmask)
    p = to_numpy(params["params"])
    ref_w = np.zeros((b, tq, tk))
    for bi in range(b):
        for i in range(tq):
            if not qmask[bi, i]:
                continue
            s = np.array([p["score"]["kernel"][:, 0] @ np.tanh(q[bi, i] @ p["query"]["kernel"]
                                                               + k[bi, j] @ p["key"]["kernel"] + p["key"]["bias"])
                          for j in range(tk)])
            e = np.exp(s - s.max()) * kmask[bi]
            ref_w[bi, i] = e / e.sum()
    np.testing.assert_allclose(np.asarray(w), ref_w, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(agg), np.einsum("bqk,bkd->bqd", ref_w, k), rtol=RTOL, atol=ATOL)
