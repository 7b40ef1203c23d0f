"""Matrix-product FLOPs of a jitted function, counted from its jaxpr with loop trip counts included.

XLA's cost analysis counts a while-loop body once, so a scanned recurrent layer is under-counted by
its length. Here every ``dot_general`` (2 * batch * M * N * K) and convolution (2 * outputs *
kernel window * input channels per group) is counted, ``scan`` bodies are multiplied by their
length, ``cond`` takes its most expensive branch, and every other higher-order primitive (jit,
custom_jvp / custom_vjp, remat, shard_map, ...) is entered. Element-wise work is not counted: the
number is the one a matrix-product rate is compared with.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.extend  # noqa: F401  (jax.extend.core.Jaxpr / ClosedJaxpr)
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


def jaxpr_flops(jaxpr) -> int:
    """Matrix-product FLOPs of a (closed) jaxpr, loops unrolled by their trip counts."""
    if isinstance(jaxpr, jax.extend.core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "scan":
            total += int(eqn.params["length"]) * jaxpr_flops(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
        elif name == "while":
            body = jaxpr_flops(eqn.params["body_jaxpr"])
            if body:
                raise ValueError("a while loop with matrix products has no static trip count: use lax.scan "
                                 "(or lax.fori_loop with static bounds)")
        else:
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    total += jaxpr_flops(sub)
    return total


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """Matrix-product FLOPs of one call of ``fn(*args, **kwargs)``."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))
