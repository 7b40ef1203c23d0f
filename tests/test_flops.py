"""benchmarks.flops: matrix-product FLOPs counted with loop trip counts, and the standalone ceiling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import flops


def _recurrence(w, x):
    """A 7-step scan of [4, 8] x [8, 8] products after one [4, 7, 5] x [5, 8] input projection."""
    projected = jnp.einsum("btf,fd->btd", x, w["input"])

    def step(h, xt):
        h = jnp.tanh(xt + h @ w["recurrent"])
        return h, h

    return jax.lax.scan(step, jnp.zeros((4, 8)), jnp.swapaxes(projected, 0, 1))[1]


def _inputs():
    rng = np.random.default_rng(0)
    w = {"input": jnp.asarray(rng.normal(size=(5, 8)), jnp.float32),
         "recurrent": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)}
    return w, jnp.asarray(rng.normal(size=(4, 7, 5)), jnp.float32)


def test_scan_bodies_count_once_per_step_and_gradients_count_their_products():
    w, x = _inputs()
    forward = 2 * 4 * 7 * 5 * 8 + 7 * 2 * 4 * 8 * 8
    assert flops.count_flops(_recurrence, w, x) == forward
    # XLA's own cost analysis counts the loop body once: this is the number it misses.
    assert flops.count_flops(_recurrence, w, x) > 2 * 4 * 7 * 5 * 8 + 2 * 4 * 8 * 8
    # The gradient with respect to both weights: the forward products again (saved for the backward pass
    # or not, each is executed once in the forward scan) plus two products per forward product
    # except the input's (x needs no gradient): d(input) = x^T g, d(recurrent) = h^T g and dh = g W^T.
    grad = flops.count_flops(jax.grad(lambda w, x: jnp.sum(_recurrence(w, x))), w, x)
    assert grad == forward + 2 * 4 * 7 * 5 * 8 + 2 * 7 * 2 * 4 * 8 * 8


def test_convolutions_count_their_window_and_cond_its_most_expensive_branch():
    rng = np.random.default_rng(1)
    image = jnp.asarray(rng.normal(size=(2, 3, 9, 9)), jnp.float32)  # NCHW
    kernel = jnp.asarray(rng.normal(size=(6, 3, 3, 3)), jnp.float32)  # OIHW
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME")  # noqa: E731
    assert flops.count_flops(conv, image, kernel) == 2 * (2 * 6 * 9 * 9) * 3 * 3 * 3

    a = jnp.ones((4, 16))
    b = jnp.ones((16, 32))
    cheap_or_dear = lambda p, a, b: jax.lax.cond(p, lambda: a @ b, lambda: (a @ b) @ jnp.ones((32, 32)))  # noqa
    assert flops.count_flops(cheap_or_dear, True, a, b) == 2 * 4 * 16 * 32 + 2 * 4 * 32 * 32


def test_a_while_loop_with_products_is_refused():
    def loop(w):
        return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] @ w, c[1] + 1), (w, 0))[0]

    with pytest.raises(ValueError, match="static trip count"):
        flops.count_flops(loop, jnp.ones((4, 4)))


def test_standalone_ceiling_groups_equal_products_and_sums_their_times():
    w, x = _inputs()
    ceiling = flops.standalone_ceiling(_recurrence, w, x)
    assert ceiling["flops"] == flops.count_flops(_recurrence, w, x)
    by_count = sorted((p["count"], p["operands"]) for p in ceiling["products"])
    # Two distinct products: the projection once, the recurrent product once per step.
    assert by_count == [(1, ["float32[4, 7, 5]", "float32[5, 8]"]), (7, ["float32[4, 8]", "float32[8, 8]"])]
    # Unrounded: a product this small takes microseconds, which rounding to 0.01 ms would erase.
    assert all(p["total_ms"] > 0 and p["gflops"] > 0 for p in ceiling["products"])
    assert ceiling["dot_ceiling_ms"] == pytest.approx(sum(p["total_ms"] for p in ceiling["products"]), rel=1e-9)
