"""Tests of jvmr.baselines: random span, fixed prior span, and the CLI."""

from __future__ import annotations

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
        [sys.executable, "-m", "jvmr.baselines", f"--data_dir={data_dir}", "--train_split=train",
         "--eval_split=test", f"--output={out}"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "random span" in proc.stdout and "fixed prior span [0.40, 0.60]" in proc.stdout
    assert "R@1" in proc.stdout and "IoU=0.5" in proc.stdout and "mIoU" in proc.stdout
    with open(out) as f:
        report = json.load(f)
    assert report["num_train"] == 40 and report["num_eval"] == 25
    assert report["fixed_prior_span"]["span"] == [0.4, 0.6]
    assert report["fixed_prior_span"]["metrics"]["R@1,IoU=0.5"] == 100.0
    assert report["random_span"]["metrics"]["R@1,IoU=0.5"] < 50.0
    assert set(report["random_span"]["metrics"]) == set(report["fixed_prior_span"]["metrics"])

    missing = subprocess.run([sys.executable, "-m", "jvmr.baselines"], cwd=str(tmp_path), env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "data_dir" in missing.stderr
