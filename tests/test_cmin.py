"""Tests of the CMIN model (jvmr.models.cmin) and the syntactic GCN (jvmr.models.graph)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jvmr.data.text import DEPENDENCY_LABELS
from jvmr.models import cmin as cmin_lib
from jvmr.models import graph as graph_lib
from reference import (B, E, FAST_COMPILE, L, L_VALID, NUM_LABELS, T, T_VALID, VOCAB, make_batch, pad_batch,
                       prefix_mask, random_params, random_params_module, run, sigmoid, to_numpy)

jax.config.update("jax_default_matmul_precision", "highest")

RTOL = 1e-4
ATOL = 1e-5
WIDTHS = (2, 4, 6)
SMALL = dict(vocab_size=VOCAB, num_dep_labels=NUM_LABELS, word_dim=8, d_model=16, num_heads=2,
             num_attn_layers=2, num_gcn_layers=2, anchor_widths=WIDTHS)


def param_keys(params):
    return set(params["params"].keys())


# ----------------------------------------------------------------------------- syntactic GCN


def _gcn_layer_reference(p, h, node_mask, batch, gate_mode, use_gates):
    """Loop over edges: g_i = ReLU(sum_j gate_ij (W_dir h_j + b_{dir,lab})); gate_ij is a scalar from h_j
    ('input') or a vector from W_dir h_j ('transformed': [F] @ [F, F] gate kernel + [F] gate bias)."""
    g = np.zeros((h.shape[0], h.shape[1], p["kernel"].shape[-1]))
    for b in range(h.shape[0]):
        for e in range(batch["edge_mask"].shape[1]):
            if batch["edge_mask"][b, e] == 0:
                continue
            j, i = batch["edge_senders"][b, e], batch["edge_receivers"][b, e]
            d, lab = batch["edge_directions"][b, e], batch["edge_labels"][b, e]
            row = d * NUM_LABELS + lab
            transformed = h[b, j] @ p["kernel"][d]
            msg = transformed + p["label_bias"][row]
            if use_gates:
                src = h[b, j] if gate_mode == "input" else transformed
                msg = msg * sigmoid(src @ p["gate_kernel"][d] + p["gate_bias"][row])
            g[b, i] += msg
    return np.maximum(g, 0) * node_mask[..., None]


@pytest.mark.parametrize("gate_mode,use_gates", [("input", True), ("transformed", True), ("input", False)])
def test_syntactic_gcn_stack_matches_numpy(gate_mode, use_gates):
    batch = make_batch(1, garbage=True)
    rng = np.random.default_rng(2)
    h = rng.normal(size=(B, L, 8)).astype(np.float32)
    h[batch["query_mask"] == 0] = 1e4
    args = (batch["query_mask"], batch["edge_senders"], batch["edge_receivers"], batch["edge_labels"],
            batch["edge_directions"], batch["edge_mask"])
    stack = graph_lib.SyntacticGCNStack(num_layers=2, num_labels=NUM_LABELS, use_gates=use_gates, gate_input=gate_mode)
    params = random_params_module(stack, h, *args)
    out = np.asarray(jax.jit(stack.apply, compiler_options=FAST_COMPILE)(params, h, *args))
    o = np.where(batch["query_mask"][..., None] > 0, h, 0.0).astype(np.float64)
    for i in range(2):
        o = o + _gcn_layer_reference(to_numpy(params["params"][f"layer_{i}"]), o, batch["query_mask"], batch, gate_mode, use_gates)
    np.testing.assert_allclose(out, o, rtol=RTOL, atol=ATOL)
    if not use_gates:
        assert "gate_kernel" not in params["params"]["layer_0"]


def _released_gcn_layer(p, h, arcs, num_words, num_labels):
    """The released GraphConvolution (vector gates) with dense adjacency matrices, one example.

    A[head, dep] = label; direction 0 (the head gathers its dependents) uses A, direction 1 A^T,
    direction 2 the identity with label 1 (self loop). Per direction D and label r:
        x' = W_D h,   out += 1[A_D == r] @ ((x' + b_{D,r}) * sigmoid(W^g_D x' + b^g_{D,r})).
    """
    adj = np.zeros((num_words, num_words), int)
    for head, dep, label in arcs:
        adj[head, dep] = label
    out = np.zeros((num_words, p["kernel"].shape[-1]))
    for d, a in enumerate((adj, adj.T, np.eye(num_words, dtype=int))):
        x = h @ p["kernel"][d]
        g = x @ p["gate_kernel"][d]
        for r in range(1, num_labels):
            row = d * num_labels + r
            out += (a == r).astype(float) @ ((x + p["label_bias"][row]) * sigmoid(g + p["gate_bias"][row]))
    return np.maximum(out, 0.0)


def test_transformed_vector_gate_matches_released_numpy():
    """gate_input='transformed' is the released code's vector gate on W_dir h_j (hand-built graph)."""
    num_words, l, e, d_in, feats = 4, 6, 16, 5, 7
    arcs = [(1, 0, 2), (1, 2, 5), (1, 3, 9), (3, 2, 4)]  # (head, dependent, label): "took" heads three words
    edges = [(dep, head, lab, 0) for head, dep, lab in arcs] + [(head, dep, lab, 1) for head, dep, lab in arcs]
    edges += [(i, i, 1, 2) for i in range(num_words)]
    rng = np.random.default_rng(21)
    pad = [(int(rng.integers(-2, 9)), int(rng.integers(-2, 9)), int(rng.integers(0, 99)), int(rng.integers(0, 5)))
           for _ in range(e - len(edges))]
    senders, receivers, labels, directions = (np.array([[x[k] for x in edges + pad]], np.int32) for k in range(4))
    edge_mask = (np.arange(e) < len(edges)).astype(np.float32)[None]
    node_mask = prefix_mask([num_words], l)
    h = rng.normal(size=(1, l, d_in)).astype(np.float32)
    h[0, num_words:] = 1e4  # padded words
    graph = graph_lib.batch_dependency_graphs(h, node_mask, senders, receivers, labels, directions, edge_mask,
                                              NUM_LABELS)
    layer = graph_lib.SyntacticGCN(features=feats, num_labels=NUM_LABELS, gate_input="transformed")
    params = random_params_module(layer, graph, seed=6, scale=0.5)
    p = to_numpy(params["params"])
    assert p["gate_kernel"].shape == (3, feats, feats) and p["gate_bias"].shape == (3 * NUM_LABELS, feats)
    out = np.asarray(layer.apply(params, graph))
    ref = _released_gcn_layer(p, h[0, :num_words].astype(np.float64), arcs, num_words, NUM_LABELS)
    np.testing.assert_allclose(out[:num_words], ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(out[num_words:], 0.0)
    # The paper / M&T gate stays a scalar per edge.
    scalar = random_params_module(graph_lib.SyntacticGCN(features=feats, num_labels=NUM_LABELS), graph)["params"]
    assert scalar["gate_kernel"].shape == (3, d_in) and scalar["gate_bias"].shape == (3 * NUM_LABELS,)


def test_batch_dependency_graphs_offsets_and_sanitises():
    batch = make_batch(3, garbage=True)
    nodes = np.ones((B, L, 4), np.float32)
    g = graph_lib.batch_dependency_graphs(
        nodes, batch["query_mask"], batch["edge_senders"], batch["edge_receivers"], batch["edge_labels"],
        batch["edge_directions"], batch["edge_mask"], NUM_LABELS)
    assert g.nodes["h"].shape == (B * L, 4)
    np.testing.assert_array_equal(g.n_node, [L, L])
    np.testing.assert_array_equal(g.n_edge, [E, E])
    valid = batch["edge_mask"].reshape(-1) > 0
    offsets = np.repeat(np.arange(B) * L, E)
    np.testing.assert_array_equal(np.asarray(g.senders)[valid], (batch["edge_senders"].reshape(-1) + offsets)[valid])
    np.testing.assert_array_equal(np.asarray(g.receivers)[valid], (batch["edge_receivers"].reshape(-1) + offsets)[valid])
    for arr in (g.senders, g.receivers):
        arr = np.asarray(arr)
        assert np.all((arr >= offsets) & (arr < offsets + L))
    assert np.all((np.asarray(g.edges["label"]) >= 0) & (np.asarray(g.edges["label"]) < NUM_LABELS))
    assert np.all((np.asarray(g.edges["direction"]) >= 0) & (np.asarray(g.edges["direction"]) < 3))


# ----------------------------------------------------------------------------- interaction layers


def test_cross_gate_matches_numpy():
    rng = np.random.default_rng(3)
    hv = rng.normal(size=(B, T, 6)).astype(np.float32)
    hs = rng.normal(size=(B, T, 4)).astype(np.float32)
    gate = cmin_lib.CrossGate()
    params = random_params_module(gate, hv, hs)
    gs, gv = gate.apply(params, hv, hs)
    p = to_numpy(params["params"])
    ref_s = hs * sigmoid(hv @ p["video_to_query"]["kernel"] + p["video_to_query"]["bias"])
    ref_v = hv * sigmoid(hs @ p["query_to_video"]["kernel"] + p["query_to_video"]["bias"])
    np.testing.assert_allclose(np.asarray(gs), ref_s, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(gv), ref_v, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mode", ["bilinear", "lowrank", "concat"])
def test_fusion_dispatch(mode):
    rng = np.random.default_rng(5)
    hs = rng.normal(size=(B, T, 4)).astype(np.float32)
    hv = rng.normal(size=(B, T, 6)).astype(np.float32)
    fusion = cmin_lib.Fusion(mode, features=5, rank=3)
    params = random_params_module(fusion, hs, hv)
    out = np.asarray(fusion.apply(params, hs, hv))
    if mode == "concat":
        assert not params.get("params")
        np.testing.assert_array_equal(out, np.concatenate([hv, hs], -1))
    elif mode == "bilinear":
        w, bias = (np.asarray(params["params"]["bilinear"][k]) for k in ("kernel", "bias"))
        np.testing.assert_allclose(out, np.maximum(np.einsum("bti,kij,btj->btk", hs, w, hv) + bias, 0),
                                   rtol=RTOL, atol=ATOL)
    else:
        p = to_numpy(params["params"]["lowrank"])
        dense = lambda z, n: z @ p[n]["kernel"] + p[n]["bias"]  # noqa: E731
        np.testing.assert_allclose(out, dense(np.maximum(dense(hs, "U") * dense(hv, "V"), 0), "P"),
                                   rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError):
        cmin_lib.Fusion("nope", 5, 3).init(jax.random.key(0), hs, hv)


def test_bilinear_fusion_chunks_match_numpy_values_and_gradients():
    """Chunked + rematerialised rows (chunk size not dividing B*T) give the paper's f and its gradients."""
    rng = np.random.default_rng(6)
    hs = rng.normal(size=(B, T, 4)).astype(np.float32)
    hv = rng.normal(size=(B, T, 6)).astype(np.float32)
    whole = cmin_lib.BilinearFusion(5)
    chunked = cmin_lib.BilinearFusion(5, chunk_rows=5)
    assert (B * T) % 5
    params = random_params_module(whole, hs, hv)
    w, bias = (np.asarray(params["params"][k], np.float64) for k in ("kernel", "bias"))
    pre = np.einsum("bti,kij,btj->btk", hs, w, hv) + bias
    np.testing.assert_allclose(chunked.apply(params, hs, hv), np.maximum(pre, 0), rtol=RTOL, atol=ATOL)

    def loss(module):
        return lambda p, x, y: jnp.sum(jnp.sin(module.apply(p, x, y)))

    # d/dW_kij sum sin(relu(pre)) = sum_bt cos(f) 1[pre > 0] x_i y_j, and the same for x and y.
    g = np.cos(np.maximum(pre, 0)) * (pre > 0)
    ref = (np.einsum("btk,bti,btj->kij", g, hs, hv), np.einsum("btk,kij,btj->bti", g, w, hv),
           np.einsum("btk,kij,bti->btj", g, w, hs))
    for module in (whole, chunked):
        grads = jax.grad(loss(module), argnums=(0, 1, 2))(params, hs, hv)
        np.testing.assert_allclose(grads[0]["params"]["kernel"], ref[0], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(grads[0]["params"]["bias"], g.sum((0, 1)), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(grads[1], ref[1], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(grads[2], ref[2], rtol=RTOL, atol=ATOL)


def test_bilinear_fusion_exported_with_a_symbolic_batch_chunks_each_example():
    """Under jax.export with a symbolic batch the rows of each example are chunked (B*T is unknown);
    the values are the paper's f at any batch size."""
    rng = np.random.default_rng(7)
    chunked = cmin_lib.BilinearFusion(5, chunk_rows=5)  # 5 does not divide T
    assert T % 5
    params = random_params_module(chunked, rng.normal(size=(B, T, 4)).astype(np.float32),
                                  rng.normal(size=(B, T, 6)).astype(np.float32))
    (b,) = jax.export.symbolic_shape("b")
    exported = jax.export.export(jax.jit(chunked.apply))(
        params, jax.ShapeDtypeStruct((b, T, 4), jnp.float32), jax.ShapeDtypeStruct((b, T, 6), jnp.float32))
    assert "stablehlo.while" in exported.mlir_module()  # the chunk scan is there
    w, bias = (np.asarray(params["params"][k], np.float64) for k in ("kernel", "bias"))
    for n in (1, 3):
        hs = rng.normal(size=(n, T, 4)).astype(np.float32)
        hv = rng.normal(size=(n, T, 6)).astype(np.float32)
        pre = np.einsum("bti,kij,btj->btk", hs, w, hv) + bias
        np.testing.assert_allclose(exported.call(params, hs, hv), np.maximum(pre, 0), rtol=RTOL, atol=ATOL)


def test_cmin_attentive_aggregation_matches_numpy():
    """Whole-model check of M_ij = softmax_j(w^T tanh(W1 h^v_i + W2 o_j + b)) over valid words."""
    batch = make_batch(8)
    model = cmin_lib.CMIN(**SMALL)
    params = random_params(model, batch)
    out, state = jax.jit(lambda p, b: model.apply(p, b, train=False, capture_intermediates=True,
                                                  mutable=["intermediates"]), compiler_options=FAST_COMPILE)(params, batch)
    inter = to_numpy(state["intermediates"])
    hv = inter["video_rnn"]["__call__"][0]
    o = inter["syntactic_gcn"]["__call__"][0]
    hs, m = inter["aggregation"]["__call__"][0]
    p = to_numpy(params["params"]["aggregation"])
    qmask, vmask = batch["query_mask"], batch["video_mask"]
    scores = np.einsum("btlf,f->btl", np.tanh((hv @ p["query"]["kernel"])[:, :, None]
                                             + (o @ p["key"]["kernel"] + p["key"]["bias"])[:, None]),
                       p["score"]["kernel"][:, 0])
    e = np.exp(scores - scores.max(-1, keepdims=True)) * qmask[:, None]
    ref_m = e / e.sum(-1, keepdims=True) * vmask[..., None]
    np.testing.assert_allclose(m, ref_m, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(hs, np.einsum("btl,bld->btd", ref_m, o), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(out["attention"]), ref_m, rtol=RTOL, atol=ATOL)

    # Cross gate (default on) feeds the bilinear fusion: check h~s, h~v against numpy too.
    gs, gv = inter["cross_gate"]["__call__"][0]
    g = to_numpy(params["params"]["cross_gate"])
    np.testing.assert_allclose(gs, hs * sigmoid(hv @ g["video_to_query"]["kernel"] + g["video_to_query"]["bias"]),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gv, hv * sigmoid(hs @ g["query_to_video"]["kernel"] + g["query_to_video"]["bias"]),
                               rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- anchors, labels, loss, predict


def test_make_anchors():
    vmask = prefix_mask([8, 5], 8)
    spans, mask = cmin_lib.make_anchors(vmask, (2, 3))
    spans, mask = np.asarray(spans), np.asarray(mask)
    for b, n in enumerate([8, 5]):
        for t in range(8):
            for k, w in enumerate((2, 3)):
                s, e = (t + 0.5 - w / 2) / n, (t + 0.5 + w / 2) / n
                np.testing.assert_allclose(spans[b, t, k], [s, e], rtol=1e-6, atol=1e-7)
                assert mask[b, t, k] == float(t < n and s >= -1e-9 and e <= 1 + 1e-9)
    assert mask[1, 4, 0] == 0 and mask[1, 3, 0] == 1 and mask[1, 1, 1] == 1 and mask[1, 0, 1] == 0


def _iou_np(a, g):
    inter = max(0.0, min(a[1], g[1]) - max(a[0], g[0]))
    union = (a[1] - a[0]) + (g[1] - g[0]) - inter
    return inter / union if union > 0 else 0.0


def _labels_np(spans, mask, gt, mode):
    iou = np.zeros(mask.shape)
    for b, t, k in np.ndindex(*mask.shape):
        if mask[b, t, k]:
            iou[b, t, k] = _iou_np(spans[b, t, k], gt[b])
    if mode == "scaled":
        for b in range(mask.shape[0]):
            mx = iou[b].max()
            if mx > 0:
                iou[b] = np.where(iou[b] < 0.3 * mx, 0, iou[b]) / mx
    return iou


@pytest.mark.parametrize("mode", ["iou", "scaled"])
def test_anchor_labels_match_numpy(mode):
    vmask = prefix_mask(T_VALID, T)
    spans, mask = (np.asarray(a) for a in cmin_lib.make_anchors(vmask, WIDTHS))
    gt = np.array([[0.25, 0.6], [0.1, 0.45]], np.float32)
    out = np.asarray(cmin_lib.anchor_labels(spans, mask, gt, mode))
    ref = _labels_np(spans, mask, gt, mode)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    if mode == "scaled":
        np.testing.assert_allclose(out.reshape(B, -1).max(-1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError):
        cmin_lib.anchor_labels(spans, mask, gt, "bogus")


def _fake_outputs(seed=9):
    rng = np.random.default_rng(seed)
    vmask = prefix_mask(T_VALID, T)
    spans, mask = (np.asarray(a) for a in cmin_lib.make_anchors(vmask, WIDTHS))
    k = len(WIDTHS)
    return {
        "anchor_logits": (rng.normal(size=(B, T, k)) * 2).astype(np.float32) * mask,
        "anchor_offsets": (rng.normal(size=(B, T, k, 2)) * 0.2).astype(np.float32) * mask[..., None],
        "anchor_spans": spans.astype(np.float32),
        "anchor_mask": mask,
        "attention": np.zeros((B, T, L), np.float32),
    }


@pytest.mark.parametrize("mode,reg_weight,thr", [("iou", 1.0, 0.5), ("scaled", 0.3, 0.3), ("iou", 1.0, 0.99)])
def test_loss_fn_matches_numpy(mode, reg_weight, thr):
    out = _fake_outputs()
    batch = {"gt_span": np.array([[0.25, 0.6], [0.1, 0.45]], np.float32)}
    loss, metrics = cmin_lib.loss_fn(out, batch, label_mode=mode, reg_weight=reg_weight, reg_iou_threshold=thr)
    mask = out["anchor_mask"]
    labels = _labels_np(out["anchor_spans"], mask, batch["gt_span"], mode)
    iou = _labels_np(out["anchor_spans"], mask, batch["gt_span"], "iou")
    cs = sigmoid(out["anchor_logits"].astype(np.float64))
    bce = -((1 - labels) * np.log(1 - cs) + labels * np.log(cs))
    align = (bce * mask).sum() / mask.sum()
    reg_sum, n_pos = 0.0, 0
    for b in range(B):
        best = np.unravel_index(np.argmax(np.where(mask[b] > 0, iou[b], -1)), mask[b].shape)
        for t, k in np.ndindex(T, len(WIDTHS)):
            if mask[b, t, k] and (iou[b, t, k] >= thr or (t, k) == best):
                target = batch["gt_span"][b] - out["anchor_spans"][b, t, k]
                reg_sum += np.abs(out["anchor_offsets"][b, t, k] - target).sum()
                n_pos += 1
    reg = reg_sum / n_pos
    np.testing.assert_allclose(metrics["align_loss"], align, rtol=1e-5)
    np.testing.assert_allclose(metrics["reg_loss"], reg, rtol=1e-5)
    np.testing.assert_allclose(loss, align + reg_weight * reg, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], loss)


def _multi_span_batch():
    """Example 0 has two GT spans, example 1 one span and a padded (garbage) second / third."""
    duration = np.array([40.0, 25.0], np.float32)
    spans = np.array([[[10.0, 24.0], [2.0, 9.0], [0.0, 0.0]],
                      [[2.5, 11.25], [0.0, 25.0], [np.nan, np.inf]]], np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    return {"gt_spans": spans, "gt_spans_mask": mask, "duration": duration,
            "gt_span": spans[:, 0] / duration[:, None], "video_mask": prefix_mask(T_VALID, T)}


def _best_span_np(anchor, gts):
    """(max IoU, index of the first span attaining it) of one anchor over a list of [s, e] spans."""
    ious = [_iou_np(anchor, g) for g in gts]
    return max(ious), int(np.argmax(ious))


def _smooth_l1_np(x):
    x = np.abs(x)
    return np.where(x < 1.0, 0.5 * x * x, x - 0.5)


@pytest.mark.parametrize("mode", ["iou", "scaled"])
def test_multi_span_labels_and_targets_match_numpy(mode):
    """Labels: best IoU over the valid GT spans; regression target: the span attaining it."""
    out = _fake_outputs(12)
    batch = _multi_span_batch()
    mask, spans = out["anchor_mask"], out["anchor_spans"]
    gts = [batch["gt_spans"][b][batch["gt_spans_mask"][b] > 0] / batch["duration"][b] for b in range(B)]
    iou, which = np.zeros(mask.shape), np.zeros(mask.shape, int)
    for b, t, k in np.ndindex(*mask.shape):
        if mask[b, t, k]:
            iou[b, t, k], which[b, t, k] = _best_span_np(spans[b, t, k], gts[b])
    assert len(set(which[0][mask[0] > 0].tolist())) == 2  # both spans are some anchor's target
    labels = iou.copy()
    if mode == "scaled":
        for b in range(B):
            labels[b] = np.where(iou[b] < 0.3 * iou[b].max(), 0, iou[b]) / iou[b].max()
    gt, gt_mask = cmin_lib.gt_fractions(batch)
    np.testing.assert_allclose(cmin_lib.anchor_labels(spans, mask, gt, mode, gt_mask), labels, rtol=1e-5, atol=1e-6)
    got_iou, got_which = cmin_lib.anchor_ious(spans, mask, gt, gt_mask)
    np.testing.assert_allclose(got_iou, iou, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got_which)[mask > 0], which[mask > 0])

    thr = 0.5
    _, metrics = cmin_lib.loss_fn(out, batch, label_mode=mode, reg_iou_threshold=thr)
    cs = sigmoid(out["anchor_logits"].astype(np.float64))
    align = (-((1 - labels) * np.log(1 - cs) + labels * np.log(cs)) * mask).sum() / mask.sum()
    reg_sum, n_pos = 0.0, 0
    for b in range(B):
        best = np.unravel_index(np.argmax(np.where(mask[b] > 0, iou[b], -1)), mask[b].shape)
        for t, k in np.ndindex(T, len(WIDTHS)):
            if mask[b, t, k] and (iou[b, t, k] >= thr or (t, k) == best):
                target = gts[b][which[b, t, k]] - spans[b, t, k]
                reg_sum += np.abs(out["anchor_offsets"][b, t, k] - target).sum()
                n_pos += 1
    np.testing.assert_allclose(metrics["align_loss"], align, rtol=1e-5)
    np.testing.assert_allclose(metrics["reg_loss"], reg_sum / n_pos, rtol=1e-5)
    # One valid span per example: the same numbers as gt_span alone (the single-span loss).
    single = dict(batch, gt_spans_mask=np.array([[1, 0, 0], [1, 0, 0]], np.float32))
    one = cmin_lib.loss_fn(out, single, label_mode=mode)[1]
    ref = cmin_lib.loss_fn(out, {"gt_span": batch["gt_span"]}, label_mode=mode)[1]
    for key in ("align_loss", "reg_loss"):
        np.testing.assert_allclose(one[key], ref[key], rtol=1e-6, err_msg=key)


@pytest.mark.parametrize("label_mode,reg_weight", [("iou", 1.0), ("scaled", 3.0)])
def test_released_reg_loss_matches_numpy(label_mode, reg_weight):
    """reg_mode='released': 1e-3 * SmoothL1(n (anchor + offset), n gt) at the best anchor of each example."""
    out = _fake_outputs(13)
    out["anchor_offsets"] = out["anchor_offsets"] * 10  # some |errors| above 1 clip: both SmoothL1 branches
    batch = _multi_span_batch()
    mask, spans = out["anchor_mask"], out["anchor_spans"]
    loss, metrics = cmin_lib.loss_fn(out, batch, label_mode=label_mode, reg_mode="released", reg_weight=reg_weight)
    terms = []
    for b in range(B):
        n = T_VALID[b]
        gts = batch["gt_spans"][b][batch["gt_spans_mask"][b] > 0] / batch["duration"][b]
        iou = np.array([[_best_span_np(spans[b, t, k], gts)[0] if mask[b, t, k] else -1.0
                         for k in range(len(WIDTHS))] for t in range(T)])
        t, k = np.unravel_index(np.argmax(iou), iou.shape)
        target = gts[_best_span_np(spans[b, t, k], gts)[1]]
        terms.extend(_smooth_l1_np(n * (spans[b, t, k] + out["anchor_offsets"][b, t, k]) - n * target))
    terms = np.array(terms)
    assert (terms > 0.5).any() and (terms < 0.5).any()  # errors above and below 1 clip
    reg = 1e-3 * np.mean(terms)
    np.testing.assert_allclose(metrics["reg_loss"], reg, rtol=1e-5)
    align = cmin_lib.loss_fn(out, batch, label_mode=label_mode)[1]["align_loss"]
    np.testing.assert_allclose(metrics["align_loss"], align, rtol=1e-6)
    np.testing.assert_allclose(loss, align + reg_weight * reg, rtol=1e-5)
    with pytest.raises(ValueError, match="reg_mode"):
        cmin_lib.loss_fn(out, batch, reg_mode="smooth")


def test_predict_fn_matches_numpy():
    out = _fake_outputs(10)
    out["anchor_offsets"][0, 5, 1] = [0.5, -0.5]  # crosses: start > end before sorting
    out["anchor_offsets"][1, 2, 0] = [-2.0, 3.0]  # out of [0, 1]
    spans, scores = (np.asarray(a) for a in cmin_lib.predict_fn(out, {}))
    k = len(WIDTHS)
    assert spans.shape == (B, T * k, 2) and scores.shape == (B, T * k)
    raw = np.clip(out["anchor_spans"] + out["anchor_offsets"], 0, 1)
    ref_spans = np.sort(raw, axis=-1).reshape(B, -1, 2)
    ref_scores = np.where(out["anchor_mask"] > 0, sigmoid(out["anchor_logits"]), cmin_lib.MASKED_SCORE).reshape(B, -1)
    np.testing.assert_allclose(spans, ref_spans, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    assert np.all(spans[..., 0] <= spans[..., 1]) and spans.min() >= 0 and spans.max() <= 1
    masked = out["anchor_mask"].reshape(B, -1) == 0
    assert np.all(scores[masked] < scores[~masked].min())


# ----------------------------------------------------------------------------- full model


def _assert_valid_outputs_equal(a, b, atol=1e-5):
    for i, (n, lq) in enumerate(zip(T_VALID, L_VALID)):
        for key in ("anchor_logits", "anchor_offsets", "anchor_spans", "anchor_mask"):
            np.testing.assert_allclose(a[key][i, :n], b[key][i, :n], rtol=1e-5, atol=atol, err_msg=key)
        np.testing.assert_allclose(a["attention"][i, :n, :lq], b["attention"][i, :n, :lq], rtol=1e-5, atol=atol)
        np.testing.assert_array_equal(b["attention"][i, :, lq:], 0.0)
        np.testing.assert_array_equal(b["anchor_mask"][i, n:], 0.0)


RELEASED = dict(fusion="concat", attention_window=3, gcn_placement="before_rnn", gcn_gate_input="transformed")


@pytest.mark.parametrize("variant", [{}, RELEASED, dict(fusion="lowrank", attention_window=1)],
                         ids=["paper", "released", "lowrank_local"])
def test_cmin_padding_invariance(variant):
    model = cmin_lib.CMIN(**SMALL, **variant)
    clean = make_batch(11)
    params = random_params(model, clean, seed=3)
    out = run(model, params, clean)
    assert out["anchor_logits"].shape == (B, T, 3) and out["anchor_offsets"].shape == (B, T, 3, 2)
    assert out["attention"].shape == (B, T, L)
    assert all(np.all(np.isfinite(v)) for v in out.values())
    padded = pad_batch(make_batch(11, garbage=True))
    out_padded = run(model, params, padded)
    _assert_valid_outputs_equal(out, out_padded)
    l_clean = cmin_lib.loss_fn(out, clean)[0]
    l_padded = cmin_lib.loss_fn(out_padded, padded)[0]
    np.testing.assert_allclose(l_clean, l_padded, rtol=1e-5)


def test_cmin_all_padding_example_is_finite():
    """A batch-filler example (every mask 0) yields finite outputs, no valid anchor and a finite loss."""
    model = cmin_lib.CMIN(**SMALL)
    batch = make_batch(11)
    params = random_params(model, batch, seed=3)
    filler = dict(batch)
    for key in ("video_mask", "query_mask", "edge_mask"):
        filler[key] = batch[key].copy()
        filler[key][1] = 0.0
    out = run(model, params, filler)
    assert all(np.all(np.isfinite(v)) for v in out.values())
    np.testing.assert_array_equal(out["anchor_mask"][1], 0.0)
    np.testing.assert_array_equal(out["attention"][1], 0.0)
    ref = run(model, params, batch)
    np.testing.assert_allclose(out["anchor_logits"][0], ref["anchor_logits"][0], atol=1e-6)
    loss, metrics = cmin_lib.loss_fn(out, filler)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    _, scores = cmin_lib.predict_fn(out, filler)
    np.testing.assert_array_equal(np.asarray(scores)[1], cmin_lib.MASKED_SCORE)


def test_cmin_default_config_and_validation():
    model = cmin_lib.CMIN(vocab_size=10)
    assert (model.word_dim, model.d_model, model.fusion, model.gcn_placement, model.attention_window) == (
        300, 256, "bilinear", "after_rnn", 0)
    assert model.num_dep_labels == len(DEPENDENCY_LABELS)
    hash(model)  # all fields hashable
    batch = make_batch(0)
    with pytest.raises(ValueError):
        jax.eval_shape(lambda: cmin_lib.CMIN(**{**SMALL, "fusion": "nope"}).init(jax.random.key(0), batch, train=False))


def _changed(a, b, key="anchor_logits"):
    return not np.allclose(a[key], b[key], atol=1e-6)


def test_ablation_switches_change_what_they_should():
    batch = make_batch(12)
    base = cmin_lib.CMIN(**SMALL)
    base_params = random_params(base, batch, seed=4)
    base_keys = param_keys(base_params)
    assert {"syntactic_gcn", "self_attention_0", "self_attention_1", "cross_gate", "fusion", "fusion_rnn",
            "word_embed", "query_rnn", "video_rnn", "aggregation", "score_head", "offset_head"} <= base_keys
    assert base_params["params"]["fusion"]["bilinear"]["kernel"].shape == (16, 16, 16)
    out = run(base, base_params, batch)

    # The GCN reads the edges: changing labels changes the output.
    relabelled = dict(batch, edge_labels=np.where(batch["edge_mask"] > 0, (batch["edge_labels"] + 3) % NUM_LABELS,
                                                  0).astype(np.int32))
    assert _changed(out, run(base, base_params, relabelled))

    # w/o GCN: no GCN params, outputs independent of the edges.
    m = cmin_lib.CMIN(**SMALL, use_gcn=False)
    p = random_params(m, batch)
    assert param_keys(p) == base_keys - {"syntactic_gcn"}
    np.testing.assert_allclose(run(m, p, batch)["anchor_logits"], run(m, p, relabelled)["anchor_logits"], atol=1e-6)

    # w/o SA, w/o CG, no fused RNN: the modules disappear.
    m = cmin_lib.CMIN(**SMALL, use_self_attention=False)
    assert param_keys(random_params(m, batch)) == base_keys - {"self_attention_0", "self_attention_1"}
    m = cmin_lib.CMIN(**SMALL, use_cross_gate=False)
    p = random_params(m, batch, seed=4)
    assert param_keys(p) == base_keys - {"cross_gate"}
    m = cmin_lib.CMIN(**SMALL, fused_rnn=False)
    assert param_keys(random_params(m, batch)) == base_keys - {"fusion_rnn"}
    # Ungated GCN (the seed's equation): no gate parameters; the released vector gates are [3, d, d].
    gcn = random_params(cmin_lib.CMIN(**SMALL, use_gates=False), batch)["params"]["syntactic_gcn"]["layer_0"]
    assert set(gcn) == {"kernel", "label_bias"}
    gcn = random_params(cmin_lib.CMIN(**SMALL, gcn_gate_input="transformed"), batch)["params"]["syntactic_gcn"]
    assert gcn["layer_1"]["gate_kernel"].shape == (3, 16, 16)

    # Same params minus the SA layers / with a local window: outputs change.
    no_sa = cmin_lib.CMIN(**SMALL, use_self_attention=False)
    p = {"params": {k: v for k, v in base_params["params"].items() if not k.startswith("self_attention")}}
    assert _changed(out, run(no_sa, p, batch))
    no_cg = cmin_lib.CMIN(**SMALL, use_cross_gate=False)
    p = {"params": {k: v for k, v in base_params["params"].items() if k != "cross_gate"}}
    assert _changed(out, run(no_cg, p, batch))
    # (attention_window and gcn_gate_input are checked against numpy in the layer tests and run
    # end to end in test_cmin_padding_invariance.)

    # w/o BF (concat): no fusion params; the fused BiGRU reads 2 * d_model features.
    m = cmin_lib.CMIN(**SMALL, fusion="concat")
    p = random_params(m, batch)
    assert param_keys(p) == base_keys - {"fusion"}
    assert p["params"]["fusion_rnn"]["bidirectional"]["forward_rnn"]["cell"]["ir"]["kernel"].shape == (32, 8)

    # Released GCN placement: the GCN runs on word embeddings (word_dim) before the BiGRU.
    m = cmin_lib.CMIN(**SMALL, gcn_placement="before_rnn")
    p = random_params(m, batch)
    assert p["params"]["syntactic_gcn"]["layer_0"]["kernel"].shape == (3, 8, 8)
    assert p["params"]["query_rnn"]["bidirectional"]["forward_rnn"]["cell"]["ir"]["kernel"].shape == (8, 8)


def test_query_blind_ignores_the_query():
    model = cmin_lib.CMIN(**SMALL, query_blind=True)
    batch = make_batch(13)
    params = random_params(model, batch, seed=5)
    keys = param_keys(params)
    assert not keys & {"word_embed", "query_rnn", "syntactic_gcn"} and "blind_query" in keys
    out = run(model, params, batch)
    other = make_batch(14, garbage=True)
    other = dict(other, video_feats=batch["video_feats"], video_mask=batch["video_mask"])
    other["query_mask"] = prefix_mask([2, 6], L)
    other["edge_mask"] = np.zeros_like(other["edge_mask"])
    other_out = run(model, params, other)
    for key in ("anchor_logits", "anchor_offsets", "attention"):
        np.testing.assert_allclose(out[key], other_out[key], atol=1e-6)
    # The full model does read the query.
    full = cmin_lib.CMIN(**SMALL)
    p = random_params(full, batch, seed=5)
    assert _changed(run(full, p, batch), run(full, p, dict(batch, query_tokens=np.roll(batch["query_tokens"], 1, 1))))


def test_adam_steps_decrease_loss():
    batch = make_batch(15)
    model = cmin_lib.CMIN(**SMALL)  # same config/shapes as other tests: the eval program is already compiled
    init = jax.jit(lambda k: nn.meta.unbox(model.init(k, batch, train=False)), compiler_options=FAST_COMPILE)
    params = init(jax.random.key(0))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(params))
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def step(params, opt_state, key):
        def objective(p):
            out = model.apply(p, batch, train=True, rngs={"dropout": key})
            return cmin_lib.loss_fn(out, batch)

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    def eval_loss(params):
        return float(cmin_lib.loss_fn(run(model, params, batch), batch)[0])

    start = eval_loss(params)
    for i in range(60):
        params, opt_state, metrics = step(params, opt_state, jax.random.key(i))
        assert all(np.isfinite(float(v)) for v in metrics.values())
    end = eval_loss(params)
    assert end < 0.85 * start, (start, end)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(params))
