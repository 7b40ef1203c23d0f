"""Tests of jvmr.models.layers against plain numpy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvmr.models import layers
from reference import FAST_COMPILE, bilstm_reference, mha_reference, prefix_mask, sigmoid, to_numpy

jax.config.update("jax_default_matmul_precision", "highest")

RTOL = 1e-4
ATOL = 1e-5


def jit_init(module, *args, seed=0, **kwargs):
    return jax.jit(lambda key: nn.meta.unbox(module.init(key, *args, **kwargs)),
                   compiler_options=FAST_COMPILE)(jax.random.key(seed))


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
    ref, ref_w = mha_reference(to_numpy(params["params"]), x_clean, x_clean, mask, mask, heads, window)
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
    ref, _ = mha_reference(to_numpy(params["params"]), xq, np.where(key_mask[..., None] > 0, xkv, 0), key_mask,
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


@pytest.mark.parametrize("kind, cell", [("gru", nn.GRUCell), ("lstm", nn.OptimizedLSTMCell)])
def test_recurrence_is_flax_rnn_with_hoisted_input_projections(kind, cell):
    """Same parameter tree, initial values and outputs as nn.RNN(cell), forwards and (with lengths) backwards."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 9, 5)).astype(np.float32)
    lengths = np.array([9, 5, 2])
    ours = layers.Recurrence(6, kind)
    params = jit_init(ours, x)
    theirs = nn.RNN(cell(6))
    reference = jit_init(theirs, x)
    assert jax.tree.structure(params) == jax.tree.structure(reference)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):  # same initial values too
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(jit_apply(ours, params, x), jit_apply(theirs, params, x), rtol=RTOL, atol=ATOL)
    backwards = layers.Recurrence(6, kind, reverse=True)
    out = np.asarray(jit_apply(backwards, params, x, jnp.asarray(lengths)))
    ref = np.asarray(jit_apply(nn.RNN(cell(6), reverse=True, keep_order=True), params, x,
                               seq_lengths=jnp.asarray(lengths)))
    valid = prefix_mask(lengths, 9) > 0
    np.testing.assert_allclose(out[valid], ref[valid], rtol=RTOL, atol=ATOL)


def test_random_bits_are_jax_threefry_bits_and_the_published_test_vectors():
    """Threefry-2x32-20 known answers (Random123's kat_vectors), and jax.random.bits bit for bit."""
    u32 = lambda v: jnp.asarray(v, jnp.uint32)  # noqa: E731
    for key, counter, expected in [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
                                   ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
                                   ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]:
        got = layers._threefry2x32(u32(key[0]), u32(key[1]), u32(counter[0]), u32(counter[1]))
        assert tuple(int(g) for g in got) == expected
    key = jax.random.fold_in(jax.random.key(42), 7)
    for shape in [(1,), (5, 7), (2, 3, 4, 5), (64, 33)]:
        ours = jax.jit(layers.random_bits, static_argnums=1)(key, shape)
        np.testing.assert_array_equal(ours, jax.random.bits(key, shape, jnp.uint32))
    raw = jax.random.PRNGKey(3)  # legacy uint32 keys too
    np.testing.assert_array_equal(layers.random_bits(raw, (4, 4)), jax.random.bits(raw, (4, 4), jnp.uint32))
    rbg = jax.random.key(0, impl="rbg")  # other implementations go to jax.random.bits
    np.testing.assert_array_equal(layers.random_bits(rbg, (4, 4)), jax.random.bits(rbg, (4, 4), jnp.uint32))


def test_dropout_keeps_one_minus_rate_and_the_expectation():
    x = np.random.default_rng(9).normal(size=(64, 48, 33)).astype(np.float32)
    rate = 0.3
    drop = layers.Dropout(rate)
    out = np.asarray(jax.jit(lambda k, x: drop.apply({}, x, deterministic=False, rngs={"dropout": k}))(
        jax.random.key(0), x))
    kept = out != 0
    # Kept fraction within 5 standard deviations of 1 - rate; kept values scaled by 2^32 / k.
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / x.size)
    k = round((1 - rate) * 2**32)
    np.testing.assert_allclose(out[kept], x[kept] * 2**32 / k, rtol=1e-6)
    # Neighbours are uncorrelated; another key, another mask; the same key, the same mask.
    a, b = kept[..., :-1].ravel().astype(float), kept[..., 1:].ravel().astype(float)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(a.size)
    other = np.asarray(drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)}))
    assert (other != 0).mean() > 0.6 and not np.array_equal(other != 0, kept)
    again = np.asarray(drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
    np.testing.assert_array_equal(again, out)
    # E[output] = x: averaged over many masks of a constant.
    ones = jnp.ones((4096, 16))
    means = [float(jnp.mean(drop.apply({}, ones, deterministic=False, rngs={"dropout": jax.random.key(i)})))
             for i in range(8)]
    assert abs(np.mean(means) - 1.0) < 5 * np.sqrt(rate / (1 - rate) / (8 * ones.size))


def test_dropout_edge_rates_and_deterministic():
    x = jnp.arange(6.0).reshape(2, 3)
    rngs = {"dropout": jax.random.key(0)}
    np.testing.assert_array_equal(layers.Dropout(0.5).apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(layers.Dropout(0.0).apply({}, x, deterministic=False, rngs=rngs), x)
    np.testing.assert_array_equal(layers.Dropout(1.0).apply({}, x, deterministic=False, rngs=rngs), 0.0)
    scalar = layers.Dropout(0.5).apply({}, jnp.float32(2.0), deterministic=False, rngs=rngs)
    assert scalar.shape == () and float(scalar) in (0.0, 4.0)
    low = layers.Dropout(0.5).apply({}, x.astype(jnp.bfloat16), deterministic=False, rngs=rngs)
    assert low.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="rate"):
        layers.Dropout(1.5).apply({}, x, deterministic=False, rngs=rngs)


def test_recurrence_time_major_and_reverse_valid_layouts():
    """time_major=True is the same recurrence on [T, B, D]; reverse_valid reverses each row's valid prefix
    along either time axis and leaves the padded steps in place."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 7, 4)).astype(np.float32)
    lengths = jnp.asarray([7, 4, 1])
    ref = np.stack([np.concatenate([x[b, :n][::-1], x[b, n:]]) for b, n in enumerate([7, 4, 1])])
    np.testing.assert_array_equal(layers.reverse_valid(x, lengths), ref)
    np.testing.assert_array_equal(layers.reverse_valid(np.swapaxes(x, 0, 1), lengths, time_axis=0),
                                  np.swapaxes(ref, 0, 1))
    with pytest.raises(ValueError, match="time_axis"):
        layers.reverse_valid(x, lengths, time_axis=2)
    for reverse in (False, True):
        batch_major = layers.Recurrence(5, "gru", reverse=reverse)
        params = jit_init(batch_major, x)
        time_major = layers.Recurrence(5, "gru", reverse=reverse, time_major=True)
        np.testing.assert_allclose(
            np.swapaxes(np.asarray(jit_apply(time_major, params, np.swapaxes(x, 0, 1), lengths)), 0, 1),
            jit_apply(batch_major, params, x, lengths), rtol=RTOL, atol=ATOL)


def test_recurrence_computes_in_its_kernels_dtype_and_carries_float32():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 5, 4)).astype(np.float32)
    lstm = layers.Recurrence(3, "lstm")
    params = jit_init(lstm, x)
    low = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    jaxpr = str(jax.make_jaxpr(lambda p: lstm.apply(p, x))(low))
    dots = [line for line in jaxpr.splitlines() if "dot_general" in line]
    assert dots and all("bf16[" in line for line in dots), dots
    out = jit_apply(lstm, low, x)
    assert out.dtype == jnp.float32  # the state (and so the outputs) stay float32
    np.testing.assert_allclose(out, jit_apply(lstm, params, x), atol=3e-2)


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


def test_l2_normalize_matches_numpy_and_has_finite_gradients_at_zero_rows():
    x = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    x[1, 2] = 0.0  # a padded row
    x[2, 0] = 1e-9  # a row shorter than eps
    got = np.asarray(layers.l2_normalize(jnp.asarray(x), eps=1e-6))
    want = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(got[0], axis=-1), 1.0, rtol=1e-5)
    grad = jax.grad(lambda v: jnp.sum(layers.l2_normalize(v) * jnp.arange(5.0)))(jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(grad)))
    # At zero the function is x / eps: its gradient there is 1 / eps along the cotangent.
    np.testing.assert_allclose(np.asarray(grad)[1, 2], np.arange(5.0) / 1e-6, rtol=1e-5)
    # jnp.linalg.norm's gradient is NaN at zero: the form the models used before.
    naive = jax.grad(lambda v: jnp.sum(v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-6)))
    assert np.isnan(np.asarray(naive(jnp.asarray(x)))[1, 2]).all()


def test_masked_log_softmax_matches_numpy_and_handles_empty_rows():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(3, 4, 7)).astype(np.float32) * 3
    mask = rng.random((3, 4, 7)) > 0.4
    mask[2, 1] = False  # a fully masked row
    logits[~mask] = 1e30  # garbage at masked positions
    out = np.asarray(layers.masked_log_softmax(jnp.asarray(logits), jnp.asarray(mask)))
    z = np.where(mask, logits, -np.inf).astype(np.float64)
    with np.errstate(invalid="ignore"):
        ref = z - np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1, keepdims=True)) - z.max(-1, keepdims=True)
    np.testing.assert_allclose(out[mask], ref[mask], rtol=RTOL, atol=ATOL)
    assert np.all(out[~mask] == -np.inf)
    np.testing.assert_allclose(np.exp(out).sum(-1)[mask.any(-1)], 1.0, rtol=1e-5)
    with np.errstate(divide="ignore"):  # log(0) = -inf at masked positions, as expected
        np.testing.assert_allclose(out[0], np.log(np.asarray(layers.masked_softmax(logits[0], mask[0]))),
                                   rtol=RTOL, atol=ATOL)
    # Picking valid entries (as an NLL does) has finite gradients, also through an empty row.
    idx = np.argmax(mask, axis=-1)[..., None]
    grad = jax.grad(lambda x: jnp.sum(jnp.where(
        jnp.asarray(mask.any(-1, keepdims=True)),
        jnp.take_along_axis(layers.masked_log_softmax(x, jnp.asarray(mask)), jnp.asarray(idx), -1), 0.0)))(
        jnp.asarray(logits))
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)
    np.testing.assert_allclose(np.asarray(layers.masked_log_softmax(jnp.asarray(logits[0]), None)),
                               np.asarray(jax.nn.log_softmax(logits[0])), rtol=1e-6)


def test_bilstm_matches_numpy_and_ignores_padding():
    rng = np.random.default_rng(8)
    b, t, d, hidden = 3, 7, 5, 4
    lengths = [7, 4, 1]
    x = rng.normal(size=(b, t, d)).astype(np.float32)
    mask = prefix_mask(lengths, t)
    x[mask == 0] = 1e3  # garbage in padding
    lstm = layers.BiLSTM(hidden)
    params = jit_init(lstm, x, mask)
    params = jax.tree.map(lambda a: a + 0.3 * rng.normal(size=a.shape).astype(np.float32), params)  # non-zero biases
    out = np.asarray(jit_apply(lstm, params, x, mask))
    ref = bilstm_reference(to_numpy(params["params"]["bidirectional"]), x, lengths)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    x_big = np.concatenate([x, rng.normal(size=(b, 3, d)).astype(np.float32) * 50], axis=1)
    out_big = np.asarray(jit_apply(lstm, params, x_big, prefix_mask(lengths, t + 3)))
    np.testing.assert_allclose(out_big[:, :t], out, atol=1e-6)
    np.testing.assert_array_equal(out_big[:, t:], 0.0)


def test_learned_positional_embedding_adds_position_rows():
    x = np.random.default_rng(9).normal(size=(2, 5, 3)).astype(np.float32)
    pos = layers.LearnedPositionalEmbedding(max_len=8)
    params = jit_init(pos, x)
    table = np.asarray(params["params"]["embedding"])
    assert table.shape == (8, 3) and 0.0 < table.std() < 0.1
    np.testing.assert_allclose(np.asarray(jit_apply(pos, params, x)), x + table[None, :5], rtol=1e-6)
    # Longer inputs share the leading rows: padding appended after the valid prefix changes nothing there.
    x_long = np.concatenate([x, np.full((2, 3, 3), 1e4, np.float32)], axis=1)
    np.testing.assert_allclose(np.asarray(jit_apply(pos, params, x_long))[:, :5], x + table[None, :5], rtol=1e-6)
    with pytest.raises(ValueError, match="exceeds the positional table's 8 rows"):
        pos.apply(params, np.zeros((1, 9, 3), np.float32))
    assert jax.eval_shape(lambda: layers.LearnedPositionalEmbedding().init(jax.random.key(0), x))[
        "params"]["embedding"].shape == (5, 3)


@pytest.mark.parametrize("hidden", [0, 6])
def test_feed_forward_matches_numpy(hidden):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(2, 4, 5)).astype(np.float32)
    ffn = layers.FeedForward(3, hidden, activation=jnp.tanh, dropout_rate=0.5)
    params = jit_init(ffn, x)
    p = to_numpy(params["params"])
    out = np.asarray(jit_apply(ffn, params, x))
    if hidden:
        ref = np.tanh(x @ p["inner"]["kernel"] + p["inner"]["bias"]) @ p["outer"]["kernel"] + p["outer"]["bias"]
    else:
        assert set(p) == {"outer"}
        ref = x @ p["outer"]["kernel"] + p["outer"]["bias"]
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    dropped = np.asarray(jit_apply(ffn, params, x, deterministic=False, rngs={"dropout": jax.random.key(1)}))
    assert np.allclose(dropped, out) == (hidden == 0)


def test_word_embedding_matches_lookup_masks_and_freezes():
    rng = np.random.default_rng(11)
    tokens = rng.integers(0, 12, size=(2, 5)).astype(np.int32)
    mask = prefix_mask([5, 2], 5)
    tokens[mask == 0] = 10_000  # garbage ids at padded words
    emb = layers.WordEmbedding(12, 4, dropout_rate=0.5)
    params = jit_init(emb, tokens, mask)
    table = np.asarray(params["params"]["embedding"])
    assert table.shape == (12, 4)
    out = np.asarray(jit_apply(emb, params, tokens, mask))
    np.testing.assert_allclose(out, table[np.where(mask > 0, tokens, 0)] * mask[..., None], rtol=1e-6)
    # Same table and lookup as nn.Embed.
    ref = nn.Embed(12, 4).apply({"params": {"embedding": table}}, np.where(mask > 0, tokens, 0))
    np.testing.assert_allclose(out, np.asarray(ref) * mask[..., None], rtol=1e-6)
    dropped = np.asarray(jit_apply(emb, params, tokens, mask, deterministic=False, rngs={"dropout": jax.random.key(2)}))
    assert not np.allclose(dropped, out)

    def grad_of(module):
        return jax.grad(lambda p: jnp.sum(module.apply(p, tokens, mask) ** 2))(params)["params"]["embedding"]

    assert np.abs(np.asarray(grad_of(layers.WordEmbedding(12, 4)))).sum() > 0
    np.testing.assert_array_equal(np.asarray(grad_of(layers.WordEmbedding(12, 4, freeze=True))), 0.0)
