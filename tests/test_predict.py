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
from PIL import Image

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
                           f"--query_file={queries}", "--k=2", f"--output={output}",
                           f"--pictures={tmp_path / 'pictures'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["video", "rank", "start", "s"] and len(lines) == 1 + 3 * 2 + 1
    assert lines[-1] == f"3 pictures in {tmp_path / 'pictures'}"
    assert sorted(os.listdir(tmp_path / "pictures")) == ["clip_q0.png", "clip_q1.png", "clip_q2.png"]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["query"] for r in rows] == ["a person sits down", "a person opens the door", "someone walks away"]
    assert all(r["vid"] == "clip" and r["duration"] == 60.0 and len(r["pred_relevant_windows"]) == 2 for r in rows)
    # Exported (lowered for CPU, CUDA and TPU), the artifact predicts the same rows.
    artifact = tmp_path / "artifact"
    proc = subprocess.run([sys.executable, "-m", "jvmr.export", f"--workdir={workdir}", f"--output={artifact}",
                           "--saved_model", "--saved_model_batch_size=2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed["platforms"] == ["cpu", "cuda", "tpu"] and printed["saved_model"] == ["serving_default"]
    _check_saved_model(workdir, str(artifact), 2)
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


EVIDENCE = {
    "cmin": {"curves": ["anchor confidence (best width)"], "attention": ["video-to-word attention"]},
    "cimha": {"curves": ["start probability", "end probability", "segment probability"]},
    "reloclnet": {"curves": ["start probability", "end probability", "clip similarity"]},
    "ms2d": {"maps": ["2D score map, stride 1", "2D score map, stride 2"]},
}


@pytest.mark.parametrize("name", test_config.MODELS)
def test_every_model_draws_its_evidence(runs, name, tmp_path):
    """With evidence, a prediction carries what the model saw on each clip of the video (the 23 clips fit
    the grid, so one value per clip) and the words it read, and draws them."""
    workdir = runs[name]
    manifest = train.read_manifest(os.path.join(workdir, "data"))
    rng = np.random.default_rng(5)
    video = rng.normal(size=(23, manifest["feature_dim"])).astype(np.float32)
    subtitles = ({"v": rng.normal(size=(23, manifest["feature_dims"]["subtitle"])).astype(np.float32)}
                 if name == "reloclnet" else None)
    (p,) = predict.predict(workdir, {"v": video}, "a person opens the door", clip_seconds=0.5, k=3,
                           subtitles=subtitles, evidence=True)
    assert p.words == ["a", "person", "opens", "the", "door"]
    assert {kind: list(block) for kind, block in p.evidence.items()} == EVIDENCE[name]
    clips = 16 if name == "ms2d" else 23  # MS-2D's grid is 16 clips: the video is pooled to it
    for kind, block in p.evidence.items():
        for values in block.values():
            want = {"curves": (clips,), "maps": (clips, clips), "attention": (clips, len(p.words))}[kind]
            assert values.shape == want
            assert np.isfinite(values).any() and np.all(np.isfinite(values) | (kind == "maps"))
    if name in ("cimha", "reloclnet"):
        assert p.evidence["curves"]["start probability"].sum() == pytest.approx(1.0, rel=1e-5)
    if name == "cmin":
        np.testing.assert_allclose(p.evidence["attention"]["video-to-word attention"].sum(1), 1.0, rtol=1e-5)
    paths = predict.write_pictures([p], str(tmp_path))
    assert [os.path.basename(x) for x in paths] == ["v_q0.png"] + (["v_q0_attention.png"] if name == "cmin" else [])
    for path in paths:
        Image.open(path).verify()


def _check_saved_model(workdir, artifact, batch_size):
    """The artifact's SavedModel, loaded by TensorFlow, predicts (and encodes) as the run on random inputs."""
    import tensorflow as tf
    loaded = tf.saved_model.load(os.path.join(artifact, "saved_model"))
    run = search.load_run(workdir)
    batch = export.example_batch(run, batch_size=batch_size)
    rng = np.random.default_rng(6)
    batch["video_feats"] = rng.normal(size=batch["video_feats"].shape).astype(np.float32)
    functions = export.run_functions(run)
    with open(os.path.join(artifact, "export.json")) as f:
        signatures = json.load(f)["saved_model"]["signatures"]
    assert set(loaded.signatures) == set(signatures)
    for name in signatures:
        got = loaded.signatures[name](**{k: tf.constant(v) for k, v in batch.items()})
        want = functions["predict" if name == "serving_default" else name](run["params"], batch)
        if name == "serving_default":
            want = dict(zip(("spans", "scores"), want))
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_allclose(got[key].numpy(), np.asarray(want[key]), rtol=1e-4, atol=1e-5)


def test_a_corpus_model_serves_from_a_saved_model(runs, tmp_path):
    out = str(tmp_path / "artifact")
    meta = export.export_run(runs["reloclnet"], out, saved_model_batch_size=3)
    assert meta["saved_model"]["stablehlo_version"] == export.TF_STABLEHLO_VERSION
    assert set(meta["saved_model"]["signatures"]) == {"serving_default", "encode_query", "encode_context"}
    assert meta["saved_model"]["signatures"]["serving_default"]["inputs"]["video_feats"][0] == 3
    _check_saved_model(runs["reloclnet"], out, 3)


@pytest.mark.parametrize("name", test_config.MODELS)
def test_exported_artifact_predicts_as_the_run(runs, name, tmp_path):
    """Each model's artifact (StableHLO with a symbolic batch) gives the in-process model's predictions on
    random inputs, at two batch sizes; ReLoCLNet's encoders are exported too and agree as well."""
    workdir = runs[name]
    out = str(tmp_path / "artifact")
    meta = export.export_run(workdir, out)
    expected = {"predict", "explain"} | ({"encode_query", "encode_context"} if name == "reloclnet" else set())
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
    # The pictures' evidence comes out of the artifact's explain function as out of the run.
    from_run = predict.Predictor(workdir).predict(videos, queries[:1], clip_seconds=0.5, subtitles=subtitles,
                                                  evidence=True)
    from_artifact = predict.Predictor(exported=out).predict(videos, queries[:1], clip_seconds=0.5,
                                                            subtitles=subtitles, evidence=True)
    for a, b in zip(from_run, from_artifact):
        assert a.words == b.words and a.evidence.keys() == b.evidence.keys()
        for kind, block in a.evidence.items():
            for key, values in block.items():
                np.testing.assert_allclose(b.evidence[kind][key], values, rtol=1e-4, atol=1e-5, equal_nan=True)
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

