"""python -m jvmr.submit: the TVR leaderboard submission of test_public (a query set plus a corpus, no ground
truth) and of val, from a ReLoCLNet run trained on a tiny TVR-like folder converted by data_prep."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import reloclnet as reloclnet_config
from configs import test as test_config
from jvmr import registry, search, submit, train
from jvmr.data import pipeline, schema
from tests.test_build import build_small_tvr, fake_features, write_small_tvr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# test_public lines that are not queries: every one is counted under a reason, none dropped silently.
MALFORMED = ("{not json", json.dumps({"desc": "no id", "type": "v"}), json.dumps({"desc_id": 77}),
             json.dumps({"desc": " ?! ", "desc_id": 78}), json.dumps({"desc": "a repeat", "desc_id": 3000}))
NO_FEATURES = "3005"  # A test_public query whose token features are missing.


@pytest.fixture(scope="module")
def tvr_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tvr")
    tvr = write_small_tvr(root, extra_public_lines=MALFORMED, missing=(NO_FEATURES,))
    data_dir = str(root / "data")
    manifest = build_small_tvr(tvr, data_dir, "--splits=train,val,test_public")
    config = reloclnet_config.get_config("tvr")
    config.dataset.data_dir = data_dir
    config.dataset.max_video_len, config.dataset.max_query_len = 16, 6
    config.model.hidden_size, config.model.num_heads, config.model.max_span_len = 16, 2, 8
    config.batch_size, config.eval.batch_size = 8, 16
    config.num_train_steps, config.log_every_steps = 4, 2
    config.eval_every_steps = config.checkpoint_every_steps = 100
    config.optimizer.warmup_steps = 1
    config.model.num_query_layers = 1  # CPU compile time; the submission path does not depend on these
    config.loss.use_video_cl = config.loss.use_frame_cl = False
    config.loss.hard_negative_start_step = -1
    config.dataset.eval_splits = ()  # From the manifest: never the query-only split.
    workdir = str(root / "run")
    train.train_and_evaluate(config, workdir)
    return tvr, manifest, workdir


def check_submission(sub: dict, desc_ids: list[int], durations: dict[str, float], vids: list[str]) -> None:
    """The TVR submission format: every query once per task, rows [video_idx, st, ed, score], ranked, <= 100."""
    assert sorted(sub["video2idx"]) == sorted(vids) and sorted(sub["video2idx"].values()) == list(range(len(vids)))
    idx2vid = {i: v for v, i in sub["video2idx"].items()}
    for task in [t for t in ("VCMR", "SVMR", "VR") if t in sub]:
        assert sorted(e["desc_id"] for e in sub[task]) == sorted(desc_ids), task
        for entry in sub[task]:
            rows = entry["predictions"]
            assert 0 < len(rows) <= 100 and all(len(r) == 4 for r in rows)
            scores = [r[3] for r in rows]
            assert all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)
            for v, st, ed, _ in rows:
                assert v in idx2vid
                if task != "VR":
                    assert 0 <= st < ed <= durations[idx2vid[v]] + 1e-4, (task, entry["desc_id"], st, ed)
        if task == "VR":  # every video once, best first
            assert all(len({r[0] for r in e["predictions"]}) == len(e["predictions"]) == len(vids) for e in sub[task])


def test_test_public_manifest_counts_every_line(tvr_run):
    tvr, m, workdir = tvr_run
    assert m["query_only_splits"] == ["test_public"] and "test_public" not in m["num_examples"]
    assert m["num_records"]["test_public"] == 6 + len(MALFORMED)
    assert m["skipped"]["test_public"] == {"unparsable_line": 1, "malformed_record": 2, "empty_query": 1,
                                           "duplicate_qid": 1, "missing_query_features": 1}
    assert m["num_queries"] == {"test_public": 5} and m["num_videos"]["test_public"] == 5
    assert m["query_types"]["test_public"] == {"": 3, "v": 2}
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["dataset"]["eval_splits"] == ["val"]  # test_public has no ground truth to evaluate
    asked = reloclnet_config.get_config("tvr")
    asked.dataset.eval_splits = ("test_public",)
    with pytest.raises(ValueError, match=r"\['test_public'\] .* no ground truth .* jvmr.submit"):
        train.resolve_dataset(asked, config["dataset"]["data_dir"])


def test_submit_cli_writes_the_test_public_submission(tvr_run, tmp_path):
    tvr, _, workdir = tvr_run
    out = str(tmp_path / "submission.json")
    proc = subprocess.run([sys.executable, "-m", "jvmr.submit", f"--workdir={workdir}", "--split=test_public",
                           f"--output={out}"], cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == {"output": out, "split": "test_public", "num_queries": 5, "num_videos": 5,
                       "tasks": ["VCMR", "VR"]}
    with open(out) as f:
        sub = json.load(f)
    assert set(sub) == {"video2idx", "VCMR", "VR"}  # no SVMR: the query's video is unknown
    desc_ids = [i for i in tvr["desc_ids"]["test_public"] if str(i) != NO_FEATURES]
    check_submission(sub, desc_ids, tvr["durations"], tvr["vids"]["test_public"])
    with open(os.path.join(tvr["annotations"], "tvr_test_public_release.jsonl")) as f:
        descs = {r["desc_id"]: r["desc"] for r in map(json.loads, f.read().splitlines()[:6])}
    assert all(e["desc"] == descs[e["desc_id"]] for e in sub["VCMR"])


def test_search_indexes_the_test_public_corpus(tvr_run, tmp_path):
    tvr, _, workdir = tvr_run
    index = search.build_index(workdir, "test_public", str(tmp_path / "index"))
    assert index.vids == tvr["vids"]["test_public"] and index.info["split"] == "test_public"
    np.testing.assert_allclose(index.durations, [tvr["durations"][v] for v in index.vids], rtol=1e-6)


def test_val_submission_has_svmr_and_equals_the_training_evaluation(tvr_run):
    tvr, m, workdir = tvr_run
    sub, metrics = submit.make_submission(workdir, "val")
    assert set(sub) == {"video2idx", "VCMR", "SVMR", "VR"} and metrics["num_videos"] == 4
    check_submission(sub, tvr["desc_ids"]["val"], tvr["durations"], tvr["vids"]["val"])
    for e in sub["SVMR"]:  # SVMR stays in the query's own video
        assert len({r[0] for r in e["predictions"]}) == 1
    with open(os.path.join(workdir, "predictions", "val_step4_tvr.json")) as f:
        assert json.loads(json.dumps(sub)) == json.load(f)
    logged = [json.loads(line) for line in open(os.path.join(workdir, "eval_metrics.jsonl"))][-1]
    assert logged["split"] == "val" and logged["VCMR-0.5-r1"] == round(metrics["VCMR-0.5-r1"], 4)


def test_query_and_corpus_records_read_as_labelled_examples(tvr_run):
    """A query-only split's query / corpus records give exactly the keys a labelled example of the same
    query / video gives (the same vocabulary, tokens, query features and video grid)."""
    _, _, workdir = tvr_run
    config = json.load(open(os.path.join(workdir, "config.json")))
    data_dir = config["dataset"]["data_dir"]
    ds = train.resolve_dataset(reloclnet_config.get_config("tvr"), data_dir).dataset
    ds.max_video_len, ds.max_query_len = 16, 6
    labelled = next(schema.read_split(data_dir, "val"))
    out = os.path.join(os.path.dirname(data_dir), "records")
    schema.write_split([labelled], out, "x")
    schema.write_split([schema.query_record(labelled.qid, labelled.query, labelled.tokens, labelled.dep_heads,
                                            labelled.dep_labels, labelled.query_type, labelled.query_features)],
                       out, schema.record_set("x", "query"), kind="query")
    schema.write_split([schema.video_record(labelled.vid, labelled.duration, labelled.video_features,
                                            labelled.subtitle_features)], out, schema.record_set("x", "video"),
                       kind="video")
    vocab = pipeline.load_vocabulary(data_dir)
    batch = {kind: next(pipeline.as_numpy(pipeline.make_dataset(
        out, "x", ds, batch_size=2, training=False, vocab=vocab, inputs=pipeline.INPUT_GROUPS, kind=kind)))
        for kind in schema.KINDS}
    query_keys = {"query_tokens", "query_mask", "query_feats", "query_feats_mask", "edge_senders", "edge_receivers",
                  "edge_labels", "edge_directions", "edge_mask"}
    video_keys = {"video_feats", "video_mask", "subtitle_feats", "video_index", "duration"}
    host = {"example_mask", *pipeline.HOST_KEYS}
    assert set(batch["query"]) == query_keys | host and set(batch["video"]) == video_keys | host
    for kind, keys in (("query", query_keys | {"qid", "query", "query_type"}), ("video", video_keys | {"vid"})):
        for key in keys | {"example_mask"}:
            np.testing.assert_array_equal(batch[kind][key], batch["example"][key], err_msg=f"{kind}: {key}")
    assert batch["example"]["query_feats_mask"][0].sum() == 5
    np.testing.assert_array_equal(batch["query"]["query_feats"][0, :5], fake_features(labelled.qid, 5, 8))


def test_a_model_that_is_not_a_corpus_model_is_refused(tmp_path):
    config = test_config.get_config()
    assert not hasattr(registry.get_model_spec(config.model.name).module, "encode_context")
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    with pytest.raises(ValueError, match=f"model '{config.model.name}' is not a corpus model"):
        submit.make_submission(str(tmp_path), "test_public")
