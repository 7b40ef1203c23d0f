"""Tests of the TVR protocol (jayleicn/TVRetrieval standalone_eval/eval.py parity)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from jvmr import evaluate as E
from jvmr import metrics as M

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "tvr", "tvr_val_release.jsonl")
MOMENT_KEYS = [f"{t}-r{k}" for t in (0.5, 0.7) for k in (1, 5, 10, 100)]
VR_KEYS = [f"r{k}" for k in (1, 5, 10, 100)]


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def _gt_rows():
    return [
        {"desc_id": 1, "vid_name": "A", "ts": [0.0, 2.0], "duration": 10.0, "type": "v", "desc": "q1"},
        {"desc_id": 2, "vid_name": "B", "ts": [4.0, 8.0], "duration": 10.0, "type": "t", "desc": "q2"},
        {"desc_id": 3, "vid_name": "C", "ts": [1.0, 3.0], "duration": 10.0, "type": "vt", "desc": "q3"},
        {"desc_id": 4, "vid_name": "A", "ts": [5.0, 6.0], "duration": 10.0, "type": "v", "desc": "q4"},
    ]


V2I = {"A": 0, "B": 1, "C": 2, "D": 3}


def _run(tmp_path, sub, gt=None):
    g = _write_jsonl(tmp_path / "gt.jsonl", _gt_rows() if gt is None else gt)
    p = _write_json(tmp_path / "sub.json", sub)
    return E.run("tvr", p, g)


# ---------------------------------------------------------------------------
# Hand-computed cases


def test_tvr_iou_hull_and_float32():
    assert M.tvr_temporal_iou([0.0, 4.0], [0.0, 2.0]) == 0.5  # exactly 0.5
    assert M.tvr_temporal_iou([3.0, 4.0], [0.0, 2.0]) == 0.0  # disjoint: hull union, inter 0
    assert M.tvr_temporal_iou([1.0, 1.0], [1.0, 1.0]) == 0.0  # union 0
    assert M.tvr_temporal_iou([1.0, 3.0], [2.0, 4.0]) == np.float32(1 / 3)
    assert M.tvr_temporal_iou(np.zeros((3, 2)), np.zeros(2)).dtype == np.float32


def test_hand_computed_vcmr_svmr_vr(tmp_path):
    sub = {
        "video2idx": V2I,
        "VCMR": [
            # q1: rank 1 exactly IoU 0.5 on the right video -> hit at 0.5 (>=), miss at 0.7.
            {"desc_id": 1, "predictions": [[0, 0.0, 4.0, 9.0]]},
            # q2: rank 1 perfect span on the WRONG video, rank 3 right video IoU 1 -> r1 miss, r5 hit.
            {"desc_id": 2, "predictions": [[0, 4.0, 8.0, 9.0], [3, 0, 1, 8], [1, 4.0, 8.0, 7.0]]},
            # q3: correct only at rank 6 -> r5 miss, r10 hit.
            {"desc_id": 3, "predictions": [[0, 1.0, 3.0, 1.0]] * 5 + [[2, 1.0, 3.0, 0.5]]},
            # q4: right video, IoU 0 -> miss everywhere.
            {"desc_id": 4, "predictions": [[0, 0.0, 1.0, 1.0]]},
        ],
        "SVMR": [
            # Same rows: SVMR keeps only GT-video predictions, so q2's wrong-video rank 1 and
            # q3's 5 wrong-video rows are skipped -> both hit at r1.
            {"desc_id": 1, "predictions": [[0, 0.0, 4.0, 9.0]]},
            {"desc_id": 2, "predictions": [[0, 4.0, 8.0, 9.0], [3, 0, 1, 8], [1, 4.0, 8.0, 7.0]]},
            {"desc_id": 3, "predictions": [[0, 1.0, 3.0, 1.0]] * 5 + [[2, 1.0, 3.0, 0.5]]},
            {"desc_id": 4, "predictions": [[0, 0.0, 1.0, 1.0]]},
        ],
        "VR": [
            {"desc_id": 1, "predictions": [[0, 0, 0, 1.0]]},                       # rank 1
            {"desc_id": 2, "predictions": [[0, 0, 0, 3], [2, 0, 0, 2], [1, 0, 0, 1]]},  # rank 3
            {"desc_id": 3, "predictions": [[0, 0, 0, 1]] * 5 + [[2, 0, 0, 0]]},     # rank 6
            # q4 missing -> miss
        ],
    }
    r = _run(tmp_path, sub)
    assert list(r) == ["VCMR", "SVMR", "VR", "VCMR_by_type", "SVMR_by_type", "VR_by_type",
                       "num_queries", "num_missing_predictions"]
    assert list(r["VCMR"]) == MOMENT_KEYS and list(r["VR"]) == VR_KEYS
    assert r["VCMR"] == {"0.5-r1": 25.0, "0.5-r5": 50.0, "0.5-r10": 75.0, "0.5-r100": 75.0,
                         "0.7-r1": 0.0, "0.7-r5": 25.0, "0.7-r10": 50.0, "0.7-r100": 50.0}
    assert r["SVMR"] == {"0.5-r1": 75.0, "0.5-r5": 75.0, "0.5-r10": 75.0, "0.5-r100": 75.0,
                         "0.7-r1": 50.0, "0.7-r5": 50.0, "0.7-r10": 50.0, "0.7-r100": 50.0}
    assert r["VR"] == {"r1": 25.0, "r5": 50.0, "r10": 75.0, "r100": 75.0}
    assert r["num_queries"] == 4
    assert r["num_missing_predictions"] == {"VCMR": 0, "SVMR": 0, "VR": 1}
    # Per type: v = {q1, q4}, t = {q2}, vt = {q3}.
    bt = r["VCMR_by_type"]
    assert bt["v-0.5-r1"] == 50.0 and bt["v-0.7-r1"] == 0.0
    assert bt["t-0.5-r1"] == 0.0 and bt["t-0.5-r5"] == 100.0
    assert bt["vt-0.5-r5"] == 0.0 and bt["vt-0.5-r10"] == 100.0
    assert bt["desc_type_ratio"] == "v 50.0 t 25.0 vt 25.0"
    assert r["SVMR_by_type"]["t-0.7-r1"] == 100.0 and r["SVMR_by_type"]["v-0.5-r1"] == 50.0
    assert r["VR_by_type"] == {"v-r1": 50.0, "v-r5": 50.0, "v-r10": 50.0, "v-r100": 50.0,
                               "t-r1": 0.0, "t-r5": 100.0, "t-r10": 100.0, "t-r100": 100.0,
                               "vt-r1": 0.0, "vt-r5": 0.0, "vt-r10": 100.0, "vt-r100": 100.0,
                               "desc_type_ratio": "v 50.0 t 25.0 vt 25.0"}


def test_blocks_absent_and_max_pred_per_query(tmp_path):
    # Only VR; the correct video at rank 101 is beyond max_pred_per_query=100.
    sub = {"video2idx": V2I, "VR": [
        {"desc_id": 1, "predictions": [[3, 0, 0, 1]] * 100 + [[0, 0, 0, 0]]},
        {"desc_id": 2, "predictions": [[3, 0, 0, 1]] * 99 + [[1, 0, 0, 0]]},
    ]}
    r = _run(tmp_path, sub)
    assert set(r) == {"VR", "VR_by_type", "num_queries", "num_missing_predictions"}
    assert r["VR"] == {"r1": 0.0, "r5": 0.0, "r10": 0.0, "r100": 25.0}
    assert r["num_missing_predictions"] == {"VR": 2}


def test_no_type_no_by_type_and_empty_type_is_nan(tmp_path):
    gt = [{k: v for k, v in row.items() if k != "type"} for row in _gt_rows()]
    sub = {"video2idx": V2I, "VR": [{"desc_id": 1, "predictions": [[0, 0, 0, 1]]}]}
    r = _run(tmp_path, sub, gt)
    assert set(r) == {"VR", "num_queries", "num_missing_predictions"}
    gt = [dict(row, type="v") for row in _gt_rows()]
    r = _run(tmp_path, sub, gt)
    assert r["VR_by_type"]["v-r1"] == 25.0 and math.isnan(r["VR_by_type"]["t-r1"])


def test_multi_window_rule_needs_two_matches(tmp_path):
    # DiDeMo-style: >= 4 GT windows -> correct only if IoU >= t with at least 2 of them.
    gt = [
        {"desc_id": 1, "vid_name": "A", "ts": [[0, 5], [0, 5], [10, 15], [20, 25]], "type": "v"},
        {"desc_id": 2, "vid_name": "A", "ts": [[0, 5], [10, 15], [20, 25], [25, 30]], "type": "v"},
        {"desc_id": 3, "vid_name": "A", "ts": [[0, 5], [10, 15], [20, 25]], "type": "v"},  # 3 windows: any 1
    ]
    sub = {"video2idx": V2I, "VCMR": [
        {"desc_id": 1, "predictions": [[0, 0, 5, 1]]},   # matches 2 identical windows -> hit
        {"desc_id": 2, "predictions": [[0, 0, 5, 1]]},   # matches only 1 -> miss
        {"desc_id": 3, "predictions": [[0, 10, 15, 1]]},  # < 4 windows, matches 1 -> hit
    ]}
    r = _run(tmp_path, sub, gt)
    assert r["VCMR"]["0.5-r1"] == pytest.approx(66.67) and r["VCMR"]["0.7-r1"] == pytest.approx(66.67)
    # Vectorised core directly.
    spans, valid = M.pad_spans([np.array(g["ts"], float) for g in gt])
    vid_match, correct = M.tvr_correct(np.zeros((3, 1), int), np.array([[[0, 5]], [[0, 5]], [[10, 15]]], float),
                                       np.ones((3, 1), bool), np.zeros(3, int), spans, valid)
    assert correct.shape == (2, 3, 1) and correct[:, :, 0].tolist() == [[True, False, True]] * 2


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s["VCMR"].append({"desc_id": 99, "predictions": []}), r"desc_id 99.*not in ground truth"),
    (lambda s: s["VCMR"].append({"desc_id": 1, "predictions": []}), r"desc_id 1.*duplicate desc_id in VCMR"),
    (lambda s: s["VCMR"][0]["predictions"].append([7, 0, 1, 1]), r"desc_id 1.*video index 7 is not in video2idx"),
    (lambda s: s["VCMR"][0]["predictions"].append([0, 3, 1, 1]), r"desc_id 1.*st > ed"),
    (lambda s: s["VCMR"][0]["predictions"].append([0, float("nan"), 1, 1]), r"desc_id 1.*NaN"),
    (lambda s: s["VCMR"][0]["predictions"].append([0, 0, 1, float("nan")]), r"desc_id 1.*NaN"),
    (lambda s: s.pop("video2idx"), r"video2idx"),
    (lambda s: s["video2idx"].pop("B"), r"lacks 'B'"),
    (lambda s: s.pop("VCMR"), r"no task block"),
])
def test_errors(tmp_path, mutate, match):
    sub = {"video2idx": dict(V2I), "VCMR": [{"desc_id": 1, "predictions": [[0, 0, 2, 1]]}]}
    mutate(sub)
    with pytest.raises(E.InputError, match=match) as e:
        _run(tmp_path, sub)
    assert "sub.json" in str(e.value)


def test_ground_truth_errors(tmp_path):
    sub = {"video2idx": V2I, "VR": []}
    with pytest.raises(E.InputError, match=r"gt.jsonl.*desc_id 1.*duplicate"):
        _run(tmp_path, sub, _gt_rows() + [_gt_rows()[0]])
    with pytest.raises(E.InputError, match=r"gt.jsonl.*desc_id 1.*st > ed"):
        _run(tmp_path, sub, [dict(_gt_rows()[0], ts=[3, 1])])


def test_tvr_is_a_named_protocol():
    assert "tvr" in E.ALL_PROTOCOLS and M.get_protocol("tvr").output == "tvr"


def test_tvr_protocol_on_windows_is_svmr():
    # Per-query windows (the video known) are TVR's SVMR task: rows as given, first 100, IoU >= t.
    gts = [[[0.0, 10.0]], [[5.0, 15.0]]]
    preds = [[[20.0, 30.0, 0.9], [0.0, 10.0, 0.1]],  # hit at rank 2
             [[5.0, 12.0, 0.5]]]  # IoU 0.7 exactly: counted at 0.5 and 0.7
    r = M.evaluate_windows("tvr", preds, gts)
    assert r["SVMR"]["0.5-r1"] == 50.0 and r["SVMR"]["0.5-r5"] == 100.0
    assert r["SVMR"]["0.7-r1"] == 50.0 and r["SVMR"]["0.7-r100"] == 100.0
    assert M.flat_metrics(r)["SVMR-0.5-r5"] == 100.0


# ---------------------------------------------------------------------------
# Real TVR val file


@pytest.fixture(scope="module")
def tvr_gt():
    with open(FIXTURE) as f:
        return [json.loads(line) for line in f]


def _submission(rows, spans, tasks=("VCMR", "SVMR", "VR")):
    video2idx = {v: i for i, v in enumerate(sorted({r["vid_name"] for r in rows}))}
    sub = {"video2idx": video2idx}
    for task in tasks:
        sub[task] = [{"desc_id": r["desc_id"], "desc": r["desc"],
                      "predictions": [[video2idx[r["vid_name"]], float(s), float(e), 1.0]]}
                     for r, (s, e) in zip(rows, spans)]
    return sub


def test_fixture_perfect_submission(tmp_path, tvr_gt):
    assert len(tvr_gt) == 10895 and len({r["desc_id"] for r in tvr_gt}) == 10895
    sub = _submission(tvr_gt, [r["ts"] for r in tvr_gt])
    r = E.run("tvr", _write_json(tmp_path / "sub.json", sub), FIXTURE)
    assert r["num_queries"] == 10895 and r["num_missing_predictions"] == {"VCMR": 0, "SVMR": 0, "VR": 0}
    for task in ("VCMR", "SVMR", "VR"):
        assert set(r[task].values()) == {100.0}
        by_type = r[task + "_by_type"]
        for t in ("v", "t", "vt"):
            keys = [f"{t}-{k}" for k in (VR_KEYS if task == "VR" else MOMENT_KEYS)]
            assert all(by_type[k] == 100.0 for k in keys)
        assert by_type["desc_type_ratio"] == "v 74.32 t 8.85 vt 16.83"  # as in TVRetrieval's sample output


def _reference_iou_f32(pred, gt):
    # Direct transcription of TVRetrieval's compute_temporal_iou_batch on float32 inputs.
    pred = np.asarray(pred, np.float32)
    gt = np.asarray(gt, np.float32)
    inter = np.maximum(0, np.minimum(pred[:, 1], gt[1]) - np.maximum(pred[:, 0], gt[0]))
    union = np.maximum(pred[:, 1], gt[1]) - np.minimum(pred[:, 0], gt[0])
    return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)


def test_fixture_shifted_span_iou_half(tmp_path, tvr_gt):
    # [st, ed] -> [st, ed + (ed - st)] has IoU 0.5 in exact arithmetic, but the float
    # arithmetic (float32, as the reference) lands just below 0.5 for some queries; the
    # result must equal the reference's own per-query decision, and 0.7 is never reached.
    spans = [[r["ts"][0], r["ts"][1] + (r["ts"][1] - r["ts"][0])] for r in tvr_gt]
    ref = np.mean([_reference_iou_f32([s], r["ts"])[0] >= 0.5 for s, r in zip(spans, tvr_gt)])
    r = E.run("tvr", _write_json(tmp_path / "sub.json", _submission(tvr_gt, spans, ("VCMR",))), FIXTURE)
    assert r["VCMR"]["0.5-r1"] == round(ref * 100, 2) and 50.0 < r["VCMR"]["0.5-r1"] < 100.0
    assert r["VCMR"]["0.7-r1"] == 0.0 and r["VCMR"]["0.7-r100"] == 0.0

    # Spans whose float32 IoU is exactly 0.5: a float32 [ps, pe] containing the GT with
    # pe - ps == 2 * (ed - st) exactly -> 0.5-r1 = 100, 0.7-r1 = 0.
    a = np.array([r["ts"][0] for r in tvr_gt], np.float32)
    b = np.array([r["ts"][1] for r in tvr_gt], np.float32)
    two = np.float32(2) * (b - a)
    ps_out, pe_out = np.zeros_like(a), np.zeros_like(a)
    found = np.zeros(a.shape, bool)
    ps, pe = a.copy(), b.copy()
    for _ in range(200):  # walk ps down from st, and pe up from ed, until the difference is exact
        for cand_ps, cand_pe in ((ps, ps + two), (pe - two, pe)):
            ok = ~found & (cand_pe.astype(np.float64) - cand_ps.astype(np.float64) == two) & (cand_ps <= a) & (
                cand_pe >= b)
            ps_out[ok], pe_out[ok] = cand_ps[ok], cand_pe[ok]
            found |= ok
        ps, pe = np.nextafter(ps, np.float32(-np.inf)), np.nextafter(pe, np.float32(np.inf))
    assert found.all()
    exact = np.stack([ps_out, pe_out], -1).astype(np.float64)
    assert (M.tvr_temporal_iou(exact, np.stack([a, b], -1)) == 0.5).all()
    r = E.run("tvr", _write_json(tmp_path / "sub.json", _submission(tvr_gt, exact.tolist(), ("VCMR", "SVMR"))),
              FIXTURE)
    for task in ("VCMR", "SVMR"):
        assert r[task]["0.5-r1"] == 100.0 and r[task]["0.7-r1"] == 0.0 and r[task]["0.7-r100"] == 0.0


def test_fixture_cli_end_to_end(tmp_path, tvr_gt):
    sub = _submission(tvr_gt, [r["ts"] for r in tvr_gt])
    sub["VCMR"] = sub["VCMR"][:-5]  # 5 missing queries -> misses, reported
    sub_path = _write_json(tmp_path / "submission.json", sub)
    out = tmp_path / "out" / "metrics.json"
    proc = subprocess.run(
        [sys.executable, "-m", "jvmr.evaluate", "--protocol=tvr", f"--predictions={sub_path}",
         f"--ground_truth={FIXTURE}", f"--output={out}"],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr
    assert "protocol: tvr" in proc.stdout and "0.5-r1" in proc.stdout and "VCMR" in proc.stdout
    assert "VCMR: 5 of 10895" in proc.stderr
    res = json.loads(out.read_text())
    assert res["num_missing_predictions"] == {"VCMR": 5, "SVMR": 0, "VR": 0}
    assert res["VCMR"]["0.5-r1"] == round(100 * 10890 / 10895, 2) and res["SVMR"]["0.7-r100"] == 100.0
    assert res["VR"] == {"r1": 100.0, "r5": 100.0, "r10": 100.0, "r100": 100.0}
    assert set(res) >= {"VCMR_by_type", "SVMR_by_type", "VR_by_type"}

    bad = dict(sub, VR=sub["VR"] + [{"desc_id": -1, "predictions": []}])
    proc = subprocess.run(
        [sys.executable, "-m", "jvmr.evaluate", "--protocol=tvr", f"--predictions={_write_json(tmp_path / 'b.json', bad)}",
         f"--ground_truth={FIXTURE}"], capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 1 and "desc_id -1" in proc.stderr and "b.json" in proc.stderr


def _reference_loop(sub, gt_rows, task):
    """Per-query loop following TVRetrieval eval_by_task_type (oracle for the vectorised code)."""
    preds = {e["desc_id"]: e for e in sub[task]}
    v2i = sub["video2idx"]
    hits = {}
    for g in gt_rows:
        p = np.array([e[:3] for e in preds[g["desc_id"]]["predictions"]][:100], np.float32).reshape(-1, 3)
        match = p[:, 0] == v2i[g["vid_name"]]
        for t in (0.5, 0.7):
            iou = _reference_iou_f32(p[:, 1:3], g["ts"]) * match
            corr = iou >= t
            for k in (1, 5, 10, 100):
                if task == "VCMR":
                    hits.setdefault(f"{t}-r{k}", []).append(corr[:k].sum() >= 1)
                elif task == "SVMR":
                    hits.setdefault(f"{t}-r{k}", []).append(corr[match][:k].sum() >= 1)
        if task == "VR":
            for k in (1, 5, 10, 100):
                hits.setdefault(f"r{k}", []).append(match[:k].sum() >= 1)
    return {k: round(np.mean(v) * 100, 2) for k, v in hits.items()}


def test_random_submission_matches_reference_loop(tmp_path):
    rng = np.random.default_rng(0)
    vids = [f"v{i}" for i in range(6)]
    gt = []
    for q in range(300):
        st = float(np.round(rng.uniform(0, 20), 2))
        gt.append({"desc_id": q, "vid_name": vids[rng.integers(6)], "ts": [st, float(np.round(st + rng.uniform(0.5, 10), 2))],
                   "type": ["v", "t", "vt"][rng.integers(3)], "desc": ""})
    v2i = {v: i for i, v in enumerate(vids)}
    sub = {"video2idx": v2i}
    for task in ("VCMR", "SVMR", "VR"):
        sub[task] = []
        for g in gt:
            n = int(rng.integers(1, 130))
            st = np.round(rng.uniform(0, 25, n), 2)
            ed = st + np.round(rng.uniform(0, 12, n), 2)
            vid = rng.integers(0, 6, n)
            sub[task].append({"desc_id": g["desc_id"], "predictions": [
                [int(v), float(s), float(e), 0.0] for v, s, e in zip(vid, st, ed)]})
    r = _run(tmp_path, sub, gt)
    for task in ("VCMR", "SVMR", "VR"):
        assert r[task] == _reference_loop(sub, gt, task), task
        assert 0.0 < r[task][list(r[task])[-1]] < 100.0
