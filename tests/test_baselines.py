"""Tests of jvmr.baselines: random span, fixed prior span, and the CLI."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jvmr import baselines as B
from jvmr import metrics as M

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _centre_data(n: int, seed: int):
    """Durations and gt spans that are all [0.4, 0.6] x duration."""
    d = np.random.default_rng(seed).uniform(10.0, 120.0, size=n)
    gt = (np.array([0.4, 0.6])[None, :] * d[:, None])[:, None, :]  # [n, 1, 2]
    return d, gt


def test_span_grid():
    grid = B.span_grid(0.02)
    assert grid.shape == (51 * 50 // 2, 2)
    assert np.all(grid[:, 0] < grid[:, 1]) and grid.min() == 0.0 and grid.max() == 1.0
    with pytest.raises(ValueError):
        B.span_grid(0.03)


def test_random_span_predictions_inside_video_and_seeded():
    d = np.array([10.0, 50.0, 3.0])
    p = B.random_span_predictions(d, seed=3, k=7)
    assert p.shape == (3, 7, 2)
    assert np.all(p[..., 0] < p[..., 1]) and np.all(p >= 0) and np.all(p <= d[:, None, None])
    np.testing.assert_array_equal(p, B.random_span_predictions(d, seed=3, k=7))
    assert not np.array_equal(p, B.random_span_predictions(d, seed=4, k=7))


def test_random_span_low_recall():
    d, gt = _centre_data(2000, 0)
    r = B.random_span(d, gt, None, seed=0, k=5)
    assert set(r) == set(M.recall_at_k(gt, None, gt, None))
    # Uniform spans rarely overlap a 20%-long moment well.
    assert r["R@1,IoU=0.5"] < 20.0 and r["R@1,IoU=0.7"] < 10.0
    assert r["R@1,IoU=0.5"] <= r["R@5,IoU=0.5"] < 60.0
    assert r == B.random_span(d, gt, None, seed=0, k=5)


def test_fixed_prior_finds_the_constant_span():
    tr_d, tr_gt = _centre_data(500, 1)
    te_d, te_gt = _centre_data(300, 2)
    res = B.fixed_prior_span(tr_d, tr_gt, te_d, te_gt)
    np.testing.assert_allclose(res.span, [0.4, 0.6], atol=1e-9)
    assert res.train_recall == 100.0
    for thr in (0.1, 0.3, 0.5, 0.7):
        assert res.metrics[f"R@1,IoU={thr}"] == 100.0
        assert res.metrics[f"R@5,IoU={thr}"] == 100.0
    assert res.metrics["mIoU"] == pytest.approx(100.0)
    # R@5 spans: 5 grid spans, the best first, pairwise IoU <= 0.5 after NMS.
    assert res.spans.shape == (5, 2)
    np.testing.assert_array_equal(res.spans[0], res.span)
    iou = M.pairwise_temporal_iou(res.spans, res.spans)
    assert np.all(iou[~np.eye(5, dtype=bool)] <= 0.5)
    rand = B.random_span(te_d, te_gt, None, seed=0)
    assert res.metrics["R@1,IoU=0.5"] > rand["R@1,IoU=0.5"] + 50


def test_fixed_prior_ragged_equals_padded_and_multi_gt():
    rng = np.random.default_rng(5)
    d = rng.uniform(5, 60, size=120)
    ragged = []
    for i in range(120):
        g = 1 + i % 3
        ragged.append(np.sort(rng.uniform(0, 1, size=(g, 2)), axis=-1) * d[i])
    spans, valid = M.pad_spans(ragged)
    a = B.fixed_prior_span(d, ragged, d, ragged, step=0.05)
    b = B.fixed_prior_span(d, spans, d, spans, train_gt_valid=valid, test_gt_valid=valid, step=0.05)
    np.testing.assert_array_equal(a.span, b.span)
    assert a.metrics == b.metrics
    # Selection maximises train R@1 IoU>=0.5 over the grid, so on train it beats any grid span.
    assert a.metrics["R@1,IoU=0.5"] == pytest.approx(a.train_recall)
    for span in B.span_grid(0.05)[::37]:
        pred = np.broadcast_to(span * d[:, None], (120, 2))[:, None, :]
        r = M.recall_at_k(pred, None, spans, valid, ks=(1,), iou_thresholds=(0.5,))
        assert r["R@1,IoU=0.5"] <= a.train_recall + 1e-9


def test_fixed_prior_rejects_bad_durations():
    d, gt = _centre_data(10, 0)
    with pytest.raises(ValueError, match="query 3"):
        B.fixed_prior_span(np.where(np.arange(10) == 3, 0.0, d), gt, d, gt)


def _write_dataset(data_dir: str) -> None:
    from jvmr.data import schema

    def examples(split, n, seed):
        d, gt = _centre_data(n, seed)
        for i in range(n):
            yield schema.Example(
                qid=f"{split}-{i}", vid=f"v{i}", duration=float(d[i]), query="a",
                tokens=["a"], dep_heads=[-1], dep_labels=["root"], gt_spans=gt[i].astype(np.float32),
                video_features=np.zeros((2, 3), np.float32))

    schema.write_split(examples("train", 40, 1), data_dir, "train")
    schema.write_split(examples("test", 25, 2), data_dir, "test", num_shards=2)


def test_cli_end_to_end(tmp_path):
    data_dir = str(tmp_path / "data")
    _write_dataset(data_dir)
    out = str(tmp_path / "out" / "baselines.json")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "jvmr.baselines", f"--data_dir={data_dir}", "--splits=test", f"--output={out}"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== random_span on test ==" in proc.stdout and "== fixed_prior_span on test ==" in proc.stdout
    assert "R@1" in proc.stdout and "IoU=0.5" in proc.stdout and "mIoU" in proc.stdout
    with open(out) as f:
        report = json.load(f)
    assert set(report) == {"random_span", "fixed_prior_span"}  # No event timeline: no event baselines.
    assert report["fixed_prior_span"]["test"]["R@1,IoU=0.5"] == 100.0  # Every moment is [0.4, 0.6].
    assert report["random_span"]["test"]["R@1,IoU=0.5"] < 50.0
    # The keys of eval_metrics.jsonl under the default protocol.
    logged, _, _ = M.evaluate_split("jvmr", np.array([[[0.0, 1.0]]]), np.array([[1.0]]), np.array([[[0.0, 1.0]]]))
    assert set(report["random_span"]["test"]) == set(report["fixed_prior_span"]["test"]) == set(logged)

    missing = subprocess.run([sys.executable, "-m", "jvmr.baselines"], cwd=str(tmp_path), env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "data_dir" in missing.stderr


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    from jvmr.data import synthetic
    data_dir = str(tmp_path_factory.mktemp("synthetic"))
    cfg = synthetic.SyntheticConfig(parser="gold", num_train=150, num_val=30, num_test=240, num_test_novel=30,
                                    num_test_paraphrase=30)
    synthetic.build(data_dir, cfg)
    clean = dataclasses.replace(cfg, clip_noise=0.02, video_noise=0.0, instance_noise=0.0, view_jitter=0.0,
                                max_blur_clips=0.0, min_blur_clips=0.0, min_clips=60)
    clean_dir = str(tmp_path_factory.mktemp("clean"))
    synthetic.build(clean_dir, clean)
    return data_dir, clean_dir


def _expected_random_event_r1(records, threshold=0.5):
    """E[R@1] of a random true event: per query, the share of its video's events that hit a GT span."""
    hits = []
    for r in records:
        events = np.asarray([(e["start"], e["end"]) for e in r["events"]])  # true spans
        annotated = np.asarray([(e["gt_start"], e["gt_end"]) for e in r["events"]])
        for q in r["queries"]:
            gt = annotated[q["targets"]]
            if q["hull"]:
                gt = np.asarray([[gt[:, 0].min(), gt[:, 1].max()]])
            iou = M.temporal_iou(events[:, None, :], gt[None])
            hits.append(np.mean(iou.max(1) >= threshold))
    return 100.0 * float(np.mean(hits))


def _expected_structure_only_r1(records, threshold=0.5):
    """E[R@1] of a random answer of the query's signature (its words but its compositions)."""
    from jvmr.data import synthetic
    hits = []
    for r in records:
        events = np.asarray([(e["start"], e["end"]) for e in r["events"]])  # true spans
        annotated = np.asarray([(e["gt_start"], e["gt_end"]) for e in r["events"]])
        answers = synthetic.structural_answers([(e["action"], e["object"]) for e in r["events"]])
        for q in r["queries"]:
            gt = annotated[q["targets"]]
            if q["hull"]:
                gt = np.asarray([[gt[:, 0].min(), gt[:, 1].max()]])
            options = answers[synthetic.signature(q)]
            assert tuple(q["targets"]) in options and len(options) >= 2  # min_alternatives = 1
            spans = np.asarray([[events[list(o)][:, 0].min(), events[list(o)][:, 1].max()] if q["hull"]
                                else events[o[0]] for o in options])
            hits.append(np.mean(M.temporal_iou(spans[:, None, :], gt[None]).max(1) >= threshold))
    return 100.0 * float(np.mean(hits))


def test_random_event_and_rule_based_on_the_embedded_benchmark(synthetic_dir):
    from jvmr.data import synthetic
    data_dir, clean_dir = synthetic_dir
    report = B.run_baselines(data_dir, ["test"], num_draws=200)
    assert set(report) == {"random_span", "fixed_prior_span", "random_event", "structure_only", "rule_based"}
    records = synthetic.read_videos(data_dir, "test")
    r1 = report["random_event"]["test"]["R@1,IoU=0.5"]
    assert r1 == pytest.approx(_expected_random_event_r1(records), abs=1.5)
    structure = report["structure_only"]["test"]["R@1,IoU=0.5"]
    assert structure == pytest.approx(_expected_structure_only_r1(records), abs=1.5)
    assert r1 + 5 < structure < 60  # Reading the query's structure helps, but not without its compositions.
    # Same keys as eval_metrics.jsonl: flat protocol keys plus the headline per query type.
    keys = set(report["random_event"]["test"])
    assert {"R@1,IoU=0.5", "R@5,IoU=0.7", "mIoU", "simple/R@1,IoU=0.5", "relation/R@1,IoU=0.5"} <= keys
    assert all(set(report[name]["test"]) == keys for name in report)
    # On nearly noise-free, cut-edged videos the generator-aware rules solve the task; blurred boundaries cost them.
    clean = B.run_baselines(clean_dir, ["test"], num_draws=1)
    assert clean["rule_based"]["test"]["R@1,IoU=0.5"] > 95.0
    assert report["rule_based"]["test"]["R@1,IoU=0.7"] < clean["rule_based"]["test"]["R@1,IoU=0.7"] - 5


def test_viterbi_switch_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ll = rng.normal(size=(5, 3))
        path = B.viterbi_switch(ll, 0.7)
        best = max(itertools.product(range(3), repeat=5),
                   key=lambda p: sum(ll[t, s] for t, s in enumerate(p)) - 0.7 * sum(a != b for a, b in zip(p, p[1:])))
        score = lambda p: sum(ll[t, s] for t, s in enumerate(p)) - 0.7 * sum(a != b for a, b in zip(p, p[1:]))  # noqa
        assert score(tuple(path)) == pytest.approx(score(best))


def _corpus_setup(num_videos=40, per_video=50, seed=0):
    rng = np.random.default_rng(seed)
    corpus = [f"v{i}" for i in range(num_videos)]
    corpus_durations = rng.uniform(20, 60, num_videos)
    vids = [corpus[i % num_videos] for i in range(num_videos * per_video)]
    durations = corpus_durations[np.arange(len(vids)) % num_videos]
    start = rng.uniform(0, 0.5, len(vids)) * durations
    gt = np.stack([start, start + 0.3 * durations], axis=1)[:, None]
    return vids, durations, corpus, corpus_durations, gt


def test_corpus_random_video_is_chance():
    """VR R@k of random videos is k / V (2,000 queries, 40 videos: R@1 = 2.5% +- 0.35 sd), the gt video is
    always in the top 100 of 40, and the query-blind order is one order for every query."""
    vids, durations, corpus, corpus_durations, gt = _corpus_setup()
    own = np.asarray([corpus.index(v) for v in vids])
    rng = np.random.default_rng(1)
    blocks = B.corpus_baseline_blocks(vids, durations, corpus, corpus_durations, rng)
    result = M.flat_metrics(M.evaluate_tvr(blocks, own, gt, np.ones(gt.shape[:2], bool)))
    assert abs(result["VR-r1"] - 2.5) < 1.2 and abs(result["VR-r10"] - 25.0) < 3.5
    assert result["VR-r100"] == 100.0
    assert blocks["VR"][0].shape == (len(vids), 40) and all(len(set(r)) == 40 for r in blocks["VR"][0][:20])
    # each VCMR moment lies inside its video
    vcmr_vid, vcmr_spans, _ = blocks["VCMR"]
    assert np.all(vcmr_spans[..., 1] <= corpus_durations[vcmr_vid] + 1e-9) and np.all(vcmr_spans >= 0)

    prior = np.asarray([[0.0, 0.5], [0.5, 1.0], [0.25, 0.75]])
    blocks = B.corpus_baseline_blocks(vids, durations, corpus, corpus_durations, rng, prior, k=7)
    order = blocks["VR"][0]
    assert np.all(order == order[0])  # query-blind: the same ranking for every query
    vcmr_vid, vcmr_spans, _ = blocks["VCMR"]
    np.testing.assert_array_equal(vcmr_vid[0], np.repeat(order[0, :3], 3)[:7])
    np.testing.assert_allclose(vcmr_spans[0, 3], prior[0] * corpus_durations[order[0, 1]])
    np.testing.assert_allclose(blocks["SVMR"][1][5], prior * durations[5])


def test_cli_corpus_baselines_on_the_corpus_benchmark(tmp_path):
    """``jvmr.baselines`` on a built corpus benchmark reports random_video and prior rows with the
    corpus evaluator's keys; VR R@1 of random videos is near 1 / V."""
    from jvmr.data import corpus, synthetic
    world = synthetic.SyntheticConfig(num_train=300, num_val=120, num_test=120, num_test_novel=0,
                                      num_test_paraphrase=0, max_clips=48)
    corpus.build(str(tmp_path), corpus.CorpusConfig(synthetic=world))
    report = B.run_baselines(str(tmp_path), splits=["val"], num_draws=4)
    assert set(report) == {"random_video", "prior"}
    val = report["random_video"]["val"]
    num_videos = len({json.loads(line)["vid"] for line in open(tmp_path / "val_videos.jsonl")})
    assert abs(val["VR-r1"] - 100.0 / num_videos) < 100.0 / num_videos + 2.0
    assert {"VCMR-0.5-r1", "SVMR-0.7-r10", "v/VR-r1", "t/SVMR-0.5-r1"} <= set(val)
    assert report["prior"]["val"]["VCMR-0.5-r1"] <= 2.0
