r"""Train-step speed of a model at a config's shapes, against this machine's matrix-product rate.

    python -m benchmarks.train_step --config=configs/cmin.py:activitynet_captions [--batch_size=32] \
        [--dtype=bfloat16 | --compare_dtypes] [--steps=5] [--dot_ceiling]

Prints one JSON line: ``model``, ``preset``, ``batch_size``, ``dtype``, ``compile_s``, ``step_ms``
(median of ``--steps`` timed steps after ``--warmup`` steps), ``examples_per_s``, ``peak_rss_mb``
(the process's peak resident memory), ``flops_per_step`` (matrix-product FLOPs of the whole step,
forward and backward, counted from the jaxpr with scan trip counts: ``benchmarks.flops``),
``xla_flops_per_step`` (XLA's own cost analysis, which counts a loop body once), ``gemm_gflops`` (a
float32 2048 x 2048 matrix product's rate on this machine, measured in the same run),
``flops_fraction`` (flops_per_step / step time / that rate), ``input_examples_per_s`` (the tf.data
pipeline reading TFRecords of the same shapes) and ``input_over_step`` (how many times faster the
input pipeline is than the step). ``--dot_ceiling`` adds ``dot_ceiling_ms`` (the step time if every matrix
product ran as fast as it does alone, at its own shapes, and nothing else took time), ``ceiling_fraction``
(the flops_fraction that time would give: the most this step's shapes allow) and ``slowest_products``.
``--compare_dtypes`` runs float32 and bfloat16 each in its own
process (so each peak memory is its own) and prints both lines and a third with ``bf16_speedup``.

The data are random records of the preset's shapes written through the real schema and pipeline:
every video fills the grid (``max_video_len`` clips), queries have ``max_query_len`` words. Feature
widths per dataset (override with ``--feature_dim`` etc.): ActivityNet Captions and TACoS 500 (C3D
PCA, CMIN's files), Charades-STA 1024 (I3D), TVR 3072 video / 768 subtitle / 768 query tokens, the
embedded benchmarks their generator's.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Model config, e.g. configs/cmin.py:activitynet_captions.",
                                lock_config=False)
flags.DEFINE_integer("batch_size", 0, "Global batch size (0: the config's).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (config.compute_dtype).")
flags.DEFINE_bool("compare_dtypes", False, "Time float32 and bfloat16, each in its own process.")
flags.DEFINE_integer("steps", 5, "Timed steps (the median is reported).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_integer("feature_dim", 0, "Video feature width (0: the dataset's, see the module docstring).")
flags.DEFINE_integer("subtitle_dim", 0, "Subtitle feature width (0: the dataset's).")
flags.DEFINE_integer("query_feature_dim", 0, "Query token feature width (0: the dataset's).")
flags.DEFINE_integer("vocab_size", 0, "Vocabulary size (0: the dataset's).")
flags.DEFINE_bool("dot_ceiling", False, "Also time every matrix product of the step alone at its shapes "
                  "(benchmarks.flops.standalone_ceiling): adds dot_ceiling_ms, ceiling_fraction and the "
                  "slowest products.")
flags.DEFINE_integer("input_batches", 20, "Batches read to time the input pipeline.")
flags.mark_flags_as_required(["config"])

# Widths of each dataset's released features (as data_prep builds them) and its vocabulary size.
DATASET_SHAPES = {
    "activitynet_captions": dict(feature_dim=500, vocab_size=10_000),
    "tacos": dict(feature_dim=500, vocab_size=2_000),
    "charades_sta": dict(feature_dim=1024, vocab_size=1_300),
    "tvr": dict(feature_dim=3072, subtitle_dim=768, query_feature_dim=768, vocab_size=10_000),
    "synthetic": dict(vocab_size=300),
    "synthetic_corpus": dict(vocab_size=300),
}


def gemm_gflops(dtype=jnp.float32, n: int = 2048, seconds: float = 1.0) -> float:
    """This machine's rate for an n x n x n matrix product (GFLOP/s), best of repeated runs."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def write_records(data_dir: str, config, shapes: dict, num_examples: int, seed: int = 0) -> None:
    """Random examples of the config's shapes, written as the ``train`` split with a vocabulary and manifest."""
    from jvmr.data import schema, text

    rng = np.random.default_rng(seed)
    ds = config.dataset
    t, length = int(ds.max_video_len), int(ds.max_query_len)
    vocab = [text.PAD_TOKEN, text.UNK_TOKEN] + [f"w{i}" for i in range(shapes["vocab_size"] - 2)]
    examples = []
    for i in range(num_examples):
        tokens = [vocab[j] for j in rng.integers(2, len(vocab), length)]
        duration = float(t) * 1.5
        start = float(rng.uniform(0, duration * 0.7))
        examples.append(schema.Example(
            qid=str(i), vid=f"v{i}", duration=duration, query=" ".join(tokens), tokens=tokens,
            dep_heads=[0] + list(range(1, length)), dep_labels=["ROOT"] + ["dep"] * (length - 1),
            gt_spans=np.array([[start, start + duration * 0.25]], np.float32),
            video_features=rng.normal(size=(t, shapes["feature_dim"])).astype(np.float32),
            query_type="vt" if shapes.get("subtitle_dim") else "",
            subtitle_features=(rng.normal(size=(t, shapes["subtitle_dim"])).astype(np.float32)
                               if shapes.get("subtitle_dim") else None),
            query_features=(rng.normal(size=(length, shapes["query_feature_dim"])).astype(np.float32)
                            if shapes.get("query_feature_dim") else None)))
    schema.write_split(examples, data_dir, "train", source="benchmarks.train_step")
    text.write_vocabulary(vocab, os.path.join(data_dir, "vocab.txt"))
    dims = {"video": shapes["feature_dim"]}
    for key, stream in (("subtitle_dim", "subtitle"), ("query_feature_dim", "query")):
        if shapes.get(key):
            dims[stream] = shapes[key]
    manifest = {"dataset": ds.name, "num_examples": {"train": num_examples, "val": 0},
                "feature_dim": shapes["feature_dim"], "feature_dims": dims, "vocab_size": len(vocab)}
    with open(os.path.join(data_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def dataset_shapes(config) -> dict:
    shapes = dict(DATASET_SHAPES.get(config.dataset.name, {}))
    if config.dataset.name.startswith("synthetic"):
        shapes["feature_dim"] = int(config.dataset.synthetic.feature_dim)
        if config.dataset.name == "synthetic_corpus":
            shapes["subtitle_dim"] = int(config.dataset.corpus.subtitle_dim)
    for key in ("feature_dim", "subtitle_dim", "query_feature_dim", "vocab_size"):
        if getattr(FLAGS, key):
            shapes[key] = getattr(FLAGS, key)
    return shapes


def measure(config) -> dict:
    from benchmarks import flops
    from jvmr import registry, train
    from jvmr.data import pipeline

    batch_size = int(config.batch_size)
    shapes = dataset_shapes(config)
    with tempfile.TemporaryDirectory() as data_dir:
        config.dataset.data_dir = data_dir
        config.dataset.eval_splits = ("train",)
        config.dataset.shuffle_buffer = 64
        write_records(data_dir, config, shapes, num_examples=max(2 * batch_size, 64))
        config = train.resolve_dataset(config, data_dir)
        vocab = pipeline.load_vocabulary(data_dir)
        spec = registry.get_model_spec(config.model.name)
        inputs = train.check_inputs(config, spec)

        def batches():
            return pipeline.as_numpy(pipeline.make_dataset(
                data_dir, "train", config.dataset, batch_size=batch_size, training=True, vocab=vocab, inputs=inputs,
                labels=spec.needs_labels(config)))

        it = batches()
        next(it)
        start = time.perf_counter()
        for _ in range(FLAGS.input_batches):
            next(it)
        input_rate = FLAGS.input_batches * batch_size / (time.perf_counter() - start)

        batch = next(batches())
        model = registry.create_model(config.model, len(vocab))
        stepper = train.Stepper(config, spec, model, batch)
        state = stepper.create_state(jax.random.key(config.seed))
        device_batch = stepper.put_batch(batch)
        with stepper.context():
            flops_per_step = flops.count_flops(stepper.step_fn, state, device_batch)
            start = time.perf_counter()
            compiled = stepper.lower_train(state, device_batch).compile()
            compile_s = time.perf_counter() - start
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
        for _ in range(FLAGS.warmup):
            state, metrics = compiled(state, device_batch)
        jax.block_until_ready(state)
        times = []
        for _ in range(FLAGS.steps):
            start = time.perf_counter()
            state, metrics = compiled(state, device_batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        if not np.isfinite(float(metrics["loss"])):
            raise FloatingPointError(f"the benchmark's loss is {float(metrics['loss'])}")
    step_s = statistics.median(times)
    gemm = gemm_gflops()
    extra = {}
    if FLAGS.dot_ceiling:
        with stepper.context():
            ceiling = flops.standalone_ceiling(stepper.step_fn, state, device_batch)
        extra = {"dot_ceiling_ms": round(ceiling["dot_ceiling_ms"], 2),
                 "ceiling_fraction": round(flops_per_step / (ceiling["dot_ceiling_ms"] / 1e3) / (gemm * 1e9), 4),
                 "slowest_products": [{**p, "total_ms": round(p["total_ms"], 2), "gflops": round(p["gflops"], 1)}
                                      for p in ceiling["products"][:8]]}
    return {
        "model": config.model.name, "preset": config.dataset.name, "batch_size": batch_size,
        "dtype": config.compute_dtype, "compile_s": round(compile_s, 2), "step_ms": round(step_s * 1e3, 2),
        "examples_per_s": round(batch_size / step_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "flops_per_step": flops_per_step, "xla_flops_per_step": xla_flops, "gemm_gflops": round(gemm, 1),
        "flops_fraction": round(flops_per_step / step_s / (gemm * 1e9), 4),
        "input_examples_per_s": round(input_rate, 1), "input_over_step": round(input_rate * step_s / batch_size, 1),
        "devices": jax.device_count(), "backend": jax.default_backend(), **extra,
    }


def main(argv):
    del argv
    if FLAGS.compare_dtypes:
        rows = []
        for dtype in ("float32", "bfloat16"):
            args = [a for a in sys.argv[1:] if not a.startswith(("--compare_dtypes", "--dtype"))]
            out = subprocess.run([sys.executable, "-m", "benchmarks.train_step", *args, f"--dtype={dtype}"],
                                 capture_output=True, text=True, check=False)
            if out.returncode:
                raise RuntimeError(f"the {dtype} run failed:\n{out.stderr[-4000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
        print(json.dumps({"model": rows[0]["model"], "preset": rows[0]["preset"], "batch_size": rows[0]["batch_size"],
                          "bf16_speedup": round(rows[0]["step_ms"] / rows[1]["step_ms"], 3)}))
        return
    config = FLAGS.config
    if FLAGS.batch_size:
        config.batch_size = FLAGS.batch_size
    config.compute_dtype = FLAGS.dtype
    print(json.dumps(measure(config)), flush=True)


if __name__ == "__main__":
    app.run(main)
