r"""Export a trained run as a self-contained artifact: serialised StableHLO plus what feeds it.

    python -m jvmr.export --workdir=/tmp/cmin --output=/tmp/cmin_export [--step=N] [--platforms=cpu,cuda,tpu] \
        [--saved_model [--saved_model_batch_size=1]]
    python -m jvmr.predict --exported=/tmp/cmin_export --features=VIDEO.npy --clip_seconds=1 --query="..."

The artifact (a folder) holds:

* ``predict.jax``: ``(params, batch) -> (spans [B, N, 2], scores [B, N])``, the model's forward
  pass and ``predict_fn`` serialised with ``jax.export`` (StableHLO, lowered for every platform in
  ``--platforms``), with a symbolic batch dimension ``B``: any number of examples per call. The
  clip grid and the query length stay the run's (``dataset.max_video_len`` / ``max_query_len``):
  they are part of the model (anchors, 2D maps, position tables), and the inputs are padded /
  pooled to them exactly as in training;
* ``explain.jax``: the same forward pass returning ``(spans, scores, evidence)``, evidence being what
  the model's ``evidence_fn`` gives pictures (per-clip curves, 2D maps, attention);
* for a corpus model (ReLoCLNet) also ``encode_query.jax`` and ``encode_context.jax``, so that a
  corpus index can be rebuilt from the artifact;
* ``params.msgpack``: the checkpoint's parameters (``flax.serialization``);
* ``config.json`` (the run's resolved config), ``vocab.txt``, and ``export.json``: the model,
  checkpoint step, the inputs each function takes (names, shapes with ``B``, dtypes), the feature
  widths, the query parser the data used, the evaluation protocol, and the jax version.

``--saved_model`` also writes ``saved_model/``, a TensorFlow SavedModel for TF Serving: the
parameters as variables and the StableHLO of ``predict`` (and the encoders) called through
TensorFlow's ``XlaCallModule`` op, as jax2tf's native serialisation did (jax2tf is gone from jax
0.10). The module is re-serialised at StableHLO 1.13.7, the newest the pinned TensorFlow 2.21 reads,
and its batch is static (``--saved_model_batch_size``): TensorFlow cannot refine a symbolic batch
through XLA's ``top_k`` decomposition.

``load(DIR)`` reads it back; ``jvmr.predict`` predicts from it as from the run, with the same results.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jvmr import fs, registry, search
from jvmr.data import pipeline, schema, text

FLAGS = flags.FLAGS

ARTIFACT_VERSION = 1
BATCH_DIM = "B"


def example_batch(run: dict[str, Any], batch_size: int = 2) -> dict[str, np.ndarray]:
    """A device batch of the run's shapes (one dummy example, padded), built by the prediction pipeline."""
    config = run["config"]
    ds = config.dataset
    spec = registry.get_model_spec(config.model.name)
    inputs = spec.inputs(config.model)
    ex = schema.Example(
        qid="export", vid="export", duration=10.0, query="export", tokens=["export"], dep_heads=[-1],
        dep_labels=["root"], gt_spans=np.zeros((0, 2), np.float32),
        video_features=np.zeros((int(ds.max_video_len), int(ds.feature_dim)), np.float32),
        subtitle_features=(np.zeros((int(ds.max_video_len), int(ds.subtitle_dim)), np.float32)
                           if "subtitles" in inputs else None),
        query_features=(np.zeros((int(ds.max_query_len), int(ds.query_feature_dim)), np.float32)
                        if "query_features" in inputs else None))
    batch = next(pipeline.as_numpy(pipeline.examples_dataset(
        [ex], ds, batch_size=batch_size, vocab=run["vocab"], inputs=inputs)))
    return pipeline.device_batch(batch)


def run_functions(run: dict[str, Any]) -> dict[str, Any]:
    """The inference functions of a loaded run (``search.load_run``), as an artifact holds them:
    name -> f(params, batch); for every model ``predict`` and ``explain`` (``predict``'s outputs and the
    model's per-clip evidence, ``evidence_fn``, for pictures), the two encoders for a corpus model."""
    model = run["model"]
    spec = registry.get_model_spec(run["config"].model.name)

    functions = registry.inference_functions(model, spec)
    if hasattr(model, "encode_query") and hasattr(model, "encode_context"):
        functions["encode_query"] = lambda params, batch: model.apply(
            {"params": params}, batch, train=False, method=model.encode_query)
        functions["encode_context"] = lambda params, batch: model.apply(
            {"params": params}, batch, train=False, method=model.encode_context)
    return functions


def _input_spec(batch: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {k: {"shape": [BATCH_DIM, *map(int, v.shape[1:])], "dtype": str(v.dtype)} for k, v in batch.items()}


def export_run(workdir: str, output: str, step: int | None = None, platforms: tuple[str, ...] = ("cpu",),
               saved_model_batch_size: int = 0) -> dict[str, Any]:
    """Writes the artifact of the run in ``workdir`` (latest checkpoint, or ``step``) into ``output``;
    with ``saved_model_batch_size`` > 0 also ``output/saved_model`` (``write_saved_model``).

    Returns ``export.json``'s contents."""
    run = search.load_run(workdir, step)
    config = run["config"]
    batch = example_batch(run)
    (b,) = jax.export.symbolic_shape(BATCH_DIM)
    batch_spec = {k: jax.ShapeDtypeStruct((b, *v.shape[1:]), v.dtype) for k, v in batch.items()}
    params_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), run["params"])
    fs.makedirs(output)
    functions = {}
    for name, fn in run_functions(run).items():
        exported = jax.export.export(jax.jit(fn), platforms=platforms)(params_spec, batch_spec)
        with open(os.path.join(output, f"{name}.jax"), "wb") as f:
            f.write(exported.serialize())
        outputs = [{"shape": [str(d) for d in a.shape], "dtype": str(a.dtype)} for a in exported.out_avals]
        functions[name] = {"file": f"{name}.jax", "inputs": _input_spec(batch), "outputs": outputs}
    with open(os.path.join(output, "params.msgpack"), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, run["params"])))
    shutil.copyfile(os.path.join(run["data_dir"], "vocab.txt"), os.path.join(output, "vocab.txt"))
    with open(os.path.join(workdir, "config.json")) as f:
        fs.write_text_atomic(os.path.join(output, "config.json"), f.read())
    ds = config.dataset
    meta = {
        "artifact_version": ARTIFACT_VERSION, "model": config.model.name, "step": run["step"],
        "source_workdir": run["workdir"], "jax_version": jax.__version__, "platforms": list(platforms),
        "functions": functions, "batch_dimension": BATCH_DIM,
        "clip_grid": int(ds.max_video_len), "max_query_len": int(ds.max_query_len),
        "video_sampling": str(ds.video_sampling), "normalize_features": bool(ds.get("normalize_features", False)),
        "feature_dims": {"video": int(ds.feature_dim), "subtitle": int(ds.get("subtitle_dim", 0) or 0),
                         "query": int(ds.get("query_feature_dim", 0) or 0)},
        "parser": search.data_parser(run["data_dir"]), "protocol": str(ds.protocol),
        "unknown_token": text.UNK_TOKEN,
    }
    if saved_model_batch_size > 0:
        meta["saved_model"] = {"directory": "saved_model", "batch_size": int(saved_model_batch_size),
                               "stablehlo_version": TF_STABLEHLO_VERSION,
                               "signatures": write_saved_model(run, os.path.join(output, "saved_model"),
                                                               saved_model_batch_size, platforms)}
    fs.write_text_atomic(os.path.join(output, "export.json"), json.dumps(meta, indent=2))
    return meta


# The newest StableHLO the pinned TensorFlow's XlaCallModule reads (jax 0.10.2 writes 1.15 by default).
TF_STABLEHLO_VERSION = "1.13.7"
SAVED_MODEL_FUNCTIONS = ("predict", "encode_query", "encode_context")


def _stablehlo_for_tensorflow(exported: jax.export.Exported) -> bytes:
    """The exported module serialised at ``TF_STABLEHLO_VERSION`` (what jax2tf's native serialisation
    embedded; jax2tf itself is gone from jax 0.10). Uses jaxlib's serialiser directly: a private API,
    pinned with jax and checked by tests/test_predict.py's SavedModel round trip."""
    from jax._src.interpreters import mlir
    from jax._src.lib import _jax
    from jax._src.lib.mlir import ir
    with mlir.make_ir_context():
        module = ir.Module.parse(exported.mlir_module())
        return _jax.mlir.serialize_portable_artifact(module, TF_STABLEHLO_VERSION, False)


def write_saved_model(run: dict[str, Any], directory: str, batch_size: int = 1,
                      platforms: tuple[str, ...] = ("cpu",)) -> dict[str, Any]:
    """A TensorFlow SavedModel of the run for TF Serving: the parameters as variables and, per function,
    a signature calling the function's StableHLO through TensorFlow's ``XlaCallModule`` op.

    Signatures: ``serving_default`` (predict: the batch's inputs by name -> ``spans`` [N, K, 2] as
    fractions of the duration, ``scores`` [N, K]) and, for a corpus model, ``encode_query`` /
    ``encode_context`` (their encodings by name). The batch is static (``batch_size`` examples,
    padded with ``example_mask`` 0): TensorFlow 2.21 cannot refine a symbolic batch through XLA's
    ``top_k`` decomposition. Returns the signatures' input and output specs.
    """
    import tensorflow as tf
    from tensorflow.compiler.tf2xla.ops import gen_xla_ops

    batch = example_batch(run, batch_size=batch_size)
    params_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), run["params"])
    batch_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    module = tf.Module()
    leaves, params_tree = jax.tree.flatten(run["params"])
    module.params = [tf.Variable(np.asarray(x), trainable=False) for x in leaves]
    signature = {k: tf.TensorSpec(v.shape, tf.as_dtype(v.dtype), name=k) for k, v in batch.items()}
    signatures, described = {}, {}
    for name, fn in run_functions(run).items():
        if name not in SAVED_MODEL_FUNCTIONS:
            continue
        exported = jax.export.export(jax.jit(fn), platforms=platforms)(params_spec, batch_spec)
        hlo = _stablehlo_for_tensorflow(exported)

        def call(inputs, exported=exported, hlo=hlo, name=name):
            params = jax.tree.unflatten(params_tree, module.params)
            flat = exported.in_tree.flatten_up_to(((params, dict(inputs)), {}))
            outputs = gen_xla_ops.xla_call_module(
                [flat[i] for i in exported.module_kept_var_idx], version=exported.calling_convention_version,
                module=hlo, Sout=[tf.TensorShape(a.shape) for a in exported.out_avals],
                Tout=[tf.as_dtype(a.dtype) for a in exported.out_avals], dim_args_spec=[],
                platforms=[p.upper() for p in exported.platforms], function_list=[],
                has_token_input_output=False, disabled_checks=[])
            tree = jax.tree.unflatten(exported.out_tree, outputs)
            return dict(zip(("spans", "scores"), tree)) if name == "predict" else dict(tree)

        key = "serving_default" if name == "predict" else name
        signatures[key] = tf.function(call, input_signature=[signature]).get_concrete_function()
        described[key] = {"inputs": {k: [int(d) for d in v.shape] for k, v in batch.items()},
                          "outputs": {k: [int(d) for d in v.shape] for k, v in
                                      signatures[key].structured_outputs.items()}}
    tf.saved_model.save(module, directory, signatures=signatures)
    return described


def load(directory: str) -> dict[str, Any]:
    """An artifact written by ``export_run``: ``meta`` (export.json), ``config``, ``vocab``, ``params`` and
    ``functions`` (name -> f(params, batch) calling the deserialised StableHLO)."""
    import ml_collections
    meta = fs.read_versioned_json(os.path.join(directory, "export.json"), "artifact_version", ARTIFACT_VERSION,
                                  "a jvmr export (python -m jvmr.export)")
    with open(os.path.join(directory, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(directory, "params.msgpack"), "rb") as f:
        params = flax.serialization.msgpack_restore(f.read())
    functions = {}
    for name, info in meta["functions"].items():
        with open(os.path.join(directory, info["file"]), "rb") as f:
            exported = jax.export.deserialize(bytearray(f.read()))
        functions[name] = _caller(exported, set(info["inputs"]))
    return {"meta": meta, "config": config, "vocab": text.read_vocabulary(os.path.join(directory, "vocab.txt")),
            "params": params, "functions": functions, "step": meta["step"], "directory": os.path.abspath(directory)}


def _caller(exported, keys: set[str]):
    def call(params, batch):
        missing = keys - set(batch)
        if missing:
            raise ValueError(f"the exported function needs batch keys {sorted(missing)}")
        return exported.call(params, {k: jnp.asarray(batch[k]) for k in sorted(keys)})
    return call


def main(argv):
    del argv
    if not FLAGS.workdir or not FLAGS.output:
        raise app.UsageError("give --workdir (a trained run) and --output (the artifact folder)")
    try:
        meta = export_run(FLAGS.workdir, FLAGS.output, None if FLAGS.step < 0 else FLAGS.step,
                          tuple(p for p in FLAGS.platforms.split(",") if p),
                          FLAGS.saved_model_batch_size if FLAGS.saved_model else 0)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps({"output": FLAGS.output, "model": meta["model"], "step": meta["step"],
                      "functions": sorted(meta["functions"]), "platforms": meta["platforms"],
                      "saved_model": sorted(meta.get("saved_model", {}).get("signatures", {}))}))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "", "A trained run (jvmr.main's --workdir).")
    flags.DEFINE_string("output", "", "The artifact folder to write.")
    flags.DEFINE_integer("step", -1, "Checkpoint step (-1: the latest).")
    flags.DEFINE_string("platforms", "cpu,cuda,tpu", "Platforms the StableHLO is lowered for (comma-separated).")
    flags.DEFINE_bool("saved_model", False, "Also write a TensorFlow SavedModel (TF Serving) to OUTPUT/saved_model.")
    flags.DEFINE_integer("saved_model_batch_size", 1, "The SavedModel's (static) batch size.")
    app.run(main)
