"""Interrupted training loses nothing: a run killed with SIGKILL at a random moment and started again with the
same command ends bit-identical to an uninterrupted run; SIGTERM (preemption) checkpoints at the next step
boundary and exits cleanly."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40


def _command(workdir, steps=STEPS, checkpoint_every=5):
    return [sys.executable, "-m", "jvmr.main", "--config=configs/test.py:cimha", f"--workdir={workdir}",
            f"--config.num_train_steps={steps}", f"--config.checkpoint_every_steps={checkpoint_every}",
            f"--config.eval_every_steps={STEPS}", "--config.log_every_steps=1", "--config.max_checkpoints_to_keep=3",
            "--config.dataset.eval_splits=('val',)",
            "--config.optimizer.schedule=constant"]  # a learning rate that does not depend on num_train_steps


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")


def _run(workdir, file_size_limit=0, **kwargs):
    def limit_file_size():  # a full disk, as the writer sees it: a write past the limit fails (EFBIG)
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    proc = subprocess.run(_command(workdir, **kwargs), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600, preexec_fn=limit_file_size if file_size_limit else None)
    assert (proc.returncode == 0) != bool(file_size_limit), proc.stderr[-3000:]
    return proc


def _start(workdir, **kwargs):
    log = open(os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + ".log"), "w")
    return subprocess.Popen(_command(workdir, **kwargs), cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)


def _wait_for_step(proc, workdir, step, timeout=600):
    """Until train_metrics.jsonl has logged ``step`` (the process still running)."""
    path = os.path.join(workdir, "train_metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before step {step}"
        if os.path.exists(path):
            with open(path) as f:
                if any(json.loads(line)["step"] >= step for line in f if line.strip()):
                    return
        time.sleep(0.02)
    raise TimeoutError(f"step {step} not reached in {timeout} s")


def _final_params(workdir):
    from jvmr import search
    run = search.load_run(workdir)
    assert run["step"] == STEPS
    return run["params"]


def _eval_rows(workdir):
    with open(os.path.join(workdir, "eval_metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _train_losses(workdir):
    """(step, loss) of every logged row, in the order written."""
    with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
        return [(row["step"], row["loss"]) for row in map(json.loads, f)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    _run(workdir)
    return workdir


def test_the_same_command_twice_gives_the_same_run(uninterrupted, tmp_path):
    """Determinism: a second run of the same command, from scratch, logs the same losses and metrics and
    ends with the same parameters, bit for bit (CPU)."""
    import jax
    workdir = str(tmp_path / "again")
    _run(workdir)
    assert _train_losses(workdir) == _train_losses(uninterrupted)
    assert _eval_rows(workdir) == _eval_rows(uninterrupted)
    jax.tree.map(np.testing.assert_array_equal, _final_params(workdir), _final_params(uninterrupted))


def test_a_killed_run_resumes_to_the_same_parameters_and_metrics(uninterrupted, tmp_path):
    import jax
    workdir = str(tmp_path / "killed")
    kill_after = random.Random().randrange(6, STEPS - 6)  # a random moment: after this step is logged
    proc = _start(workdir)
    _wait_for_step(proc, workdir, kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    _run(workdir)  # the same command again
    want, got = _final_params(uninterrupted), _final_params(workdir)
    # Bit-identical on CPU: the same batches (the order depends on the seed only; the resumed pipeline skips
    # the batches of the steps done), the same dropout and loss keys (folded with the step from the
    # checkpointed root key), the same Adam state.
    jax.tree.map(np.testing.assert_array_equal, got, want)
    rows_want, rows_got = _eval_rows(uninterrupted), _eval_rows(workdir)
    assert rows_got == rows_want and rows_got[-1]["step"] == STEPS
    # The rows the killed attempt logged past its last checkpoint were removed when the run resumed: every step
    # is logged once, with the uninterrupted run's loss.
    assert _train_losses(workdir) == _train_losses(uninterrupted), kill_after


def test_sigterm_checkpoints_at_the_next_step_and_exits_cleanly(uninterrupted, tmp_path):
    workdir = str(tmp_path / "preempted")
    proc = _start(workdir, steps=100_000, checkpoint_every=100_000)
    _wait_for_step(proc, workdir, 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0
    with open(workdir + ".log") as f:
        log = f.read()
    assert "Preempted at step" in log, log[-3000:]
    step = int(log.split("Preempted at step ")[1].split(":")[0])
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps == [step] and step >= 3
    # The preemption checkpoint is the uninterrupted run's state at that step: the resumed run continues
    # it exactly (its losses are the uninterrupted run's).
    _run(workdir, steps=step + 3, checkpoint_every=100_000)
    want_losses = dict(_train_losses(uninterrupted))
    got_losses = _train_losses(workdir)
    assert [s for s, _ in got_losses] == list(range(1, step + 4))
    for s, loss in got_losses:
        assert loss == want_losses[s], s


def test_a_damaged_checkpoint_is_set_aside_and_the_one_before_resumes(uninterrupted, tmp_path):
    import jax
    workdir = str(tmp_path / "damaged")
    shutil.copytree(uninterrupted, workdir)
    data = os.path.join(workdir, "checkpoints", str(STEPS), "default", "ocdbt.process_0", "d")
    for name in os.listdir(data):  # truncate the array data of the latest checkpoint
        with open(os.path.join(data, name), "r+b") as f:
            f.truncate(7)
    log = _run(workdir).stderr
    assert f"Checkpoint {workdir}/checkpoints/{STEPS} cannot be restored" in log
    assert f"Moved the unreadable checkpoint" in log and f"resuming from step {STEPS - 5}" in log
    assert f"{STEPS}.unreadable" in os.listdir(os.path.join(workdir, "checkpoints"))
    assert "train_metrics.jsonl: removed 5 row(s) past the checkpoint of step 35" in log, log[-3000:]
    assert "eval_metrics.jsonl: removed 1 row(s) past the checkpoint of step 35" in log, log[-3000:]
    # Resumed from the checkpoint before, it ends as the uninterrupted run, bit for bit, and the rows of the
    # steps it did again are logged once.
    jax.tree.map(np.testing.assert_array_equal, _final_params(workdir), _final_params(uninterrupted))
    assert _eval_rows(workdir) == _eval_rows(uninterrupted)
    assert _train_losses(workdir) == _train_losses(uninterrupted)


def test_checkpoints_of_another_model_are_refused_and_kept(uninterrupted, tmp_path):
    from configs import test as test_config
    from jvmr import train
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted, workdir)
    config = test_config.get_config("cimha")
    config.model.d_model = 24
    with pytest.raises(RuntimeError, match=r"can be restored into this model: they hold another model or config "
                                           r"\(.*in the checkpoint, .* here"):
        train.train_and_evaluate(config, workdir)
    kept = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    assert kept == sorted(os.listdir(os.path.join(uninterrupted, "checkpoints")))  # nothing moved or deleted


def test_a_disk_that_fills_during_a_checkpoint_loses_nothing(uninterrupted, tmp_path):
    """The checkpoint of step 40 cannot be written (files stop growing at 100 kB, as on a full disk): the run
    stops with a message naming the directory, the cause and the complete checkpoints, and they are intact:
    step 35 restores to the uninterrupted run's step 35 (that the same command resumes from a checkpoint,
    bit for bit, is the killed-run test's)."""
    import jax
    from jvmr import search
    workdir = str(tmp_path / "full")
    shutil.copytree(uninterrupted, workdir)
    for name in ("eval_metrics.jsonl", "train_metrics.jsonl"):
        os.remove(os.path.join(workdir, name))
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(STEPS)))  # back to step 35
    log = _run(workdir, file_size_limit=100_000).stderr
    assert "CheckpointError: could not write a checkpoint in " in log, log[-3000:]
    assert "File too large" in log and f"Complete checkpoints: [{STEPS - 10}, {STEPS - 5}]" in log, log[-3000:]
    kept = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    assert [d for d in kept if d.isdigit()] == [str(STEPS - 10), str(STEPS - 5)], kept
    jax.tree.map(np.testing.assert_array_equal, search.load_run(workdir, STEPS - 5)["params"],
                 search.load_run(uninterrupted, STEPS - 5)["params"])
