r"""A short training run in float32 and in bfloat16 from the same start, side by side.

    python -m benchmarks.bf16_trajectory --config=configs/cmin.py --steps=300 [--log_every=25] \
        [--tolerance=0.05] [--workdir=/tmp/bf16]

Both runs use the config's seed, so they start from the same parameters and read the same batches;
only ``compute_dtype`` differs. Prints one JSON line: ``steps``, ``log_every``, the logged mean losses
of both runs (``loss_float32``, ``loss_bfloat16``: each the mean over ``log_every`` steps, as
``train_metrics.jsonl`` holds them), ``max_rel_diff`` (the largest |bf16 - f32| / |f32| over the logged
windows), ``tolerance`` and ``within_tolerance``, the last evaluation of each split in both runs
(``eval``) and each run's wall time. The stated tolerance is a relative one on window means because
two runs in different precisions drift apart step by step (different rounding, then different
parameters): what bfloat16 must keep is the course of training, not the bits.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Model config, e.g. configs/cmin.py.", lock_config=False)
flags.DEFINE_integer("steps", 300, "Training steps of each run.")
flags.DEFINE_integer("log_every", 25, "Steps per logged loss window.")
flags.DEFINE_float("tolerance", 0.05, "Largest relative difference of the window-mean losses allowed.")
flags.DEFINE_string("workdir", "", "Where the two runs go (default: a temporary directory).")
flags.mark_flags_as_required(["config"])

DTYPES = ("float32", "bfloat16")


def _losses(workdir: str) -> list[tuple[int, float]]:
    with open(os.path.join(workdir, "train_metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [(int(r["step"]), float(r["loss"])) for r in rows]


def compare(config, workdir: str, steps: int, log_every: int, tolerance: float) -> dict:
    """Trains ``config`` for ``steps`` steps once per dtype under ``workdir`` and compares the runs."""
    from jvmr import train

    runs, evals, seconds = {}, {}, {}
    for dtype in DTYPES:
        run_config = config.copy_and_resolve_references()
        run_config.compute_dtype = dtype
        run_config.num_train_steps = steps
        run_config.log_every_steps = log_every
        run_config.eval_every_steps = steps
        run_config.checkpoint_every_steps = steps
        if not run_config.dataset.get("data_dir"):  # the embedded benchmark: built once, read by both runs
            run_config.dataset.data_dir = os.path.join(workdir, "data")
        run_dir = os.path.join(workdir, dtype)
        start = time.perf_counter()
        _, evals[dtype] = train.train_and_evaluate(run_config, run_dir)
        seconds[dtype] = round(time.perf_counter() - start, 1)
        runs[dtype] = _losses(run_dir)
    if [s for s, _ in runs["float32"]] != [s for s, _ in runs["bfloat16"]]:
        raise RuntimeError(f"the runs logged different steps: {runs}")
    f32 = [loss for _, loss in runs["float32"]]
    bf16 = [loss for _, loss in runs["bfloat16"]]
    max_rel = max(abs(b - a) / max(abs(a), 1e-12) for a, b in zip(f32, bf16))
    return {
        "model": config.model.name, "dataset": config.dataset.name, "steps": steps, "log_every": log_every,
        "logged_steps": [s for s, _ in runs["float32"]],
        "loss_float32": [round(x, 5) for x in f32], "loss_bfloat16": [round(x, 5) for x in bf16],
        "max_rel_diff": round(max_rel, 5), "tolerance": tolerance, "within_tolerance": max_rel <= tolerance,
        "eval": {split: {dtype: evals[dtype][split] for dtype in DTYPES} for split in evals["float32"]},
        "seconds": seconds,
    }


def main(argv):
    del argv
    if FLAGS.workdir:
        result = compare(FLAGS.config, FLAGS.workdir, FLAGS.steps, FLAGS.log_every, FLAGS.tolerance)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            result = compare(FLAGS.config, workdir, FLAGS.steps, FLAGS.log_every, FLAGS.tolerance)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
