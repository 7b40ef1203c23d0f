"""Data and model parallelism: every model's step is the same on 1 device, under pmap and on a 4x2 mesh, and
six steps' loss trajectory the same on 1 device, under pmap and on an 8x1 jit mesh.

The multi-device checks run in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(the flag must be set before JAX starts).
"""

import functools
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import test as test_config
from jvmr import registry, sharding, train
from jvmr.data import pipeline
from reference import simulated_devices_xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EQUIVALENCE_SCRIPT = r"""
import functools, json, sys
import jax, numpy as np
from configs import test as test_config
from jvmr import registry, sharding, train
from jvmr.data import pipeline
assert jax.device_count() == 8, jax.devices()
root, results = sys.argv[1], {}
TRAJECTORY_STEPS = 6

def floats(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree) if np.issubdtype(np.asarray(x).dtype, np.floating)]

def max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(floats(a), floats(b)))

def max_abs(a):
    return max(float(np.max(np.abs(x))) for x in floats(a))

for name in test_config.MODELS:
    config = test_config.get_config(name)
    config.batch_size = config.eval.batch_size = 16
    for key in ("dropout", "input_dropout", "attention_dropout"):  # deterministic math in every mode
        if key in config.model:
            config.model[key] = 0.0
    config.optimizer.schedule, config.optimizer.warmup_steps = "constant", 0  # a full-size first step
    # Adam's first update is lr * g / (|g| + eps): with the default eps it is +-lr for every parameter whatever
    # its gradient (tiny gradients' rounding decides the sign); eps = 1 makes it proportional to the gradient.
    config.optimizer.eps = 1.0
    data_dir = train.prepare_data(config, f"{root}/{name}")
    config = train.resolve_dataset(config, data_dir)
    vocab = pipeline.load_vocabulary(data_dir)
    spec = registry.get_model_spec(name)
    train_iter = pipeline.as_numpy(pipeline.make_dataset(
        data_dir, config.dataset.train_split, config.dataset, batch_size=16, training=True, vocab=vocab,
        inputs=spec.inputs(config.model), labels=spec.needs_labels(config)))
    batches = [next(train_iter) for _ in range(TRAJECTORY_STEPS)]
    batch = batches[0]
    model = registry.create_model(config.model, len(vocab))
    state0 = jax.device_get(train.create_train_state(config, model, batch, jax.random.key(0)))
    loss_config = config.loss.to_dict()
    ref_step = jax.jit(functools.partial(train.train_step, loss_fn=spec.loss_fn, loss_config=loss_config))
    ref, ref_metrics = ref_step(state0, pipeline.device_batch(batch))
    ref_losses, state = [], state0  # the loss trajectory over several steps
    for b in batches:
        state, m = ref_step(state, pipeline.device_batch(b))
        ref_losses.append(float(m["loss"]))
    ref_final = jax.device_get(state)
    ref_spans, ref_scores = jax.jit(functools.partial(train.eval_step, predict_fn=spec.predict_fn))(
        state0, pipeline.device_batch(batch))
    out = {"step_size": max_diff(ref.params, state0.params), "loss": float(ref_metrics["loss"]),
           "moments_size": max_abs(ref.opt_state), "losses": ref_losses,
           "trajectory_size": max_diff(ref_final.params, state0.params)}
    # The trajectories run under pmap and on a data-parallel 8 x 1 mesh; the 4 x 2 mesh runs one step (its
    # model-axis collectives, run back to back on 8 simulated CPU devices sharing 2 cores, have hung XLA's
    # in-process rendezvous once here).
    for mode, mesh in (("pmap", None), ("jit_4x2", (4, 2)), ("jit_8x1", (8, 1))):
        config.parallelism = mode.split("_")[0]
        if mesh:
            config.sharding.data, config.sharding.model = mesh
        stepper = train.Stepper(config, spec, model, batch)
        row = {}
        if mode != "jit_8x1":  # one step and a prediction (the 8 x 1 mesh: the trajectory only)
            new, metrics = stepper.train(stepper.put_state(state0), batch)
            spans, scores = stepper.predict(stepper.put_state(state0), batch)
            finite = np.isfinite(ref_scores)
            row = {"loss_diff": abs(float(metrics["loss"]) - out["loss"]),
                   "param_diff": max_diff(jax.device_get(stepper.get_state(new)).params, ref.params),
                   "opt_diff": max_diff(jax.device_get(stepper.get_state(new)).opt_state, ref.opt_state),
                   "predict_diff": float(max(np.max(np.abs(spans - ref_spans)),
                                             np.max(np.abs(np.where(finite, scores - ref_scores, 0.0))))),
                   "same_masked": bool(np.array_equal(np.isfinite(scores), finite))}
        if mode != "jit_4x2":
            losses, state = [], stepper.put_state(state0)
            for b in batches:
                state, m = stepper.train(state, b)
                losses.append(float(m["loss"]))
            row["losses"] = losses
            row["trajectory_param_diff"] = max_diff(jax.device_get(stepper.get_state(state)).params,
                                                    ref_final.params)
        if mode == "jit_4x2":
            born = jax.block_until_ready(stepper.create_state(jax.random.key(0)))
            row["param_shardings"] = sharding.describe(stepper.state_shardings.params)
            row["opt_shardings"] = sharding.describe(stepper.state_shardings.opt_state)
            row["born_as_intended"] = all(a.sharding.is_equivalent_to(s, a.ndim) for a, s in zip(
                jax.tree.leaves(born), jax.tree.leaves(stepper.state_shardings)))
            row["new_as_intended"] = all(a.sharding.is_equivalent_to(s, a.ndim) for a, s in zip(
                jax.tree.leaves(new), jax.tree.leaves(stepper.state_shardings)))
        out[mode] = row
    results[name] = out
print("RESULT" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    env = dict(os.environ, XLA_FLAGS=simulated_devices_xla_flags(8), TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", EQUIVALENCE_SCRIPT, str(root)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-6000:]
    return json.loads(out.stdout.split("RESULT")[-1])


@pytest.mark.parametrize("name", ["cmin", "cimha", "reloclnet", "ms2d"])
def test_one_step_is_the_same_on_1_device_pmap_and_a_4x2_mesh(equivalence, name):
    result = equivalence[name]
    assert result["step_size"] > 1e-4, result  # the step moves the parameters, so the diffs below can fail
    for mode in ("pmap", "jit_4x2"):
        row = result[mode]
        assert row["loss_diff"] < 1e-5 * max(1.0, abs(result["loss"])), (mode, row)
        assert row["param_diff"] < 1e-3 * result["step_size"], (mode, row)
        assert row["opt_diff"] < 1e-4 * result["moments_size"], (mode, row)  # Adam's moments: the gradients
        assert row["predict_diff"] < 1e-4 and row["same_masked"], (mode, row)


@pytest.mark.parametrize("name", ["cmin", "cimha", "reloclnet", "ms2d"])
def test_loss_trajectory_is_the_same_on_1_device_pmap_and_a_jit_mesh(equivalence, name):
    """Six steps on six batches: the losses and the parameters reached agree to float32 round-off (the modes sum
    the batch in another order; with Adam's eps = 1 the differences do not grow into sign flips)."""
    result = equivalence[name]
    want = np.array(result["losses"])
    assert len(want) == 6 and np.ptp(want) > 1e-3 * np.abs(want).max(), want  # the loss moves: the test can fail
    for mode in ("pmap", "jit_8x1"):
        got = np.array(result[mode]["losses"])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=mode)
        assert result[mode]["trajectory_param_diff"] < 1e-3 * result["trajectory_size"], (mode, result[mode])


# The parameter each model must split over the 'model' axis of a 4x2 mesh, and how.
SHARDED = {
    "cmin": ("['fusion']['bilinear']['kernel']", "P('model',)"),
    "cimha": ("['video_self_attention']['query']['kernel']", "P(None, 'model')"),
    "reloclnet": ("['query_encoder_0']['attention']['query']['kernel']", "P(None, 'model')"),
    "ms2d": ("['map_convs_0']['conv_0']['kernel']", "P(None, None, None, 'model')"),
}


@pytest.mark.parametrize("name", ["cmin", "cimha", "reloclnet", "ms2d"])
def test_parameters_and_optimizer_state_carry_the_intended_shardings(equivalence, name):
    row = equivalence[name]["jit_4x2"]
    path, spec = SHARDED[name]
    assert row["param_shardings"].get(path) == spec, sorted(row["param_shardings"].items())
    # Adam's moments are sharded like their parameters.
    moments = {k: v for k, v in row["opt_shardings"].items() if k.endswith(path)}
    assert len(moments) == 2 and set(moments.values()) == {spec}, row["opt_shardings"]
    assert row["born_as_intended"] and row["new_as_intended"], row


def test_mesh_shape_from_the_config():
    config = ml_collections.ConfigDict({"sharding": {"data": -1, "model": 2}})
    assert sharding.mesh_shape(config, 8) == (4, 2)
    config.sharding.update(data=2, model=-1)
    assert sharding.mesh_shape(config, 8) == (2, 4)
    for data, model in ((3, -1), (2, 2), (-1, 3), (-1, -1), (0, 8)):
        config.sharding.update(data=data, model=model)
        with pytest.raises(ValueError, match="does not use the 8 devices"):
            sharding.mesh_shape(config, 8)
    config.sharding.rules = (("heads", "tensor"),)
    with pytest.raises(ValueError, match="logical_axis"):
        sharding.rules_from_config(config)
    config.sharding.rules = ()
    assert sharding.rules_from_config(config) == sharding.DEFAULT_RULES


def test_indivisible_dimensions_are_replicated():
    mesh = jax.make_mesh((1, 1), sharding.MESH_AXES)
    assert sharding._fit_spec(P(None, "model"), (5, 7), mesh, "x") == P(None, "model")  # size-1 axes divide all
    fake = type("FakeMesh", (), {"shape": {"data": 4, "model": 2}})()
    assert sharding._fit_spec(P(None, "model"), (5, 7), fake, "x") == P()
    assert sharding._fit_spec(P("data", "model"), (8, 6), fake, "x") == P("data", "model")
    assert sharding._fit_spec(P(("data", "model"),), (12,), fake, "x") == P()


# ----------------------------------------------------------------------------- accumulation and bfloat16


@pytest.fixture(scope="module")
def cimha_setup(tmp_path_factory):
    """CI-MHA's tiny config without dropout and segment loss (its loss is then a mean of per-example
    terms), its data, a batch of 16 and an initial state."""
    config = test_config.get_config("cimha")
    config.model.dropout = 0.0
    config.loss.segment_weight = 0.0
    config.batch_size = 16
    config.optimizer.schedule, config.optimizer.warmup_steps, config.optimizer.eps = "constant", 0, 1.0
    data_dir = train.prepare_data(config, str(tmp_path_factory.mktemp("cimha")))
    config = train.resolve_dataset(config, data_dir)
    vocab = pipeline.load_vocabulary(data_dir)
    spec = registry.get_model_spec("cimha")
    batch = next(pipeline.as_numpy(pipeline.make_dataset(data_dir, "train", config.dataset, batch_size=16,
                                                         training=True, vocab=vocab)))
    model = registry.create_model(config.model, len(vocab))
    state = jax.device_get(train.create_train_state(config, model, batch, jax.random.key(0)))
    return config, spec, model, pipeline.device_batch(batch), state


def _step(state, batch, spec, config, **kwargs):
    return jax.jit(functools.partial(train.train_step, loss_fn=spec.loss_fn, loss_config=config.loss.to_dict(),
                                     **kwargs))(state, batch)


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_micro_batches_interleave_examples():
    x = np.arange(12)[:, None] * np.ones((1, 2))
    micro = train.micro_batches({"x": x}, 3)["x"]
    assert micro.shape == (3, 4, 2)
    np.testing.assert_array_equal(micro[1, :, 0], [1, 4, 7, 10])  # examples j with j % 3 == 1


def test_accumulation_is_the_mean_of_micro_batch_gradients(cimha_setup):
    config, spec, _, batch, state = cimha_setup
    full, full_metrics = _step(state, batch, spec, config)
    accumulated, metrics = _step(state, batch, spec, config, accumulation_steps=4)
    # Reference: each micro-batch (examples j % 4 == i) on its own, gradients averaged.
    micro = train.micro_batches(batch, 4)
    one_micro = jax.jit(lambda s, b, i: train._loss_and_grads(s, b, spec.loss_fn, config.loss.to_dict(), micro_step=i))
    per_micro = [one_micro(state, jax.tree.map(lambda x: x[i], micro), i) for i in range(4)]
    grads = jax.tree.map(lambda *g: sum(g) / 4, *[g for _, g in per_micro])
    reference = state.apply_gradients(grads=grads)
    step_size = _max_diff(full.params, state.params)
    assert step_size > 1e-5
    assert _max_diff(accumulated.params, reference.params) < 1e-3 * step_size
    np.testing.assert_allclose(metrics["loss"], np.mean([m["loss"] for m, _ in per_micro]), rtol=1e-5)
    # Without dropout and with a loss that is a mean of per-example terms, it is the full batch's step.
    assert _max_diff(accumulated.params, full.params) < 1e-3 * step_size
    np.testing.assert_allclose(metrics["loss"], full_metrics["loss"], rtol=1e-5)


def test_bfloat16_compute_keeps_float32_state_and_tracks_float32(cimha_setup):
    config, spec, _, batch, state = cimha_setup
    f32, f32_metrics = _step(state, batch, spec, config)
    bf16, bf16_metrics = _step(state, batch, spec, config, compute_dtype="bfloat16")
    for tree in (bf16.params, bf16.opt_state):  # parameters and Adam's moments stay float32
        assert {x.dtype for x in jax.tree.leaves(tree) if x.ndim} == {np.dtype("float32")}
    assert abs(float(bf16_metrics["loss"]) - float(f32_metrics["loss"])) < 2e-2 * abs(float(f32_metrics["loss"]))
    # The updates point the same way (Adam's first moments are the gradients, scaled).
    mu32 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(f32.opt_state.inner_state[1][0].mu)])
    mu16 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(bf16.opt_state.inner_state[1][0].mu)])
    assert np.dot(mu32, mu16) / (np.linalg.norm(mu32) * np.linalg.norm(mu16)) > 0.99
    assert not np.array_equal(mu32, mu16)  # ... and the forward really ran in bfloat16
    # The matrix products run in bfloat16.
    jaxpr = str(jax.make_jaxpr(functools.partial(train.train_step, loss_fn=spec.loss_fn,
                                                 loss_config=config.loss.to_dict(), compute_dtype="bfloat16"))(
        state, batch))
    dots = [line for line in jaxpr.splitlines() if "dot_general" in line]
    assert dots and sum("bf16[" in line for line in dots) >= 0.8 * len(dots), len(dots)


def test_batch_must_split_over_devices_and_micro_batches(cimha_setup):
    config, spec, model, batch, _ = cimha_setup
    config = ml_collections.ConfigDict(config.to_dict())
    config.accumulation_steps = 3
    with pytest.raises(ValueError, match="accumulation_steps 3"):
        train.Stepper(config, spec, model, batch)
    config.accumulation_steps = 1
    config.compute_dtype = "float16"
    with pytest.raises(ValueError, match="compute_dtype"):
        train.Stepper(config, spec, model, batch)


def test_state_shardings_follow_frozen_tables_and_masked_decay(tmp_path):
    """The optimizer's copies of the parameters are sharded like them whatever optax's state looks like
    (multi_transform for a frozen word table, a decay mask that leaves MaskedNodes)."""
    config = test_config.get_config("ms2d")
    config.model.freeze_embeddings = True
    config.optimizer.name, config.optimizer.decay_only_kernels = "adamw", True
    data_dir = train.prepare_data(config, str(tmp_path))
    config = train.resolve_dataset(config, data_dir)
    vocab = pipeline.load_vocabulary(data_dir)
    spec = registry.get_model_spec("ms2d")
    batch = next(pipeline.as_numpy(pipeline.make_dataset(data_dir, "train", config.dataset, batch_size=8,
                                                         training=True, vocab=vocab, labels=False,
                                                         inputs=spec.inputs(config.model))))
    stepper = train.Stepper(config, spec, registry.create_model(config.model, len(vocab)), batch)
    state = stepper.create_state(jax.random.key(0))
    assert jax.tree.structure(state) == jax.tree.structure(stepper.state_shardings)
    table = np.asarray(state.params["word_embed"]["embedding"])  # (the step donates the state)
    state, metrics = stepper.train(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    np.testing.assert_array_equal(state.params["word_embed"]["embedding"], table)  # frozen: not updated
