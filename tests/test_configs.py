"""Config files: every dataset block names a known protocol; model presets load and resolve."""

import inspect

import jax
import numpy as np
import optax
import pytest

from configs import cimha, cmin, common, datasets, ms2d, reloclnet
from jvmr import metrics, registry, train


@pytest.mark.parametrize("name", datasets.DATASET_NAMES)
def test_dataset_blocks_name_their_protocol(name):
    block = datasets.dataset_config(name)
    assert block.name == name
    assert block.protocol == metrics.DATASET_PROTOCOLS[name] and block.protocol in metrics.PROTOCOLS
    assert block.eval_splits and block.train_split not in block.eval_splits
    assert block.feature_dim == 0  # read from the manifest
    # The base block defers both to run time (so --config.dataset.name=X alone works).
    lazy = datasets.dataset_config(name, explicit=False)
    assert lazy.protocol == "" and lazy.eval_splits == ()
    assert metrics.protocol_for_dataset(name, lazy.protocol).name == block.protocol


def test_papers_protocols():
    # 2D-TAN-lineage tables (CMIN, CI-MHA) on the grounding datasets; TVRetrieval's eval on TVR.
    assert [metrics.DATASET_PROTOCOLS[n] for n in ("charades_sta", "activitynet_captions", "tacos", "tvr")] == [
        "2dtan", "2dtan", "2dtan", "tvr"]
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.dataset_config("didemo")
    with pytest.raises(ValueError, match="set dataset.protocol"):
        metrics.protocol_for_dataset("didemo")


def test_base_config_is_the_synthetic_benchmark():
    config = common.get_base_config()
    assert config.dataset.name == "synthetic" and config.dataset.synthetic.feature_dim == 128
    assert not hasattr(config.eval, "nms_threshold")  # scoring is the protocol's


@pytest.mark.parametrize("preset", ["activitynet_captions", "tacos", "charades_sta"])
def test_cmin_presets(preset):
    config = cmin.get_config(preset)
    assert config.dataset.name == preset and config.dataset.protocol == "2dtan"
    assert config.model.d_model == 512 and config.model.word_dim == 300 and config.dataset.pretrained_embeddings
    assert config.dataset.video_sampling == "resample"
    assert max(config.model.anchor_widths) <= config.dataset.max_video_len
    assert config.num_train_steps > 0 and config.eval_every_steps > 0
    with pytest.raises(ValueError, match="presets"):
        cmin.get_config("tvr_typo")


def test_cmin_released_switch():
    """':released' (alone or after a preset) sets the released code's model and losses, nothing else."""
    paper, released = cmin.get_config("activitynet_captions"), cmin.get_config("activitynet_captions,released")
    assert (released.model.fusion, released.model.attention_window, released.model.gcn_placement,
            released.model.gcn_gate_input) == ("concat", 3, "before_rnn", "transformed")
    assert (released.loss.label_mode, released.loss.reg_mode) == ("scaled", "released")
    assert paper.model.fusion == "bilinear" and paper.loss.reg_mode == "paper"
    changed = {f"{block}.{k}" for block in ("model", "loss", "optimizer", "dataset")
               for k, v in released[block].items() if paper[block][k] != v}
    assert changed == set(cmin.RELEASED)
    assert cmin.get_config("released").dataset.name == cmin.get_config().dataset.name
    for bad in ("released,nope", "tacos,activitynet_captions"):
        with pytest.raises(ValueError, match="presets"):
            cmin.get_config(bad)


def test_cmin_released_hyperparameters():
    anet, tacos = cmin.get_config("activitynet_captions"), cmin.get_config("tacos")
    assert (anet.optimizer.learning_rate, anet.optimizer.weight_decay, anet.batch_size) == (8e-4, 1e-7, 128)
    assert (tacos.optimizer.learning_rate, tacos.optimizer.weight_decay, tacos.batch_size) == (4e-4, 1e-8, 64)
    assert anet.model.anchor_widths == (16, 32, 64, 96, 128, 160, 192) and tacos.model.anchor_widths == (6, 18, 32)
    assert anet.num_train_steps == 10 * 293 and tacos.num_train_steps == 40 * 153  # epochs x batches


@pytest.mark.parametrize("preset", ["charades_sta", "activitynet_captions", "tacos"])
def test_cimha_presets_use_the_papers_settings(preset):
    config = cimha.get_config(preset)
    assert config.dataset.name == preset and config.dataset.protocol == "2dtan"
    assert (config.dataset.max_query_len, config.dataset.max_video_len, config.batch_size) == (25, 128, 100)
    assert (config.optimizer.name, config.optimizer.learning_rate) == ("adam", 1e-4)
    assert config.model.d_model == 512 and config.model.word_dim == 300 and config.dataset.pretrained_embeddings
    default = cimha.get_config()
    assert default.dataset.name == "synthetic" and default.model.name == "cimha"


@pytest.mark.parametrize("module,preset", [(cmin, None), (cmin, "activitynet_captions"), (cimha, None),
                                           (cimha, "charades_sta"), (reloclnet, None), (reloclnet, "tvr"),
                                           (reloclnet, "activitynet_captions"), (ms2d, None),
                                           (ms2d, "charades_sta"), (ms2d, "activitynet_captions")])
def test_model_and_loss_keys_reach_the_model(module, preset):
    """Every model key is a module field (so --config.model.X=... works) and every loss key a loss_fn argument."""
    config = module.get_config(preset)
    model = registry.create_model(config.model, vocab_size=50)
    for key, value in config.model.items():
        if key != "name":
            assert getattr(model, key) == (tuple(value) if isinstance(value, list) else value), key
    loss_args = inspect.signature(registry.get_model_spec(config.model.name).loss_fn).parameters
    assert set(config.loss) <= set(loss_args)


def test_reloclnet_presets():
    default = reloclnet.get_config()
    assert default.dataset.name == "synthetic_corpus" and default.dataset.protocol == "tvr"
    assert default.model.use_subtitles and default.dataset.corpus.subtitle_dim > 0
    tvr = reloclnet.get_config("tvr")
    # The released code's settings (methods.md 1(b)).
    assert (tvr.model.hidden_size, tvr.model.num_heads, tvr.model.conv_kernel_size) == (384, 8, 5)
    assert tvr.model.use_subtitles and tvr.model.use_query_features and tvr.dataset.max_query_len == 30
    assert (tvr.model.min_span_len, tvr.model.max_span_len, tvr.dataset.max_video_len) == (2, 16, 128)
    assert (tvr.loss.localization_weight, tvr.loss.video_cl_weight, tvr.loss.frame_cl_weight) == (0.01, 0.03, 0.03)
    assert tvr.loss.vr_negatives == "sampled" and tvr.loss.hard_pool_size == 20
    assert (tvr.loss.cl_critic, tvr.loss.cl_stream_fusion) == ("dot", "estimators")
    assert (default.loss.cl_critic, default.loss.frame_cl_weight) == ("scaled_dot", 1.0)  # the embedded default
    assert (tvr.optimizer.learning_rate, tvr.optimizer.weight_decay, tvr.batch_size) == (1e-4, 0.01, 128)
    assert tvr.optimizer.decay_only_kernels and tvr.optimizer.schedule == "linear"
    anet = reloclnet.get_config("activitynet_captions")
    assert not anet.model.use_subtitles and anet.dataset.pretrained_embeddings


def test_cmin_released_switches_in_the_config():
    default = cmin.get_config()
    assert (default.model.use_gates, default.model.fused_rnn, default.model.freeze_embeddings) == (True, True, False)
    assert default.loss.reg_mode == "paper" and default.optimizer.name == "adamw"
    for preset in ("activitynet_captions", "tacos", "charades_sta"):
        config = cmin.get_config(preset)
        assert config.model.freeze_embeddings and config.optimizer.name == "adamw"  # fixed GloVe, fairseq's Adam
    assert cimha.get_config().model.freeze_embeddings is False


def _optimizer_config(name, weight_decay, lr=0.01, freeze=False):
    config = cmin.get_config()
    config.optimizer.update(name=name, weight_decay=weight_decay, learning_rate=lr, schedule="constant",
                            warmup_steps=0, grad_clip_norm=0.0)
    config.model.freeze_embeddings = freeze
    return config


def _adam_np(params, grads_per_step, lr, wd, decoupled, b1=0.9, b2=0.999, eps=1e-8):
    """Adam on a list of leaves: decoupled (AdamW: p -= lr * (m^/(sqrt(v^) + eps) + wd * p)) or L2 (g += wd * p)."""
    p = [np.asarray(x, np.float64) for x in params]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for step, grads in enumerate(grads_per_step, 1):
        for i, g in enumerate(grads):
            g = np.asarray(g, np.float64) + (0.0 if decoupled else wd * p[i])
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            update = (m[i] / (1 - b1**step)) / (np.sqrt(v[i] / (1 - b2**step)) + eps)
            p[i] = p[i] - lr * (update + (wd * p[i] if decoupled else 0.0))
    return p


def _run_optimizer(config, params, grads_per_step):
    tx = train.create_optimizer(config)
    state = tx.init(params)
    for grads in grads_per_step:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_create_optimizer_matches_numpy_adam(name):
    """'adamw' decays decoupled, scaled by the learning rate (fairseq's Adam); 'adam' adds an L2 term."""
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=3).astype(np.float32), "b": {"c": rng.normal(size=(2, 2)).astype(np.float32)}}
    grads = [jax.tree.map(lambda x, s=s: np.random.default_rng(s).normal(size=x.shape).astype(np.float32), params)
             for s in (1, 2, 3)]
    lr, wd = 0.01, 0.5
    leaves = lambda tree: jax.tree.leaves(tree)  # noqa: E731
    got = _run_optimizer(_optimizer_config(name, wd, lr), params, grads[:1])
    want = _adam_np(leaves(params), [leaves(g) for g in grads[:1]], lr, wd, decoupled=name == "adamw")
    for a, b in zip(leaves(got), want):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-7)
    got = _run_optimizer(_optimizer_config(name, wd, lr), params, grads)  # three steps: bias corrections
    want = _adam_np(leaves(params), [leaves(g) for g in grads], lr, wd, decoupled=name == "adamw")
    for a, b in zip(leaves(got), want):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
    # The other rule is measurably different with this decay.
    other = _adam_np(leaves(params), [leaves(g) for g in grads], lr, wd, decoupled=name != "adamw")
    assert not all(np.allclose(np.asarray(a), b, rtol=1e-4) for a, b in zip(leaves(got), other))


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_frozen_word_table_never_moves(name):
    """freeze_embeddings: no update for params['word_embed'], weight decay included; the rest trains as usual."""
    rng = np.random.default_rng(1)
    params = {"word_embed": {"embedding": rng.normal(size=(5, 3)).astype(np.float32)},
              "head": {"kernel": rng.normal(size=(3, 2)).astype(np.float32)}}
    grads = [{"word_embed": {"embedding": np.zeros((5, 3), np.float32)},  # stop_gradient in the model
              "head": {"kernel": np.random.default_rng(s).normal(size=(3, 2)).astype(np.float32)}} for s in (1, 2)]
    got = _run_optimizer(_optimizer_config(name, 0.5, freeze=True), params, grads)
    np.testing.assert_array_equal(np.asarray(got["word_embed"]["embedding"]), params["word_embed"]["embedding"])
    want = _adam_np([params["head"]["kernel"]], [[g["head"]["kernel"]] for g in grads], 0.01, 0.5,
                    decoupled=name == "adamw")
    np.testing.assert_allclose(np.asarray(got["head"]["kernel"]), want[0], rtol=1e-5, atol=1e-6)
    unfrozen = _run_optimizer(_optimizer_config(name, 0.5, freeze=False), params, grads)
    assert not np.allclose(np.asarray(unfrozen["word_embed"]["embedding"]), params["word_embed"]["embedding"])


def test_linear_schedule_and_kernel_only_decay():
    config = reloclnet.get_config()
    config.optimizer.update(schedule="linear", learning_rate=0.1, warmup_steps=10, warmup_init_lr=0.0,
                            grad_clip_norm=0.0, weight_decay=0.5, decay_only_kernels=True)
    config.num_train_steps = 110
    schedule = train.create_learning_rate_schedule(config.optimizer, config.num_train_steps)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 10, 60, 110)], [0.0, 0.05, 0.1, 0.05, 0.0],
                               atol=1e-7)
    # With a zero gradient only the decay moves parameters: kernels shrink, biases / 1-d params stay.
    tx = train.create_optimizer(config)
    params = {"dense": {"kernel": np.ones((2, 3), np.float32), "bias": np.ones(3, np.float32)}}
    state = tx.init(params)
    grads = jax.tree.map(np.zeros_like, params)
    for _ in range(12):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert np.all(np.asarray(params["dense"]["kernel"]) < 1.0)
    np.testing.assert_array_equal(params["dense"]["bias"], np.ones(3))
