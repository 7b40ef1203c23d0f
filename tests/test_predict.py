"""python -m jvmr.predict / jvmr.predict.predict: every model localises a sentence in a fabricated video,
its sentences are read exactly as the run's data were (the run's own written predictions come out again),
and bad input is refused with a message naming it."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import test as test_config
from jvmr import export, predict, search, train
from jvmr.data import schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2


def _train(name, workdir):
    config = test_config.get_config(name)
    config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = STEPS
    config.dataset.eval_splits = ("val",)
    if name == "cmin":  # Trees from spaCy, as predict parses a new sentence for a model that reads trees.
        config.dataset.synthetic.parser = "spacy"
    train.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {name: _train(name, str(tmp_path_factory.mktemp(name))) for name in test_config.MODELS}


def _val_examples(workdir, n):
    return list(schema.read_split(os.path.join(workdir, "data"), "val"))[:n]


@pytest.mark.parametrize("name", ["cmin", "cimha", "ms2d"])
def test_predict_reproduces_the_runs_own_predictions(runs, name):
    """A val query and its video, given as a user would (text and a [T, D] array), get the windows the
    training run wrote for that query: same tokens, trees, preprocessing, model and ranking."""
    workdir = runs[name]
    written = {}
    with open(os.path.join(workdir, "predictions", f"val_step{STEPS}.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            written[row["qid"]] = row["pred_relevant_windows"]
    predictor = predict.Predictor(workdir)
    for ex in _val_examples(workdir, 3):
        (got,) = predictor.predict({ex.vid: ex.video_features}, [ex.query], duration=ex.duration, k=5)
        want = written[ex.qid][:5]
        assert got.vid == ex.vid and got.query == ex.query and len(got.moments) == len(want) > 0
        np.testing.assert_allclose([[m.start, m.end] for m in got.moments], [w[:2] for w in want], atol=0.006)
        np.testing.assert_allclose([m.score for m in got.moments], [w[2] for w in want], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", test_config.MODELS)
def test_every_model_predicts_on_a_fabricated_video(runs, name, tmp_path):
    workdir = runs[name]
    config = train.read_manifest(os.path.join(workdir, "data"))
    dim = config["feature_dim"]
    rng = np.random.default_rng(0)
    path = tmp_path / "my_video.npy"
    np.save(path, rng.normal(size=(23, dim)).astype(np.float32))
    subtitles = None
    if name == "reloclnet":  # the embedded corpus model reads a subtitle stream too
        subtitles = {"my_video": rng.normal(size=(23, config["feature_dims"]["subtitle"])).astype(np.float32)}
        with pytest.raises(predict.PredictError, match="subtitle stream"):
            predict.predict(workdir, str(path), "a person opens the door", clip_seconds=0.5)
        bad = {"my_video": np.full_like(subtitles["my_video"], np.nan)}
        with pytest.raises(predict.PredictError, match=r"<subtitle array>: video 'my_video': NaN or Inf"):
            predict.predict(workdir, str(path), "a person opens the door", clip_seconds=0.5, subtitles=bad)
    out = predict.predict(workdir, str(path), ["a person opens the door", "someone walks away"], clip_seconds=0.5,
                          k=3, subtitles=subtitles)
    assert [(p.vid, p.query, p.duration) for p in out] == [
        ("my_video", "a person opens the door", 11.5), ("my_video", "someone walks away", 11.5)]
    for p in out:
        assert 1 <= len(p.moments) <= 3
        assert all(0.0 <= m.start < m.end <= 11.5 for m in p.moments)
        scores = [m.score for m in p.moments]
        assert scores == sorted(scores, reverse=True) and np.all(np.isfinite(scores))
        assert p.to_json()["pred_relevant_windows"] == [[m.start, m.end, m.score] for m in p.moments]


def test_bad_input_is_refused_with_a_message_naming_it(runs, tmp_path, caplog):
    workdir = runs["cimha"]
    predictor = predict.Predictor(workdir)
    video = np.random.default_rng(1).normal(size=(20, 16)).astype(np.float32)
    with pytest.raises(predict.PredictError, match="empty query"):
        predictor.predict({"v": video}, ["  "], duration=10.0)
    with pytest.raises(predict.PredictError, match="no words"):
        predictor.predict({"v": video}, ["?!"], duration=10.0)
    with pytest.raises(predict.PredictError, match=r"video 'v': 12-d features, but the model was trained on 16-d"):
        predictor.predict({"v": video[:, :12]}, ["a person sits"], duration=10.0)
    with pytest.raises(predict.PredictError, match="--duration or --clip_seconds"):
        predictor.predict({"v": video}, ["a person sits"])
    with pytest.raises(predict.PredictError, match="must be positive"):
        predictor.predict({"v": video}, ["a person sits"], duration=-1.0)
    bad = video.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"video 'v'.*NaN or Inf in 1 of 20 clips \(first at clip 3\)"):
        predictor.predict({"v": bad}, ["a person sits"], duration=10.0)
    with pytest.raises(predict.PredictError, match="no such feature file"):
        predict.read_videos(str(tmp_path / "missing.npy"))
    np.save(tmp_path / "flat.npy", np.zeros(16, np.float32))
    with pytest.raises(predict.PredictError, match=r"flat.npy: video 'flat': features must be \[T, D\]"):
        predict.read_videos(str(tmp_path / "flat.npy"))
    folder = tmp_path / "videos"
    folder.mkdir()
    np.save(folder / "a.npy", video)
    with pytest.raises(predict.PredictError, match=r"no features for video\(s\) \['b'\]"):
        predict.read_videos(str(folder), ["b"])
    assert list(predict.read_videos(str(folder))) == ["a"]
    # Unknown words are read as the unknown token, with a warning naming them; a long video is pooled, noted.
    with caplog.at_level(logging.INFO):
        long_video = np.random.default_rng(2).normal(size=(100, 16)).astype(np.float32)
        (out,) = predictor.predict({"v": long_video}, ["a person zzyzxq the qwertyuiop"], duration=50.0, k=2)
    assert "qwertyuiop, zzyzxq" in caplog.text and "100 clips, mean-pooled to the model's 32-clip grid" in caplog.text
    assert len(out.moments) == 2


def test_command_line_prints_a_table_and_writes_moment_detr_rows(runs, tmp_path):
    workdir = runs["ms2d"]
    np.save(tmp_path / "clip.npy", np.random.default_rng(3).normal(size=(30, 16)).astype(np.float32))
    queries = tmp_path / "queries.txt"
    queries.write_text("a person opens the door\n\nsomeone walks away\n")
    output = tmp_path / "out.jsonl"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "jvmr.predict", f"--workdir={workdir}",
                           f"--features={tmp_path / 'clip.npy'}", "--clip_seconds=2", "--query=a person sits down",
                           f"--query_file={queries}", "--k=2", f"--output={output}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["video", "rank", "start", "s"] and len(lines) == 1 + 3 * 2
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["query"] for r in rows] == ["a person sits down", "a person opens the door", "someone walks away"]
    assert all(r["vid"] == "clip" and r["duration"] == 60.0 and len(r["pred_relevant_windows"]) == 2 for r in rows)
    # Exported (lowered for CPU, CUDA and TPU), the artifact predicts the same rows.
    artifact = tmp_path / "artifact"
    proc = subprocess.run([sys.executable, "-m", "jvmr.export", f"--workdir={workdir}", f"--output={artifact}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["platforms"] == ["cpu", "cuda", "tpu"]
    proc = subprocess.run([sys.executable, "-m", "jvmr.predict", f"--exported={artifact}",
                           f"--features={tmp_path / 'clip.npy'}", "--clip_seconds=2", "--query=a person sits down",
                           f"--query_file={queries}", "--k=2", f"--output={tmp_path / 'exported.jsonl'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = [json.loads(line) for line in (tmp_path / "exported.jsonl").read_text().splitlines()]
    assert [(r["qid"], r["query"]) for r in again] == [(r["qid"], r["query"]) for r in rows]
    for a, b in zip(rows, again):
        np.testing.assert_allclose(a["pred_relevant_windows"], b["pred_relevant_windows"], rtol=1e-4, atol=0.006)
    # A bad input ends the command with the message, not a traceback.
    proc = subprocess.run([sys.executable, "-m", "jvmr.predict", f"--workdir={workdir}",
                           f"--features={tmp_path / 'clip.npy'}", "--query=a person sits down"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: give the videos' duration")


@pytest.mark.parametrize("name", test_config.MODELS)
def test_exported_artifact_predicts_as_the_run(runs, name, tmp_path):
    """Each model's artifact (StableHLO with a symbolic batch) gives the in-process model's predictions on
    random inputs, at two batch sizes; ReLoCLNet's encoders are exported too and agree as well."""
    workdir = runs[name]
    out = str(tmp_path / "artifact")
    meta = export.export_run(workdir, out)
    expected = {"predict"} | ({"encode_query", "encode_context"} if name == "reloclnet" else set())
    assert set(meta["functions"]) == expected
    assert {"export.json", "params.msgpack", "vocab.txt", "config.json"} <= set(os.listdir(out))
    assert meta["functions"]["predict"]["inputs"]["video_feats"]["shape"][0] == "B"
    rng = np.random.default_rng(4)
    dims = meta["feature_dims"]
    videos = {f"v{i}": rng.normal(size=(t, dims["video"])).astype(np.float32) for i, t in enumerate((9, 40, 17))}
    subtitles = ({v: rng.normal(size=(x.shape[0], dims["subtitle"])).astype(np.float32) for v, x in videos.items()}
                 if name == "reloclnet" else None)
    queries = ["a person opens the door", "someone walks away quickly"]
    for batch_size in (1, 4):  # 6 examples: six calls of one, or a full batch and a padded one
        from_run = predict.Predictor(workdir, batch_size=batch_size).predict(
            videos, queries, clip_seconds=0.5, k=4, subtitles=subtitles)
        from_artifact = predict.Predictor(exported=out, batch_size=batch_size).predict(
            videos, queries, clip_seconds=0.5, k=4, subtitles=subtitles)
        assert [(p.qid, len(p.moments)) for p in from_run] == [(p.qid, len(p.moments)) for p in from_artifact]
        for a, b in zip(from_run, from_artifact):
            np.testing.assert_allclose([[m.start, m.end] for m in a.moments], [[m.start, m.end] for m in b.moments],
                                       atol=0.006)
            np.testing.assert_allclose([m.score for m in a.moments], [m.score for m in b.moments], rtol=1e-4,
                                       atol=1e-6)
    if name == "cimha":  # not an artifact, or one of another version: refused, naming it
        with pytest.raises(FileNotFoundError, match="is not a jvmr export"):
            predict.Predictor(exported=str(tmp_path))
        meta["artifact_version"] = 0
        with open(os.path.join(out, "export.json"), "w") as f:
            json.dump(meta, f)
        with pytest.raises(ValueError, match="export.json: a jvmr export .* of version 0, this jvmr reads 1"):
            export.load(out)
    if name == "reloclnet":
        artifact = export.load(out)
        run = search.load_run(workdir)
        batch = export.example_batch(run, batch_size=3)
        batch["video_feats"] = rng.normal(size=batch["video_feats"].shape).astype(np.float32)
        for method in ("encode_query", "encode_context"):
            want = run["model"].apply({"params": run["params"]}, batch, train=False,
                                      method=getattr(run["model"], method))
            got = artifact["functions"][method](artifact["params"], batch)
            for key in want:
                np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=1e-4, atol=1e-5)

