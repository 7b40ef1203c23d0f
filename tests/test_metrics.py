"""Tests of jvmr.metrics: IoU, NMS, R@k / mIoU, writers and the log table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jvmr import metrics as M


def _arr(x):
    return np.asarray(x, np.float64)


# ---------------------------------------------------------------------------
# IoU


class TestTemporalIou:

    @pytest.mark.parametrize("a, b, expected", [
        ([0, 1], [0, 2], 0.5),          # exactly 0.5
        ([0, 1], [1, 2], 0.0),          # touching
        ([3, 7], [3, 7], 1.0),          # identical
        ([0, 2], [1, 3], 1.0 / 3.0),    # partial overlap
        ([0, 1], [5, 6], 0.0),          # disjoint
        ([2, 4], [3, 3], 0.0),          # zero-length gt inside the prediction
        ([3, 3], [3, 3], 0.0),          # union 0
        ([0, 10], [2, 4], 0.2),         # containment
    ])
    def test_hand_computed(self, a, b, expected):
        assert M.temporal_iou(_arr(a), _arr(b)) == pytest.approx(expected, abs=0)
        assert M.temporal_iou(_arr(b), _arr(a)) == pytest.approx(expected, abs=0)

    def test_broadcasting_and_pairwise(self):
        a = _arr([[0, 1], [0, 2], [5, 6]])
        b = _arr([[0, 2], [1, 2]])
        pair = M.pairwise_temporal_iou(a, b)
        assert pair.shape == (3, 2)
        np.testing.assert_array_equal(pair, [[0.5, 0.0], [1.0, 0.5], [0.0, 0.0]])
        np.testing.assert_array_equal(M.temporal_iou(a[:, None], b[None]), pair)
        assert M.temporal_iou(a, _arr([0, 2])).shape == (3,)

    def test_rejects_bad_shape(self):
        with pytest.raises(ValueError):
            M.temporal_iou(np.zeros((3, 3)), np.zeros((3, 2)))


# ---------------------------------------------------------------------------
# NMS


class TestTemporalNms:

    def test_suppresses_above_threshold_keeps_equal(self):
        spans = _arr([[0, 2], [0, 1], [0, 1.9], [5, 6]])
        scores = _arr([0.9, 0.8, 0.7, 0.1])
        # [0,1] vs [0,2]: IoU 0.5 == thr -> kept; [0,1.9] vs [0,2]: 0.95 > thr -> suppressed.
        np.testing.assert_array_equal(M.temporal_nms(spans, scores, 0.5, 5), [0, 1, 3])
        np.testing.assert_array_equal(M.temporal_nms(spans, scores, 0.49, 5), [0, 3])
        np.testing.assert_array_equal(M.temporal_nms(spans, scores, 0.5, 2), [0, 1])
        np.testing.assert_array_equal(M.temporal_nms(spans, scores, None, 3), [0, 1, 2])

    def test_ties_by_original_index(self):
        spans = _arr([[0, 1], [2, 3], [4, 5], [6, 7]])
        scores = _arr([1.0, 2.0, 2.0, 1.0])
        np.testing.assert_array_equal(M.temporal_nms(spans, scores, 0.5, 4), [1, 2, 0, 3])
        res = M.batched_temporal_nms(spans[None], scores[None], 0.5, 4)
        np.testing.assert_array_equal(res.indices[0], [1, 2, 0, 3])

    def test_identical_spans_tie_keeps_first(self):
        spans = _arr([[0, 1], [0, 1], [0, 1]])
        np.testing.assert_array_equal(M.temporal_nms(spans, _arr([1, 1, 1]), 0.5, 3), [0])
        assert M.batched_temporal_nms(spans[None], _arr([[1, 1, 1]]), 0.5, 3).indices.tolist() == [[0, -1, -1]]

    def test_minus_inf_never_kept(self):
        spans = _arr([[0, 1], [2, 3], [4, 5]])
        scores = _arr([-np.inf, 1.0, -np.inf])
        np.testing.assert_array_equal(M.temporal_nms(spans, scores, 0.5, 3), [1])
        res = M.batched_temporal_nms(spans[None], scores[None], 0.5, 3)
        assert res.valid.tolist() == [[True, False, False]]
        assert res.indices.tolist() == [[1, -1, -1]]
        assert res.scores[0, 1] == -np.inf
        np.testing.assert_array_equal(res.spans[0], [[2, 3], [0, 0], [0, 0]])

    def test_nan_raises(self):
        spans = np.zeros((3, 4, 2))
        spans[..., 1] = 1.0
        scores = np.zeros((3, 4))
        scores[2, 1] = np.nan
        with pytest.raises(ValueError, match="query 2"):
            M.batched_temporal_nms(spans, scores, 0.5, 2)
        with pytest.raises(ValueError, match="NaN"):
            M.temporal_nms(spans[2], scores[2], 0.5, 2)
        with pytest.raises(ValueError, match="query 2"):
            M.evaluate_predictions(spans, scores, np.ones((3, 1, 2)) * [0, 1])

    def test_nan_in_invalid_candidates_is_ignored(self):
        spans = _arr([[[0, 1], [2, 3]]])
        res = M.batched_temporal_nms(spans, _arr([[np.nan, 0.3]]), 0.5, 2, valid=np.array([[0, 1]]))
        assert res.indices.tolist() == [[1, -1]]

    @pytest.mark.parametrize("threshold", [0.5, 0.0, 0.3, None])
    def test_batched_equals_per_query(self, threshold):
        rng = np.random.default_rng(123)
        q, n, keep = 1000, 24, 5
        # Integer grid spans (exact IoU ties such as 0.5 are frequent), coarse scores (ties),
        # some invalid (-inf) candidates and some zero-length spans.
        a = rng.integers(0, 12, size=(q, n, 2)).astype(np.float64)
        spans = np.sort(a, axis=-1)
        scores = rng.integers(0, 6, size=(q, n)).astype(np.float64)
        scores[rng.uniform(size=(q, n)) < 0.2] = -np.inf
        res = M.batched_temporal_nms(spans, scores, threshold, keep)
        assert res.spans.shape == (q, keep, 2) and res.scores.shape == (q, keep) and res.valid.shape == (q, keep)
        for i in range(q):
            ref = M.temporal_nms(spans[i], scores[i], threshold, keep)
            m = len(ref)
            np.testing.assert_array_equal(res.indices[i, :m], ref)
            assert not res.valid[i, m:].any() and res.valid[i, :m].all()
            np.testing.assert_array_equal(res.spans[i, :m], spans[i, ref])
            np.testing.assert_array_equal(res.scores[i, :m], scores[i, ref])

    def test_batched_random_continuous(self):
        rng = np.random.default_rng(7)
        q, n = 1000, 40
        spans = np.sort(rng.uniform(0, 30, size=(q, n, 2)), axis=-1).astype(np.float32)
        scores = rng.normal(size=(q, n)).astype(np.float32)
        res = M.batched_temporal_nms(spans, scores, 0.5, 5)
        for i in range(q):
            np.testing.assert_array_equal(res.indices[i], M.temporal_nms(spans[i], scores[i], 0.5, 5))

    def test_kept_spans_respect_threshold(self):
        rng = np.random.default_rng(0)
        spans = np.sort(rng.uniform(0, 10, size=(50, 30, 2)), axis=-1)
        res = M.batched_temporal_nms(spans, rng.uniform(size=(50, 30)), 0.4, 6)
        for i in range(50):
            kept = res.spans[i][res.valid[i]]
            iou = M.pairwise_temporal_iou(kept, kept)
            assert np.all(iou[~np.eye(len(kept), dtype=bool)] <= 0.4)

    def test_bad_arguments(self):
        with pytest.raises(ValueError):
            M.batched_temporal_nms(np.zeros((2, 3, 2)), np.zeros((2, 4)), 0.5, 1)
        with pytest.raises(ValueError):
            M.batched_temporal_nms(np.zeros((2, 3, 2)), np.zeros((2, 3)), 0.5, 0)
        with pytest.raises(ValueError):
            M.batched_temporal_nms(np.zeros((2, 3, 2)), np.zeros((2, 3)), 1.5, 1)


# ---------------------------------------------------------------------------
# Recall / mIoU


class TestRecallAtK:

    def test_keys_exact_and_ordered(self):
        r = M.recall_at_k(_arr([[[0, 1]]]), None, _arr([[[0, 1]]]), None)
        assert list(r) == ["R@1,IoU=0.1", "R@1,IoU=0.3", "R@1,IoU=0.5", "R@1,IoU=0.7",
                           "R@5,IoU=0.1", "R@5,IoU=0.3", "R@5,IoU=0.5", "R@5,IoU=0.7", "mIoU"]
        assert all(type(v) is float for v in r.values())
        assert M.recall_key(10, 0.55) == "R@10,IoU=0.55"

    def test_threshold_boundary_comparison(self):
        pred, gt = _arr([[[0, 1]]]), _arr([[[0, 2]]])  # IoU exactly 0.5
        ge = M.recall_at_k(pred, None, gt, None, ks=(1,), iou_thresholds=(0.5,), iou_comparison=">=")
        gt_ = M.recall_at_k(pred, None, gt, None, ks=(1,), iou_thresholds=(0.5,), iou_comparison=">")
        assert ge["R@1,IoU=0.5"] == 100.0
        assert gt_["R@1,IoU=0.5"] == 0.0
        assert ge["mIoU"] == gt_["mIoU"] == 50.0

    def test_touching_identical_zero_length(self):
        pred = _arr([[[1, 2]], [[3, 5]], [[2, 4]]])
        gt = _arr([[[0, 1]], [[3, 5]], [[3, 3]]])  # touching, identical, zero-length gt
        r = M.recall_at_k(pred, None, gt, None, ks=(1,), iou_thresholds=(0.1, 0.7))
        assert r["R@1,IoU=0.1"] == pytest.approx(100.0 / 3)
        assert r["R@1,IoU=0.7"] == pytest.approx(100.0 / 3)
        assert r["mIoU"] == pytest.approx(100.0 / 3)

    def test_several_gt_spans_and_gt_validity(self):
        pred = _arr([[[10, 20]], [[10, 20]]])
        gt = _arr([[[0, 5], [10, 20]], [[10, 20], [0, 5]]])
        gt_valid = np.array([[1, 1], [0, 1]], np.float32)  # pipeline-style float mask
        r = M.recall_at_k(pred, None, gt, gt_valid, ks=(1,), iou_thresholds=(0.5,))
        assert r["R@1,IoU=0.5"] == 50.0  # query 0 matches its 2nd gt; query 1's match is padding
        assert r["mIoU"] == 50.0

    def test_gt_as_q_by_2(self):
        r = M.recall_at_k(_arr([[[0, 1]]]), None, _arr([[0, 1]]), None, ks=(1,), iou_thresholds=(0.5,))
        assert r["R@1,IoU=0.5"] == 100.0

    def test_top_k_counts_valid_predictions_only(self):
        gt = _arr([[[0, 10]]])
        pred = _arr([[[50, 60], [0, 10], [0, 10]]])
        # Slot 0 invalid -> the first valid prediction (slot 1) is the top-1.
        r = M.recall_at_k(pred, np.array([[False, True, True]]), gt, None, ks=(1,), iou_thresholds=(0.5,))
        assert r["R@1,IoU=0.5"] == 100.0 and r["mIoU"] == 100.0
        r = M.recall_at_k(pred, None, gt, None, ks=(1, 2), iou_thresholds=(0.5,))
        assert r["R@1,IoU=0.5"] == 0.0 and r["R@2,IoU=0.5"] == 100.0 and r["mIoU"] == 0.0

    def test_k_larger_than_predictions(self):
        r = M.recall_at_k(_arr([[[0, 1]]]), None, _arr([[[0, 1]]]), None, ks=(1, 100), iou_thresholds=(0.5,))
        assert r["R@100,IoU=0.5"] == 100.0

    def test_no_valid_prediction_is_a_miss(self):
        pred = _arr([[[0, 1], [0, 1]], [[0, 1], [0, 1]]])
        gt = _arr([[[0, 1]], [[0, 1]]])
        valid = np.array([[True, True], [False, False]])
        r = M.recall_at_k(pred, valid, gt, None, ks=(1, 5), iou_thresholds=(0.1,))
        assert r["R@1,IoU=0.1"] == 50.0 and r["R@5,IoU=0.1"] == 50.0
        assert r["mIoU"] == 50.0
        empty = M.recall_at_k(np.zeros((2, 0, 2)), None, gt, None, ks=(1,), iou_thresholds=(0.1,))
        assert empty == {"R@1,IoU=0.1": 0.0, "mIoU": 0.0}

    def test_miou_by_hand(self):
        pred = _arr([[[0, 1], [0, 2]], [[0, 2], [1, 3]], [[7, 8], [0, 1]]])
        gt = _arr([[[0, 2]], [[1, 3]], [[0, 1]]])
        # top-1 IoUs: 0.5, 1/3, 0 (only the top-1 prediction counts).
        r = M.recall_at_k(pred, None, gt, None, ks=(1, 5), iou_thresholds=(0.3, 0.5))
        assert r["mIoU"] == pytest.approx(100.0 * (0.5 + 1.0 / 3.0 + 0.0) / 3.0)
        assert r["R@1,IoU=0.3"] == pytest.approx(200.0 / 3)
        assert r["R@1,IoU=0.5"] == pytest.approx(100.0 / 3)
        assert r["R@5,IoU=0.5"] == 100.0

    def test_errors(self):
        pred, gt = _arr([[[0, 1]], [[0, 1]]]), _arr([[[0, 1]], [[0, 1]]])
        with pytest.raises(ValueError, match="query 1"):
            M.recall_at_k(pred, None, gt, np.array([[True], [False]]))
        with pytest.raises(ValueError):
            M.recall_at_k(pred, None, gt, None, iou_comparison="=")
        with pytest.raises(ValueError):
            M.recall_at_k(pred, None, gt, None, ks=(0,))
        with pytest.raises(ValueError):
            M.recall_at_k(pred, None, gt[:1], None)


class TestEvaluatePredictions:

    def _data(self):
        cand = _arr([[[0, 10], [0, 9], [20, 30], [40, 50]]])
        scores = _arr([[0.9, 0.8, 0.7, 0.6]])
        gt = _arr([[[0, 9]]])  # matches the suppressed 2nd candidate best
        return cand, scores, gt

    def test_default_protocol_applies_nms(self):
        cand, scores, gt = self._data()
        res = M.evaluate_predictions(cand, scores, gt, ks=(1, 2), iou_thresholds=(0.95,))
        # [0,9] (IoU 0.9 with [0,10]) is suppressed: top-2 = [0,10], [20,30].
        assert res.indices.tolist() == [[0, 2]]
        assert res.metrics["R@2,IoU=0.95"] == 0.0
        np.testing.assert_array_equal(res.spans[0], [[0, 10], [20, 30]])
        np.testing.assert_array_equal(res.scores[0], [0.9, 0.7])
        assert res.valid.tolist() == [[True, True]]
        metrics, spans, scores_, valid, indices = res  # unpacks
        assert metrics is res.metrics

    def test_no_nms_is_top_k(self):
        cand, scores, gt = self._data()
        res = M.evaluate_predictions(cand, scores, gt, ks=(1, 2), iou_thresholds=(0.95,), nms_threshold=None)
        assert res.indices.tolist() == [[0, 1]]
        assert res.metrics["R@2,IoU=0.95"] == 100.0

    def test_candidate_validity_and_protocol(self):
        cand, scores, gt = self._data()
        proto = M.Protocol(name="strict", ks=(1,), iou_thresholds=(0.9,), iou_comparison=">", nms_threshold=None)
        res = M.evaluate_predictions(cand, scores, gt, None, np.array([[0, 1, 1, 1]]), **proto.kwargs())
        assert res.indices.tolist() == [[1]] and res.metrics["R@1,IoU=0.9"] == 100.0
        # [0,10] vs [0,9]: IoU exactly 0.9 -> a miss under '>' and a hit under '>='.
        res = M.evaluate_predictions(cand, scores, gt, **proto.kwargs())
        assert res.metrics["R@1,IoU=0.9"] == 0.0
        res = M.evaluate_predictions(cand, scores, gt, ks=(1,), iou_thresholds=(0.9,))
        assert res.metrics["R@1,IoU=0.9"] == 100.0

    def test_protocol_validation(self):
        assert M.DEFAULT_PROTOCOL.kwargs() == dict(ks=(1, 5), iou_thresholds=(0.1, 0.3, 0.5, 0.7),
                                                   iou_comparison=">=", nms_threshold=0.5,
                                               iou_union="exact", gt_select=None)
        with pytest.raises(ValueError):
            M.Protocol(iou_comparison="=>")
        with pytest.raises(ValueError):
            M.Protocol(nms_threshold=2.0)


# ---------------------------------------------------------------------------
# Writers and table


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_write_predictions_jsonl(tmp_path):
    path = str(tmp_path / "sub" / "preds.jsonl")
    spans = _arr([[[1.23456, 2.0], [3.0, 4.0], [0.0, 1.0]], [[0.0, 5.0], [0, 0], [0, 0]]])
    scores = _arr([[0.5, 0.9, 0.7], [0.123456, -np.inf, np.nan]])
    valid = np.array([[True, True, True], [True, False, False]])
    n = M.write_predictions_jsonl(path, [b"q0", np.int64(7)], ["v0", "v1"], np.float32([12.5, 30.0]),
                                  spans, scores, valid, queries=["a man runs", "b"])
    assert n == 2
    rows = _read_jsonl(path)
    assert rows[0] == {"qid": "q0", "vid": "v0", "duration": 12.5, "query": "a man runs",
                       "pred_relevant_windows": [[3.0, 4.0, 0.9], [0.0, 1.0, 0.7], [1.23456, 2.0, 0.5]]}
    assert rows[1] == {"qid": 7, "vid": "v1", "duration": 30.0, "query": "b",
                       "pred_relevant_windows": [[0.0, 5.0, 0.123456]]}
    M.write_predictions_jsonl(path, ["q0", "q1"], ["v0", "v1"], [1, 1], spans, scores, valid)
    assert "query" not in _read_jsonl(path)[0]
    with pytest.raises(ValueError):
        M.write_predictions_jsonl(path, ["q0", "q1"], ["v0", "v1"], [1, 1], spans, scores, None)


def test_write_ground_truth_jsonl(tmp_path):
    path = str(tmp_path / "gt.jsonl")
    gt = _arr([[[1.0, 2.33333], [5, 6]], [[0, 3], [0, 0]]])
    valid = np.array([[1, 1], [1, 0]])
    M.write_ground_truth_jsonl(path, ["a", "b"], ["v", "w"], [10, 20], gt, valid, queries=["x", "y"])
    assert _read_jsonl(path) == [
        {"qid": "a", "vid": "v", "duration": 10.0, "query": "x", "relevant_windows": [[1.0, 2.33333], [5.0, 6.0]]},
        {"qid": "b", "vid": "w", "duration": 20.0, "query": "y", "relevant_windows": [[0.0, 3.0]]},
    ]
    M.write_ground_truth_jsonl(path, ["a"], ["v"], [10], [np.array([[1, 2], [3, 4]])], None)
    assert _read_jsonl(path)[0]["relevant_windows"] == [[1.0, 2.0], [3.0, 4.0]]
    assert _read_jsonl(path)[0]["query"] == ""


def test_pad_spans():
    spans, valid = M.pad_spans([np.array([[0, 1]]), np.array([[0, 1], [2, 3]]), np.array([4, 5])])
    assert spans.shape == (3, 2, 2)
    assert valid.tolist() == [[True, False], [True, True], [True, False]]
    np.testing.assert_array_equal(spans[2, 0], [4, 5])


def test_format_metrics_table():
    metrics = {"R@1,IoU=0.5": 42.8, "R@1,IoU=0.7": 23.25, "R@5,IoU=0.5": 80.5432, "R@5,IoU=0.7": 54.14,
               "mIoU": 39.0, "num_queries": 3720}
    table = M.format_metrics_table(metrics)
    lines = table.splitlines()
    assert lines[0].split() == ["IoU=0.5", "IoU=0.7"]
    assert lines[1].split() == ["R@1", "42.80", "23.25"]
    assert lines[2].split() == ["R@5", "80.54", "54.14"]
    assert lines[3].split() == ["mIoU", "39.00"]
    assert lines[4].split() == ["num_queries", "3720"]
    assert len({len(line) for line in lines[:3]}) == 1  # grid aligned
    assert lines[1].rindex("42.80") + 5 == lines[0].rindex("IoU=0.5") + 7  # right-aligned columns
    assert M.format_metrics_table({"mIoU": 1.0}) == "mIoU  1.00"


def test_written_files_rescore_exactly_under_the_producing_protocol(tmp_path):
    """Tied scores and IoUs on threshold boundaries survive the file round trip, for either tie order."""
    from jvmr import evaluate

    rng = np.random.default_rng(3)
    q, n = 300, 12
    gt = np.sort(rng.integers(0, 40, size=(q, 1, 2)), axis=-1).astype(np.float64) / 4
    gt[..., 1] += 1.0
    spans = np.sort(rng.integers(0, 44, size=(q, n, 2)), axis=-1).astype(np.float64) / 4
    spans[:, :3] = gt + np.array([0.0, 0.25])  # near-hits, often tied below
    scores = rng.integers(0, 3, size=(q, n)).astype(np.float64) / 3  # many exact ties
    for name in ("jvmr", "2dtan"):
        metrics, kept = M.evaluate_candidates(name, spans, scores, gt)
        pred_path, gt_path = str(tmp_path / f"{name}.jsonl"), str(tmp_path / "gt.jsonl")
        qids = [f"q{i}" for i in range(q)]
        M.write_predictions_jsonl(pred_path, qids, ["v"] * q, [50.0] * q, kept.spans, kept.scores, kept.valid,
                                  tie_break=M.get_protocol(name).tie_break)
        M.write_ground_truth_jsonl(gt_path, qids, ["v"] * q, [50.0] * q, gt, None)
        rescored = evaluate.run(name, pred_path, gt_path)
        assert {k: rescored[k] for k in metrics} == metrics, name


def test_nan_scores_are_errors_not_misses():
    spans = np.array([[[0.0, 1.0], [1.0, 2.0]]])
    with pytest.raises(ValueError, match="NaN score for query 0"):
        M.evaluate_candidates("jvmr", spans, np.array([[np.nan, 0.5]]), np.array([[[0.0, 1.0]]]))
    # -inf marks an impossible candidate: skipped.
    metrics, _ = M.evaluate_candidates("jvmr", spans, np.array([[-np.inf, 0.5]]), np.array([[[1.0, 2.0]]]))
    assert metrics["R@1,IoU=0.5"] == 100.0
