"""Matrix-product FLOPs of a jitted function, counted from its jaxpr with loop trip counts included.

XLA's cost analysis counts a while-loop body once, so a scanned recurrent layer is under-counted by
its length. Here every ``dot_general`` (2 * batch * M * N * K) and convolution (2 * outputs *
kernel window * input channels per group) is counted, ``scan`` bodies are multiplied by their
length, ``cond`` takes its most expensive branch, and every other higher-order primitive (jit,
custom_jvp / custom_vjp, remat, shard_map, ...) is entered. Element-wise work is not counted: the
number is the one a matrix-product rate is compared with.

``standalone_ceiling`` times each distinct product alone at its own shapes: the sum is the step time
if every product ran as fast as it does alone and nothing else took any time, so it bounds the
fraction of the large-GEMM rate a step of these shapes can reach on this machine.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.extend  # noqa: F401  (jax.extend.core.Jaxpr / ClosedJaxpr)
import jax.numpy as jnp
import numpy as np


def _prod(xs) -> int:
    return int(np.prod([int(x) for x in xs], dtype=np.int64)) if len(xs) else 1


def _dot_flops(eqn) -> int:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    contract = _prod([lhs[i] for i in lhs_contract])
    batch = _prod([lhs[i] for i in lhs_batch])
    lhs_free = _prod([d for i, d in enumerate(lhs) if i not in lhs_contract and i not in lhs_batch])
    rhs_free = _prod([d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch])
    return 2 * batch * lhs_free * rhs_free * contract


def _conv_flops(eqn) -> int:
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    dn = eqn.params["dimension_numbers"]
    kernel_spatial = _prod([rhs[i] for i in dn.rhs_spec[2:]])
    in_per_group = rhs[dn.rhs_spec[1]]
    return 2 * _prod(out) * kernel_spatial * in_per_group


def _sub_jaxprs(value: Any):
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def matrix_products(jaxpr, multiplicity: int = 1):
    """Yields (eqn, times executed) for every ``dot_general`` and convolution of a (closed) jaxpr."""
    if isinstance(jaxpr, jax.extend.core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            yield eqn, multiplicity
        elif name == "scan":
            yield from matrix_products(eqn.params["jaxpr"], multiplicity * int(eqn.params["length"]))
        elif name == "cond":
            branches = [list(matrix_products(b, multiplicity)) for b in eqn.params["branches"]]
            yield from max(branches, key=lambda b: sum(m * eqn_flops(e) for e, m in b))
        elif name == "while":
            if any(True for _ in matrix_products(eqn.params["body_jaxpr"])):
                raise ValueError("a while loop with matrix products has no static trip count: use lax.scan "
                                 "(or lax.fori_loop with static bounds)")
        else:
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    yield from matrix_products(sub, multiplicity)


def eqn_flops(eqn) -> int:
    return _dot_flops(eqn) if eqn.primitive.name == "dot_general" else _conv_flops(eqn)


def jaxpr_flops(jaxpr) -> int:
    """Matrix-product FLOPs of a (closed) jaxpr, loops unrolled by their trip counts."""
    return sum(m * eqn_flops(eqn) for eqn, m in matrix_products(jaxpr))


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """Matrix-product FLOPs of one call of ``fn(*args, **kwargs)``."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))


def _standalone_seconds(eqn, target_s: float = 0.05) -> float:
    """Seconds one execution of ``eqn`` takes alone: jitted on random operands of its shapes, repeated
    inside a ``lax.scan`` over distinct operands when it is small (so dispatch does not count), best of 5."""
    avals = [v.aval for v in eqn.invars]
    flops = max(eqn_flops(eqn), 1)
    nbytes = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in avals)
    # ~target_s of work at 200 GFLOP/s, in at most 256 MB of operands.
    reps = int(np.clip(min(target_s * 2e11 / flops, 2**28 / max(nbytes, 1)), 1, 64))
    rng = np.random.default_rng(0)
    operands = [jnp.asarray(rng.normal(size=(reps, *a.shape)), a.dtype) for a in avals]

    def body(carry, xs):
        return carry, eqn.primitive.bind(*xs, **eqn.params)

    run = jax.jit(lambda ops: jax.lax.scan(body, 0, ops)[1])
    jax.block_until_ready(run(operands))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(run(operands))
        best = min(best, time.perf_counter() - start)
    return best / reps


def standalone_ceiling(fn: Callable, *args, **kwargs) -> dict[str, Any]:
    """The step time if every matrix product of ``fn`` ran as fast as it does alone and nothing else took time.

    Returns ``dot_ceiling_ms`` (the sum, loops unrolled, of each product's standalone time), ``flops``, and
    ``products``: the distinct products, slowest in total first, each with its shapes, ``count``,
    ``total_ms`` and ``gflops`` (its standalone rate). Times are not rounded: a tiny function's products
    take microseconds.
    """
    groups: dict[tuple, list] = {}
    for eqn, m in matrix_products(jax.make_jaxpr(fn)(*args, **kwargs)):
        key = (eqn.primitive.name, tuple((tuple(v.aval.shape), str(v.aval.dtype)) for v in eqn.invars),
               repr(sorted(eqn.params.items(), key=lambda kv: kv[0])))
        if key in groups:
            groups[key][1] += m
        else:
            groups[key] = [eqn, m]
    products, total_s, total_flops = [], 0.0, 0
    for (name, operands, _), (eqn, count) in groups.items():
        seconds = _standalone_seconds(eqn)
        flops = eqn_flops(eqn)
        total_s += count * seconds
        total_flops += count * flops
        products.append({"op": name, "operands": [f"{d}{list(s)}" for s, d in operands], "count": count,
                         "total_ms": count * seconds * 1e3, "gflops": flops / seconds / 1e9})
    products.sort(key=lambda p: -p["total_ms"])
    return {"dot_ceiling_ms": total_s * 1e3, "flops": total_flops, "products": products}
