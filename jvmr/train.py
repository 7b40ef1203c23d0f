"""Training and evaluation loop shared by every model (plain module-level functions).

``train_and_evaluate(config, workdir)`` is the whole job: it prepares the data,
builds the model named by ``config.model.name`` from the registry, trains it
with a jitted, buffer-donating step over a ``('data', 'model')`` device mesh
(``jvmr.sharding``: batch split over ``data``, parameters and optimizer state
sharded by the config's logical-axis rules; or with ``jax.pmap`` when
``config.parallelism == 'pmap'``),
evaluates every ``eval_every_steps`` on the evaluation splits, and checkpoints
with orbax so that rerunning the same command resumes from the latest step.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P

from jvmr import metrics as metrics_lib
from jvmr import fs, registry, sharding
from jvmr.data import pipeline, schema


class TrainState(train_state.TrainState):
    """Flax TrainState plus the root dropout key (folded with the step inside the step)."""

    dropout_rng: jax.Array


# ----------------------------------------------------------------------------- data


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Returns the dataset directory, building the synthetic benchmark there if needed."""
    ds = config.dataset
    if ds.name in ("synthetic", "synthetic_corpus"):
        from jvmr.data import corpus, synthetic
        data_dir = ds.data_dir or os.path.join(workdir, "data")
        start = time.time()
        world = synthetic.config_from_dict(ds.synthetic.to_dict())

        def build():
            if ds.name == "synthetic":
                return synthetic.build(data_dir, world)
            knobs = ds.corpus.to_dict() if "corpus" in ds else {}
            return corpus.build(data_dir, corpus.CorpusConfig(synthetic=world, **knobs))

        # Several processes: process 0 builds, the others then find it built (build is idempotent).
        manifest = build() if jax.process_index() == 0 else None
        sharding.barrier("jvmr_data_ready")
        manifest = manifest or build()
        logging.info("%s benchmark ready in %s (%.1fs): %s", ds.name, data_dir, time.time() - start,
                     manifest["num_examples"])
        return data_dir
    if not ds.data_dir:
        raise ValueError(f"dataset {ds.name!r} needs --config.dataset.data_dir (built by data_prep)")
    if not fs.isdir(ds.data_dir):
        raise FileNotFoundError(f"dataset.data_dir {ds.data_dir!r} does not exist")
    return ds.data_dir


read_manifest = schema.read_manifest


def _manifest_feature_dim(manifest: dict[str, Any], stream: str = "video") -> int | None:
    dim = manifest.get("feature_dim") if stream == "video" else None
    if dim is None and isinstance(manifest.get("feature_dims"), dict):
        dim = manifest["feature_dims"].get(stream)
    return None if dim is None else int(dim)


def resolve_dataset(config: ml_collections.ConfigDict, data_dir: str) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the dataset facts read from ``DATA_DIR/manifest.json``.

    Fills ``dataset.feature_dim`` (0 = from the manifest; a value must agree; likewise
    ``subtitle_dim`` and ``query_feature_dim`` of the optional streams),
    ``dataset.eval_splits`` (empty = every split of the manifest except the
    training split) and ``dataset.protocol`` (empty = the dataset's protocol,
    ``jvmr.metrics.DATASET_PROTOCOLS``), and checks that the manifest is the
    named dataset's and has the splits asked for.
    """
    config = copy.deepcopy(config)
    ds = config.dataset
    manifest = read_manifest(data_dir)
    where = os.path.join(data_dir, "manifest.json")
    if not manifest:
        if not ds.feature_dim or not ds.eval_splits:
            raise FileNotFoundError(f"{where} is missing: set dataset.feature_dim and dataset.eval_splits, or "
                                    "build the data with `python -m data_prep.build`")
    else:
        if manifest.get("dataset") not in (None, ds.name):
            raise ValueError(f"{where} is dataset {manifest['dataset']!r}, but dataset.name is {ds.name!r}")
        for key, stream in (("feature_dim", "video"), ("subtitle_dim", "subtitle"), ("query_feature_dim", "query")):
            dim = _manifest_feature_dim(manifest, stream)
            if not ds.get(key, 0):
                if dim is None and key == "feature_dim":
                    raise ValueError(f"{where} has no feature_dim: set dataset.feature_dim")
                ds[key] = dim or 0
            elif dim is not None and dim != ds[key]:
                raise ValueError(f"dataset.{key} is {ds[key]} but the {stream} features in {data_dir} are "
                                 f"{dim}-d ({where}); leave dataset.{key} at 0 to use the data's")
        splits = [name for name, n in manifest.get("num_examples", {}).items() if n]
        if splits:
            if not ds.eval_splits:
                # Validation splits first, then test splits (val, val_1, val_2, test, test_novel, ...).
                order = lambda n: (0 if n.startswith("val") else 1 if n.startswith("test") else 2, n)  # noqa: E731
                ds.eval_splits = tuple(sorted((n for n in splits if n != ds.train_split), key=order))
            missing = [name for name in (ds.train_split, *ds.eval_splits) if name not in splits]
            query_only = [name for name in missing if name in manifest.get("query_only_splits", ())]
            if query_only:
                raise ValueError(f"split(s) {query_only} of {data_dir} have no ground truth (queries and a corpus "
                                 f"only): they cannot be trained or evaluated on; write their submission with "
                                 f"`python -m jvmr.submit` ({where})")
            if missing:
                raise ValueError(f"split(s) {missing} not in {data_dir}, which has {splits} ({where})")
    if not ds.eval_splits:
        raise ValueError(f"no evaluation split: set dataset.eval_splits ({where})")
    ds.protocol = metrics_lib.protocol_for_dataset(ds.name, ds.protocol).name
    return config


def length_warnings(config: ml_collections.ConfigDict, manifest: dict[str, Any]) -> list[str]:
    """What the model's grid does to the data's long queries and videos (from the manifest's ``lengths``):
    a query of more than ``dataset.max_query_len`` tokens keeps its first ones (arcs to the dropped words
    are masked); in ``pad`` mode a video of more than ``dataset.max_video_len`` clips is mean-pooled to that
    many (``resample``), so its clips are coarser than the others'. One line per split that has any."""
    ds, out = config.dataset, []
    for split, counts in sorted(manifest.get("lengths", {}).items()):
        for key, limit, what, action in (
                ("query_tokens", int(ds.max_query_len), "queries have more than dataset.max_query_len",
                 "tokens: the words after that are dropped"),
                ("video_clips", int(ds.max_video_len), "videos have more than dataset.max_video_len",
                 "clips: they are mean-pooled to that many" if ds.video_sampling == "pad" else None)):
            hist = {int(k): int(v) for k, v in counts.get(key, {}).items()}
            over = sum(v for k, v in hist.items() if k > limit)
            if over and action:
                out.append(f"split {split!r}: {over} of {sum(hist.values())} {what}={limit} {action} "
                           f"(the longest has {max(hist)})")
    return out


def check_inputs(config: ml_collections.ConfigDict, spec: registry.ModelSpec) -> tuple[str, ...]:
    """The model's input groups, after checking the data has the streams they read."""
    inputs = tuple(spec.inputs(config.model))
    for group, key in (("subtitles", "subtitle_dim"), ("query_features", "query_feature_dim")):
        if group in inputs and not config.dataset.get(key, 0):
            raise ValueError(f"model {config.model.name!r} reads the {group} stream, but the data in "
                             f"{config.dataset.data_dir or 'WORKDIR/data'} has none (dataset.{key} is 0); "
                             f"switch it off in the model config or build the data with that stream")
    return inputs


def load_pretrained_embeddings(params: Any, data_dir: str) -> Any:
    """Puts ``DATA_DIR/embeddings.npy`` [V, D] (GloVe rows aligned with vocab.txt) in ``params['word_embed']``."""
    path = os.path.join(data_dir, "embeddings.npy")
    if not fs.exists(path):
        raise FileNotFoundError(f"dataset.pretrained_embeddings is set but {path} does not exist "
                                "(build the data with `python -m data_prep.build --glove=...`)")
    with fs.open(path, "rb") as f:
        table = np.load(f)
    if "word_embed" not in params:
        raise ValueError("dataset.pretrained_embeddings is set but the model has no 'word_embed' table")
    current = params["word_embed"]["embedding"]
    if table.shape != current.shape:
        raise ValueError(f"{path} has shape {table.shape} but the model's word table is {current.shape} "
                         "([vocab size, model.word_dim]); set model.word_dim to the vectors' width")
    params = dict(params)
    params["word_embed"] = dict(params["word_embed"], embedding=jnp.asarray(table, current.dtype))
    logging.info("Loaded pretrained word vectors %s from %s", table.shape, path)
    return params


# ------------------------------------------------------------------------ model/opt


def create_learning_rate_schedule(opt: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
    """Linear warm-up from ``warmup_init_lr`` then the named decay."""
    warmup = int(opt.warmup_steps)
    lr = float(opt.learning_rate)
    if opt.schedule == "inverse_sqrt":  # fairseq's inverse_square_root (CMIN's released code).
        decay = lambda step: lr * jnp.sqrt(max(warmup, 1) / jnp.maximum(step + warmup, 1.0))
    elif opt.schedule == "constant":
        decay = optax.constant_schedule(lr)
    elif opt.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, max(num_train_steps - warmup, 1))
    elif opt.schedule == "linear":  # BERT's warmup_linear: to 0 at the last step.
        decay = optax.linear_schedule(lr, 0.0, max(num_train_steps - warmup, 1))
    else:
        raise ValueError(f"Unknown optimizer.schedule {opt.schedule!r}")
    if warmup <= 0:
        return decay
    ramp = optax.linear_schedule(float(opt.warmup_init_lr), lr, warmup)
    return optax.join_schedules([ramp, decay], [warmup])


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """'adam' (+ an L2 term added to the gradient, torch.optim.Adam) or 'adamw' (decoupled decay
    p -= lr * weight_decay * p, fairseq's Adam); with ``model.freeze_embeddings`` the word table
    (``params['word_embed']``) gets no update at all, weight decay included. Wrapped in
    ``optax.apply_if_finite``: an update with a non-finite gradient is skipped and counted."""
    opt = config.optimizer
    schedule = create_learning_rate_schedule(opt, config.num_train_steps)
    parts = []
    if opt.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if opt.name == "adam":
        if opt.weight_decay > 0:  # torch.optim.Adam's L2 term, added before the moments.
            parts.append(optax.add_decayed_weights(opt.weight_decay))
        parts.append(optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps))
    elif opt.name == "adamw":
        # BERT's optimiser (ReLoCLNet) exempts biases and LayerNorm parameters: decay_only_kernels.
        mask = (lambda params: jax.tree.map(lambda x: x.ndim > 1, params)) if opt.get("decay_only_kernels") else None
        parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                                 weight_decay=opt.weight_decay, mask=mask))
    else:
        raise ValueError(f"Unknown optimizer.name {opt.name!r}")
    tx = optax.chain(*parts)
    if config.model.get("freeze_embeddings", False):
        # A stop_gradient alone would still let the decay (or Adam's normalised L2 gradient) move the table.
        def labels(params):
            return {k: jax.tree.map(lambda _: "frozen" if k == "word_embed" else "train", v)
                    for k, v in params.items()}
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    # A non-finite gradient skips the update on device (parameters and moments unchanged) and is counted
    # (ApplyIfFiniteState); the loop reads the counters when it logs and stops after
    # config.max_nonfinite_updates in a row, so the limit here is never reached.
    return optax.apply_if_finite(tx, max_consecutive_errors=2**31 - 1)


def state_initializer(config: ml_collections.ConfigDict, model, example_batch: dict[str, np.ndarray]
                      ) -> tuple[Callable[[jax.Array], TrainState], Callable[[jax.Array], Any]]:
    """(``rng -> TrainState``, ``rng -> params`` still boxed with their logical axis names, which
    ``jvmr.sharding`` reads) for the same ``rng``."""
    batch = {k: v[:1] for k, v in pipeline.device_batch(example_batch).items()}
    tx = create_optimizer(config)

    def boxed_params(rng: jax.Array) -> Any:
        return model.init(jax.random.split(rng)[0], batch, train=False)["params"]

    def init(rng: jax.Array) -> TrainState:
        params = nn.meta.unbox(boxed_params(rng))
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx, dropout_rng=jax.random.split(rng)[1])
    return init, boxed_params


def create_train_state(config: ml_collections.ConfigDict, model, example_batch: dict[str, np.ndarray],
                       rng: jax.Array) -> TrainState:
    """The initial state on the default device (``Stepper.create_state`` shards it at birth)."""
    return jax.jit(state_initializer(config, model, example_batch)[0])(rng)


def state_shardings(init: Callable[[jax.Array], TrainState], boxed_params: Callable[[jax.Array], Any],
                    mesh: jax.sharding.Mesh, rules) -> TrainState:
    """NamedShardings of the train state: parameters by their logical axes (``jvmr.sharding``), the
    optimizer's copies of them (Adam's moments) like the parameters, everything else replicated."""
    key = jax.random.key(0)
    with sharding.activate(mesh, rules):
        abstract = jax.eval_shape(init, key)
        params = sharding.shardings_of(jax.eval_shape(boxed_params, key), mesh, rules)
    replicated = NamedSharding(mesh, P())
    opt_state = sharding.like_params(abstract.opt_state, abstract.params, params, replicated)
    return abstract.replace(step=replicated, params=params, opt_state=opt_state, dropout_rng=replicated)


# ------------------------------------------------------------------------ steps

LOSS_RNG_STREAM = 2**30  # Folded into the root key for the loss's own draws (sampled negatives).


COMPUTE_DTYPES = ("float32", "bfloat16")


def _floats_to(tree: Any, dtype) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


LOW_PRECISION_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.Einsum)


def _apply(state: TrainState, params: Any, batch: dict[str, jax.Array], compute_dtype: str, **kwargs):
    """The model's outputs, computed in ``compute_dtype``.

    With 'bfloat16': the parameters and the float inputs (features and masks; not the labels,
    ``pipeline.LABEL_KEYS``) are cast to bfloat16 (the float32 parameters receive the gradients through
    the cast); every Dense / Conv layer casts its inputs to bfloat16 (so a float32 value made inside a
    model, e.g. a mask from lengths, cannot promote its matrix products back to float32), and the
    recurrences (``layers.Recurrence``) compute in their kernels' dtype while carrying their states in
    float32; the outputs come back as float32, so that losses (which read the float32 batch) and
    metrics are float32.
    """
    if compute_dtype == "float32":
        return state.apply_fn({"params": params}, batch, **kwargs)
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"config.compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")

    def low_precision_inputs(next_fun, args, call_kwargs, context):
        if not isinstance(context.module, LOW_PRECISION_LAYERS) or context.method_name != "__call__":
            return next_fun(*args, **call_kwargs)
        return next_fun(*_floats_to(args, compute_dtype), **call_kwargs)

    low = {k: (v if k in pipeline.LABEL_KEYS else _floats_to(v, compute_dtype)) for k, v in batch.items()}
    with nn.intercept_methods(low_precision_inputs):
        outputs = state.apply_fn({"params": _floats_to(params, compute_dtype)}, low, **kwargs)
    return _floats_to(outputs, jnp.float32)


def _loss_and_grads(state: TrainState, batch: dict[str, jax.Array], loss_fn: Callable,
                    loss_config: dict[str, Any], axis_name: str | None = None, compute_dtype: str = "float32",
                    micro_step: jax.Array | None = None):
    rng = jax.random.fold_in(state.dropout_rng, state.step)
    loss_rng = jax.random.fold_in(jax.random.fold_in(state.dropout_rng, LOSS_RNG_STREAM), state.step)
    if micro_step is not None:  # gradient accumulation: each micro-batch draws its own masks
        rng, loss_rng = jax.random.fold_in(rng, micro_step), jax.random.fold_in(loss_rng, micro_step)
    if axis_name is not None:  # pmap: every device draws its own dropout masks.
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def compute_loss(params):
        outputs = _apply(state, params, batch, compute_dtype, train=True, rngs={"dropout": rng})
        return loss_fn(outputs, batch, step=state.step, rng=loss_rng, axis_name=axis_name, **loss_config)

    (_, step_metrics), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
    return step_metrics, grads


def micro_batches(batch: dict[str, jax.Array], num: int) -> dict[str, jax.Array]:
    """[B, ...] -> [num, B / num, ...]; micro-batch i holds the examples j with j % num == i, so that each
    device's rows stay on that device when B is split over devices (B / devices divisible by num)."""
    return {k: v.reshape((v.shape[0] // num, num) + v.shape[1:]).swapaxes(0, 1) for k, v in batch.items()}


def train_step(state: TrainState, batch: dict[str, jax.Array], *, loss_fn: Callable,
               loss_config: dict[str, Any], axis_name: str | None = None, accumulation_steps: int = 1,
               compute_dtype: str = "float32"):
    """One optimisation step; with ``axis_name`` (pmap) gradients are averaged across devices.

    With ``accumulation_steps`` k > 1 the batch is split into k micro-batches (:func:`micro_batches`)
    that run one after another (``lax.scan``, so only one micro-batch's activations are alive), and
    the update uses the mean of their gradients; the metrics are their means. Each micro-batch's loss
    is normalised over that micro-batch, so this equals one batch of B when the loss is a mean of
    per-example terms with equal weights; in-batch negatives (ReLoCLNet, MS-2D's mismatched pairs)
    come from the micro-batch only.
    """
    grads_of = functools.partial(_loss_and_grads, loss_fn=loss_fn, loss_config=loss_config,
                                 axis_name=axis_name, compute_dtype=compute_dtype)
    if accumulation_steps == 1:
        step_metrics, grads = grads_of(state, batch)
    else:
        micro = micro_batches(batch, accumulation_steps)

        def accumulate(total, inputs):
            index, one = inputs
            return jax.tree.map(jnp.add, total, grads_of(state, one, micro_step=index)), None

        first = jax.tree.map(lambda x: x[0], micro)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
            lambda st, b: grads_of(st, b, micro_step=jnp.zeros((), jnp.int32)), state, first))
        total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accumulation_steps), micro))
        step_metrics, grads = jax.tree.map(lambda x: x / accumulation_steps, total)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        step_metrics = jax.lax.pmean(step_metrics, axis_name)
    step_metrics = dict(step_metrics, grad_norm=optax.tree.norm(grads))
    state = state.apply_gradients(grads=grads)
    if isinstance(state.opt_state, optax.ApplyIfFiniteState):
        step_metrics["update_skipped"] = 1.0 - state.opt_state.last_finite.astype(jnp.float32)
        step_metrics["skipped_in_a_row"] = state.opt_state.notfinite_count.astype(jnp.float32)
    return state, step_metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, predict_fn: Callable,
              compute_dtype: str = "float32"):
    """Deterministic forward pass -> (candidate spans as fractions [B, N, 2], scores [B, N])."""
    outputs = _apply(state, state.params, batch, compute_dtype, train=False)
    return predict_fn(outputs, batch)


class Stepper:
    """Compiles the train / eval steps for the configured parallelism and feeds them batches.

    'jit' (default): one program over a ``('data', 'model')`` mesh (``jvmr.sharding``): the batch is split
    over ``data``, the parameters and optimizer state are sharded by the logical-axis rules, and the
    modules' activation constraints are active. 'pmap': ``jax.pmap`` over the local devices, replicated
    state, gradients averaged with ``pmean``.
    """

    def __init__(self, config: ml_collections.ConfigDict, spec: registry.ModelSpec, model,
                 example_batch: dict[str, np.ndarray]):
        self.mode = config.parallelism
        self.init_fn, boxed_params = state_initializer(config, model, example_batch)
        loss_config = config.loss.to_dict()
        accumulation = int(config.get("accumulation_steps", 1))
        dtype = config.get("compute_dtype", "float32")
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"config.compute_dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
        n = jax.device_count()
        if self.mode == "pmap" and jax.process_count() > 1:
            raise ValueError("parallelism='pmap' runs on one host; use parallelism='jit' with several processes")
        if self.mode == "jit":
            self.mesh = sharding.make_mesh(config)
            self.rules = sharding.rules_from_config(config)
            n = self.mesh.shape["data"]
        if accumulation < 1:
            raise ValueError(f"config.accumulation_steps must be >= 1, got {accumulation}")
        if config.batch_size % (n * accumulation):
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the {n} devices of the data axis "
                             f"times accumulation_steps {accumulation} (each device's share splits into "
                             f"{accumulation} equal micro-batches)")
        if config.eval.batch_size % n:
            raise ValueError(f"eval.batch_size {config.eval.batch_size} is not divisible by the {n} devices of "
                             "the data axis")
        # The un-jitted step (benchmarks count its FLOPs), then compiled for the parallelism.
        self.step_fn = step_fn = functools.partial(train_step, loss_fn=spec.loss_fn, loss_config=loss_config,
                                                   accumulation_steps=accumulation, compute_dtype=dtype)
        eval_fn = functools.partial(eval_step, predict_fn=spec.predict_fn, compute_dtype=dtype)
        if self.mode == "jit":
            self.replicated = NamedSharding(self.mesh, P())
            self.data_sharding = NamedSharding(self.mesh, P("data"))
            self.state_shardings = state_shardings(self.init_fn, boxed_params, self.mesh, self.rules)
            self._train = jax.jit(step_fn, in_shardings=(self.state_shardings, self.data_sharding),
                                  out_shardings=(self.state_shardings, self.replicated), donate_argnums=0)
            # Predictions come back to every process (each scores the whole split).
            self._eval = jax.jit(eval_fn, in_shardings=(self.state_shardings, self.data_sharding),
                                 out_shardings=self.replicated)
        elif self.mode == "pmap":
            self._train = jax.pmap(functools.partial(step_fn, axis_name="batch"), axis_name="batch",
                                   donate_argnums=0)
            self._eval = jax.pmap(eval_fn)
        else:
            raise ValueError(f"config.parallelism must be 'jit' or 'pmap', got {self.mode!r}")

    def context(self):
        """The context the steps trace and run in (jit: the mesh and the logical-axis rules)."""
        return sharding.activate(self.mesh, self.rules) if self.mode == "jit" else contextlib.nullcontext()

    # Host <-> device layout.
    def create_state(self, rng: jax.Array) -> TrainState:
        """The initial state, laid out for the steps (jit: each array born with its sharding)."""
        if self.mode == "jit":
            with self.context():
                return jax.jit(self.init_fn, out_shardings=self.state_shardings)(rng)
        return self.put_state(jax.jit(self.init_fn)(rng))

    def put_state(self, state: TrainState) -> TrainState:
        """``state`` (e.g. restored, or from ``create_train_state``) laid out for the steps."""
        if self.mode == "jit":
            # Re-wrapped in the steps' own TrainState (its tx / apply_fn are static pytree metadata).
            treedef = jax.tree.structure(self.state_shardings)
            # Copies: the steps donate their state, never the caller's arrays (device_put may alias them).
            leaves = [jnp.copy(x) if isinstance(x, jax.Array) else x for x in jax.tree.leaves(state)]
            if len(leaves) != treedef.num_leaves:
                raise ValueError(f"the state has {len(leaves)} arrays but this model's has {treedef.num_leaves}")
            return jax.device_put(jax.tree.unflatten(treedef, leaves), self.state_shardings)
        # pmap's layout: one copy per local device along a leading axis named like pmap's.
        replicas = NamedSharding(jax.sharding.Mesh(np.array(jax.local_devices()), ("batch",)), P("batch"))
        return jax.tree.map(lambda x: jax.device_put(jnp.stack([x] * jax.local_device_count()), replicas), state)

    def get_state(self, state: TrainState) -> TrainState:
        """A single (unreplicated) copy of the state, e.g. for checkpoints (jit: the sharded state itself)."""
        if self.mode == "jit":
            return state
        return jax.tree.map(lambda x: x[0], state)

    def put_batch(self, batch: dict[str, np.ndarray], *, global_batch: bool = False):
        """This process's share of a global batch (training), or with ``global_batch`` the whole batch,
        identical on every process (evaluation), laid out over the ``data`` axis."""
        batch = pipeline.device_batch(batch)
        if self.mode == "jit" and global_batch:
            return {k: jax.make_array_from_callback(v.shape, self.data_sharding, lambda index, v=v: v[index])
                    for k, v in batch.items()}
        if self.mode == "jit":
            return {k: jax.make_array_from_process_local_data(self.data_sharding, v) for k, v in batch.items()}
        n = jax.local_device_count()
        return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}

    def train(self, state, batch):
        with self.context():
            state, step_metrics = self._train(state, self.put_batch(batch))
        if self.mode == "pmap":
            step_metrics = jax.tree.map(lambda x: x[0], step_metrics)
        return state, step_metrics

    def lower_train(self, state, device_batch):
        """The train step lowered for ``state`` and a batch already laid out by :meth:`put_batch` (for
        ``.compile()``, its cost analysis and timing; call inside :meth:`context`)."""
        return self._train.lower(state, device_batch)

    def predict(self, state, batch) -> tuple[np.ndarray, np.ndarray]:
        """Candidates of a whole evaluation batch (every process passes the same batch and gets them all)."""
        with self.context():
            spans, scores = jax.device_get(self._eval(state, self.put_batch(batch, global_batch=True)))
        if self.mode == "pmap":
            spans = spans.reshape((-1,) + spans.shape[2:])
            scores = scores.reshape((-1,) + scores.shape[2:])
        return np.asarray(spans), np.asarray(scores)


# ------------------------------------------------------------------------ evaluation


def evaluate(stepper: Stepper, state: TrainState, batches: Iterator[dict[str, np.ndarray]],
             protocol: str | metrics_lib.Protocol) -> tuple[dict[str, float], dict[str, Any]]:
    """Runs the model over one split and scores it under ``protocol`` on continuous time (seconds).

    Returns the flat metrics (``jvmr.metrics.flat_metrics``: percent, keys like
    ``R@1,IoU=0.5`` or ``MR-full-R1@0.5``; plus the headline metric per query
    type as ``{type}/{key}``) and the per-query ranked predictions for writing,
    with the protocol's full result under ``"metrics"``.
    """
    protocol = metrics_lib.get_protocol(protocol)
    cand_spans, cand_scores, gts, gt_masks, host = [], [], [], [], {k: [] for k in pipeline.HOST_KEYS}
    durations = []
    for batch in batches:
        spans, scores = stepper.predict(state, batch)
        keep = batch["example_mask"] > 0
        cand_spans.append(spans[keep] * batch["duration"][keep, None, None])
        cand_scores.append(scores[keep])
        gts.append(batch["gt_spans"][keep])
        gt_masks.append(batch["gt_spans_mask"][keep] > 0)
        durations.append(batch["duration"][keep])
        for k in pipeline.HOST_KEYS:
            host[k].extend(x.decode() for x in batch[k][keep])
    spans = np.concatenate(cand_spans)
    scores = np.concatenate(cand_scores)
    gt = np.concatenate(gts)
    gt_mask = np.concatenate(gt_masks)
    result, full, scored = metrics_lib.evaluate_split(protocol, spans, scores, gt, gt_mask, host["query_type"])
    predictions = dict(host, duration=np.concatenate(durations), spans=scored.spans, scores=scored.scores,
                       valid=scored.valid, gt_spans=gt, gt_valid=gt_mask, metrics=full, protocol=protocol.name)
    return result, predictions


def evaluate_corpus(config: ml_collections.ConfigDict, model, state: TrainState,
                    batches: Iterator[dict[str, np.ndarray]], out_sharding: Any = None
                    ) -> tuple[dict[str, float], dict[str, Any]]:
    """VCMR / SVMR / VR of one split against its whole corpus (``jvmr.retrieval.evaluate_corpus``).

    ``out_sharding``: where the encodings go (replicated over the mesh, so that every process reads them)."""
    from jvmr import retrieval
    params = state.params

    def encoder(method):
        fn = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False, method=method),
                     out_shardings=out_sharding)
        return lambda batch: fn(params, pipeline.device_batch(batch))

    info = {"model": config.model.to_dict(), "dataset": config.dataset.name}
    return retrieval.evaluate_corpus(encoder(model.encode_query), encoder(model.encode_context), params,
                                     batches, search_settings(config), info)


def search_settings(config: ml_collections.ConfigDict):
    """The corpus search settings of a run (``config.eval.search``, moment lengths from the model block)."""
    from jvmr import retrieval
    search = config.eval.get("search", ml_collections.ConfigDict())
    return retrieval.SearchSettings(
        num_videos=int(search.get("num_videos", 100)), num_moments=int(search.get("num_moments", 200)),
        alpha=float(search.get("alpha", 30.0)), min_len=int(config.model.get("min_span_len", 1)),
        max_len=int(config.model.get("max_span_len", 0)))


def write_corpus_predictions(directory: str, split: str, step: int, predictions: dict[str, Any]) -> None:
    """``{split}_step{step}_tvr.json`` (the TVR submission: VCMR, SVMR, VR) and its metrics."""
    fs.makedirs(directory)
    for name, obj in ((f"{split}_step{step}_tvr.json", predictions["submission"]),
                      (f"{split}_step{step}_metrics.json", {"protocol": "tvr", "metrics": predictions["metrics"]})):
        fs.write_text_atomic(os.path.join(directory, name), json.dumps(obj))


def write_predictions(directory: str, split: str, step: int, predictions: dict[str, Any]) -> None:
    """Writes the files that let any run be re-scored by ``python -m jvmr.evaluate``.

    * ``{split}_step{step}.jsonl`` (moment_detr rows: the windows the run's
      protocol kept, in its rank order, at full precision) and, once,
      ``{split}_ground_truth.jsonl``. Re-scoring them under the run's protocol
      reproduces the logged metrics exactly; under another protocol it scores
      those kept windows (e.g. a ``2dtan`` run keeps 5 windows after NMS, so
      moment_detr's top-10 mAP sees only those 5);
    * for the ``tvr`` protocol also ``{split}_step{step}_tvr.json`` (a TVR
      submission with the SVMR block) and ``{split}_tvr_ground_truth.jsonl`` (TVR
      release rows): ``--protocol=tvr``;
    * ``{split}_step{step}_metrics.json``: the protocol's full result, in its
      reference evaluator's structure, with the protocol's name.
    """
    fs.makedirs(directory)
    tie_break = metrics_lib.get_protocol(predictions.get("protocol", "jvmr")).tie_break
    metrics_lib.write_predictions_jsonl(
        os.path.join(directory, f"{split}_step{step}.jsonl"), predictions["qid"], predictions["vid"],
        predictions["duration"], predictions["spans"], predictions["scores"], predictions["valid"],
        queries=predictions["query"], tie_break=tie_break)
    gt_path = os.path.join(directory, f"{split}_ground_truth.jsonl")
    if not fs.exists(gt_path):
        metrics_lib.write_ground_truth_jsonl(
            gt_path, predictions["qid"], predictions["vid"], predictions["duration"], predictions["gt_spans"],
            predictions["gt_valid"], queries=predictions["query"])
    if predictions.get("protocol") == "tvr":
        metrics_lib.write_tvr_files(
            os.path.join(directory, f"{split}_step{step}_tvr.json"),
            os.path.join(directory, f"{split}_tvr_ground_truth.jsonl"),
            predictions["qid"], predictions["vid"], predictions["query"], predictions["query_type"],
            predictions["duration"], predictions["spans"], predictions["scores"], predictions["valid"],
            predictions["gt_spans"], predictions["gt_valid"])
    if "metrics" in predictions:
        path = os.path.join(directory, f"{split}_step{step}_metrics.json")
        # NaN where the reference writes NaN (TVR by-type, no query).
        fs.write_text_atomic(path, json.dumps({"protocol": predictions.get("protocol"), **predictions["metrics"]},
                                              indent=2))


# ------------------------------------------------------------------------ main loop


def log_timelines(writer, step: int, split: str, explain: Callable, params: Any, batch: dict[str, np.ndarray],
                  vocab: list[str], protocol: str) -> int:
    """TensorBoard images ``timelines/{split}/{i}``: each example of ``batch`` (a few rows of an evaluation
    batch) drawn by ``jvmr.visualize`` (ground truth, top-5 moments, the model's per-clip evidence).
    Returns the number drawn."""
    from jvmr import predict, visualize
    spans, scores, evidence = jax.device_get(explain(params, pipeline.device_batch(batch)))
    drawn = predict.batch_predictions(batch, spans, scores, evidence, protocol=protocol, k=5, vocab=vocab)
    for i, p in enumerate(drawn):
        writer.image(f"timelines/{split}/{i}", visualize.timeline_image(p.timeline(f"step {step} · {p.qid}")), step)
    return len(drawn)


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every float leaf of ``tree`` is finite (a replicated scalar, readable on every process)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class _NoWriter:
    """The TensorBoard writer of processes other than 0 (only process 0 writes logs)."""

    def scalar(self, *args, **kwargs) -> None:
        pass

    def image(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass


def _log_eval(workdir: str, writer, step: int, split: str, protocol: str, result: dict[str, float]) -> None:
    """Appends ``{"step", "split", "protocol", metrics...}`` to eval_metrics.jsonl; TensorBoard tags
    ``{split}/{protocol}/{key}``."""
    if jax.process_index() != 0:
        return
    row = {"step": step, "split": split, "protocol": protocol, **{k: round(float(v), 4) for k, v in result.items()}}
    fs.append_line(os.path.join(workdir, "eval_metrics.jsonl"), json.dumps(row))
    for k, v in result.items():
        writer.scalar(f"{split}/{protocol}/{k}", v, step)
    logging.info("[step %d] %s (protocol %s):\n%s", step, split, protocol, metrics_lib.format_metrics_table(result))


def drop_rows_to_relog(workdir: str, start_step: int, reevaluate_start: bool) -> dict[str, int]:
    """Removes from train_metrics.jsonl and eval_metrics.jsonl the rows that a run resuming at
    ``start_step`` logs again: those of later steps (an earlier attempt got past the checkpoint before it
    stopped) and, with ``reevaluate_start``, the evaluations of ``start_step`` itself (a run resumed at or
    past ``num_train_steps`` evaluates its final step again). So every step keeps one row, the one of
    the attempt that produced the final parameters. A line that is not JSON (cut by a kill while it was
    written) is removed too. Rewrites each file atomically; returns {file name: rows removed}."""
    removed = {}
    for name, keep_start in (("train_metrics.jsonl", True), ("eval_metrics.jsonl", not reevaluate_start)):
        path = os.path.join(workdir, name)
        if not fs.exists(path):
            continue
        with fs.open(path) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        kept = []
        for line in lines:
            try:
                step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
            if step < start_step or (step == start_step and keep_start):
                kept.append(line)
        if len(kept) < len(lines):
            fs.write_text_atomic(path, "".join(line + "\n" for line in kept))
            removed[name] = len(lines) - len(kept)
    return removed


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (a full disk, a quota, a lost mount); the message says which
    checkpoints are complete: the same command resumes from the latest of them."""


@contextlib.contextmanager
def checkpoint_errors(manager: ocp.CheckpointManager, ckpt_dir: str, step: int):
    """Turns a failed (or failed earlier, asynchronous) save into a ``CheckpointError`` naming the directory,
    the cause and the complete checkpoints. Orbax writes into ``{step}.orbax-checkpoint-tmp`` and renames only
    once everything is written, and deletes old checkpoints only after that: a failed save loses nothing."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - tensorstore / OS errors of any type
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        try:
            complete = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if not fs.is_remote(ckpt_dir) \
                else list(manager.all_steps(read=True))
        except OSError:
            complete = []
        raise CheckpointError(
            f"could not write a checkpoint in {ckpt_dir} (the save of step {step} or the one before it failed: "
            f"{cause[:400]}). Complete checkpoints: {complete or 'none'}; free some space (or fix the mount) and "
            f"run the same command again to resume from step {complete[-1] if complete else 0}") from error


def restore_latest(manager: ocp.CheckpointManager, ckpt_dir: str, target: Any) -> tuple[int, Any] | None:
    """(step, state) of the newest checkpoint that reads back into ``target``'s structure, or None when there
    is none (orbax never lists a save that did not finish).

    A newer checkpoint that cannot be read while an older one can (truncated or corrupted files) is reported
    and moved aside as ``{step}.unreadable`` (one process; with several, the run stops and names it, since
    every process must agree). When none can be read, nothing is moved and the run stops: with the
    parameters that differ when the checkpoints are another model's or config's, else with the errors."""
    errors: list[tuple[int, str]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state = manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as error:  # orbax / tensorstore raise many kinds
            errors.append((step, f"{type(error).__name__}: {str(error)[:300]}"))
            logging.error("Checkpoint %s/%d cannot be restored: %s", ckpt_dir, step, errors[-1][1])
            continue
        for bad, message in errors:  # newer than a readable one: damaged, not another model's
            where = os.path.join(ckpt_dir, str(bad))
            if jax.process_count() > 1:
                raise RuntimeError(f"checkpoint {where} cannot be restored ({message}) but step {step} can: move "
                                   f"it aside and run again to resume from step {step}")
            fs.replace(where, f"{where}.unreadable")
            logging.warning("Moved the unreadable checkpoint %s to %s.unreadable; resuming from step %d",
                            where, where, step)
        if errors:
            manager.reload()
        return step, state
    if errors:
        mismatch = _params_mismatch(ckpt_dir, errors[0][0], target)
        raise RuntimeError(f"no checkpoint in {ckpt_dir} can be restored into this model"
                           + (f": they hold another model or config ({mismatch})" if mismatch else
                              ": " + "; ".join(f"step {s}: {m}" for s, m in errors)))
    return None


def _params_mismatch(ckpt_dir: str, step: int, target: Any) -> str:
    """The parameters a checkpoint and ``target`` do not share, by path and shape ('' when they agree or the
    checkpoint's metadata cannot be read)."""
    def shapes(tree) -> dict[str, tuple]:
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): tuple(leaf.shape)
                for path, leaf in flat if hasattr(leaf, "shape")}
    try:
        # The manager's single unnamed item is stored as 'default'.
        metadata = ocp.StandardCheckpointer().metadata(os.path.join(ckpt_dir, str(step), "default"))
        saved = shapes(metadata.item_metadata["params"])
    except Exception:  # unreadable metadata: say nothing more than the errors
        return ""
    wanted = shapes(target.params)
    parts = [f"only in the checkpoint: {sorted(saved.keys() - wanted.keys())[:5]}" if saved.keys() - wanted.keys()
             else "", f"only in this model: {sorted(wanted.keys() - saved.keys())[:5]}"
             if wanted.keys() - saved.keys() else ""]
    parts += [f"{k}: {saved[k]} in the checkpoint, {wanted[k]} here" for k in sorted(saved.keys() & wanted.keys())
              if saved[k] != wanted[k]][:5]
    return "; ".join(p for p in parts if p)


def _summarize(fetched: list[dict[str, Any]]) -> dict[str, float]:
    """Means of the steps' metrics since the last log, over the steps whose update was applied ('update_skipped'
    over all of them: the share skipped); NaN when every update was skipped."""
    applied = [m for m in fetched if not m.get("update_skipped", 0.0)]
    out = {}
    for key in fetched[0]:
        rows = fetched if key in ("update_skipped", "skipped_in_a_row") else applied
        out[key] = float(np.mean([m[key] for m in rows])) if rows else float("nan")
    return out


def check_nonfinite(fetched: list[dict[str, Any]], window_qids: list[tuple[int, np.ndarray]], limit: int,
                    last_checkpoint: int | None) -> None:
    """Logs the steps since the last log whose update was skipped (a non-finite gradient) with their query
    ids, and stops the run (FloatingPointError) once ``limit`` updates in a row were skipped."""
    skipped = [(step, qids) for m, (step, qids) in zip(fetched, window_qids) if m.get("update_skipped", 0.0)]
    if not skipped:
        return
    def ids(qids) -> str:
        names = [q.decode() if isinstance(q, bytes) else str(q) for q in qids if len(q)]
        return ", ".join(names[:8]) + (f" (+{len(names) - 8})" if len(names) > 8 else "")
    for step, qids in skipped:
        logging.warning("Step %d: non-finite gradient, update skipped; its queries: %s", step, ids(qids))
    in_a_row = int(fetched[-1].get("skipped_in_a_row", 0))
    if in_a_row >= limit:
        step, qids = skipped[-1]
        raise FloatingPointError(
            f"{in_a_row} non-finite updates in a row up to step {step} (config.max_nonfinite_updates={limit}); "
            f"the parameters are those of step {step - in_a_row}; last checkpoint: step {last_checkpoint}; "
            f"the last step's queries: {ids(qids)}")


class Preemption:
    """A preemption notice, acted on at the next step boundary (checkpoint, then a clean return).

    One process: SIGTERM (what schedulers send before evicting a job) sets a flag. Several processes:
    jax's preemption service, through ``CheckpointManager.reached_preemption``, which makes every process
    agree on the step (a flag set on one host alone would make the others wait in the save forever)."""

    def __init__(self):
        self.signalled = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def _note(self, signum, frame) -> None:
        del frame
        logging.warning("Signal %d: checkpointing at the end of this step, then stopping", signum)
        self.signalled = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def reached(self, manager: ocp.CheckpointManager, step: int) -> bool:
        return self.signalled or manager.reached_preemption(step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> tuple[TrainState, dict[str, dict[str, float]]]:
    """Trains ``config.model.name`` on ``config.dataset`` and evaluates it; resumes from ``workdir``.

    Returns the final state and the last evaluation metrics of every eval split.
    """
    from flax.metrics import tensorboard

    fs.makedirs(workdir)
    data_dir = prepare_data(config, workdir)
    config = resolve_dataset(config, data_dir)
    if jax.process_index() == 0:
        fs.write_text_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    logging.info("Dataset %s in %s: %d-d features, evaluating %s with protocol %s", config.dataset.name, data_dir,
                 config.dataset.feature_dim, list(config.dataset.eval_splits), config.dataset.protocol)
    for line in length_warnings(config, read_manifest(data_dir)):
        logging.warning("%s", line)
    vocab = pipeline.load_vocabulary(data_dir)
    spec = registry.get_model_spec(config.model.name)
    inputs = check_inputs(config, spec)
    model = registry.create_model(config.model, vocab_size=len(vocab))
    writer = (tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard")) if jax.process_index() == 0
              else _NoWriter())

    per_host_batch = config.batch_size // jax.process_count()
    def eval_batches(split: str):
        # Every process reads the whole split in the same order: the forward pass is sharded over all
        # devices and every process gets all predictions, so all processes compute the same metrics.
        ds = pipeline.make_dataset(data_dir, split, config.dataset, batch_size=config.eval.batch_size,
                                   training=False, vocab=vocab, inputs=inputs)
        return pipeline.as_numpy(ds)

    rng = jax.random.key(config.seed)
    first = next(eval_batches(config.dataset.eval_splits[0]))
    stepper = Stepper(config, spec, model, first)
    state = stepper.create_state(rng)
    if config.dataset.pretrained_embeddings:
        state = stepper.get_state(state)
        state = stepper.put_state(state.replace(params=load_pretrained_embeddings(state.params, data_dir)))
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("Model %s: %d parameters; devices: %s", config.model.name, num_params, jax.devices())

    ckpt_dir = os.path.join(fs.abspath(workdir), "checkpoints")
    manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
        max_to_keep=config.max_checkpoints_to_keep, create=True))
    start_step = 0
    restored = restore_latest(manager, ckpt_dir, stepper.get_state(state))
    if restored is not None:
        start_step, single = restored
        state = stepper.put_state(single)
        logging.info("Resumed from checkpoint at step %d", start_step)
        if jax.process_index() == 0:
            removed = drop_rows_to_relog(workdir, start_step, start_step >= config.num_train_steps)
            for name, count in removed.items():
                logging.warning("%s: removed %d row(s) past the checkpoint of step %d (or cut by the stop); this "
                                "run logs those steps again", name, count, start_step)

    def save(step: int, current) -> None:
        if manager.latest_step() == step:
            return
        single = stepper.get_state(current)
        if not bool(all_finite(single.params)):
            raise FloatingPointError(f"parameters are not finite at step {step}; last good "
                                     f"checkpoint: step {manager.latest_step()}")
        with checkpoint_errors(manager, ckpt_dir, step):
            manager.save(step, args=ocp.args.StandardSave(single))

    # The order of the training batches depends on the seed alone; a resumed run skips the batches of the
    # steps done, so it sees what an uninterrupted run sees (parameters and RNGs come from the checkpoint).
    train_ds = pipeline.make_dataset(data_dir, config.dataset.train_split, config.dataset,
                                     batch_size=per_host_batch, training=True, seed=config.seed,
                                     vocab=vocab, shard_index=jax.process_index(),
                                     num_shards=jax.process_count(), inputs=inputs,
                                     labels=spec.needs_labels(config), start_batch=start_step)
    train_iter = pipeline.as_numpy(train_ds)

    last_eval: dict[str, dict[str, float]] = {}
    evaluator = config.eval.get("evaluator", "") or spec.evaluator
    # A few examples of the first evaluation split drawn into TensorBoard at each evaluation (one process:
    # the drawing reads the whole parameters).
    num_timelines = int(config.eval.get("num_timelines", 0))
    timeline_rows = ({k: v[:num_timelines] for k, v in first.items()}
                     if num_timelines > 0 and jax.process_count() == 1 else None)
    explain = jax.jit(registry.inference_functions(model, spec)["explain"])
    def run_eval(step: int) -> None:
        for split in config.dataset.eval_splits:
            if evaluator == "corpus":
                result, predictions = evaluate_corpus(config, model, stepper.get_state(state), eval_batches(split),
                                                      getattr(stepper, "replicated", None))
            elif evaluator == "moment":
                result, predictions = evaluate(stepper, state, eval_batches(split), config.dataset.protocol)
            else:
                raise ValueError(f"config.eval.evaluator must be 'moment' or 'corpus', got {evaluator!r}")
            last_eval[split] = result
            _log_eval(workdir, writer, step, split, config.dataset.protocol, result)
            if split == config.dataset.eval_splits[0] and timeline_rows is not None:
                try:
                    with stepper.context():
                        log_timelines(writer, step, split, explain, stepper.get_state(state).params,
                                      timeline_rows, vocab, config.dataset.protocol)
                except Exception as error:  # pictures never stop training
                    logging.warning("No example timelines at step %d: %r", step, error)
            if config.eval.write_predictions and jax.process_index() == 0:
                write = write_corpus_predictions if evaluator == "corpus" else write_predictions
                write(os.path.join(workdir, "predictions"), split, step, predictions)

    step = start_step
    accumulated: list[dict[str, jax.Array]] = []
    window_qids: list[tuple[int, np.ndarray]] = []  # (step, query ids) of the steps since the last log
    t0, steps_since = time.time(), 0
    with Preemption() as preemption:
        try:
            while step < config.num_train_steps:
                batch = next(train_iter)
                state, step_metrics = stepper.train(state, batch)
                accumulated.append(step_metrics)
                window_qids.append((step + 1, batch["qid"]))
                step += 1
                steps_since += 1
                if step == start_step + 1:
                    logging.info("First step done (compiled) in %.1fs", time.time() - t0)
                if step % config.log_every_steps == 0 or step == config.num_train_steps:
                    fetched = jax.device_get(accumulated)
                    summary = _summarize(fetched)
                    check_nonfinite(fetched, window_qids, int(config.get("max_nonfinite_updates", 10)),
                                    manager.latest_step())
                    accumulated, window_qids = [], []
                    rate = steps_since / max(time.time() - t0, 1e-9)
                    t0, steps_since = time.time(), 0
                    eta = (config.num_train_steps - step) / max(rate, 1e-9)
                    logging.info("[step %d/%d] %s | %.1f steps/s, ETA %.0fs", step, config.num_train_steps,
                                 " ".join(f"{k}={v:.4f}" for k, v in summary.items()), rate, eta)
                    for k, v in summary.items():
                        writer.scalar(f"train/{k}", v, step)
                    if jax.process_index() == 0:
                        fs.append_line(os.path.join(workdir, "train_metrics.jsonl"),
                                       json.dumps({"step": step, **summary, "steps_per_sec": rate}))
                if step % config.checkpoint_every_steps == 0:
                    save(step, state)
                if step % config.eval_every_steps == 0 and step != config.num_train_steps:
                    run_eval(step)
                    t0, steps_since = time.time(), 0
                if preemption.reached(manager, step):
                    save(step, state)
                    logging.warning("Preempted at step %d: checkpoint saved; the same command resumes from it", step)
                    return stepper.get_state(state), last_eval
            save(step, state)
            run_eval(step)
        except (FloatingPointError, CheckpointError):
            raise  # The state is not finite, or checkpoints cannot be written: keep the last good checkpoint.
        except BaseException as error:  # Interrupts, data errors, ...: keep the work done so far.
            if jax.process_count() > 1:
                # A save is collective: with one process failing alone the others would never join it.
                logging.warning("Stopped at step %d by %r; the last checkpoint is step %s", step, error,
                                manager.latest_step())
                raise
            logging.warning("Stopped at step %d by %r: saving a checkpoint first", step, error)
            try:
                save(step, state)
            except Exception as save_error:  # e.g. the state was donated to the failed step.
                logging.error("Could not save a checkpoint at step %d: %r", step, save_error)
            raise
        finally:
            failing = sys.exc_info()[0] is not None  # an exception is on its way out
            try:
                with checkpoint_errors(manager, ckpt_dir, step):
                    manager.wait_until_finished()
            except CheckpointError as error:
                if not failing:
                    raise  # the run itself went well: the last save did not
                logging.error("%s", error)  # already failing: keep the first error
            writer.flush()
    return stepper.get_state(state), last_eval
