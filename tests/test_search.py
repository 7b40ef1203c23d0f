"""python -m jvmr.search: index a trained run's corpus, answer free text as training encoded it,
refuse an index of another run / vocabulary; the corpus evaluator in the training loop."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import reloclnet as reloclnet_config
from jvmr import registry, retrieval, search, train
from jvmr.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
    config = reloclnet_config.get_config()
    config.model.hidden_size = 16
    config.model.word_dim = 16
    config.model.num_heads = 2
    config.batch_size = 16
    config.eval.batch_size = 32
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 100
    config.optimizer.warmup_steps = 1
    config.dataset.eval_splits = ("test",)
    synth = config.dataset.synthetic
    synth.num_train, synth.num_val, synth.num_test = 90, 30, 60
    synth.feature_dim, synth.parser, synth.max_clips = 16, "gold", 64
    config.dataset.corpus.subtitle_dim = 8
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reloclnet"))
    config = tiny_config()
    state, final = train.train_and_evaluate(config, workdir)
    return config, workdir, final


def test_training_loop_runs_the_corpus_evaluator(run):
    config, workdir, final = run
    rows = [json.loads(line) for line in open(os.path.join(workdir, "eval_metrics.jsonl"))]
    assert [(r["step"], r["split"], r["protocol"]) for r in rows] == [(4, "test", "tvr")]
    metrics = final["test"]
    assert {"VCMR-0.5-r1", "SVMR-0.7-r100", "VR-r100", "t/VCMR-0.5-r1", "vt/VR-r1"} <= set(metrics)
    num_videos = json.load(open(os.path.join(workdir, "data", "manifest.json")))["num_videos"]["test"]
    assert metrics["num_videos"] == num_videos
    # VR ranks min(100, V) videos: with every video of the corpus ranked, R@100 is 100.
    assert num_videos <= 100 and metrics["VR-r100"] == 100.0
    # Finding the moment among all videos cannot beat finding it in the right one.
    for k in ("0.5-r1", "0.5-r10", "0.7-r100"):
        assert metrics[f"VCMR-{k}"] <= metrics[f"SVMR-{k}"]
    sub = json.load(open(os.path.join(workdir, "predictions", "test_step4_tvr.json")))
    assert set(sub) == {"video2idx", "VCMR", "SVMR", "VR"} and len(sub["video2idx"]) == num_videos


def test_index_search_encodes_queries_as_training_did(run, tmp_path):
    config, workdir, _ = run
    out = str(tmp_path / "index")
    index = search.build_index(workdir, "test", out)
    engine = search.Engine(out)
    assert engine.index.vids == index.vids
    # The first test query, encoded by the engine from its text and by the training pipeline.
    resolved = train.resolve_dataset(config, os.path.join(workdir, "data"))
    spec = registry.get_model_spec("reloclnet")
    batch = next(pipeline.as_numpy(pipeline.make_dataset(
        os.path.join(workdir, "data"), "test", resolved.dataset, batch_size=4, training=False,
        inputs=spec.inputs(resolved.model))))
    model, params = engine.run["model"], engine.run["params"]
    ref = model.apply({"params": params}, pipeline.device_batch(batch), train=False, method=model.encode_query)
    got = engine.encode([q.decode() for q in batch["query"]])
    np.testing.assert_allclose(got["query"], ref["query"], rtol=1e-5, atol=1e-6)
    rows = engine.search(batch["query"][0].decode(), k=7)
    assert len(rows) == 7 and all(r["vid"] in index.vids and r["start"] < r["end"] for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    with pytest.raises(ValueError, match="empty query"):
        engine.search("   ")
    # The ANN path probing every list and re-scoring every video finds the same moments.
    ann = retrieval.AnnSettings(nlist=2, nprobe=2, clips_per_stream=index.num_clips, rescore=index.num_videos)
    approx = search.Engine(out, ann=ann).search(batch["query"][0].decode(), k=7)
    assert [(r["vid"], r["start"], r["end"]) for r in approx] == [(r["vid"], r["start"], r["end"]) for r in rows]
    np.testing.assert_allclose([r["score"] for r in approx], [r["score"] for r in rows], rtol=1e-5, atol=1e-4)


def test_index_of_another_vocabulary_is_refused(run, tmp_path):
    _, workdir, _ = run
    out = str(tmp_path / "index")
    search.build_index(workdir, "test", out)
    meta = json.load(open(os.path.join(out, "index.json")))
    meta["info"]["vocab_sha256"] = "0" * 64
    json.dump(meta, open(os.path.join(out, "index.json"), "w"))
    with pytest.raises(ValueError, match="another model or vocabulary"):
        search.Engine(out)
    shutil.rmtree(os.path.join(out))
    with pytest.raises(FileNotFoundError, match="not a corpus index"):
        search.Engine(str(tmp_path))


def test_search_cli(run, tmp_path):
    _, workdir, _ = run
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = str(tmp_path / "index")
    build = subprocess.run([sys.executable, "-m", "jvmr.search", f"--workdir={workdir}", "--split=test",
                            f"--build_index={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    query = subprocess.run([sys.executable, "-m", "jvmr.search", f"--index={out}", "--k=3",
                            "--query=someone talks about the wedding right after talking about the money"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert query.returncode == 0, query.stderr[-3000:]
    rows = [json.loads(line) for line in query.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3 and {"vid", "start", "end", "score"} == set(rows[0])

