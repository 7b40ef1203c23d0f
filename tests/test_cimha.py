"""Tests of the CI-MHA model (jvmr.models.cimha) against plain numpy references."""

import json

import jax
import numpy as np
import pytest

from configs import cimha as cimha_config
from configs import test as test_config
from jvmr import registry, train
from jvmr.models import cimha as cimha_lib
from jvmr.models import layers
from reference import (FAST_COMPILE, T, T_VALID, bilstm_reference, make_batch, mha_reference, pad_batch, prefix_mask,
                       random_params, random_params_module, run, sigmoid, to_numpy)

jax.config.update("jax_default_matmul_precision", "highest")

RTOL = 1e-4
ATOL = 1e-5
EXTRA_T = 5  # padded clips appended by pad_batch
SMALL = dict(vocab_size=40, word_dim=8, d_model=16, num_heads=2, ffn_dim=12, lstm_hidden=6, mlp_dim=7,
             num_candidates=30, max_positions=T + EXTRA_T)


# ----------------------------------------------------------------------------- numpy references


def dense(p, x):
    return x @ p["kernel"] + p["bias"]


def ffn_reference(p, x, activation=lambda z: np.maximum(z, 0)):
    if "inner" in p:
        x = activation(dense(p["inner"], x))
    return dense(p["outer"], x)


def key_aligned_reference(p, xq, xk, qmask, kmask, num_heads):
    """Eq. 7 by loops: clip j keeps its value, weighted by (n_k / n_q) sum_i A_h[i, j]."""
    xq = xq * qmask[..., None]
    xk = xk * kmask[..., None]
    q, k, v = dense(p["query"], xq), dense(p["key"], xk), dense(p["value"], xk)
    b, tq, tk = xq.shape[0], xq.shape[1], xk.shape[1]
    dh = q.shape[-1] // num_heads
    ctx = np.zeros((b, tk, num_heads * dh))
    weights = np.zeros((b, num_heads, tq, tk))
    for bi in range(b):
        keys = [j for j in range(tk) if kmask[bi, j] > 0]
        queries = [i for i in range(tq) if qmask[bi, i] > 0]
        for h in range(num_heads):
            cols = slice(h * dh, (h + 1) * dh)
            for i in queries:
                s = np.array([q[bi, i, cols] @ k[bi, j, cols] / np.sqrt(dh) for j in keys])
                e = np.exp(s - s.max())
                weights[bi, h, i, keys] = e / e.sum()
            for j in keys:
                r = len(keys) / max(len(queries), 1) * weights[bi, h, :, j].sum()
                ctx[bi, j, cols] = r * v[bi, j, cols]
    return dense(p["out"], ctx) * kmask[..., None], weights


def query_to_context_reference(p, xq, xk, qmask, kmask, num_heads):
    """Eq. 7, 'bidaf' reading: v^q = A(v -> q) MHA(q^, v^, v^), A a softmax over the valid words per clip."""
    xq = xq * qmask[..., None]
    xk = xk * kmask[..., None]
    rows = mha_reference(p["attention"], xq, xk, kmask, qmask, num_heads, 0)[0]  # [B, Tq, D]: one row per word
    clips, words = dense(p["key_proj"], xk), dense(p["query_proj"], xq)
    b, tq, tk = xq.shape[0], xq.shape[1], xk.shape[1]
    weights = np.zeros((b, tk, tq))
    for bi in range(b):
        valid_words = [i for i in range(tq) if qmask[bi, i] > 0]
        for j in range(tk):
            if kmask[bi, j] == 0 or not valid_words:
                continue
            s = np.array([clips[bi, j] @ words[bi, i] / np.sqrt(clips.shape[-1]) for i in valid_words])
            e = np.exp(s - s.max())
            weights[bi, j, valid_words] = e / e.sum()
    return np.einsum("bjl,bld->bjd", weights, rows), weights


def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def forward_reference(p, batch, num_heads, fusion_mode="cross", use_segmentation=True, eq7_reading="key_aligned"):
    """The whole CI-MHA forward pass (eq. 1-15) in numpy; returns every stage."""
    vm, qm = batch["video_mask"], batch["query_mask"]
    n_v, n_q = vm.sum(1).astype(int), qm.sum(1).astype(int)
    r = {}
    words = p["word_embed"]["embedding"][np.where(qm > 0, batch["query_tokens"], 0)] * qm[..., None]
    r["q0"] = bilstm_reference(p["query_rnn"]["bidirectional"], words, n_q)
    q = r["q0"] + mha_reference(p["query_self_attention"], r["q0"], r["q0"], qm, qm, num_heads, 0)[0]  # eq. 3
    r["q_hat"] = ffn_reference(p["query_ffn"], q) * qm[..., None]  # eq. 6
    feats = np.where(vm[..., None] > 0, batch["video_feats"], 0.0)
    v0 = dense(p["video_proj"], feats) * vm[..., None]
    v = v0 + mha_reference(p["video_self_attention"], v0, v0, vm, vm, num_heads, 0)[0]  # eq. 4
    t = vm.shape[1]
    r["v_hat"] = (ffn_reference(p["video_ffn"], v) + p["video_position"]["embedding"][:t]) * vm[..., None]  # eq. 5
    eq7 = key_aligned_reference if eq7_reading == "key_aligned" else query_to_context_reference
    r["v_q"], r["A7"] = eq7(p["query_to_video"], r["q_hat"], r["v_hat"], qm, vm, num_heads)
    if fusion_mode == "cross":
        r["q_v"] = mha_reference(p["video_to_query"], r["v_hat"], r["q_hat"], qm, vm, num_heads, 0)[0]  # eq. 8
        r["s"] = np.concatenate([r["v_q"], r["q_v"]], -1)  # eq. 9
    else:
        r["s"] = r["v_q"]
    r["h_start"] = bilstm_reference(p["start_rnn"]["bidirectional"], r["s"], n_v)  # eq. 10
    r["h_end"] = bilstm_reference(p["end_rnn"]["bidirectional"], r["h_start"], n_v)  # eq. 11
    r["start_logits"] = ffn_reference(p["start_head"], np.concatenate([r["h_start"], r["s"]], -1), np.tanh)[..., 0] * vm
    r["end_logits"] = ffn_reference(p["end_head"], np.concatenate([r["h_end"], r["s"]], -1), np.tanh)[..., 0] * vm
    if use_segmentation:
        r["segment_logits"] = ffn_reference(p["segment_head"], r["s"], np.tanh)[..., 0] * vm  # eq. 15
    return r


def boundaries_reference(gt, n):
    if n == 0:
        return 0, 0
    i = min(max(int(np.floor(gt[0] * n + 1e-4)), 0), n - 1)
    j = min(max(int(np.ceil(gt[1] * n - 1e-4)) - 1, i), n - 1)
    return i, j


def loss_reference(out, batch, start_weight=1.0, end_weight=1.0, segment_weight=1.0):
    vm = out["video_mask"]
    nll_s = nll_e = bce = 0.0
    examples = clips = 0
    for b in range(vm.shape[0]):
        n = int(vm[b].sum())
        if n == 0:
            continue
        i, j = boundaries_reference(batch["gt_span"][b], n)
        nll_s -= log_softmax(out["start_logits"][b, :n])[i]
        nll_e -= log_softmax(out["end_logits"][b, :n])[j]
        examples += 1
        if "segment_logits" in out:
            for t in range(n):
                y, prob = float(i <= t <= j), sigmoid(np.float64(out["segment_logits"][b, t]))
                bce -= y * np.log(prob) + (1 - y) * np.log(1 - prob)
                clips += 1
    parts = {"start_loss": nll_s / max(examples, 1), "end_loss": nll_e / max(examples, 1),
             "segment_loss": bce / max(clips, 1)}
    parts["loss"] = (start_weight * parts["start_loss"] + end_weight * parts["end_loss"]
                     + segment_weight * parts["segment_loss"])
    return parts


def decode_reference(start_logits, end_logits, vm, max_span_len, num_candidates):
    """Every allowed (i <= j) pair, sorted by log P_start(i) + log P_end(j) (ties: row-major order)."""
    b, t = start_logits.shape
    spans = np.zeros((b, num_candidates, 2))
    scores = np.full((b, num_candidates), -np.inf)
    for bi in range(b):
        n = int(vm[bi].sum())
        if n == 0:
            continue
        ls, le = log_softmax(start_logits[bi, :n]), log_softmax(end_logits[bi, :n])
        pairs = [(-(ls[i] + le[j]), i * t + j, i, j) for i in range(n) for j in range(i, n)
                 if max_span_len == 0 or j - i + 1 <= max_span_len]
        for k, (neg, _, i, j) in enumerate(sorted(pairs)[:num_candidates]):
            spans[bi, k] = [i / n, (j + 1) / n]
            scores[bi, k] = -neg
    return spans, scores


# ----------------------------------------------------------------------------- blocks vs numpy


def test_key_aligned_attention_matches_numpy():
    rng = np.random.default_rng(0)
    b, tq, tk, d, heads = 3, 5, 7, 8, 2
    xq = rng.normal(size=(b, tq, d)).astype(np.float32)
    xk = rng.normal(size=(b, tk, d)).astype(np.float32)
    qmask, kmask = prefix_mask([5, 2, 0], tq), prefix_mask([7, 4, 3], tk)
    xq[qmask == 0] = 1e6  # garbage in padding
    xk[kmask == 0] = -1e6
    att = cimha_lib.KeyAlignedAttention(heads)
    params = random_params_module(att, xq, xk, query_mask=qmask, key_mask=kmask, seed=1)
    out, w = jax.jit(lambda p: att.apply(p, xq, xk, query_mask=qmask, key_mask=kmask, return_weights=True),
                     compiler_options=FAST_COMPILE)(params)
    out, p = np.asarray(out), to_numpy(params["params"])
    ref, ref_w = key_aligned_reference(p, np.where(qmask[..., None] > 0, xq, 0), np.where(kmask[..., None] > 0, xk, 0),
                                       qmask, kmask, heads)
    np.testing.assert_allclose(np.asarray(w), ref_w, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=RTOL, atol=ATOL)
    # Same parameters in the standard MHA: its word-averaged output is our clip-averaged output.
    standard = np.asarray(layers.MultiHeadAttention(heads).apply(params, xq, xk, key_mask=kmask, query_mask=qmask))
    bias = p["out"]["bias"]
    for b_i in range(2):
        np.testing.assert_allclose(out[b_i][kmask[b_i] > 0].mean(0) - bias,
                                   standard[b_i][qmask[b_i] > 0].mean(0) - bias, rtol=RTOL, atol=ATOL)
    # Uniform attention (zero query projection) gives relevance 1: out_j = W^O W^V x_j + biases.
    flat = jax.tree.map(np.asarray, params)
    flat["params"]["query"] = {"kernel": np.zeros_like(p["query"]["kernel"]), "bias": np.zeros_like(p["query"]["bias"])}
    out = np.asarray(att.apply(flat, xq, xk, query_mask=qmask, key_mask=kmask))
    xk0 = np.where(kmask[..., None] > 0, xk, 0)
    uniform = dense(p["out"], dense(p["value"], xk0)) * kmask[..., None]
    np.testing.assert_allclose(out[:2], uniform[:2], rtol=RTOL, atol=ATOL)
    # No valid word: every clip gets zero weight, output = the out bias at valid clips.
    np.testing.assert_allclose(out[2], np.broadcast_to(p["out"]["bias"], (tk, d)) * kmask[2, :, None], atol=1e-6)


def test_query_to_context_attention_matches_numpy():
    """Eq. 7, 'bidaf' reading, against numpy; garbage in padded words / clips changes nothing."""
    rng = np.random.default_rng(1)
    b, tq, tk, d, heads = 3, 5, 7, 8, 2
    xq = rng.normal(size=(b, tq, d)).astype(np.float32)
    xk = rng.normal(size=(b, tk, d)).astype(np.float32)
    qmask, kmask = prefix_mask([5, 2, 0], tq), prefix_mask([7, 4, 3], tk)
    att = cimha_lib.QueryToContextAttention(heads)
    params = random_params_module(att, xq, xk, query_mask=qmask, key_mask=kmask, seed=3)
    p = to_numpy(params["params"])
    assert set(p) == {"attention", "key_proj", "query_proj"} and p["key_proj"]["kernel"].shape == (d, d)
    apply = jax.jit(lambda xq, xk: att.apply(params, xq, xk, query_mask=qmask, key_mask=kmask, return_weights=True),
                    compiler_options=FAST_COMPILE)
    out, w = (np.asarray(a) for a in apply(xq, xk))
    ref, ref_w = query_to_context_reference(p, xq, xk, qmask, kmask, heads)
    assert out.shape == (b, tk, d) and w.shape == (b, tk, tq)
    np.testing.assert_allclose(w, ref_w, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(out[2], 0.0)  # no valid word: nothing to mix
    # Garbage (huge values) in the padded words and clips: identical outputs and weights.
    gq = np.where(qmask[..., None] > 0, xq, rng.normal(size=xq.shape) * 1e6).astype(np.float32)
    gk = np.where(kmask[..., None] > 0, xk, -rng.normal(size=xk.shape) * 1e6).astype(np.float32)
    out_g, w_g = (np.asarray(a) for a in apply(gq, gk))
    np.testing.assert_array_equal(out_g, out)
    np.testing.assert_array_equal(w_g, w)


@pytest.mark.parametrize("fusion_mode,use_segmentation,eq7_reading",
                         [("cross", True, "key_aligned"), ("one_way", False, "key_aligned"), ("cross", True, "bidaf")])
def test_every_block_matches_numpy(fusion_mode, use_segmentation, eq7_reading):
    """Eq. 1-15 stage by stage: encoders, self-attention + skip, FeedForward + positions, cross MHA, concat,
    dependent Bi-LSTMs, MLP heads."""
    batch = make_batch(3, garbage=True)
    model = cimha_lib.CIMHA(**SMALL, fusion_mode=fusion_mode, use_segmentation=use_segmentation,
                            eq7_reading=eq7_reading)
    params = random_params(model, batch, seed=2)
    out, state = jax.jit(lambda p, b: model.apply(p, b, train=False, capture_intermediates=True,
                                                  mutable=["intermediates"]), compiler_options=FAST_COMPILE)(params, batch)
    inter = jax.tree.map(np.asarray, state["intermediates"])
    out = to_numpy(out)
    ref = forward_reference(to_numpy(params["params"]), batch, SMALL["num_heads"], fusion_mode, use_segmentation,
                            eq7_reading)
    vm, qm = batch["video_mask"][..., None], batch["query_mask"][..., None]

    def check(actual, expected, mask=None, what=""):
        if mask is not None:
            actual, expected = actual * mask, expected * mask
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)

    check(inter["query_rnn"]["__call__"][0], ref["q0"], what="q_0")
    check(inter["query_ffn"]["__call__"][0], ref["q_hat"], qm, "q^ (eq. 3, 6)")
    check(inter["video_position"]["__call__"][0], ref["v_hat"], vm, "v^ (eq. 4, 5)")
    check(inter["query_to_video"]["__call__"][0], ref["v_q"], what="v^q (eq. 7)")
    if fusion_mode == "cross":
        check(inter["video_to_query"]["__call__"][0], ref["q_v"], what="q^v (eq. 8)")
    else:
        assert "video_to_query" not in inter
    check(out["fused"], ref["s"], what="s (eq. 9)")
    assert out["fused"].shape[-1] == (32 if fusion_mode == "cross" else 16)
    check(inter["start_rnn"]["__call__"][0], ref["h_start"], what="h^start (eq. 10)")
    check(inter["end_rnn"]["__call__"][0], ref["h_end"], what="h^end (eq. 11)")
    for key in ("start_logits", "end_logits") + (("segment_logits",) if use_segmentation else ()):
        check(out[key], ref[key], what=key)
    assert ("segment_logits" in out) == use_segmentation
    # Softmax over valid clips (eq. 14) and the decoded candidates.
    spans, scores = decode_reference(ref["start_logits"], ref["end_logits"], batch["video_mask"], 0,
                                     SMALL["num_candidates"])
    np.testing.assert_allclose(out["candidate_scores"], scores, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["candidate_spans"], spans, rtol=1e-6, atol=1e-7)


def test_boundary_indices_and_segment_labels():
    vmask = prefix_mask([8, 8, 8, 7, 5, 0], 9)
    gt = np.array([[0.25, 0.5], [0.3, 0.31], [0.0, 1.0], [3 / 7, 5 / 7], [0.9, 0.9], [0.2, 0.4]], np.float32)
    start, end = (np.asarray(a) for a in cimha_lib.boundary_indices(gt, vmask))
    # Boundaries on clip edges (k / n, also after float32 round-off) map exactly: [2/8, 4/8] is clips 2..3.
    np.testing.assert_array_equal(start, [2, 2, 0, 3, 4, 0])
    np.testing.assert_array_equal(end, [3, 2, 7, 4, 4, 0])
    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 20, size=50)
    gt = np.sort(rng.random((50, 2)), axis=1).astype(np.float32)
    start, end = (np.asarray(a) for a in cimha_lib.boundary_indices(gt, prefix_mask(lengths, 20)))
    assert [boundaries_reference(g, n) for g, n in zip(gt, lengths)] == list(zip(start, end))
    labels = np.asarray(cimha_lib.segment_labels(start, end, 20))
    for b in range(50):
        np.testing.assert_array_equal(labels[b], [float(start[b] <= t <= end[b]) for t in range(20)])


@pytest.mark.parametrize("max_span_len,num_candidates", [(0, 40), (3, 10), (1, 200)])
def test_decode_spans_matches_numpy(max_span_len, num_candidates):
    rng = np.random.default_rng(5)
    t = 9
    vmask = prefix_mask([9, 4, 1, 0], t)
    start_logits = rng.normal(size=(4, t)).astype(np.float32) * 2
    end_logits = rng.normal(size=(4, t)).astype(np.float32) * 2
    start_logits[vmask == 0] = 50.0  # garbage at padded clips must never be picked
    spans, scores = (np.asarray(a) for a in cimha_lib.decode_spans(
        start_logits, end_logits, vmask, max_span_len=max_span_len, num_candidates=num_candidates))
    n_out = min(num_candidates, t * t)
    assert spans.shape == (4, n_out, 2) and scores.shape == (4, n_out)
    ref_spans, ref_scores = decode_reference(start_logits, end_logits, vmask, max_span_len, n_out)
    finite = np.isfinite(ref_scores)
    np.testing.assert_array_equal(np.isfinite(scores), finite)
    np.testing.assert_allclose(scores[finite], ref_scores[finite], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(spans[finite], ref_spans[finite], rtol=1e-6, atol=1e-7)
    assert np.all(spans[..., 0] <= spans[..., 1]) and spans.min() >= 0 and spans.max() <= 1
    assert np.all(np.diff(np.where(finite, scores, -1e9), axis=1) <= 1e-6)  # descending
    assert np.all(scores[3] == cimha_lib.MASKED_SCORE)  # no valid clip: no candidate
    # The best candidate is the joint argmax with start <= end.
    ls = np.asarray(jax.nn.log_softmax(start_logits[0]))
    le = np.asarray(jax.nn.log_softmax(end_logits[0]))
    joint = np.where(np.triu(np.ones((t, t), bool)) & ~np.triu(np.ones((t, t), bool), max_span_len or t),
                     ls[:, None] + le[None, :], -np.inf)
    i, j = np.unravel_index(np.argmax(joint), joint.shape)
    np.testing.assert_allclose(spans[0, 0], [i / 9, (j + 1) / 9], rtol=1e-6)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.5, 2.0, 0.3)])
def test_loss_fn_matches_numpy(weights):
    rng = np.random.default_rng(6)
    vmask = prefix_mask([12, 8, 0], T)
    out = {"video_mask": vmask}
    for key in ("start_logits", "end_logits", "segment_logits"):
        out[key] = (rng.normal(size=(3, T)) * 2).astype(np.float32) * vmask
    batch = {"gt_span": np.array([[0.25, 0.6], [0.1, 0.45], [0.0, 1.0]], np.float32)}
    kw = dict(zip(("start_weight", "end_weight", "segment_weight"), weights))
    loss, metrics = cimha_lib.loss_fn(out, batch, **kw)
    ref = loss_reference(out, batch, *weights)
    for key, value in ref.items():
        np.testing.assert_allclose(float(metrics[key]), value, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(float(loss), ref["loss"], rtol=1e-5)
    # Without a segmentation head (w/o MS) the BCE term is absent.
    no_ms = {k: v for k, v in out.items() if k != "segment_logits"}
    loss, metrics = cimha_lib.loss_fn(no_ms, batch, **kw)
    assert float(metrics["segment_loss"]) == 0.0
    np.testing.assert_allclose(float(loss), weights[0] * ref["start_loss"] + weights[1] * ref["end_loss"], rtol=1e-5)
    grads = jax.grad(lambda o: cimha_lib.loss_fn(o, batch)[0])({k: np.asarray(v) for k, v in out.items()})
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    np.testing.assert_array_equal(np.asarray(grads["start_logits"])[vmask == 0], 0.0)


# ----------------------------------------------------------------------------- full model


@pytest.mark.parametrize("variant", [{}, dict(fusion_mode="one_way", use_segmentation=False, max_span_len=4),
                                     dict(eq7_reading="bidaf")], ids=["ci_mha", "mha_wo_ms", "bidaf"])
def test_padding_never_changes_results(variant):
    model = cimha_lib.CIMHA(**SMALL, **variant)
    clean = make_batch(11)
    params = random_params(model, clean, seed=3)
    out = run(model, params, clean)
    assert all(np.all(np.isfinite(v)) for k, v in out.items() if k != "candidate_scores")
    padded = pad_batch(make_batch(11, garbage=True), extra_t=EXTRA_T)
    out_padded = run(model, params, padded)
    for b, n in enumerate(T_VALID):
        for key in ("start_logits", "end_logits", "segment_logits", "fused"):
            if key in out:
                np.testing.assert_allclose(out_padded[key][b, :n], out[key][b, :n], rtol=1e-5, atol=1e-5, err_msg=key)
                np.testing.assert_array_equal(out_padded[key][b, n:], 0.0)
        finite = np.isfinite(out["candidate_scores"][b])
        np.testing.assert_array_equal(np.isfinite(out_padded["candidate_scores"][b]), finite)
        np.testing.assert_allclose(out_padded["candidate_scores"][b][finite], out["candidate_scores"][b][finite],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out_padded["candidate_spans"][b][finite], out["candidate_spans"][b][finite],
                                   rtol=1e-6)
    np.testing.assert_allclose(float(cimha_lib.loss_fn(out_padded, padded)[0]),
                               float(cimha_lib.loss_fn(out, clean)[0]), rtol=1e-5)


def test_all_padding_example_is_finite():
    """A batch-filler example (every mask 0) has finite outputs and loss, no candidate, and leaves others alone."""
    model = cimha_lib.CIMHA(**SMALL)
    batch = make_batch(12)
    params = random_params(model, batch, seed=4)
    filler = dict(batch, video_mask=batch["video_mask"].copy(), query_mask=batch["query_mask"].copy())
    filler["video_mask"][1] = 0.0
    filler["query_mask"][1] = 0.0
    out = run(model, params, filler)
    ref = run(model, params, batch)
    for key in ("start_logits", "end_logits", "segment_logits", "fused", "candidate_spans"):
        assert np.all(np.isfinite(out[key])), key
    np.testing.assert_allclose(out["start_logits"][0], ref["start_logits"][0], atol=1e-6)
    _, scores = cimha_lib.predict_fn(out, filler)
    np.testing.assert_array_equal(np.asarray(scores)[1], cimha_lib.MASKED_SCORE)
    loss, metrics = cimha_lib.loss_fn(out, filler)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    single = {k: v[:1] for k, v in batch.items()}
    np.testing.assert_allclose(float(loss), float(cimha_lib.loss_fn(run(model, params, single), single)[0]),
                               rtol=1e-5)


def test_switches_and_validation():
    batch = make_batch(13)
    base = random_params(cimha_lib.CIMHA(**SMALL), batch)
    keys = set(base["params"])
    assert keys == {"word_embed", "query_rnn", "query_self_attention", "query_ffn", "video_proj",
                    "video_self_attention", "video_ffn", "video_position", "query_to_video", "video_to_query",
                    "start_rnn", "end_rnn", "start_head", "end_head", "segment_head"}
    assert base["params"]["video_position"]["embedding"].shape == (T + EXTRA_T, 16)
    assert base["params"]["start_rnn"]["bidirectional"]["forward_rnn"]["cell"]["ii"]["kernel"].shape == (32, 6)
    assert base["params"]["end_rnn"]["bidirectional"]["forward_rnn"]["cell"]["ii"]["kernel"].shape == (12, 6)
    assert base["params"]["start_head"]["inner"]["kernel"].shape == (12 + 32, 7)
    one_way = random_params(cimha_lib.CIMHA(**SMALL, fusion_mode="one_way"), batch)
    assert set(one_way["params"]) == keys - {"video_to_query"}
    assert one_way["params"]["start_rnn"]["bidirectional"]["forward_rnn"]["cell"]["ii"]["kernel"].shape == (16, 6)
    no_ms = random_params(cimha_lib.CIMHA(**SMALL, use_segmentation=False), batch)
    assert set(no_ms["params"]) == keys - {"segment_head"}
    # The model reads the query: other words move the start / end scores.
    model = cimha_lib.CIMHA(**SMALL)
    shuffled = dict(batch, query_tokens=np.roll(batch["query_tokens"], 1, axis=1))
    assert not np.allclose(run(model, base, batch)["start_logits"], run(model, base, shuffled)["start_logits"])
    bidaf = random_params(cimha_lib.CIMHA(**SMALL, eq7_reading="bidaf"), batch)["params"]["query_to_video"]
    assert set(bidaf) == {"attention", "key_proj", "query_proj"}
    for bad in (dict(fusion_mode="both"), dict(num_heads=3), dict(num_candidates=0), dict(eq7_reading="literal")):
        with pytest.raises(ValueError):
            jax.eval_shape(lambda: cimha_lib.CIMHA(**{**SMALL, **bad}).init(jax.random.key(0), batch, train=False))
    with pytest.raises(ValueError, match="exceeds the positional table"):
        jax.eval_shape(lambda: cimha_lib.CIMHA(**{**SMALL, "max_positions": 4}).init(jax.random.key(0), batch,
                                                                                      train=False))


# ----------------------------------------------------------------------------- configs and training


def test_configs_and_registry():
    config = cimha_config.get_config()
    assert config.model.name == "cimha" and config.dataset.name == "synthetic"
    model = registry.create_model(config.model, vocab_size=50)  # no num_dep_labels: CIMHA does not take it
    assert isinstance(model, cimha_lib.CIMHA) and (model.vocab_size, model.d_model) == (50, 64)
    paper = cimha_config.get_config("charades_sta")
    assert paper.dataset.name == "charades_sta"
    assert (paper.dataset.max_query_len, paper.dataset.max_video_len, paper.batch_size) == (25, 128, 100)
    assert (paper.optimizer.name, paper.optimizer.learning_rate, paper.optimizer.schedule) == ("adam", 1e-4, "constant")
    assert (paper.model.d_model, paper.model.word_dim) == (512, 300)
    with pytest.raises(ValueError, match="unknown dataset"):
        cimha_config.get_config("nope")
    config.model.bogus = 1
    with pytest.raises(TypeError):
        registry.create_model(config.model, vocab_size=50)


def tiny_config():
    """configs/test.py's tiny data and loop with a tiny CI-MHA."""
    config = test_config.get_config()
    model = cimha_config.get_config().model
    model.update(dict(word_dim=16, d_model=16, num_heads=2, ffn_dim=16, lstm_hidden=8, mlp_dim=16, dropout=0.0,
                      num_candidates=20))
    config.model = model
    config.loss = cimha_config.get_config().loss
    return config


def test_train_and_evaluate_learns(tmp_path):
    """The shared loop trains CI-MHA (compiling dominates: a few steps cost milliseconds)."""
    config = tiny_config()
    config.num_train_steps = 60
    config.log_every_steps = 20
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 1000
    config.optimizer.schedule = "constant"
    config.optimizer.learning_rate = 1e-2
    config.dataset.eval_splits = ("val",)
    state, final = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 60
    with open(tmp_path / "train_metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 3 and losses[-1] < 0.95 * losses[0], losses
    assert {"start_loss", "end_loss", "segment_loss"} <= set(rows[0])
    with open(tmp_path / "eval_metrics.jsonl") as f:
        evals = [json.loads(line) for line in f]
    assert [(r["step"], r["split"]) for r in evals] == [(60, "val")]
    row = evals[0]
    assert row["R@1,IoU=0.7"] <= row["R@1,IoU=0.5"] <= row["R@1,IoU=0.3"] <= row["R@5,IoU=0.3"]
    with open(tmp_path / "predictions" / "val_step60.jsonl") as f:
        predictions = [json.loads(line) for line in f]
    assert len(predictions) == 24 and all(1 <= len(p["pred_relevant_windows"]) <= 5 for p in predictions)
    assert set(final) == {"val"}
