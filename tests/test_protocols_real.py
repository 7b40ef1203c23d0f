"""Each protocol on the real annotation files, against plain re-implementations of the reference evaluators.

Ground truth comes from the full public files in tests/fixtures (Charades-STA
test, ActivityNet Captions val_1, TACoS test, TVR val) through the data_prep
readers; predictions are generated around each ground-truth window so that many
land exactly on (or a rounding step beside) the IoU thresholds, with tied
scores and duplicates. The files go through ``python -m jvmr.evaluate``'s
``run`` and must agree with loops written from the reference evaluators'
definitions (microsoft/2D-TAN lib/core/eval.py; jayleicn/moment_detr
standalone_eval/eval.py + utils.py; jayleicn/TVRetrieval standalone_eval/eval.py).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from jvmr import evaluate, metrics
from jvmr.data import annotations

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

# dataset, annotation file, durations file, published number of queries.
FILES = {
    "charades_sta": ("charades_sta/charades_sta_test.txt", "charades_sta/charades.json", 3_720),
    "activitynet_captions": ("activitynet_captions/val_1.json", None, 17_505),
    "tacos": ("tacos/test.json", None, 4_001),
    "tvr": ("tvr/tvr_val_release.jsonl", "tvr/tvr_video2dur_idx.json", 10_895),
}


def load_ground_truth(dataset: str) -> list[annotations.RawRecord]:
    path, durations, expected = FILES[dataset]
    spec = annotations.get_spec(dataset)
    durations = annotations.load_durations(os.path.join(FIXTURES, durations)) if durations else None
    report = annotations.Report("eval")
    records = annotations.read_split(spec, os.path.join(FIXTURES, path), report, durations)
    assert len(records) == expected and not report.skipped
    return records


def generate_predictions(records, seed: int) -> list[list[list[float]]]:
    """Per query 8 rows [start, end, score] in file order (not score order), rounded to 4 decimals."""
    rng = np.random.default_rng(seed)
    out = []
    for rec in records:
        s, e = rec.spans[0]
        length, dur = e - s, rec.duration
        rows = [[s, e]]  # exact
        for t in rng.choice([0.3, 0.5, 0.7], size=3):
            if rng.random() < 0.5:
                rows.append([s, min(dur, s + length / t)])  # GT is a prefix: IoU = t unless clipped
            else:
                rows.append([s + length * (1 - t), e])  # a suffix of the GT: IoU = t
        for _ in range(3):
            a, b = np.sort(rng.uniform(0, dur, 2))
            rows.append([a, b])
        rows.append(list(rows[int(rng.integers(0, len(rows)))]))  # a duplicate window
        scores = rng.integers(0, 4, len(rows)) / 4  # many ties
        order = rng.permutation(len(rows))
        out.append([[round(float(rows[i][0]), 4), round(float(rows[i][1]), 4), float(scores[i])] for i in order])
    return out


def write_files(tmp_path, records, preds) -> tuple[str, str]:
    pred_path, gt_path = str(tmp_path / "pred.jsonl"), str(tmp_path / "gt.jsonl")
    with open(pred_path, "w") as f:
        for rec, rows in zip(records, preds):
            f.write(json.dumps({"qid": rec.qid, "vid": rec.vid, "pred_relevant_windows": rows}) + "\n")
    with open(gt_path, "w") as f:
        for rec in records:
            f.write(json.dumps({"qid": rec.qid, "vid": rec.vid, "duration": rec.duration, "query": rec.query,
                                "relevant_windows": [[round(a, 4), round(b, 4)] for a, b in rec.spans]}) + "\n")
    return pred_path, gt_path


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


# --------------------------------------------------------------------------- references (plain loops)


def hull_iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def union_iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def reference_2dtan(pred_rows, gt_rows):
    """2D-TAN: rank by score (argsort()[::-1]), greedy NMS 0.5 keeping 5, R@{1,5} with IoU > t, mIoU."""
    ks, thresholds = (1, 5), (0.1, 0.3, 0.5, 0.7)
    hits = {(k, t): 0 for k in ks for t in thresholds}
    miou = 0.0
    for rows, gt in zip(pred_rows, gt_rows):
        scores = np.array([r[2] for r in rows])
        ranked = [rows[i][:2] for i in np.argsort(scores, kind="stable")[::-1]]
        keep = []
        for cand in ranked:  # 2D-TAN nms: drop candidates overlapping a kept one by more than 0.5
            if all(union_iou(cand, k) <= 0.5 for k in keep):
                keep.append(cand)
            if len(keep) == 5:
                break
        overlap = [max(hull_iou(k, g) for g in gt) for k in keep]
        for k in ks:
            for t in thresholds:
                hits[k, t] += any(o > t for o in overlap[:k])
        miou += overlap[0]
    n = len(pred_rows)
    out = {metrics.recall_key(k, t): 100.0 * hits[k, t] / n for k in ks for t in thresholds}
    out["mIoU"] = 100.0 * miou / n
    return out


def reference_ap(gt, rows, thresholds):
    """moment_detr compute_average_precision_detection for one query."""
    rows = sorted(rows, key=lambda r: -r[2])  # list.sort: stable
    tp = np.zeros((len(thresholds), len(rows)))
    lock = np.full((len(thresholds), len(gt)), -1)
    for i, r in enumerate(rows):
        ious = np.array([union_iou(r, g) for g in gt])
        order = ious.argsort(kind="stable")[::-1]
        for ti, t in enumerate(thresholds):
            for j in order:
                if ious[j] < t:
                    break
                if lock[ti, j] >= 0:
                    continue
                tp[ti, i] = 1
                lock[ti, j] = i
                break
    aps = []
    for ti in range(len(thresholds)):
        tp_c = np.cumsum(tp[ti])
        fp_c = np.cumsum(1 - tp[ti])
        prec = list(tp_c / (tp_c + fp_c))
        rec = list(tp_c / len(gt))
        mprec, mrec = [0.0] + prec + [0.0], [0.0] + rec + [1.0]
        for i in range(len(mprec) - 2, -1, -1):
            mprec[i] = max(mprec[i], mprec[i + 1])
        aps.append(sum((mrec[i] - mrec[i - 1]) * mprec[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]))
    return aps


def reference_moment_detr(pred_rows, gt_rows):
    """moment_detr eval_moment_retrieval: R1 of the first row and mAP of the first 10, per length range."""
    thresholds = [float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10)]
    out = {}
    for name, lo, hi in (("short", 0, 10), ("middle", 10, 30), ("long", 30, 150), ("full", 0, 150)):
        pairs = []
        for rows, gt in zip(pred_rows, gt_rows):
            windows = gt if name == "full" else [g for g in gt if lo < g[1] - g[0] <= hi]
            if windows:
                pairs.append((rows, windows))
        if not pairs:
            out[name] = None
            continue
        r1 = {}
        top_ious = []
        for rows, windows in pairs:
            # compute_mr_r1: the GT window picked with the exact union (batch_cross), scored with the hull
            # (batch_paired, "not the correct union though").
            ious = [union_iou(rows[0], g) for g in windows]
            top_ious.append(hull_iou(rows[0], windows[int(np.argmax(ious))]))
        for t in thresholds:
            r1[str(t)] = float(f"{np.mean(np.array(top_ious) >= t) * 100:.2f}")
        ap = np.array([reference_ap(windows, rows[:10], thresholds) for rows, windows in pairs]).mean(0)
        mr_map = {str(t): float(f"{100 * v:.2f}") for t, v in zip(thresholds, ap)}
        mr_map["average"] = float(f"{100 * np.mean(ap):.2f}")
        out[name] = {"MR-mAP": mr_map, "MR-R1": r1}
    return out


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module", params=["charades_sta", "activitynet_captions", "tacos", "tvr"])
def case(request, tmp_path_factory):
    records = load_ground_truth(request.param)
    preds = generate_predictions(records, seed=len(request.param))
    pred_path, gt_path = write_files(tmp_path_factory.mktemp(request.param), records, preds)
    gt_rows = [[[round(a, 4), round(b, 4)] for a, b in rec.spans] for rec in records]
    return request.param, records, preds, gt_rows, pred_path, gt_path


def test_2dtan_matches_reference(case):
    _, _, preds, gt_rows, pred_path, gt_path = case
    result = evaluate.run("2dtan", pred_path, gt_path)
    expected = reference_2dtan(preds, gt_rows)
    assert result["num_missing_predictions"] == 0 and result["num_queries"] == len(gt_rows)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key
    # Windows at IoU exactly 0.3 / 0.5 / 0.7 exist, so the strict > is what makes these numbers.
    at_least = dataclasses.replace(metrics.get_protocol("2dtan"), iou_comparison=">=")
    relaxed = metrics.evaluate_windows(at_least, preds, gt_rows)
    assert all(relaxed[k] >= result[k] for k in expected if k.startswith("R@"))
    assert any(relaxed[k] > result[k] for k in expected if k.startswith("R@"))


def test_moment_detr_matches_reference(case):
    _, _, preds, gt_rows, pred_path, gt_path = case
    result = evaluate.run("moment_detr", pred_path, gt_path)
    expected = reference_moment_detr(preds, gt_rows)
    for name, block in expected.items():
        if block is None:  # moment_detr's zero placeholder
            assert result[name]["MR-mAP"]["average"] == 0.0
            continue
        assert result[name]["MR-R1"] == block["MR-R1"], name  # a mean of hits: exact
        for key, value in block["MR-mAP"].items():
            # The per-query APs agree bit for bit; their mean over queries may round 0.01 apart at a
            # 2-decimal boundary (summation order; moment_detr itself collects them with imap_unordered).
            assert result[name]["MR-mAP"][key] == pytest.approx(value, abs=0.0101), (name, key)
    assert result["brief"]["MR-full-R1@0.5"] == expected["full"]["MR-R1"]["0.5"]


def test_length_ranges_split_the_queries(case):
    dataset, records, _, _, pred_path, gt_path = case
    result = evaluate.run("moment_detr", pred_path, gt_path)
    lengths = np.array([rec.spans[0][1] - rec.spans[0][0] for rec in records])
    # Single-window datasets: the three ranges partition the queries of length <= 150 s.
    for name, lo, hi in metrics.MOMENT_DETR_LENGTH_RANGES[:3]:
        in_range = ((lengths > lo) & (lengths <= hi)).any()
        assert (result["brief"][f"MR-{name}-mAP"] > 0) == bool(in_range), (dataset, name)


def test_tvr_protocol_on_windows_matches_reference(case):
    """The tvr protocol on per-query windows = TVRetrieval's SVMR: rows as given, IoU >= t (float32), top-k."""
    _, _, preds, gt_rows, _, _ = case
    result = metrics.evaluate_windows("tvr", preds, gt_rows)
    n = len(preds)
    for t in (0.5, 0.7):
        for k in (1, 5, 10, 100):
            hits = 0
            for rows, gt in zip(preds, gt_rows):
                ious = metrics.tvr_temporal_iou(np.array([r[:2] for r in rows[:k]]), np.array(gt[0]))
                hits += bool((ious >= np.float32(t)).any())
            assert result["SVMR"][f"{t}-r{k}"] == round(100 * hits / n, 2), (t, k)
