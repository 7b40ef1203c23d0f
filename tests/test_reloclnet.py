"""ReLoCLNet: scores and losses against numpy references written from the paper's equations,
masks, in-batch negatives, switches."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import reloclnet as reloclnet_config
from jvmr import registry
from jvmr.models import reloclnet as rl
from jvmr.models.spans import boundary_indices

B, T, L, D, DS = 6, 12, 7, 10, 5
VIDEO_LENGTHS = [12, 9, 5, 12, 7, 10]
QUERY_LENGTHS = [7, 3, 5, 2, 6, 4]
VIDEO_INDEX = [0, 1, 1, 2, 3, 4]  # examples 1 and 2 ask about the same video


def softplus(x):
    return np.logaddexp(0.0, x)


def prefix_mask(lengths, size):
    return (np.arange(size)[None] < np.asarray(lengths)[:, None]).astype(np.float32)


def make_batch(seed=0, t=T, l=L, garbage=0.0):
    """A batch with padded slots filled with ``garbage`` (padding must never matter)."""
    rng = np.random.default_rng(seed)
    vm, qm = prefix_mask(VIDEO_LENGTHS, t), prefix_mask(QUERY_LENGTHS, l)
    video = rng.normal(size=(B, T, D)).astype(np.float32)
    subs = rng.normal(size=(B, T, DS)).astype(np.float32)
    tokens = rng.integers(2, 20, size=(B, L)).astype(np.int32)

    def pad(x, size, fill):
        out = np.full((B, size) + x.shape[2:], fill, x.dtype)
        out[:, :x.shape[1]] = x
        return out
    video, subs, tokens = pad(video, t, garbage), pad(subs, t, garbage), pad(tokens, l, 7)
    video = np.where(vm[..., None] > 0, video, garbage).astype(np.float32)
    subs = np.where(vm[..., None] > 0, subs, garbage).astype(np.float32)
    return dict(video_feats=video, video_mask=vm, subtitle_feats=subs, query_tokens=tokens, query_mask=qm,
                gt_span=np.array([[0.1, 0.4], [0.0, 0.5], [0.5, 1.0], [0.3, 0.35], [0.2, 0.9], [0.0, 1.0]],
                                 np.float32),
                example_mask=np.ones(B, np.float32), video_index=np.array(VIDEO_INDEX, np.int32))


def model_config(**overrides):
    cfg = reloclnet_config.get_config()
    cfg.model.use_subtitles = True
    cfg.model.hidden_size = 16
    cfg.model.word_dim = 8
    cfg.model.num_heads = 2
    cfg.model.max_positions = 32  # a fixed table, so that longer padding fits
    cfg.loss.vr_negatives = "mean"  # the paper's hinge (the embedded default samples, as released)
    cfg.loss.hard_negative_start_step = -1
    cfg.loss.cl_critic = "dot"  # the released critic, as the paper's formulas (scaled_dot: its own test)
    cfg.loss.frame_cl_weight = 0.03
    cfg.model.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def model_and_outputs():
    cfg = model_config()
    model = registry.create_model(cfg.model, vocab_size=20)
    batch = make_batch()
    variables = nn.meta.unbox(model.init(jax.random.key(0), batch, train=False))
    return cfg, model, variables, batch, model.apply(variables, batch, train=False)


# ----------------------------------------------------------------------------- scores


def test_retrieval_scores_match_numpy():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(4, 2, 8)).astype(np.float32)
    h = rng.normal(size=(3, 2, 6, 8)).astype(np.float32)
    lengths = [6, 2, 4]
    got = np.asarray(rl.retrieval_scores(q, h, prefix_mask(lengths, 6)))
    ref = np.zeros((4, 3))
    for i in range(4):
        for j in range(3):
            per_stream = []
            for m in range(2):
                cos = [q[i, m] @ h[j, m, t] / np.linalg.norm(q[i, m]) / np.linalg.norm(h[j, m, t])
                       for t in range(lengths[j])]
                per_stream.append(max(cos))  # phi_m = max_t cos(h_{m,t}, q_m)
            ref[i, j] = np.mean(per_stream)  # streams averaged
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_localization_logits_match_numpy():
    rng = np.random.default_rng(2)
    qp = rng.normal(size=(3, 2, 8)).astype(np.float32)
    h = rng.normal(size=(3, 2, 9, 8)).astype(np.float32)
    k_start, k_end = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    lengths = [9, 4, 6]
    start, end = (np.asarray(x) for x in rl.localization_logits(qp, h, prefix_mask(lengths, 9), k_start, k_end))
    for b in range(3):
        n = lengths[b]
        s = np.mean([h[b, m, :n] @ qp[b, m] for m in range(2)], axis=0)  # S = (S_v + S_s) / 2
        # Conv1D (cross-correlation, zero padding 2, no bias) over the valid clips.
        for kernel, got in ((k_start, start), (k_end, end)):
            ref = np.correlate(np.pad(s, 2), kernel, mode="valid")
            np.testing.assert_allclose(got[b, :n], ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- losses


def test_negative_mask_never_pairs_a_video_with_itself():
    neg = np.asarray(rl.negative_mask(jnp.array(VIDEO_INDEX), jnp.array([1, 1, 1, 1, 1, 0.0])))
    for i in range(B):
        for j in range(B):
            expected = VIDEO_INDEX[i] != VIDEO_INDEX[j] and i != 5 and j != 5
            assert neg[i, j] == expected, (i, j)


def test_hinge_ranking_mean_matches_paper():
    rng = np.random.default_rng(3)
    phi = rng.uniform(-1, 1, size=(B, B)).astype(np.float32)
    neg = np.asarray(rl.negative_mask(jnp.array(VIDEO_INDEX), jnp.ones(B)))
    ctx, qry = (np.asarray(x) for x in rl.hinge_ranking(phi, neg, 0.2, mode="mean"))
    for i in range(B):
        negs = [j for j in range(B) if VIDEO_INDEX[j] != VIDEO_INDEX[i]]
        # max(0, Delta + mean phi' - phi): phi' negative videos for query i, phi'' negative queries for video i
        assert ctx[i] == pytest.approx(max(0, 0.2 + np.mean([phi[i, j] for j in negs]) - phi[i, i]), abs=1e-6)
        assert qry[i] == pytest.approx(max(0, 0.2 + np.mean([phi[j, i] for j in negs]) - phi[i, i]), abs=1e-6)


def test_sampled_negatives_come_from_the_allowed_pool():
    rng = np.random.default_rng(4)
    phi = rng.uniform(-1, 1, size=(B, B)).astype(np.float32)
    neg = np.asarray(rl.negative_mask(jnp.array(VIDEO_INDEX), jnp.ones(B)))
    margin = 10.0  # every hinge is active: the term reveals the sampled negative's score
    seen = {i: set() for i in range(B)}
    for seed in range(40):
        for pool in (0, 2):
            ctx, _ = rl.hinge_ranking(phi, neg, margin, mode="sampled", rng=jax.random.key(seed),
                                      hard_pool_size=pool)
            for i in range(B):
                chosen = float(ctx[i]) - margin + phi[i, i]
                j = int(np.argmin(np.abs(phi[i] - chosen)))
                assert neg[i, j], (i, j)  # never the query's own video
                if pool:
                    hardest = sorted((j2 for j2 in range(B) if neg[i, j2]), key=lambda j2: -phi[i, j2])[:pool]
                    assert j in hardest
                else:
                    seen[i].add(j)
    # Uniform over all negatives: every negative of every query is drawn at some point.
    assert all(seen[i] == {j for j in range(B) if neg[i, j]} for i in range(B))


def test_video_contrastive_matches_infonce():
    rng = np.random.default_rng(5)
    s = rng.normal(size=(B, B)).astype(np.float32)  # s[i, j] = f(c_i) . g(q_j)
    neg = np.asarray(rl.negative_mask(jnp.array(VIDEO_INDEX), jnp.ones(B)))
    got = np.asarray(rl.video_contrastive(s, neg))
    for i in range(B):
        others = [j for j in range(B) if VIDEO_INDEX[j] != VIDEO_INDEX[i]]
        denominator = np.exp(s[i, i]) + sum(np.exp(s[j, i]) + np.exp(s[i, j]) for j in others)
        assert got[i] == pytest.approx(-np.log(np.exp(s[i, i]) / denominator), rel=1e-5)


def test_frame_contrastive_matches_jsd_estimator():
    rng = np.random.default_rng(6)
    c = rng.normal(size=(3, 8)).astype(np.float32) * 3
    inside = np.zeros((3, 8), np.float32)
    inside[0, 2:5] = 1
    inside[1, :4] = 1  # covers all 4 valid clips: no negative clip
    inside[2, 6:8] = 1
    lengths = [8, 4, 8]
    got = np.asarray(rl.frame_contrastive(c, inside, prefix_mask(lengths, 8)))
    for b in range(3):
        pos = [c[b, t] for t in range(lengths[b]) if inside[b, t]]
        negs = [c[b, t] for t in range(lengths[b]) if not inside[b, t]]
        mi = np.mean([-softplus(-x) for x in pos]) - (np.mean([softplus(x) for x in negs]) if negs else 0.0)
        assert got[b] == pytest.approx(-mi, rel=1e-5)


def test_loss_terms_and_switches(model_and_outputs):
    cfg, _, _, batch, out = model_and_outputs
    loss_config = cfg.loss.to_dict()
    total, metrics = rl.loss_fn(out, batch, **loss_config)
    expected = (loss_config["retrieval_weight"] * metrics["retrieval_loss"]
                + loss_config["localization_weight"] * metrics["localization_loss"]
                + loss_config["video_cl_weight"] * metrics["video_cl_loss"]
                + loss_config["frame_cl_weight"] * metrics["frame_cl_loss"])
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    # ReLoNet: both contrastive terms off.
    relonet, m = rl.loss_fn(out, batch, **dict(loss_config, use_video_cl=False, use_frame_cl=False))
    assert set(m) == {"loss", "retrieval_loss", "localization_loss"}
    expected = metrics["retrieval_loss"] + loss_config["localization_weight"] * metrics["localization_loss"]
    assert float(relonet) == pytest.approx(float(expected), rel=1e-6)
    # The retrieval term is the mean over examples of both hinge directions on phi.
    phi = rl.retrieval_scores(out["query"], out["context"], batch["video_mask"])
    ctx, qry = rl.hinge_ranking(phi, rl.negative_mask(batch["video_index"], batch["example_mask"]), 0.1)
    assert float(metrics["retrieval_loss"]) == pytest.approx(float(jnp.mean(ctx + qry)), rel=1e-6)


def test_own_video_is_never_a_negative(model_and_outputs):
    """Examples 1 and 2 share a video: neither may push the other away, whatever its scores."""
    cfg, model, variables, batch, out = model_and_outputs
    loss_config = cfg.loss.to_dict()
    base = {k: float(v) for k, v in rl.loss_fn(out, batch, **loss_config)[1].items()}
    # Relabel example 2 as another video: it becomes a negative of example 1, the terms change.
    other = dict(batch, video_index=np.array([0, 1, 9, 2, 3, 4], np.int32))
    changed = {k: float(v) for k, v in rl.loss_fn(out, other, **loss_config)[1].items()}
    assert changed["retrieval_loss"] != pytest.approx(base["retrieval_loss"], rel=1e-4)
    assert changed["video_cl_loss"] != pytest.approx(base["video_cl_loss"], rel=1e-4)
    # With the shared index, example 1's terms do not depend on example 2's query at all.
    s = np.asarray(jnp.einsum("vmd,qmd->mvq", out["video_cl_context"], out["video_cl_query"]))
    neg = np.asarray(rl.negative_mask(batch["video_index"], batch["example_mask"]))
    assert not neg[1, 2] and not neg[2, 1]
    per_example = np.mean([np.asarray(rl.video_contrastive(s[m], neg)) for m in range(2)], axis=0)
    assert base["video_cl_loss"] == pytest.approx(float(np.mean(per_example)), rel=1e-5)


def test_padded_examples_do_not_count(model_and_outputs):
    cfg, _, _, batch, out = model_and_outputs
    loss_config = cfg.loss.to_dict()
    masked = dict(batch, example_mask=np.array([1, 1, 1, 1, 1, 0], np.float32))
    _, m = rl.loss_fn(out, masked, **loss_config)
    # Reference: drop example 5 from the batch entirely.
    keep = np.arange(5)
    sub_out = {k: (v[keep] if k in ("query", "local_query", "video_cl_query", "context", "context_mid",
                                   "video_cl_context", "video_mask", "start_logits", "end_logits") else v)
               for k, v in out.items()}
    sub_batch = {k: v[keep] for k, v in batch.items()}
    _, ref = rl.loss_fn(sub_out, sub_batch, **loss_config)
    for k in ref:
        assert float(m[k]) == pytest.approx(float(ref[k]), rel=1e-5), k


# ----------------------------------------------------------------------------- model


def test_padding_never_changes_the_outputs(model_and_outputs):
    cfg, model, variables, batch, out = model_and_outputs
    padded = make_batch(t=T + 5, l=L + 3, garbage=1e3)
    out2 = model.apply(variables, padded, train=False)
    for key in ("query", "local_query", "video_cl_query", "video_cl_context"):
        np.testing.assert_allclose(out2[key], out[key], rtol=1e-4, atol=1e-4, err_msg=key)
    vm = batch["video_mask"] > 0
    for key in ("start_logits", "end_logits"):
        np.testing.assert_allclose(np.asarray(out2[key])[:, :T][vm], np.asarray(out[key])[vm], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out2["context"][:, :, :T], out["context"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rl.retrieval_scores(out2["query"], out2["context"], padded["video_mask"]),
                               rl.retrieval_scores(out["query"], out["context"], batch["video_mask"]),
                               rtol=1e-4, atol=1e-5)
    l1 = rl.loss_fn(out, batch, **cfg.loss.to_dict())[0]
    l2 = rl.loss_fn(out2, dict(padded, gt_span=batch["gt_span"]), **cfg.loss.to_dict())[0]
    assert float(l1) == pytest.approx(float(l2), rel=1e-4)


def test_modular_query_vectors_match_additive_attention(model_and_outputs):
    """q_m = sum_i softmax_i(W_{m,alpha} q~_i) q~_i, from the encoder's token states."""
    cfg, model, variables, batch, out = model_and_outputs
    _, state = model.apply(variables, batch, train=False, method=model.encode_query,
                           capture_intermediates=lambda mdl, name: mdl.name == "query_encoder_1")
    tokens = np.asarray(state["intermediates"]["query_encoder_1"]["__call__"][0])  # Q~ [B, L, d]
    w = variables["params"]["modular_attention"]
    logits = tokens @ np.asarray(w["kernel"]) + np.asarray(w["bias"])  # [B, L, M]
    for b in range(B):
        n = QUERY_LENGTHS[b]
        for m in range(2):
            a = np.exp(logits[b, :n, m] - logits[b, :n, m].max())
            a /= a.sum()
            np.testing.assert_allclose(out["query"][b, m], a @ tokens[b, :n], rtol=1e-4, atol=1e-5)


def test_attention_block_is_post_ln_residual():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 5, 8)).astype(np.float32)
    mask = prefix_mask([5, 3], 5)
    block = rl.AttentionBlock(num_heads=2)
    variables = nn.meta.unbox(block.init(jax.random.key(0), x, mask))
    got = np.asarray(block.apply(variables, x, mask))
    p = variables["params"]
    att = p["attention"]
    for b in range(2):
        n = int(mask[b].sum())
        xb = x[b, :n]
        heads = []
        for h in range(2):
            sl = slice(4 * h, 4 * h + 4)
            q = (xb @ np.asarray(att["query"]["kernel"]) + np.asarray(att["query"]["bias"]))[:, sl]
            k = (xb @ np.asarray(att["key"]["kernel"]) + np.asarray(att["key"]["bias"]))[:, sl]
            v = (xb @ np.asarray(att["value"]["kernel"]) + np.asarray(att["value"]["bias"]))[:, sl]
            s = q @ k.T / 2.0
            a = np.exp(s - s.max(1, keepdims=True))
            heads.append((a / a.sum(1, keepdims=True)) @ v)
        y = np.concatenate(heads, 1) @ np.asarray(att["out"]["kernel"]) + np.asarray(att["out"]["bias"])
        z = xb + y
        ln = (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-6)
        ref = ln * np.asarray(p["norm"]["scale"]) + np.asarray(p["norm"]["bias"])
        np.testing.assert_allclose(got[b, :n], ref, rtol=1e-4, atol=1e-4)
        assert np.all(got[b, n:] == 0)


def test_single_stream_and_released_readings():
    cfg = model_config(use_subtitles=False, video_cl_reading="released")
    model = registry.create_model(cfg.model, vocab_size=20)
    batch = make_batch()
    del batch["subtitle_feats"]
    variables = nn.meta.unbox(model.init(jax.random.key(0), batch, train=False))
    assert not any("subtitle" in k or "cross" in k for k in variables["params"])
    out = model.apply(variables, batch, train=False)
    assert out["query"].shape == (B, 1, 16) and "video_cl_context" not in out
    _, m = rl.loss_fn(out, batch, **cfg.loss.to_dict())
    # Released VideoCL: max over clips of h'_t . q, InfoNCE on that matrix.
    h, q = np.asarray(out["context_mid"])[:, 0], np.asarray(out["query"])[:, 0]
    s = np.array([[max(h[i, t] @ q[j] for t in range(VIDEO_LENGTHS[i])) for j in range(B)] for i in range(B)])
    neg = np.asarray(rl.negative_mask(batch["video_index"], batch["example_mask"]))
    assert float(m["video_cl_loss"]) == pytest.approx(float(np.mean(rl.video_contrastive(s, neg))), rel=1e-4)


def test_query_features_replace_the_word_table():
    cfg = model_config(use_query_features=True)
    model = registry.create_model(cfg.model, vocab_size=0)
    batch = make_batch()
    rng = np.random.default_rng(8)
    batch["query_feats"] = rng.normal(size=(B, L, 12)).astype(np.float32)
    batch["query_feats_mask"] = batch.pop("query_mask")
    del batch["query_tokens"]
    variables = nn.meta.unbox(model.init(jax.random.key(0), batch, train=False))
    assert "word_embed" not in variables["params"]
    assert model.apply(variables, batch, train=False)["query"].shape == (B, 2, 16)


def test_hard_negatives_start_at_the_configured_step(model_and_outputs):
    cfg, _, _, batch, out = model_and_outputs
    loss_config = dict(cfg.loss.to_dict(), vr_negatives="sampled", hard_negative_start_step=10, hard_pool_size=1,
                       use_localization=False, use_video_cl=False, use_frame_cl=False, margin=5.0)
    key = jax.random.key(3)
    phi = np.asarray(rl.retrieval_scores(out["query"], out["context"], batch["video_mask"]))
    neg = np.asarray(rl.negative_mask(batch["video_index"], batch["example_mask"]))
    hardest = np.where(neg, phi, -np.inf).max(1)
    hardest_q = np.where(neg, phi.T, -np.inf).max(1)
    late = float(rl.loss_fn(out, batch, step=jnp.asarray(10), rng=key, **loss_config)[0])
    # Pool of one: the hardest negative in both directions.
    assert late == pytest.approx(float(np.mean(10.0 + hardest + hardest_q - 2 * np.diagonal(phi))), rel=1e-5)
    early = float(rl.loss_fn(out, batch, step=jnp.asarray(9), rng=key, **loss_config)[0])
    assert early < late


def test_global_negatives_across_devices_equal_the_global_batch(model_and_outputs):
    """Split over 3 'devices' (vmap with an axis name, as pmap), each device's negatives are the
    all-gathered batch: the mean of the device losses and its gradient equal the one-device loss."""
    cfg, _, _, batch, out = model_and_outputs
    loss_config = dict(cfg.loss.to_dict(), localization_weight=0.5)
    keys = ("query", "local_query", "video_cl_query", "context", "context_mid", "video_cl_context", "video_mask",
            "start_logits", "end_logits")
    out = {k: out[k] for k in keys}

    def split(tree):
        return jax.tree.map(lambda x: x.reshape((3, x.shape[0] // 3) + x.shape[1:]), tree)

    def device_mean(o, global_negatives=True):
        settings = dict(loss_config, global_negatives=global_negatives)
        per_device = jax.vmap(lambda oo, bb: rl.loss_fn(oo, bb, axis_name="d", **settings)[0], axis_name="d")
        return jnp.mean(per_device(split(o), split(batch)))

    whole = lambda o: rl.loss_fn(o, batch, **loss_config)[0]  # noqa: E731
    assert float(device_mean(out)) == pytest.approx(float(whole(out)), rel=1e-5)
    g_dev, g_whole = jax.grad(device_mean)(out), jax.grad(whole)(out)
    for k in keys:
        np.testing.assert_allclose(g_dev[k], g_whole[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # Per-device negatives (fewer, none across devices) give another loss.
    assert float(device_mean(out, global_negatives=False)) != pytest.approx(float(whole(out)), rel=1e-3)


def test_conv_init_switch():
    """'torch' draws the start / end kernels from U(-1/sqrt(K), 1/sqrt(K)) (torch.nn.Conv1d's default),
    'normal' from N(0, 0.02); anything else is refused."""
    k = 101  # a wide kernel, so the two distributions are told apart from one draw
    torch_init = np.asarray(rl.conv_kernel_init("torch")(jax.random.key(0), (k,)))
    assert np.all(np.abs(torch_init) <= 1 / np.sqrt(k)) and np.std(torch_init) > 0.5 / np.sqrt(3 * k)
    normal_init = np.asarray(rl.conv_kernel_init("normal")(jax.random.key(0), (k,)))
    assert 0.012 < np.std(normal_init) < 0.028
    with pytest.raises(ValueError, match="conv_init"):
        rl.conv_kernel_init("xavier")
    for kind, bound in (("torch", 1 / np.sqrt(5)), ("normal", 0.1)):
        model = registry.create_model(model_config(conv_init=kind).model, vocab_size=20)
        params = nn.meta.unbox(model.init(jax.random.key(1), make_batch(), train=False))["params"]
        assert np.max(np.abs(params["conv_start"])) <= bound
    assert reloclnet_config.get_config("tvr").model.conv_init == "torch"



def _numpy_video_cl(s, neg):
    """Per-example InfoNCE (the paper's I^e, both directions) of one score matrix s[video i, query j]."""
    out = []
    for i in range(s.shape[0]):
        others = [j for j in range(s.shape[0]) if neg[i, j]]
        denominator = np.exp(s[i, i]) + sum(np.exp(s[j, i]) + np.exp(s[i, j]) for j in others)
        out.append(np.log(denominator) - s[i, i])
    return np.asarray(out)


def _numpy_frame_cl(c, start, end, mask):
    """Per-example JSD estimator terms (-I^a) of clip scores c [B, T]: clips start..end inside."""
    out = []
    for b in range(c.shape[0]):
        valid = np.flatnonzero(mask[b] > 0)
        pos = [c[b, t] for t in valid if start[b] <= t <= end[b]]
        negs = [c[b, t] for t in valid if not start[b] <= t <= end[b]]
        mi = (np.mean([-softplus(-x) for x in pos]) if pos else 0.0) - (
            np.mean([softplus(x) for x in negs]) if negs else 0.0)
        out.append(-mi)
    return np.asarray(out)


def _numpy_cl_terms(out, batch, scale, fusion):
    """(VideoCL, FrameCL) losses from the paper's formulas: per-stream estimators averaged ('estimators'),
    or one estimator of the stream-averaged scores ('scores'); scores x . y times ``scale``."""
    weights = np.asarray(batch["example_mask"], np.float64)
    neg = np.asarray(rl.negative_mask(batch["video_index"], batch["example_mask"]))
    s = scale * np.einsum("vmd,qmd->mvq", np.asarray(out["video_cl_context"], np.float64),
                          np.asarray(out["video_cl_query"], np.float64))
    c = scale * np.einsum("bmtd,bmd->mbt", np.asarray(out["context_mid"], np.float64),
                          np.asarray(out["query"], np.float64))
    if fusion == "scores":
        s, c = s.mean(0, keepdims=True), c.mean(0, keepdims=True)
    start, end = (np.asarray(x) for x in boundary_indices(batch["gt_span"], out["video_mask"]))
    video = np.mean([_numpy_video_cl(sm, neg) for sm in s], axis=0)
    frame = np.mean([_numpy_frame_cl(cm, start, end, np.asarray(out["video_mask"])) for cm in c], axis=0)
    return tuple(float(np.sum(x * weights) / np.sum(weights)) for x in (video, frame))


@pytest.mark.parametrize("critic,fusion", [("scaled_dot", "estimators"), ("dot", "scores"), ("scaled_dot", "scores")])
def test_cl_critic_and_stream_fusion_match_numpy(model_and_outputs, critic, fusion):
    """'scaled_dot' scores VideoCL pairs and FrameCL clips by (x . y) / sqrt(d); 'scores' fusion averages
    the two streams' scores before one estimator (released) instead of averaging two estimators (paper)."""
    cfg, _, _, batch, out = model_and_outputs
    loss_config = dict(cfg.loss.to_dict(), use_video_retrieval=False, use_localization=False)
    assert out["query"].shape[1] == 2  # both streams, so the fusions differ
    scale = out["query"].shape[-1] ** -0.5 if critic == "scaled_dot" else 1.0
    _, got = rl.loss_fn(out, batch, **dict(loss_config, cl_critic=critic, cl_stream_fusion=fusion))
    video, frame = _numpy_cl_terms(out, batch, scale, fusion)
    assert float(got["video_cl_loss"]) == pytest.approx(video, rel=1e-4)
    assert float(got["frame_cl_loss"]) == pytest.approx(frame, rel=1e-4)
    _, paper = rl.loss_fn(out, batch, **dict(loss_config, cl_critic="dot", cl_stream_fusion="estimators"))
    assert float(got["frame_cl_loss"]) != pytest.approx(float(paper["frame_cl_loss"]), rel=1e-3)
    assert float(got["video_cl_loss"]) != pytest.approx(float(paper["video_cl_loss"]), rel=1e-3)


def test_cl_switches_refuse_unknown_values(model_and_outputs):
    cfg, _, _, batch, out = model_and_outputs
    with pytest.raises(ValueError, match="cl_critic"):
        rl.loss_fn(out, batch, **dict(cfg.loss.to_dict(), cl_critic="cosine"))
    with pytest.raises(ValueError, match="cl_stream_fusion"):
        rl.loss_fn(out, batch, **dict(cfg.loss.to_dict(), cl_stream_fusion="max"))
