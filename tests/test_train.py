"""End to end: train_and_evaluate on a tiny config, resume, metrics/predictions files, CLI."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import test as test_config
from jvmr import train
from reference import simulated_devices_xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    config = test_config.get_config()
    state, final = train.train_and_evaluate(config, workdir)
    return config, workdir, state, final


def test_train_and_evaluate_writes_metrics(trained):
    config, workdir, state, final = trained
    assert int(state.step) == config.num_train_steps
    # Empty dataset.eval_splits: every split of the manifest but the training one.
    assert config.dataset.eval_splits == () and config.dataset.protocol == ""
    splits = ["val", "test", "test_novel", "test_paraphrase"]
    assert list(final) == splits
    with open(os.path.join(workdir, "config.json")) as f:
        resolved = json.load(f)["dataset"]
    assert (resolved["eval_splits"], resolved["protocol"], resolved["feature_dim"]) == (splits, "jvmr", 16)
    rows = read_jsonl(os.path.join(workdir, "eval_metrics.jsonl"))
    # One evaluation in the middle and one at the end, for every split; the protocol named in each row.
    assert [(r["step"], r["split"], r["protocol"]) for r in rows] == [
        (s, split, "jvmr") for s in (config.eval_every_steps, config.num_train_steps) for split in splits]
    for r in rows:  # Recall falls with the IoU threshold and rises with k.
        assert 100.0 >= r["R@1,IoU=0.1"] >= r["R@1,IoU=0.3"] >= r["R@1,IoU=0.5"] >= r["R@1,IoU=0.7"] >= 0.0
        assert r["R@5,IoU=0.5"] >= r["R@1,IoU=0.5"]
    leaves = jax.tree.leaves(state.params)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)


def test_predictions_are_written_per_query(trained):
    config, workdir, _, _ = trained
    path = os.path.join(workdir, "predictions", f"test_step{config.num_train_steps}.jsonl")
    rows = read_jsonl(path)
    manifest = train.read_manifest(os.path.join(workdir, "data"))
    assert len(rows) == manifest["num_examples"]["test"]
    assert len({r["qid"] for r in rows}) == len(rows)
    for r in rows[:20]:
        windows = r["pred_relevant_windows"]
        assert 1 <= len(windows) <= 5  # the jvmr protocol keeps R@5's five
        for st, ed, _ in windows:
            assert 0.0 <= st <= ed <= r["duration"] + 1e-3
        scores = [w[2] for w in windows]
        assert scores == sorted(scores, reverse=True)


def test_predictions_rescore_with_standalone_evaluator(trained):
    from jvmr import evaluate

    config, workdir, _, _ = trained
    pred_dir = os.path.join(workdir, "predictions")
    result = evaluate.run("moment_detr", os.path.join(pred_dir, f"test_step{config.num_train_steps}.jsonl"),
                          os.path.join(pred_dir, "test_ground_truth.jsonl"))
    logged = [r for r in read_jsonl(os.path.join(workdir, "eval_metrics.jsonl"))
              if r["split"] == "test" and r["step"] == config.num_train_steps][0]
    # moment_detr's R1 (top row, IoU >= thr) is the training loop's R@1 on the same top-k file.
    assert result["num_missing_predictions"] == 0
    assert result["brief"]["MR-full-R1@0.5"] == pytest.approx(logged["R@1,IoU=0.5"], abs=0.01)
    assert result["brief"]["MR-full-R1@0.7"] == pytest.approx(logged["R@1,IoU=0.7"], abs=0.01)


def test_rerun_resumes_from_checkpoint(trained, tmp_path):
    config, workdir, state, _ = trained
    # Same command again with a larger budget: continues from the last step instead of restarting.
    config = test_config.get_config()
    config.num_train_steps = config.num_train_steps + 2
    config.eval_every_steps = 1000
    resumed, _ = train.train_and_evaluate(config, workdir)
    assert int(resumed.step) == config.num_train_steps
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps[-1] == config.num_train_steps
    assert len(steps) <= config.max_checkpoints_to_keep


def test_losses_decrease(tmp_path):
    config = test_config.get_config()
    config.num_train_steps = 40
    config.log_every_steps = 10
    config.optimizer.schedule = "constant"
    config.optimizer.learning_rate = 3e-3
    config.eval_every_steps = 1000
    config.dataset.eval_splits = ("val",)
    train.train_and_evaluate(config, str(tmp_path))
    losses = [r["loss"] for r in read_jsonl(os.path.join(tmp_path, "train_metrics.jsonl"))]
    assert len(losses) == 4 and losses[-1] < losses[0] * 0.8, losses


PMAP_SCRIPT = r"""
import json, sys
import jax, numpy as np
from configs import test as test_config
from jvmr import train
assert jax.device_count() == 8, jax.devices()
root = sys.argv[1]
for steps in (4, 6):  # End to end: train, checkpoint, evaluate, then resume.
    config = test_config.get_config()
    config.parallelism = "pmap"
    config.batch_size = config.eval.batch_size = 16
    config.num_train_steps = steps
    config.checkpoint_every_steps = 4
    config.eval_every_steps = 1000
    config.dataset.eval_splits = ("val",)
    state, final = train.train_and_evaluate(config, root)
print("RESULT" + json.dumps({"step": int(state.step), "metrics": final["val"],
                             "finite": all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(state.params))}))
"""


@pytest.mark.parametrize("reevaluate_start", [False, True])
def test_a_resumed_run_drops_the_rows_it_logs_again(tmp_path, reevaluate_start):
    """Rows past the checkpoint a run resumes from (the stopped attempt's) are removed, and so is a line cut by a
    kill; with ``reevaluate_start`` (resumed at the final step) also that step's evaluations."""
    def write(name, rows, tail=""):
        with open(tmp_path / name, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows) + tail)
    train_rows = [{"step": s, "loss": 1.0 / s} for s in (2, 4, 6, 8)]
    eval_rows = [{"step": s, "split": split, "R@1,IoU=0.5": 1.0} for s in (4, 8) for split in ("val", "test")]
    write("train_metrics.jsonl", train_rows, tail='{"step": 10, "lo')  # cut while written
    write("eval_metrics.jsonl", eval_rows)
    removed = train.drop_rows_to_relog(str(tmp_path), 4, reevaluate_start)
    assert read_jsonl(tmp_path / "train_metrics.jsonl") == train_rows[:2]
    assert read_jsonl(tmp_path / "eval_metrics.jsonl") == ([] if reevaluate_start else eval_rows[:2])
    assert removed == {"train_metrics.jsonl": 3, "eval_metrics.jsonl": 4 if reevaluate_start else 2}
    assert train.drop_rows_to_relog(str(tmp_path), 4, reevaluate_start) == {}  # nothing more to remove
    assert train.drop_rows_to_relog(str(tmp_path / "elsewhere"), 4, True) == {}  # no files yet


def test_pmap_trains_checkpoints_resumes_and_evaluates(tmp_path):
    """parallelism=pmap end to end on 8 devices (its step's math against one device: tests/test_sharding.py;
    the jit path over a mesh end to end, across two processes: tests/test_multihost.py)."""
    env = dict(os.environ, XLA_FLAGS=simulated_devices_xla_flags(8), TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", PMAP_SCRIPT, str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.split("RESULT")[-1])
    assert result["step"] == 6 and result["finite"], result
    assert "R@1,IoU=0.5" in result["metrics"]
    # The second command resumed at step 4 (restoring into pmap's replicated layout) instead of starting over.
    assert [r["step"] for r in read_jsonl(os.path.join(tmp_path, "train_metrics.jsonl"))] == [2, 4, 6]


def test_cli_runs(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-m", "jvmr.main", "--config=configs/test.py", f"--workdir={tmp_path}",
         "--config.num_train_steps=3", "--config.eval_every_steps=100", "--config.dataset.eval_splits=('val',)"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "R@1,IoU=0.5" in out.stdout
    rows = read_jsonl(os.path.join(tmp_path, "eval_metrics.jsonl"))
    assert [(r["step"], r["split"]) for r in rows] == [(3, "val")]


def test_train_step_compiles_once_and_donates(trained):
    config, workdir, _, _ = trained
    from jvmr import registry
    from jvmr.data import pipeline

    data_dir = os.path.join(workdir, "data")
    config = train.resolve_dataset(config, data_dir)
    vocab = pipeline.load_vocabulary(data_dir)
    spec = registry.get_model_spec(config.model.name)
    batches = pipeline.as_numpy(pipeline.make_dataset(
        data_dir, "train", config.dataset, batch_size=config.batch_size, training=True, vocab=vocab,
        inputs=spec.inputs(config.model)))
    first = next(batches)
    stepper = train.Stepper(config, spec, registry.create_model(config.model, len(vocab)), first)
    state = stepper.create_state(jax.random.key(0))
    old_params = state.params
    state, _ = stepper.train(state, first)
    # The donated input buffers are consumed by the step.
    assert all(x.is_deleted() for x in jax.tree.leaves(old_params))
    for _ in range(3):
        state, step_metrics = stepper.train(state, next(batches))
    assert stepper._train._cache_size() == 1
    assert np.isfinite(float(step_metrics["loss"]))


def test_crash_keeps_a_checkpoint(tmp_path, monkeypatch):
    config = test_config.get_config()
    config.num_train_steps = 10
    config.checkpoint_every_steps = 100
    config.eval_every_steps = 100
    config.dataset.eval_splits = ("val",)
    original = train.Stepper.train
    calls = []

    def failing_train(self, state, batch):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated failure in step 4")
        return original(self, state, batch)

    monkeypatch.setattr(train.Stepper, "train", failing_train)
    with pytest.raises(RuntimeError, match="simulated failure"):
        train.train_and_evaluate(config, str(tmp_path))
    steps = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
    assert steps == [3]
    # Rerunning resumes from there.
    monkeypatch.setattr(train.Stepper, "train", original)
    state, _ = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 10


def test_resolve_dataset_checks_the_manifest(trained):
    config, workdir, _, _ = trained
    data_dir = os.path.join(workdir, "data")
    resolved = train.resolve_dataset(config, data_dir)
    assert resolved.dataset.feature_dim == 16 and config.dataset.feature_dim == 0  # a copy
    bad = test_config.get_config()
    bad.dataset.feature_dim = 32
    with pytest.raises(ValueError, match=r"feature_dim is 32 but the video features in .* are 16-d"):
        train.resolve_dataset(bad, data_dir)
    bad = test_config.get_config()
    bad.dataset.eval_splits = ("val_2",)
    with pytest.raises(ValueError, match=r"split\(s\) \['val_2'\] not in"):
        train.resolve_dataset(bad, data_dir)
    bad = test_config.get_config()
    bad.dataset.name = "tacos"
    with pytest.raises(ValueError, match="is dataset 'synthetic', but dataset.name is 'tacos'"):
        train.resolve_dataset(bad, data_dir)
    other = test_config.get_config()
    other.dataset.protocol = "2dtan"
    assert train.resolve_dataset(other, data_dir).dataset.protocol == "2dtan"


def test_long_queries_and_videos_are_reported_from_the_manifest(trained):
    """The manifest counts query and video lengths; training says how many the model's grid cuts or pools."""
    config, workdir, _, _ = trained
    manifest = train.read_manifest(os.path.join(workdir, "data"))
    lengths = manifest["lengths"]["train"]
    tokens = {int(k): v for k, v in lengths["query_tokens"].items()}
    clips = {int(k): v for k, v in lengths["video_clips"].items()}
    assert sum(tokens.values()) == manifest["num_examples"]["train"]
    assert sum(clips.values()) == manifest["num_videos"]["train"]
    # The test config's videos (20-60 clips) overflow its 32-clip grid on purpose.
    lines = train.length_warnings(config, manifest)
    over = sum(v for k, v in clips.items() if k > 32)
    assert over and (f"split 'train': {over} of {sum(clips.values())} videos have more than dataset.max_video_len=32 "
                     f"clips: they are mean-pooled to that many (the longest has {max(clips)})") in lines, lines
    short = test_config.get_config()
    short.dataset.max_query_len, short.dataset.max_video_len = 5, 8
    lines = train.length_warnings(short, manifest)
    over = sum(v for k, v in tokens.items() if k > 5)
    assert over and (f"split 'train': {over} of {sum(tokens.values())} queries have more than "
                     f"dataset.max_query_len=5 tokens: the words after that are dropped (the longest has "
                     f"{max(tokens)})") in lines
    over = sum(v for k, v in clips.items() if k > 8)
    assert over and any(line.startswith(f"split 'train': {over} of ") and "max_video_len=8 clips: they are "
                        "mean-pooled" in line for line in lines)
    short.dataset.video_sampling = "resample"  # every video is resampled anyway: nothing to say
    assert not any("max_video_len" in line for line in train.length_warnings(short, manifest))


def test_tvr_protocol_run_with_pretrained_embeddings(trained, tmp_path):
    """Another protocol end to end: metrics keys and files are the protocol's, and re-score exactly."""
    import shutil

    from jvmr import evaluate
    from jvmr.data import pipeline

    _, workdir, _, _ = trained
    data_dir = str(tmp_path / "data")
    shutil.copytree(os.path.join(workdir, "data"), data_dir)
    config = test_config.get_config()
    config.num_train_steps = 2
    config.eval_every_steps = 100
    config.dataset.data_dir = data_dir
    config.dataset.eval_splits = ("test",)
    config.dataset.protocol = "tvr"
    config.dataset.pretrained_embeddings = True
    vocab = pipeline.load_vocabulary(data_dir)
    with pytest.raises(FileNotFoundError, match="embeddings.npy"):
        train.train_and_evaluate(config, str(tmp_path / "no_vectors"))
    table = np.random.default_rng(0).normal(size=(len(vocab), config.model.word_dim)).astype(np.float32)
    np.save(os.path.join(data_dir, "embeddings.npy"), table[:, :3])
    with pytest.raises(ValueError, match=r"word table is \(\d+, 16\)"):
        train.train_and_evaluate(config, str(tmp_path / "bad_vectors"))
    np.save(os.path.join(data_dir, "embeddings.npy"), table)
    config.optimizer.learning_rate = config.optimizer.warmup_init_lr = 0.0  # the table must survive unchanged
    run = str(tmp_path / "run")
    state, final = train.train_and_evaluate(config, run)
    np.testing.assert_allclose(np.asarray(state.params["word_embed"]["embedding"]), table, rtol=1e-6)
    row = read_jsonl(os.path.join(run, "eval_metrics.jsonl"))[-1]
    assert row["protocol"] == "tvr" and "SVMR-0.5-r1" in row and "SVMR-0.7-r100" in row
    pred_dir = os.path.join(run, "predictions")
    rescored = evaluate.run("tvr", os.path.join(pred_dir, "test_step2_tvr.json"),
                            os.path.join(pred_dir, "test_tvr_ground_truth.jsonl"))
    assert rescored["num_missing_predictions"] == {"SVMR": 0}
    for key in ("0.5-r1", "0.5-r5", "0.7-r10", "0.7-r100"):
        assert rescored["SVMR"][key] == pytest.approx(final["test"][f"SVMR-{key}"], abs=0.01)
    with open(os.path.join(pred_dir, "test_step2_metrics.json")) as f:
        assert json.load(f)["protocol"] == "tvr"
