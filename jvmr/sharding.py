"""Device mesh, logical-axis rules and sharded state creation for the jit path.

Modules name the axes of their large parameters and of their main activations
with *logical* names (``jvmr.models.layers``: ``embed``, ``heads``, ``mlp``,
``fusion``, ``conv_out``, ``vocab``, ``batch``, ``length``); the config's rules
map each name to a mesh axis (``data`` or ``model``) or to nothing (replicated):

    config.sharding.data = -1    # mesh shape: data x model = the number of devices (-1: the rest)
    config.sharding.model = 1
    config.sharding.rules = (("batch", "data"), ("heads", "model"), ...)

With ``model = 1`` this is plain data parallelism; with ``model > 1`` attention
heads, feed-forward inner layers, CMIN's bilinear kernel and MS-2D's map
convolutions are split Megatron-style across the ``model`` axis and XLA inserts
the collectives. Parameters and optimizer state are created directly with
their shardings (``jax.eval_shape`` of the initialiser, then a jitted
initialiser with ``out_shardings``; ``jvmr.train.state_shardings``): no full
copy ever sits on one device.
A parameter dimension that the mesh axis does not divide is replicated instead
(logged), so any mesh shape works with any model width.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "model")

# Logical axis -> mesh axis. Names not listed are replicated.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),  # examples
    ("length", None),  # clips / words
    ("embed", None),  # the model width d (residual streams stay whole on every device)
    ("heads", "model"),  # attention heads (projection outputs H * d_k)
    ("mlp", "model"),  # feed-forward inner layers, gates
    ("fusion", "model"),  # CMIN's bilinear fusion outputs F
    ("conv_out", "model"),  # MS-2D's map-convolution output channels
    ("vocab", None),  # word tables and vocabulary logits
)


def rules_from_config(config: ml_collections.ConfigDict) -> tuple[tuple[str, str | None], ...]:
    """The logical-axis rules of ``config.sharding.rules`` (default :data:`DEFAULT_RULES`), checked."""
    block = config.get("sharding", None)
    rules = tuple(tuple(r) for r in (block.get("rules", None) if block is not None else None) or DEFAULT_RULES)
    for rule in rules:
        if len(rule) != 2 or not isinstance(rule[0], str) or rule[1] not in (None, "", *MESH_AXES):
            raise ValueError(f"config.sharding.rules: each rule is (logical_axis, one of {MESH_AXES} or None), "
                             f"got {rule!r}")
    return tuple((name, axis or None) for name, axis in rules)


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
    """(data, model) sizes from ``config.sharding`` for ``num_devices`` devices (-1 = the rest)."""
    block = config.get("sharding", None) or ml_collections.ConfigDict()
    asked = (int(block.get("data", -1)), int(block.get("model", 1)))
    data, model = asked
    if data == -1 and model > 0 and num_devices % model == 0:
        data = num_devices // model
    elif model == -1 and data > 0 and num_devices % data == 0:
        model = num_devices // data
    if data <= 0 or model <= 0 or data * model != num_devices:
        raise ValueError(f"config.sharding: a data x model mesh of {asked[0]} x {asked[1]} does not use the "
                         f"{num_devices} devices exactly (data * model must equal jax.device_count(); one of "
                         "them may be -1: the rest)")
    return data, model


def initialize_distributed(config: ml_collections.ConfigDict) -> bool:
    """Starts JAX's multi-process runtime when ``config.distributed`` asks for it (before any computation).

    ``coordinator_address`` ('host:port' of process 0) with ``num_processes`` and ``process_id`` for
    explicit clusters (and localhost tests); ``auto=True`` lets ``jax.distributed.initialize()`` read
    the cluster (TPU pods, SLURM, ...). On CPU, cross-process collectives use gloo. Returns whether it
    initialised.
    """
    block = config.get("distributed", None)
    if block is None or not (block.get("coordinator_address", "") or block.get("auto", False)):
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if block.get("coordinator_address", ""):
        if int(block.get("num_processes", 0)) < 1 or int(block.get("process_id", -1)) < 0:
            raise ValueError("config.distributed.coordinator_address needs num_processes (>= 1) and process_id "
                             "(0 .. num_processes - 1)")
        jax.distributed.initialize(block.coordinator_address, int(block.num_processes), int(block.process_id))
    else:
        jax.distributed.initialize()
    logging.info("JAX process %d of %d: %d local devices, %d in all", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
    return True


def barrier(name: str) -> None:
    """Waits until every process gets here (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ``('data', 'model')`` mesh over all devices (every process's) as the config shapes it."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence[tuple[str, str | None]]) -> Iterator[None]:
    """Context in which the modules' ``nn.with_logical_constraint`` calls take effect (used when tracing)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
        yield


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh, where: str) -> P:
    """``spec`` with the mesh axes that do not divide their array dimension dropped (replicated)."""
    if not spec:
        return P()
    axes = []
    for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axis is None else (axis,) if isinstance(axis, str) else tuple(axis)
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        if size > 1 and dim % size:
            logging.log_first_n(logging.INFO, "%s: dimension %d is not divisible by mesh axes %s (%d); "
                                "it is replicated", 20, where, dim, names, size)
            axis = None
        axes.append(axis)
    while axes and axes[-1] is None:
        axes.pop()
    return P(*axes)


def shardings_of(abstract_boxed: Any, mesh: Mesh, rules: Sequence[tuple[str, str | None]]) -> Any:
    """NamedShardings for the *unboxed* version of ``abstract_boxed`` (a pytree with
    ``nn.LogicallyPartitioned`` leaves, e.g. ``jax.eval_shape`` of an initialiser).

    Unannotated leaves are replicated; annotated ones follow ``rules``, except
    dimensions the mesh axis does not divide."""
    logical = nn.get_partition_spec(abstract_boxed)
    mesh_specs = nn.logical_to_mesh(logical, rules)
    unboxed = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.LogicallyPartitioned) else x,
                           abstract_boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(unboxed)
    spec_leaves = treedef.flatten_up_to(mesh_specs)
    shardings = [NamedSharding(mesh, _fit_spec(spec, leaf.shape, mesh, jax.tree_util.keystr(path)))
                 for (path, leaf), spec in zip(paths_and_leaves, spec_leaves)]
    return jax.tree_util.tree_unflatten(treedef, shardings)


def like_params(tree: Any, params: Any, param_shardings: Any, default: NamedSharding) -> Any:
    """Shardings for ``tree`` (e.g. an optimizer state, abstract) in which every leaf that copies a parameter
    (its key path ends with that parameter's path, and its shape is the parameter's: Adam's moments,
    whatever wrappers optax puts around them) is sharded like the parameter, and the rest ``default``."""
    by_path = {jax.tree_util.keystr(path): (leaf.shape, s) for (path, leaf), s in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(param_shardings))}

    def pick(path, leaf):
        key = jax.tree_util.keystr(path)
        for suffix, (shape, s) in by_path.items():
            if key.endswith(suffix) and getattr(leaf, "shape", None) == shape:
                return s
        return default
    return jax.tree_util.tree_map_with_path(pick, tree)


def describe(shardings: Any) -> dict[str, str]:
    """``{'params/…/kernel': "PartitionSpec(None, 'model')"}`` for the leaves that are not replicated."""
    out = {}
    for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]:
        if isinstance(s, NamedSharding) and any(a is not None for a in s.spec):
            out[jax.tree_util.keystr(path)] = str(s.spec)
    return out
