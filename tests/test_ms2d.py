"""MS-2D (jvmr.models.ms2d): fusion and scorer against numpy, the pseudo-label rule, RG-BCE / L_rec / MIL /
scaled-IoU BCE against numpy, padding invariance, and no boundary in weakly supervised training."""

import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ms2d as ms2d_config
from jvmr import registry, train
from jvmr.data import pipeline, schema, synthetic
from jvmr.models import ms2d
from jvmr.models import spans as spans_lib

B, T, L, V, F = 4, 16, 7, 30, 12
LENGTHS, WORDS = [16, 12, 9, 16], [7, 5, 3, 6]


def prefix_mask(lengths, size):
    return (np.arange(size)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


def make_batch(t=T, l=L, seed=0):
    rng = np.random.default_rng(seed)
    feats = np.zeros((B, t, F), np.float32)
    feats[:, :T] = rng.normal(size=(B, T, F))
    feats *= prefix_mask(LENGTHS, t)[..., None]
    tokens = np.zeros((B, l), np.int32)
    tokens[:, :L] = rng.integers(2, V, size=(B, L))
    tokens *= prefix_mask(WORDS, l).astype(np.int32)
    return {"video_feats": feats, "video_mask": prefix_mask(LENGTHS, t), "query_tokens": tokens,
            "query_mask": prefix_mask(WORDS, l), "example_mask": np.ones(B, np.float32),
            "video_index": np.array([0, 1, 1, 2], np.int32),
            "gt_span": np.array([[0.1, 0.4], [0.0, 1.0], [0.5, 0.75], [0.3, 0.35]], np.float32)}


def make_model(**overrides):
    kwargs = dict(vocab_size=V, word_dim=8, hidden_size=16, scales=(1, 2, 4), num_proposals=4, caption_hidden=16,
                  mismatched_pairs=True, dropout=0.0)
    kwargs.update(overrides)
    return ms2d.MS2D(**kwargs)


@pytest.fixture(scope="module")
def model_and_outputs():
    model = make_model()
    batch = make_batch()
    variables = nn.meta.unbox(model.init(jax.random.key(0), batch))
    return model, variables, batch, model.apply(variables, batch)


def softplus(x):
    return np.logaddexp(0.0, x)


def test_shapes_and_proposals(model_and_outputs):
    model, _, _, out = model_and_outputs
    cells = sum((T // r) ** 2 for r in model.scales)
    assert out["cell_logits"].shape == (B, cells) and out["cell_spans"].shape == (B, cells, 2)
    assert out["proposals"].shape == (B, 3, 4) and out["caption_log_probs"].shape == (B, 3, 4, L)
    assert out["candidate_spans"].shape == (B, 100, 2) and out["candidate_scores"].shape == (B, 100)
    mask = np.asarray(out["cell_mask"])
    offsets = np.cumsum([0] + [(T // r) ** 2 for r in model.scales])
    for b in range(B):
        for j in range(3):
            picks = np.asarray(out["proposals"])[b, j]
            assert np.all((picks >= offsets[j]) & (picks < offsets[j + 1])) and np.all(mask[b, picks] > 0)
            valid = np.flatnonzero(mask[b, offsets[j]:offsets[j + 1]]) + offsets[j]
            best = valid[np.argsort(-np.asarray(out["cell_logits"])[b, valid], kind="stable")[:4]]
            assert set(picks) == set(best)
    # Candidates: valid cells only, best first, spans inside the video.
    scores = np.asarray(out["candidate_scores"])
    finite = np.where(np.isfinite(scores), scores, -1e30)
    assert np.all(np.diff(finite, axis=1) <= 1e-6)
    spans = np.asarray(out["candidate_spans"])
    assert np.all((spans[..., 0] <= spans[..., 1]) & (spans[..., 0] >= 0) & (spans[..., 1] <= 1.0 + 1e-6))


def greedy_nms_reference(scores, spans, k, threshold):
    """Plain greedy NMS, one candidate at a time: best first, skip any with IoU > threshold with a kept one."""
    kept = []
    for c in sorted(np.flatnonzero(np.isfinite(scores)), key=lambda c: (-scores[c], c)):
        s, e = spans[c]
        if all(max(0.0, min(e, spans[q][1]) - max(s, spans[q][0])) /
               max((e - s) + (spans[q][1] - spans[q][0]) - max(0.0, min(e, spans[q][1]) - max(s, spans[q][0])),
                   1e-12) <= threshold for q in kept):
            kept.append(c)
        if len(kept) == k:
            break
    return kept


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9])
def test_nms_top_k_matches_greedy_loop(threshold):
    rng = np.random.default_rng(1)
    starts = rng.uniform(0, 1, size=(5, 40))
    spans = np.stack([starts, np.minimum(starts + rng.uniform(0.01, 0.6, size=(5, 40)), 1.0)], -1)
    scores = rng.normal(size=(5, 40))
    scores[1, 10:] = -np.inf  # few candidates: the rest of the row is masked
    scores[2] = -np.inf
    index, kept = spans_lib.nms_top_k(jnp.asarray(scores), jnp.asarray(spans, jnp.float32), 6, threshold)
    for b in range(5):
        want = greedy_nms_reference(scores[b], spans[b].astype(np.float32), 6, threshold)
        got = np.asarray(index)[b][np.asarray(kept)[b] > 0]
        assert list(got) == want, (b, got, want)
        assert np.all(np.asarray(kept)[b, len(want):] == 0)


def test_nms_proposals_do_not_overlap(model_and_outputs):
    _, variables, batch, _ = model_and_outputs
    out = make_model(proposal_nms=0.3).apply(variables, batch)
    spans = np.asarray(out["cell_spans"])
    for b in range(B):
        for j in range(3):
            picks = np.asarray(out["proposals"])[b, j][np.asarray(out["proposal_mask"])[b, j] > 0]
            assert len(picks) >= 2
            chosen = spans[b, picks]
            for x in range(len(picks)):
                for y in range(x):
                    inter = max(0.0, min(chosen[x, 1], chosen[y, 1]) - max(chosen[x, 0], chosen[y, 0]))
                    union = (chosen[x, 1] - chosen[x, 0]) + (chosen[y, 1] - chosen[y, 0]) - inter
                    assert inter / union <= 0.3 + 1e-6


def test_fusion_and_scorer_match_numpy():
    """Without map convolutions, cell (x, y) of scale r scores w . normalise((W^T f^T) * (W^M maxpool(f^S_x..y)))
    + b, with f^S max-pooled in windows of r clips: the seed's equations, in numpy."""
    model = make_model(map_conv_layers=0, use_caption=False, mismatched_pairs=False)
    batch = make_batch()
    variables = nn.meta.unbox(model.init(jax.random.key(1), batch))
    out, state = model.apply(variables, batch, capture_intermediates=True)
    inter = state["intermediates"]
    p = jax.tree.map(np.asarray, variables["params"])
    states = np.asarray(inter["query_rnn"]["__call__"][0])  # [B, L, d]
    clips = np.maximum(np.asarray(inter["clip_proj"]["__call__"][0]), 0) * prefix_mask(LENGTHS, T)[..., None]
    offset = 0
    for r in model.scales:
        n = T // r
        for b in range(B):
            f_t = states[b, WORDS[b] - 1]
            text = f_t @ p["text_fusion"]["kernel"] + p["text_fusion"]["bias"]
            valid = -(-LENGTHS[b] // r)
            pooled = np.stack([clips[b, w * r:min((w + 1) * r, LENGTHS[b])].max(0) for w in range(valid)])
            for x in range(n):
                for y in range(n):
                    got = float(out["cell_logits"][b, offset + x * n + y])
                    if not x <= y < valid:
                        assert out["cell_mask"][b, offset + x * n + y] == 0 and got == 0
                        continue
                    video = pooled[x:y + 1].max(0) @ p["video_fusion"]["kernel"] + p["video_fusion"]["bias"]
                    fused = text * video
                    fused = fused / max(np.linalg.norm(fused), 1e-6)
                    expected = fused @ p["scorer"]["kernel"][:, 0] + p["scorer"]["bias"][0]
                    assert got == pytest.approx(float(expected), rel=1e-4, abs=1e-5)
        offset += n * n


def test_pseudo_label_rule_branches():
    ll = np.array([[-1.0, -2.0, -3.0, -4.0]], np.float32)  # shares 0.1, 0.2, 0.3, 0.4
    y = np.asarray(ms2d.pseudo_labels(ll, np.ones_like(ll), l_min=0.15, l_max=0.35))
    np.testing.assert_allclose(y, [[1.0, 0.8, 0.7, 0.0]], atol=1e-6)  # < l_min, two middle, >= l_max
    # A masked proposal neither counts in the normalisation nor gets a label.
    ll = np.array([[-1.0, -1.0, -2.0, -100.0]], np.float32)
    y = np.asarray(ms2d.pseudo_labels(ll, np.array([[1, 1, 1, 0]], np.float32), l_min=0.3, l_max=0.5))
    np.testing.assert_allclose(y, [[1.0, 1.0, 0.0, 0.0]], atol=1e-6)  # shares 0.25, 0.25, 0.5
    y = np.asarray(ms2d.pseudo_labels(ll, np.array([[1, 1, 1, 0]], np.float32), l_min=0.2, l_max=0.6))
    np.testing.assert_allclose(y, [[0.75, 0.75, 0.5, 0.0]], atol=1e-6)


def test_reconstruction_and_rg_bce_match_numpy(model_and_outputs):
    _, _, batch, out = model_and_outputs
    config = dict(l_min=0.2, l_max=0.3)
    _, metrics = ms2d.loss_fn(out, batch, **config)
    log_p = np.asarray(out["caption_log_probs"], np.float64)  # [B, S, K, L]
    words = prefix_mask(WORDS, L)
    pmask = np.asarray(out["proposal_mask"])
    rec = [-log_p[b, j, k, w] for b in range(B) for j in range(3) for k in range(4) for w in range(L)
           if words[b, w] and pmask[b, j, k]]
    assert float(metrics["reconstruction_loss"]) == pytest.approx(np.mean(rec), rel=1e-5)
    terms = []
    for b in range(B):
        for j in range(3):
            ll = log_p[b, j].sum(-1)
            for k in range(4):
                share = ll[k] / ll.sum()
                y = 0.0 if share >= 0.3 else (1.0 - share if share >= 0.2 else 1.0)
                z = float(out["cell_logits"][b, int(out["proposals"][b, j, k])])
                terms.append(-(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z)))))
    assert float(metrics["rg_bce_loss"]) == pytest.approx(np.mean(terms), rel=1e-4)
    # The seed's objective: L_rec + L_rg-bce (the fixture scores mismatched pairs too, which adds the MIL term).
    seed_only = {k: v for k, v in out.items() if k != "mismatched_cell_logits"}
    _, seed_metrics = ms2d.loss_fn(seed_only, batch, rec_weight=0.5, bce_weight=2.0, **config)
    assert "mil_loss" not in seed_metrics
    assert float(seed_metrics["loss"]) == pytest.approx(
        float(0.5 * metrics["reconstruction_loss"] + 2.0 * metrics["rg_bce_loss"]), rel=1e-6)
    assert float(metrics["loss"]) == pytest.approx(
        float(metrics["reconstruction_loss"] + metrics["rg_bce_loss"] + metrics["mil_loss"]), rel=1e-6)


def test_mil_ranking_matches_numpy(model_and_outputs):
    _, _, batch, out = model_and_outputs
    _, metrics = ms2d.loss_fn(out, batch, use_pseudo_labels=False, mil_margin=0.5)
    mask = np.asarray(out["cell_mask"]) > 0
    pos, neg = np.asarray(out["cell_logits"]), np.asarray(out["mismatched_cell_logits"])
    index = batch["video_index"]
    terms = [max(0.0, 0.5 - pos[b][mask[b]].max() + neg[b][mask[b]].max()) for b in range(B)
             if index[b] != index[(b + 1) % B]]  # example 1's next query is of its own video: skipped
    assert len(terms) == 3
    assert float(metrics["mil_loss"]) == pytest.approx(np.mean(terms), rel=1e-5)


def iou(s, g):
    inter = max(0.0, min(s[1], g[1]) - max(s[0], g[0]))
    return inter / ((s[1] - s[0]) + (g[1] - g[0]) - inter)


def bce(z, y):
    return y * softplus(-z) + (1 - y) * softplus(z)


@pytest.fixture(scope="module")
def video_negative_outputs():
    """Every cell of the coarsest scale (4 x 4) is a proposal (K = 16, no NMS), so the whole video is one."""
    model = make_model(video_negative=True, caption_input="video", num_proposals=16, proposal_nms=1.0,
                       mismatched_pairs=False)
    batch = make_batch()
    variables = nn.meta.unbox(model.init(jax.random.key(1), batch))
    return model, variables, batch, model.apply(variables, batch)


def test_video_negative_reads_the_whole_video_and_matches_numpy(video_negative_outputs):
    model, variables, batch, out = video_negative_outputs
    log_p, video_log_p = (np.asarray(out[k], np.float64) for k in ("caption_log_probs", "video_caption_log_probs"))
    spans, proposals, pmask = np.asarray(out["cell_spans"]), np.asarray(out["proposals"]), np.asarray(
        out["proposal_mask"])
    for b in range(B):  # the negative is the proposal of the coarsest scale that spans [0, 1]
        whole = [k for k in range(16) if pmask[b, 2, k] and np.allclose(spans[b, proposals[b, 2, k]], [0, 1])]
        assert len(whole) == 1
        np.testing.assert_allclose(video_log_p[b], log_p[b, 2, whole[0]], rtol=1e-5, atol=1e-6)
    _, metrics = ms2d.loss_fn(out, batch, video_negative_margin=0.3, video_negative_weight=2.0)
    ll = np.where(pmask > 0, log_p.sum(-1), -np.inf).reshape(B, -1)
    gaps = (ll.max(1) - video_log_p.sum(-1)) / np.asarray(WORDS)
    assert float(metrics["video_negative_loss"]) == pytest.approx(np.mean(np.maximum(0.0, 0.3 - gaps)), rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(float(
        metrics["reconstruction_loss"] + metrics["rg_bce_loss"] + 2.0 * metrics["video_negative_loss"]), rel=1e-6)
    best = [spans[b, proposals[b].reshape(-1)[np.argmax(ll[b])]] for b in range(B)]
    assert float(metrics["pseudo_span_length"]) == pytest.approx(np.mean([e - s for s, e in best]), rel=1e-5)
    padded = make_batch(t=2 * T, l=L + 4)
    padded["video_feats"][:, T:] = np.random.default_rng(9).normal(size=(B, T, F)) * 50
    big = model.apply(variables, padded)
    np.testing.assert_allclose(np.asarray(big["video_caption_log_probs"])[:, :L], video_log_p, rtol=1e-5, atol=1e-5)


def test_iou_map_pseudo_targets_match_numpy(video_negative_outputs):
    """pseudo_targets=iou_map: the best-reconstructed proposal is the pseudo ground truth of 2D-TAN's scaled-IoU
    BCE over every valid cell."""
    _, _, batch, out = video_negative_outputs
    no_negative = {k: v for k, v in out.items() if k != "video_caption_log_probs"}
    _, metrics = ms2d.loss_fn(no_negative, batch, pseudo_targets="iou_map", min_iou=0.3, max_iou=0.9)
    log_p, spans, logits, mask = (np.asarray(out[k], np.float64) for k in (
        "caption_log_probs", "cell_spans", "cell_logits", "cell_mask"))
    proposals, pmask = np.asarray(out["proposals"]).reshape(B, -1), np.asarray(out["proposal_mask"]).reshape(B, -1)
    terms = []
    for b in range(B):
        ll = np.where(pmask[b] > 0, log_p[b].sum(-1).reshape(-1), -np.inf)
        pseudo = spans[b, proposals[b, np.argmax(ll)]]
        for c in np.flatnonzero(mask[b]):
            terms.append(bce(logits[b, c], np.clip((iou(spans[b, c], pseudo) - 0.3) / 0.6, 0, 1)))
    assert float(metrics["rg_bce_loss"]) == pytest.approx(np.mean(terms), rel=1e-4)
    assert float(metrics["loss"]) == pytest.approx(float(metrics["reconstruction_loss"] + metrics["rg_bce_loss"]),
                                                   rel=1e-6)
    with pytest.raises(ValueError, match="pseudo_targets"):
        ms2d.loss_fn(no_negative, batch, pseudo_targets="gt")


def test_caption_word_mask():
    """word_mask_rate=1 in training: the decoder reads no word (the same log-probs whatever the read words);
    at evaluation, or with rate 0, it reads them all."""
    rng = np.random.default_rng(3)
    feats = jnp.asarray(rng.normal(size=(B, 3, 5)), jnp.float32)
    tokens = jnp.asarray(rng.integers(2, V, size=(B, L)), jnp.int32)
    words, other = (jnp.asarray(rng.normal(size=(B, L, 6)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(prefix_mask(WORDS, L))
    decoder = ms2d.CaptionDecoder(V, 8, word_mask_rate=1.0)
    params = nn.meta.unbox(decoder.init(jax.random.key(0), feats, words, tokens, mask))
    train = lambda w: decoder.apply(params, feats, w, tokens, mask, deterministic=False,  # noqa: E731
                                    rngs={"dropout": jax.random.key(1)})
    np.testing.assert_allclose(train(words), train(other), atol=1e-6)
    evaluated = decoder.apply(params, feats, words, tokens, mask)
    assert not np.allclose(evaluated, decoder.apply(params, feats, other, tokens, mask), atol=1e-4)
    plain = {"params": {k: v for k, v in params["params"].items() if k != "mask_word"}}
    np.testing.assert_allclose(evaluated, ms2d.CaptionDecoder(V, 8).apply(plain, feats, words, tokens, mask),
                               atol=1e-6)


def test_full_supervision_scaled_iou_bce(model_and_outputs):
    _, _, batch, out = model_and_outputs
    _, metrics = ms2d.loss_fn(out, batch, supervision="full", min_iou=0.3, max_iou=0.9)
    spans, logits, mask = (np.asarray(out[k], np.float64) for k in ("cell_spans", "cell_logits", "cell_mask"))
    terms = []
    for b in range(B):
        g = batch["gt_span"][b]
        for c in np.flatnonzero(mask[b]):
            s = spans[b, c]
            inter = max(0.0, min(s[1], g[1]) - max(s[0], g[0]))
            iou = inter / ((s[1] - s[0]) + (g[1] - g[0]) - inter)
            y = np.clip((iou - 0.3) / 0.6, 0, 1)
            terms.append(y * softplus(-logits[b, c]) + (1 - y) * softplus(logits[b, c]))
    assert float(metrics["iou_bce_loss"]) == pytest.approx(np.mean(terms), rel=1e-4)
    with pytest.raises(ValueError, match="supervision"):
        ms2d.loss_fn(out, batch, supervision="semi")


def test_cell_spans_are_fractions_of_the_valid_clips(model_and_outputs):
    _, _, _, out = model_and_outputs
    spans = np.asarray(out["cell_spans"])
    n = T // 4
    offset = T * T + (T // 2) ** 2
    # Video 2 has 9 valid clips: at stride 4, cell (0, 2) covers clips 0..8 -> [0, 1]; (1, 1) clips 4..7.
    np.testing.assert_allclose(spans[2, offset + 0 * n + 2], [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(spans[2, offset + 1 * n + 1], [4 / 9, 8 / 9], atol=1e-6)


def test_padding_never_changes_the_valid_outputs(model_and_outputs):
    model, variables, batch, out = model_and_outputs
    padded = make_batch(t=2 * T, l=L + 4)
    rng = np.random.default_rng(9)
    padded["video_feats"][:, T:] = rng.normal(size=(B, T, F)) * 50  # garbage past the valid clips
    padded["query_tokens"][:, L:] = rng.integers(2, V, size=(B, 4))
    big = model.apply(variables, padded)
    offsets_small = np.cumsum([0] + [(T // r) ** 2 for r in model.scales])
    offsets_big = np.cumsum([0] + [(2 * T // r) ** 2 for r in model.scales])
    for j, r in enumerate(model.scales):
        n, nb = T // r, 2 * T // r
        small = np.asarray(out["cell_logits"])[:, offsets_small[j]:offsets_small[j + 1]].reshape(B, n, n)
        large = np.asarray(big["cell_logits"])[:, offsets_big[j]:offsets_big[j + 1]].reshape(B, nb, nb)
        np.testing.assert_allclose(large[:, :n, :n], small, rtol=1e-5, atol=1e-5)
        assert not np.asarray(big["cell_mask"])[:, offsets_big[j]:offsets_big[j + 1]].reshape(B, nb, nb)[:, n:].any()
    np.testing.assert_allclose(np.asarray(big["caption_log_probs"])[..., :L], np.asarray(out["caption_log_probs"]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(big["candidate_scores"]), np.asarray(out["candidate_scores"]),
                               rtol=1e-5, atol=1e-5)


def tiny_config(**loss):
    config = ms2d_config.get_config()
    config.batch_size = 8
    config.num_train_steps = 3
    config.log_every_steps = 1
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 1000
    config.model.update(word_dim=8, hidden_size=8, scales=(1, 2), num_proposals=3, caption_hidden=8)
    config.loss.update(loss)
    config.dataset.max_video_len = 16
    config.dataset.max_query_len = 12
    config.dataset.eval_splits = ("val",)
    synth = config.dataset.synthetic
    synth.feature_dim = 8
    synth.num_train, synth.num_val, synth.num_test, synth.num_test_novel, synth.num_test_paraphrase = (
        32, 8, 8, 0, 0)
    synth.min_clips, synth.max_clips = 16, 24
    synth.parser = "gold"
    config.eval.batch_size = 8
    return config


def randomise_train_spans(data_dir, seed=0):
    rng = np.random.default_rng(seed)
    examples = list(schema.read_split(data_dir, "train"))
    for ex in examples:
        a, b = np.sort(rng.uniform(0, ex.duration, 2))
        ex.gt_spans = np.array([[a, max(b, a + 1e-3)]], np.float32)
    for path in schema.split_files(data_dir, "train"):
        os.remove(path)
    schema.write_split(examples, data_dir, "train")


def test_weak_training_never_reads_a_boundary(tmp_path):
    """The training batches of the weak model have no span keys, and randomising every training span leaves
    the trained parameters unchanged; the fully supervised variant does read them (so the test can fail)."""
    assert not registry.get_model_spec("ms2d").needs_labels(tiny_config())
    assert registry.get_model_spec("ms2d").needs_labels(tiny_config(supervision="full"))
    data_a, data_b = str(tmp_path / "data_a"), str(tmp_path / "data_b")
    synthetic.build(data_a, synthetic.config_from_dict(tiny_config().dataset.synthetic.to_dict()))
    shutil.copytree(data_a, data_b)
    randomise_train_spans(data_b)
    changed = [not np.allclose(a.gt_spans, b.gt_spans) for a, b in zip(schema.read_split(data_a, "train"),
                                                                        schema.read_split(data_b, "train"))]
    assert sum(changed) == len(changed) == 32
    same = {}
    for supervision in ("weak", "full"):
        states = []
        for data in (data_a, data_b):
            config = tiny_config(supervision=supervision)
            config.dataset.data_dir = data
            states.append(train.train_and_evaluate(config, str(tmp_path / f"{supervision}_{os.path.basename(data)}"))[0])
        same[supervision] = all(jax.tree.leaves(jax.tree.map(
            lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), states[0].params, states[1].params)))
    assert same == {"weak": True, "full": False}
    config = tiny_config()
    ds = pipeline.make_dataset(data_b, "train", train.resolve_dataset(config, data_b).dataset, batch_size=4,
                               training=True, labels=False)
    assert not {"gt_span", "gt_spans", "gt_spans_mask"} & set(next(pipeline.as_numpy(ds)))
