"""Tests of the named evaluation protocols (jvmr.metrics) and jvmr.evaluate."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jvmr import evaluate as E
from jvmr import metrics as M

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# Protocol registry


def test_get_protocol():
    p = M.get_protocol("2dtan")
    assert (p.ks, p.iou_thresholds, p.iou_comparison, p.nms_threshold, p.tie_break) == (
        (1, 5), (0.1, 0.3, 0.5, 0.7), ">", 0.5, "later")
    m = M.get_protocol("moment_detr")
    assert m.nms_threshold is None and m.rank_by == "given" and m.iou_comparison == ">="
    assert m.map_iou_thresholds == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    assert m.max_pred_windows == 10
    assert M.get_protocol(p) is p
    t = M.get_protocol("tvr")
    assert (t.ks, t.iou_thresholds, t.iou_comparison, t.nms_threshold, t.max_pred_windows, t.output) == (
        (1, 5, 10, 100), (0.5, 0.7), ">=", None, 100, "tvr")
    with pytest.raises(ValueError, match="unknown protocol 'xyz'"):
        M.get_protocol("xyz")
    with pytest.raises(ValueError, match="tie_break"):
        M.Protocol(tie_break="random")
    with pytest.raises(ValueError, match="NMS"):
        M.Protocol(rank_by="given", nms_threshold=0.5)


# ---------------------------------------------------------------------------
# 2dtan


def test_boundary_iou_exactly_half():
    # IoU([0, 5], [0, 10]) = 0.5 exactly: 2D-TAN's '>' rejects, moment_detr's '>=' accepts.
    preds, gts = [[[0, 5, 1.0]]], [[[0, 10]]]
    r = M.evaluate_windows("2dtan", preds, gts)
    assert r["R@1,IoU=0.5"] == 0.0 and r["R@1,IoU=0.3"] == 100.0 and r["R@5,IoU=0.5"] == 0.0
    assert r["mIoU"] == pytest.approx(50.0)
    b = M.evaluate_windows("moment_detr", preds, gts)["brief"]
    assert b["MR-full-R1@0.5"] == 100.0 and b["MR-full-R1@0.7"] == 0.0


def test_2dtan_nms_suppresses_above_threshold():
    # IoU([0, 10], [0, 6]) = 0.6 > 0.5: the perfect [0, 6] is suppressed by the higher-scored [0, 10].
    r = M.evaluate_windows("2dtan", [[[0, 10, 0.9], [0, 6, 0.85]]], [[[0, 6]]])
    assert r["R@5,IoU=0.7"] == 0.0 and r["R@5,IoU=0.5"] == 100.0
    # Without NMS (same ranking otherwise) it would be found at rank 2.
    no_nms = dataclasses.replace(M.get_protocol("2dtan"), nms_threshold=None)
    assert M.evaluate_windows(no_nms, [[[0, 10, 0.9], [0, 6, 0.85]]], [[[0, 6]]])["R@5,IoU=0.7"] == 100.0


def test_2dtan_nms_keeps_iou_equal_threshold():
    # IoU([0, 10], [0, 5]) = 0.5, not > 0.5: [0, 5] survives and is rank 2.
    r = M.evaluate_windows("2dtan", [[[0, 10, 0.9], [0, 5, 0.8]]], [[[0, 5]]])
    assert r["R@1,IoU=0.7"] == 0.0 and r["R@5,IoU=0.7"] == 100.0
    assert r["mIoU"] == pytest.approx(50.0)  # top-1 is [0, 10]


def test_2dtan_keeps_top5_and_sorts_by_score():
    # Six disjoint candidates; the GT match has the lowest score -> rank 6, outside top-5.
    cands = [[10 * i, 10 * i + 5, 1.0 - 0.1 * i] for i in range(6)]
    gt = [[[50, 55]]]
    assert M.evaluate_windows("2dtan", [cands], gt)["R@5,IoU=0.7"] == 0.0
    # Given order is irrelevant under 2dtan: reversed file order, same metrics.
    assert M.evaluate_windows("2dtan", [cands[::-1]], gt) == M.evaluate_windows("2dtan", [cands], gt)
    cands[5][2] = 0.95  # now rank 2
    r = M.evaluate_windows("2dtan", [cands], gt)
    assert r["R@1,IoU=0.7"] == 0.0 and r["R@5,IoU=0.7"] == 100.0


def test_2dtan_tie_takes_later_candidate_first():
    preds = [[[0, 10, 0.5], [20, 30, 0.5]]]  # equal scores; the later one matches the GT
    gts = [[[20, 30]]]
    r = M.evaluate_windows("2dtan", preds, gts)
    assert r["R@1,IoU=0.7"] == 100.0 and r["mIoU"] == pytest.approx(100.0)
    earlier = dataclasses.replace(M.get_protocol("2dtan"), tie_break="earlier")
    assert M.evaluate_windows(earlier, preds, gts)["R@1,IoU=0.7"] == 0.0
    # Tie broken before NMS as well: later [20, 30] kept first, then [0, 10] (disjoint).
    assert r["R@5,IoU=0.7"] == 100.0


def test_2dtan_missing_prediction_is_miss():
    r = M.evaluate_windows("2dtan", [[[0, 10, 1.0]], None], [[[0, 10]], [[0, 10]]])
    assert r["R@1,IoU=0.5"] == 50.0 and r["mIoU"] == pytest.approx(50.0)


def test_nan_score_rejected():
    with pytest.raises(ValueError, match="NaN"):
        M.evaluate_windows("2dtan", [[[0, 1, float("nan")]]], [[[0, 1]]])


# ---------------------------------------------------------------------------
# moment_detr


def test_moment_detr_r1_uses_first_row():
    # The second row has a higher score and matches, but R1 takes the first row.
    b = M.evaluate_windows("moment_detr", [[[0, 4, 0.1], [20, 30, 0.9]]], [[[20, 30]]])["brief"]
    assert b["MR-full-R1@0.5"] == 0.0 and b["MR-full-R1@0.7"] == 0.0
    # mAP re-sorts by score: the top-scored window is a TP -> AP 1 at every threshold.
    assert b["MR-full-mAP"] == 100.0


def test_moment_detr_r1_best_gt_window():
    # Multi-window GT: the top-1 is compared with the GT window it overlaps most.
    b = M.evaluate_windows("moment_detr", [[[20, 28, 1.0]]], [[[0, 10], [20, 30]]])["brief"]
    assert b["MR-full-R1@0.5"] == 100.0 and b["MR-full-R1@0.7"] == 100.0  # IoU 0.8


def test_interpolated_average_precision_hand():
    # TP, FP, TP with 2 GT: precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    # Interpolated precision at the recall changes: 1 (r 0->1/2), 2/3 (r 1/2->1).
    ap = M.interpolated_average_precision([1, 0.5, 2 / 3], [0.5, 0.5, 1.0])
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert M.interpolated_average_precision([0.0], [0.0]) == 0.0


def test_moment_detr_map_hand_computed():
    # GT A = [0, 10], B = [20, 30].
    # p1 [20, 30] s=.9: IoU(B) = 1   -> TP at all t.
    # p2 [0, 4]   s=.8: IoU(A) = 0.4 -> FP at all t >= 0.5.
    # p3 [0, 5]   s=.7: IoU(A) = 0.5 -> TP at t = 0.5 only (>=), FP above.
    # t = 0.5: TP FP TP -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # t > 0.5: TP FP FP -> precision 1, 1/2, 1/3; recall 1/2 -> AP = 1/2.
    # mAP = (5/6 + 9 * 1/2) / 10 = 0.5333...
    gts = [[[0, 10], [20, 30]]]
    preds = [[[0, 4, 0.8], [0, 5, 0.7], [20, 30, 0.9]]]  # file order != score order
    ap = M.detection_average_precision(gts[0], preds[0], M.MOMENT_DETR_IOU_THRESHOLDS)
    np.testing.assert_allclose(ap, [5 / 6] + [0.5] * 9)
    r = M.evaluate_windows("moment_detr", preds, gts)
    assert r["brief"] == {
        "MR-full-R1@0.5": 0.0,  # first row [0, 4]: IoU 0.4
        "MR-full-R1@0.7": 0.0,
        "MR-full-mAP": 53.33,
        "MR-full-mAP@0.5": 83.33,
        "MR-full-mAP@0.75": 50.0,
        "MR-short-mAP": 53.33,  # both GT windows are 10 s long: in (0, 10]
        "MR-middle-mAP": 0.0,  # no query in range: moment_detr's all-zero placeholder
        "MR-long-mAP": 0.0,
    }
    assert r["full"]["MR-mAP"]["0.55"] == 50.0 and r["full"]["MR-mAP"]["average"] == 53.33
    assert list(r) == ["brief", "full", "long", "middle", "short"]
    # The placeholder keeps moment_detr's np.linspace(0.5, 0.95, 19) float keys (as JSON writes them).
    assert r["middle"]["MR-R1"]["0.525"] == 0.0 and len(r["middle"]["MR-mAP"]) == 20


def test_moment_detr_length_ranges_hand_computed():
    # q1: GT [0, 5] (short); top-1 [0, 5] -> IoU 1.
    # q2: GT [0, 20] (middle); top-1 [0, 10] -> IoU 0.5 (passes 0.5 only).
    # q3: GT [0, 5] (short) and [10, 50] (long); top-1 [10, 50] -> IoU 1 with the long one, 0 with the short.
    gts = [[[0, 5]], [[0, 20]], [[0, 5], [10, 50]]]
    preds = [[[0, 5, 1.0]], [[0, 10, 1.0]], [[10, 50, 1.0]]]
    r = M.evaluate_windows("moment_detr", preds, gts)
    # A range keeps the queries with a GT window in it, and only those windows.
    assert r["short"]["MR-R1"]["0.5"] == 50.0 and r["short"]["MR-mAP"]["average"] == 50.0
    assert r["middle"]["MR-R1"]["0.5"] == 100.0 and r["middle"]["MR-R1"]["0.55"] == 0.0
    assert r["middle"]["MR-mAP"]["average"] == 10.0  # AP 1 at t = 0.5 only
    assert r["long"]["MR-R1"]["0.95"] == 100.0 and r["long"]["MR-mAP"]["average"] == 100.0
    # Full: q3's top-1 matches its best window; its AP is 1/2 (one of two GT windows found).
    assert r["full"]["MR-R1"]["0.5"] == 100.0 and r["full"]["MR-R1"]["0.7"] == 66.67
    assert r["brief"]["MR-full-mAP"] == round(100 * (1 + 0.1 + 0.5) / 3, 2)
    assert (r["brief"]["MR-short-mAP"], r["brief"]["MR-middle-mAP"], r["brief"]["MR-long-mAP"]) == (
        50.0, 10.0, 100.0)


def test_moment_detr_gt_matched_once_and_top10():
    # Two predictions on the same single GT window: the second is a FP -> AP 1 (TP first).
    ap = M.detection_average_precision([[0, 10]], [[0, 10, 0.9], [0, 10, 0.8]], (0.5,))
    assert ap[0] == pytest.approx(1.0)
    # A higher-scored miss ranks first: FP then TP -> precision 1/2 at recall 1 -> AP 0.5.
    ap = M.detection_average_precision([[0, 10]], [[50, 60, 0.9], [0, 10, 0.8]], (0.5,))
    assert ap[0] == pytest.approx(0.5)
    # Only the first 10 rows count: an 11th perfect window is ignored.
    preds = [[[100 + 10 * i, 105 + 10 * i, 0.5] for i in range(10)] + [[0, 10, 1.0]]]
    r = M.evaluate_windows("moment_detr", preds, [[[0, 10]]])
    assert r["brief"]["MR-full-mAP"] == 0.0
    assert M.evaluate_windows("moment_detr", [preds[0][-1:] + preds[0][:9]], [[[0, 10]]])["brief"][
        "MR-full-mAP"] == 100.0


def test_moment_detr_missing_prediction_is_zero():
    r = M.evaluate_windows("moment_detr", [[[0, 10, 1.0]], []], [[[0, 10]], [[0, 10]]])
    assert r["brief"]["MR-full-R1@0.5"] == 50.0 and r["brief"]["MR-full-mAP"] == 50.0


# ---------------------------------------------------------------------------
# CLI / jvmr.evaluate


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


GT_ROWS = [
    {"qid": 1, "vid": "v1", "duration": 40.0, "relevant_windows": [[0, 10], [20, 30]]},
    {"qid": 2, "vid": "v2", "duration": 40.0, "relevant_windows": [[0, 10]]},
    {"qid": 3, "vid": "v3", "duration": 40.0, "relevant_windows": [[5, 15]]},
]
PRED_ROWS = [
    {"qid": 1, "vid": "v1", "pred_relevant_windows": [[20, 30, 0.9], [0, 4, 0.8], [0, 5, 0.7]]},
    {"qid": 2, "vid": "v2", "pred_relevant_windows": [[0, 5, 0.9]]},  # IoU exactly 0.5
]  # qid 3 has no prediction


@pytest.fixture
def files(tmp_path):
    return _write(tmp_path / "pred.jsonl", PRED_ROWS), _write(tmp_path / "gt.jsonl", GT_ROWS)


def test_run_2dtan(files, tmp_path):
    out = tmp_path / "out" / "m.json"
    r = E.run("2dtan", *files, output_path=str(out))
    assert r["num_missing_predictions"] == 1 and r["num_queries"] == 3
    # q1: top-1 [20, 30] IoU 1; q2: IoU 0.5 not > 0.5; q3: miss.
    assert r["R@1,IoU=0.5"] == pytest.approx(100 / 3) and r["R@1,IoU=0.3"] == pytest.approx(200 / 3)
    assert r["mIoU"] == pytest.approx(50.0)
    saved = json.loads(out.read_text())
    assert saved == r and "R@5,IoU=0.7" in saved and "brief" not in saved


def test_run_moment_detr(files):
    r = E.run("moment_detr", *files)
    b = r["brief"]
    assert b["MR-full-R1@0.5"] == 66.67 and b["MR-full-R1@0.7"] == 33.33
    # APs: q1 = [5/6, 1/2 x 9] (see the hand example), q2 = [1, 0 x 9], q3 = 0.
    assert b["MR-full-mAP@0.5"] == round((5 / 6 + 1 + 0) / 3 * 100, 2)
    assert b["MR-full-mAP@0.75"] == round(0.5 / 3 * 100, 2)
    assert b["MR-full-mAP"] == round(((5 / 6 + 4.5) / 10 + 0.1) / 3 * 100, 2)
    assert r["num_missing_predictions"] == 1


@pytest.mark.parametrize("pred_rows, gt_rows, match", [
    (PRED_ROWS + [{"qid": 9, "pred_relevant_windows": [[0, 1, 1]]}], GT_ROWS,
     r"pred\.jsonl:3 \(qid 9\): qid not in ground truth"),
    ([{"qid": 1, "pred_relevant_windows": [[5, 4, 1.0]]}], GT_ROWS, r"pred\.jsonl:1 \(qid 1\).*start > end"),
    (['{"qid": 1, "pred_relevant_windows": [[0, 4, NaN]]}'], GT_ROWS, r"pred\.jsonl:1 \(qid 1\).*NaN score"),
    (PRED_ROWS + [PRED_ROWS[0]], GT_ROWS, r"pred\.jsonl:3 \(qid 1\): duplicate qid \(first on line 1\)"),
    (PRED_ROWS, GT_ROWS + [GT_ROWS[1]], r"gt\.jsonl:4 \(qid 2\): duplicate qid"),
    (PRED_ROWS, GT_ROWS[:2] + [{"qid": 3, "relevant_windows": [[9, 8]]}], r"gt\.jsonl:3 \(qid 3\).*start > end"),
    (PRED_ROWS, GT_ROWS[:2] + [{"qid": 3, "relevant_windows": []}], r"gt\.jsonl:3 \(qid 3\).*no ground-truth"),
    (["{not json"], GT_ROWS, r"pred\.jsonl:1: invalid JSON"),
    ([{"qid": 1}], GT_ROWS, r"pred\.jsonl:1 \(qid 1\): missing key 'pred_relevant_windows'"),
    ([{"qid": 1, "pred_relevant_windows": [[0, 4]]}], GT_ROWS, r"pred\.jsonl:1 \(qid 1\).*\[start, end, score\]"),
])
def test_run_bad_input(tmp_path, pred_rows, gt_rows, match):
    p = _write(tmp_path / "pred.jsonl", pred_rows)
    g = _write(tmp_path / "gt.jsonl", gt_rows)
    with pytest.raises(E.InputError, match=match):
        E.run("2dtan", p, g)


def test_import_registers_no_flags():
    from absl import flags
    assert "predictions" not in flags.FLAGS and "protocol" not in flags.FLAGS


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "jvmr.evaluate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_end_to_end(files, tmp_path):
    out = tmp_path / "md.json"
    proc = _cli("--protocol=moment_detr", f"--predictions={files[0]}", f"--ground_truth={files[1]}",
                f"--output={out}")
    assert proc.returncode == 0, proc.stderr
    assert "MR-full-mAP" in proc.stdout and "num_missing_predictions" in proc.stdout
    assert "1 of 3 ground-truth queries have no prediction" in proc.stderr
    saved = json.loads(out.read_text())
    assert saved["brief"]["MR-full-R1@0.5"] == 66.67 and saved["num_missing_predictions"] == 1
    assert saved == E.run("moment_detr", *files)

    bad = _write(tmp_path / "bad.jsonl", PRED_ROWS + [{"qid": "x", "pred_relevant_windows": []}])
    proc = _cli("--protocol=2dtan", f"--predictions={bad}", f"--ground_truth={files[1]}")
    assert proc.returncode == 1
    assert "bad.jsonl:3 (qid 'x'): qid not in ground truth" in proc.stderr


def test_batched_detection_ap_matches_the_per_query_loop():
    rng = np.random.default_rng(0)
    num_q, thr = 300, M.MOMENT_DETR_IOU_THRESHOLDS
    gts, preds = [], []
    for _ in range(num_q):
        g = np.sort(rng.integers(0, 40, size=(rng.integers(1, 4), 2)), axis=1).astype(float)
        g[:, 1] += 1
        p = np.sort(rng.integers(0, 40, size=(rng.integers(0, 12), 2)), axis=1).astype(float)
        p = np.concatenate([p, rng.integers(0, 4, size=(len(p), 1)) / 4], axis=1)  # ties in score
        if len(p) and rng.random() < 0.3:
            p[0, :2] = g[0]  # exact hits and duplicates
        gts.append(g)
        preds.append(p[:10])
    expected = np.stack([M.detection_average_precision(g, p, thr) for g, p in zip(gts, preds)])
    gt_spans, gt_valid = M.pad_spans(gts)
    rows, valid = M.pad_rows(preds, 3)
    got = M.batched_detection_average_precision(gt_spans, gt_valid, rows, valid, thr)
    np.testing.assert_array_equal(got, expected)  # bit for bit: same terms summed in numpy's order


def test_hull_and_exact_union_round_apart_on_threshold_boundaries():
    # [3.64, 5.2] in [0, 5.2]: IoU 0.3 exactly on paper; the hull gives 0.3, the exact union 0.30000000000000004.
    pred, gt = np.array([3.64, 5.2]), np.array([0.0, 5.2])
    assert M.temporal_iou(pred, gt, "hull") == 0.3
    assert M.temporal_iou(pred, gt, "exact") > 0.3
    # 2D-TAN (hull, strict >) misses it; the jvmr protocol (exact, >=) counts it.
    windows = [[[3.64, 5.2, 1.0]]]
    assert M.evaluate_windows("2dtan", windows, [[[0.0, 5.2]]])["R@1,IoU=0.3"] == 0.0
    assert M.evaluate_windows("jvmr", windows, [[[0.0, 5.2]]])["R@1,IoU=0.3"] == 100.0
    with pytest.raises(ValueError, match="union"):
        M.temporal_iou(pred, gt, "average")


def test_moment_detr_r1_scores_with_the_hull_union():
    # [9.46, 28.08] in [8.48, 28.08]: IoU 0.95 on paper; the hull gives 0.95, the exact union 0.9499999999999998.
    # compute_mr_r1 scores the top-1 with the hull (batch_paired), so it is a hit at 0.95.
    pred, gt = [[[9.46, 28.08, 1.0]]], [[[8.48, 28.08], [40.0, 41.0]]]
    assert M.temporal_iou(np.array([9.46, 28.08]), np.array([8.48, 28.08]), "exact") < 0.95
    r = M.evaluate_windows("moment_detr", pred, gt)
    assert r["full"]["MR-R1"]["0.95"] == 100.0
    # ... while its mAP matches with the exact union (batch_cross): a miss at 0.95.
    assert r["full"]["MR-mAP"]["0.95"] == 0.0 and r["full"]["MR-mAP"]["0.9"] == 50.0  # 1 of 2 GT windows found
    exact = dataclasses.replace(M.get_protocol("moment_detr"), iou_union="exact")
    assert M.evaluate_windows(exact, pred, gt)["full"]["MR-R1"]["0.95"] == 0.0
