"""Two processes on localhost through ``jax.distributed`` (4 simulated CPU devices each, gloo collectives):
they train over a 4 x 2 mesh that spans both, checkpoint, resume, and evaluate with the metrics a single
process computes from the same checkpoint."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from reference import simulated_devices_xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import faulthandler, json, sys
faulthandler.dump_traceback_later(500)  # a process stuck in a collective shows where, before its 600 s timeout
import jax
from configs import test as test_config
from jvmr import sharding, train
root, num_processes, process_id, port, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
config = test_config.get_config()
config.batch_size = config.eval.batch_size = 16
config.sharding.model = 2
config.num_train_steps = steps
config.checkpoint_every_steps = 4
config.eval_every_steps = 1000
config.log_every_steps = 1  # a host sync after every step: one execution in flight (gloo on CPU hung on two)
config.dataset.eval_splits = ("val",)
config.dataset.data_dir = root + "/data"
if num_processes > 1:
    config.distributed.coordinator_address = "localhost:" + port
    config.distributed.num_processes, config.distributed.process_id = num_processes, process_id
sharding.initialize_distributed(config)
state, final = train.train_and_evaluate(config, root + "/run")
print("RESULT" + json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                             "devices": jax.device_count(), "step": int(state.step), "metrics": final["val"]}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(root, num_processes, steps, devices_per_process):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
               XLA_FLAGS=simulated_devices_xla_flags(devices_per_process))
    port = str(_free_port())
    logs = [(open(root / f"process{i}.out", "w+"), open(root / f"process{i}.err", "w+")) for i in range(num_processes)]
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(root), str(num_processes), str(i), port, str(steps)],
                              cwd=REPO, env=env, stdout=out, stderr=err, text=True)
             for i, (out, err) in enumerate(logs)]

    def read(f):
        f.seek(0)
        return f.read()

    def errors():  # every process's last error output: a hang shows both sides (faulthandler stacks)
        return "\n".join(f"--- process {i} ---\n{read(err)[-4000:]}" for i, (_, err) in enumerate(logs))

    # A process that fails leaves the others waiting in a collective forever: watch them all, and on the first
    # failure stop the rest and report every process's error output instead of waiting for the timeout.
    deadline = time.monotonic() + 900
    try:
        while any(proc.poll() is None for proc in procs):
            for proc in procs:
                assert proc.returncode in (None, 0), errors()
            assert time.monotonic() < deadline, "the processes did not finish in 900 s"
            time.sleep(0.5)
        for proc in procs:
            assert proc.returncode == 0, errors()
        return [json.loads(read(out).split("RESULT")[-1]) for out, _ in logs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for out, err in logs:
            out.close()
            err.close()


def _logged_steps(path):
    with open(path) as f:
        return [json.loads(line)["step"] for line in f]


def test_two_processes_train_checkpoint_resume_and_agree_with_one(tmp_path):
    first = _launch(tmp_path, 2, 4, devices_per_process=4)
    assert [(r["process"], r["processes"], r["devices"], r["step"]) for r in first] == [(0, 2, 8, 4), (1, 2, 8, 4)]
    assert first[0]["metrics"] == first[1]["metrics"]  # every process scored the whole split

    resumed = _launch(tmp_path, 2, 6, devices_per_process=4)
    assert [r["step"] for r in resumed] == [6, 6]
    assert resumed[0]["metrics"] == resumed[1]["metrics"]
    # Only process 0 writes the logs; the second command resumed at step 4 instead of starting over.
    assert _logged_steps(tmp_path / "run" / "train_metrics.jsonl") == [1, 2, 3, 4, 5, 6]
    assert sorted(int(d) for d in os.listdir(tmp_path / "run" / "checkpoints") if d.isdigit()) == [4, 6]

    # One process with all 8 devices restores the two processes' final checkpoint and evaluates it.
    single = _launch(tmp_path, 1, 6, devices_per_process=8)
    assert single[0]["processes"] == 1 and single[0]["step"] == 6
    metrics, reference = resumed[0]["metrics"], single[0]["metrics"]
    assert metrics.keys() == reference.keys()
    # The forward pass is laid out differently (2 hosts x 4 devices against 1 x 8), so float32 sums run in
    # another order: counts (R@k) agree exactly, mIoU to float32 precision.
    assert {k: v for k, v in metrics.items() if k != "mIoU"} == {k: v for k, v in reference.items() if k != "mIoU"}
    assert metrics["mIoU"] == pytest.approx(reference["mIoU"], rel=1e-6)
    with open(tmp_path / "run" / "eval_metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    # The single-process run evaluated the final step again and replaced its row (one row per step and split).
    assert [(r["step"], r["split"]) for r in rows] == [(4, "val"), (6, "val")]
    assert {k: v for k, v in rows[-1].items() if k not in ("step", "split", "protocol", "mIoU")} == {
        k: round(v, 4) for k, v in reference.items() if k != "mIoU"}
