"""A non-finite gradient skips its update on device (no host sync), is counted and logged with its queries,
and a run of them stops training with a clear message; the checkpoints stay finite."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import test as test_config
from jvmr import registry, search, train


def _poisoned(monkeypatch, bad_steps):
    """CI-MHA whose loss is NaN at the given steps (1-based, as logged)."""
    spec = registry.MODELS["cimha"]

    def loss_fn(outputs, batch, *, step, **kwargs):
        loss, metrics = spec.loss_fn(outputs, batch, step=step, **kwargs)
        poison = jnp.isin(step + 1, jnp.asarray(bad_steps))
        return loss * jnp.where(poison, jnp.nan, 1.0), metrics  # NaN gradients too

    monkeypatch.setitem(registry.MODELS, "cimha", dataclasses.replace(spec, loss_fn=loss_fn))


def _config(steps, limit=3):
    config = test_config.get_config("cimha")
    config.dataset.eval_splits = ("val",)
    config.num_train_steps = steps
    config.log_every_steps = 3
    config.max_nonfinite_updates = limit
    return config


def test_train_step_skips_a_non_finite_update_and_counts_it():
    params = {"w": jnp.ones((3,))}
    tx = optax.apply_if_finite(optax.adam(0.1), max_consecutive_errors=2**31 - 1)
    state = train.TrainState.create(apply_fn=None, params=params, tx=tx, dropout_rng=jax.random.key(0))

    def loss_fn(outputs, batch, **kwargs):
        return jnp.sum(outputs * batch["x"]), {"loss": jnp.sum(outputs * batch["x"])}

    state = state.replace(apply_fn=lambda variables, batch, **kw: variables["params"]["w"])
    step = jax.jit(lambda s, b: train.train_step(s, b, loss_fn=loss_fn, loss_config={}))
    good, metrics = step(state, {"x": jnp.ones((3,))})
    assert float(metrics["update_skipped"]) == 0 and not np.allclose(good.params["w"], 1.0)
    bad, metrics = step(good, {"x": jnp.array([1.0, jnp.nan, 1.0])})
    assert float(metrics["update_skipped"]) == 1 and float(metrics["skipped_in_a_row"]) == 1
    np.testing.assert_array_equal(bad.params["w"], good.params["w"])  # unchanged, moments too
    jax.tree.map(np.testing.assert_array_equal, bad.opt_state.inner_state, good.opt_state.inner_state)
    assert int(bad.step) == 2  # the step (and the batch it read) still counts
    again, metrics = step(bad, {"x": jnp.ones((3,))})
    assert float(metrics["update_skipped"]) == 0 and float(metrics["skipped_in_a_row"]) == 0
    assert int(again.opt_state.total_notfinite) == 1


def test_an_isolated_non_finite_step_is_skipped_logged_and_training_goes_on(monkeypatch, tmp_path, caplog):
    _poisoned(monkeypatch, [2, 5])
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(_config(6), workdir)
    warned = [r.getMessage() for r in caplog.records if "non-finite gradient, update skipped" in r.getMessage()]
    assert [w.split(":")[0] for w in warned] == ["Step 2", "Step 5"]
    assert all("its queries: train-" in w for w in warned)  # the batch's query ids
    run = search.load_run(workdir)
    assert run["step"] == 6 and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(run["params"]))
    rows = [__import__("json").loads(line) for line in open(os.path.join(workdir, "train_metrics.jsonl"))]
    assert [r["update_skipped"] for r in rows] == pytest.approx([1 / 3, 1 / 3])
    assert all(np.isfinite(r["loss"]) for r in rows)  # the mean over the applied updates


def test_non_finite_updates_in_a_row_stop_the_run(monkeypatch, tmp_path):
    _poisoned(monkeypatch, list(range(4, 100)))
    workdir = str(tmp_path / "run")
    with pytest.raises(FloatingPointError, match=r"3 non-finite updates in a row up to step 6 "
                                                 r"\(config.max_nonfinite_updates=3\); the parameters are those "
                                                 r"of step 3; last checkpoint: step 3; the last step's queries: "
                                                 r"train-"):
        train.train_and_evaluate(_config(12), workdir)
    run = search.load_run(workdir)
    assert run["step"] in (3, 6) and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(run["params"]))
