"""Annotation readers and cleaning on the full public annotation files and on crafted defective ones."""

import collections
import json
import os

import numpy as np
import pytest

from jvmr.data import annotations

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

# Published split sizes (queries) of the files in tests/fixtures.
PUBLISHED = [
    ("charades_sta", "train", 12_408), ("charades_sta", "test", 3_720),
    ("activitynet_captions", "train", 37_421), ("activitynet_captions", "val_1", 17_505),
    ("tacos", "train", 9_790), ("tacos", "val", 4_436), ("tacos", "test", 4_001),
    ("tvr", "val", 10_895),
]


def read_fixture(dataset: str, split: str, strict: bool = False):
    spec = annotations.get_spec(dataset)
    folder = os.path.join(FIXTURES, dataset)
    path = annotations.find_split_files(spec, folder, [split])[split]
    durations = annotations.load_durations(os.path.join(folder, spec.durations_file)) if spec.durations_file else None
    report = annotations.Report(split, strict)
    return annotations.read_split(spec, path, report, durations), report, path


def raw_spans(dataset: str, path: str) -> dict[str, tuple[float, float, float]]:
    """qid -> (start s, end s, duration s) read straight from the file (the numpy reference's input)."""
    out = {}
    if dataset == "charades_sta":
        with open(os.path.join(FIXTURES, dataset, "charades.json")) as f:
            dur = {k: v["duration"] for k, v in json.load(f).items()}
        for i, line in enumerate(open(path), start=1):
            if line.strip():
                vid, s, e = line.split("##")[0].split()
                out[f"{vid}_{i}"] = (float(s), float(e), dur[vid])
    elif dataset == "tvr":
        with open(os.path.join(FIXTURES, "tvr", "tvr_video2dur_idx.json")) as f:
            dur = {v: d[0] for split in json.load(f).values() for v, d in split.items()}
        for line in open(path):
            r = json.loads(line)
            out[str(r["desc_id"])] = (r["ts"][0], r["ts"][1], dur[r["vid_name"]])
    else:
        with open(path) as f:
            data = json.load(f)
        for vid, r in data.items():
            fps = r.get("fps", 1.0)
            duration = r["num_frames"] / fps if "fps" in r else r["duration"]
            for i, (s, e) in enumerate(r["timestamps"]):
                out[f"{vid}_{i}"] = (s / fps, e / fps, duration)
    return out


@pytest.mark.parametrize("dataset, split, published", PUBLISHED)
def test_full_files_match_published_sizes_and_numpy_reference(dataset, split, published):
    records, report, path = read_fixture(dataset, split)
    assert report.num_records == published
    assert len(records) + sum(report.skipped.values()) == published
    # Numpy reference of the cleaning: skip start >= end (as written or once clipped), clip the rest.
    raw = raw_spans(dataset, path)
    qids = list(raw)
    s, e, d = (np.array([raw[q][k] for q in qids]) for k in range(3))
    skip = (s >= e) | (np.minimum(e, d).astype(np.float32) <= np.maximum(s, 0).astype(np.float32))
    assert report.skipped == collections.Counter({"start_ge_end": int(skip.sum())} if skip.any() else {})
    expected_fixed = {"end_beyond_duration": int((~skip & (e > d)).sum()), "start_below_zero": int((~skip & (s < 0)).sum())}
    assert dict(report.fixed) == {k: v for k, v in expected_fixed.items() if v}
    kept = dict(zip(qids, np.stack([np.maximum(s, 0), np.minimum(e, d), d], 1)))
    assert sorted(r.qid for r in records) == sorted(q for q, k in zip(qids, skip) if not k)
    got = np.array([[r.spans[0][0], r.spans[0][1], r.duration] for r in records])
    np.testing.assert_allclose(got, np.stack([kept[r.qid] for r in records]), rtol=0, atol=1e-9)
    assert all(r.query == r.query.strip() and r.query for r in records)


def test_real_defect_counts():
    """What the real files hold, as counted: VSLNet's Charades-STA train has no start >= end row left."""
    _, charades, _ = read_fixture("charades_sta", "train")
    assert charades.skipped == {} and charades.fixed == {"end_beyond_duration": 1802}
    _, anet, _ = read_fixture("activitynet_captions", "train")
    assert anet.skipped == {"start_ge_end": 4} and anet.fixed == {"end_beyond_duration": 261}
    assert any("v_N7ppHQNikv8" in m and "sentence 2" in m for m in anet.messages["skipped:start_ge_end"])


def test_tacos_frames_become_seconds():
    records, _, path = read_fixture("tacos", "test")
    with open(path) as f:
        data = json.load(f)
    rec = next(r for r in records if r.qid == "s30-d52.avi_0")
    video = data["s30-d52.avi"]
    np.testing.assert_allclose(rec.spans, [[141 / video["fps"], 354 / video["fps"]]])
    assert rec.duration == pytest.approx(video["num_frames"] / video["fps"])
    assert rec.vid == "s30-d52.avi" and rec.query == "She took out kiwi"


def test_tvr_keeps_query_types_and_desc_ids():
    records, report, _ = read_fixture("tvr", "val")
    assert collections.Counter(r.query_type for r in records) == {"v": 8097, "vt": 1834, "t": 964}
    first = records[0]
    assert (first.qid, first.vid, first.duration, first.spans) == (
        "90200", "friends_s01e03_seg02_clip_19", 61.46, [[16.48, 33.87]])
    assert len({r.vid for r in records}) == 2179


def test_activitynet_val_splits_stay_distinct(tmp_path):
    for name in ("train.json", "val_1.json", "val_2.json", "test.json"):
        (tmp_path / name).write_text(json.dumps({"v_a": {"duration": 10.0, "timestamps": [[1, 2]],
                                                         "sentences": [name]}}))
    spec = annotations.get_spec("activitynet_captions")
    files = annotations.find_split_files(spec, str(tmp_path))
    assert list(files) == ["train", "val_1", "val_2"]
    assert files["val_2"].endswith("val_2.json")
    warnings = annotations.folder_warnings(spec, str(tmp_path))
    assert len(warnings) == 1 and "test.json" in warnings[0] and "val_1 / val_2" in warnings[0]
    # One file: the split comes from its name, or must be named.
    assert annotations.find_split_files(spec, str(tmp_path / "val_1.json")) == {"val_1": str(tmp_path / "val_1.json")}
    assert annotations.find_split_files(spec, str(tmp_path / "test.json"), ["val_2"]) == {
        "val_2": str(tmp_path / "test.json")}
    with pytest.raises(annotations.AnnotationError, match="test.json: cannot tell"):
        annotations.find_split_files(spec, str(tmp_path / "test.json"))
    with pytest.raises(annotations.AnnotationError, match="no split 'test'"):
        annotations.find_split_files(spec, str(tmp_path), ["test"])


CHARADES_LINES = [
    "AAAAA 1.0 5.0##a person opens a door.",  # 1: kept
    "AAAAA 5.0 5.0##start equals end",  # 2: start_ge_end
    "AAAAA 2.0 40.0##ends after the video",  # 3: kept, end_beyond_duration
    "AAAAA -1.0 3.0##starts before zero",  # 4: kept, start_below_zero
    "AAAAA 31.0 35.0##entirely after the video",  # 5: start_ge_end once clipped
    "no separator here",  # 6: unparsable_line
    "AAAAA one 3.0##bad number",  # 7: unparsable_line
    "AAAAA 1.0 2.0##   ",  # 8: empty_query
    "AAAAA 1.0 2.0##...!",  # 9: empty_query
    "ZZZZZ 1.0 2.0##a video with no duration",  # 10: missing_duration
    "",  # 11: blank, not a record
]


def write_crafted_charades(tmp_path):
    path = tmp_path / "charades_sta_train.txt"
    path.write_text("\n".join(CHARADES_LINES) + "\n")
    (tmp_path / "charades.json").write_text(json.dumps({"AAAAA": {"duration": 30.0}}))
    return str(path)


def test_charades_defects_are_counted_with_file_and_line(tmp_path):
    path = write_crafted_charades(tmp_path)
    spec = annotations.get_spec("charades_sta")
    report = annotations.Report("train")
    records = annotations.read_split(spec, path, report, annotations.load_durations(str(tmp_path / "charades.json")))
    assert [r.qid for r in records] == ["AAAAA_1", "AAAAA_3", "AAAAA_4"]
    assert [r.spans for r in records] == [[[1.0, 5.0]], [[2.0, 30.0]], [[0.0, 3.0]]]
    assert report.num_records == 10
    assert report.skipped == {"start_ge_end": 2, "unparsable_line": 2, "empty_query": 2, "missing_duration": 1}
    assert report.fixed == {"end_beyond_duration": 1, "start_below_zero": 1}
    expected_lines = {"skipped:start_ge_end": [2, 5], "skipped:unparsable_line": [6, 7],
                      "skipped:empty_query": [8, 9], "skipped:missing_duration": [10],
                      "fixed:end_beyond_duration": [3], "fixed:start_below_zero": [4]}
    for key, lines in expected_lines.items():
        messages = report.messages[key]
        assert [f"{path}: line {n}" in m for m, n in zip(messages, lines)] == [True] * len(lines), messages
    table = annotations.format_reports([report])
    for reason in ("start_ge_end", "unparsable_line", "empty_query", "missing_duration", "end_beyond_duration"):
        assert reason in table


def test_strict_mode_turns_the_first_fix_into_an_error(tmp_path):
    path = write_crafted_charades(tmp_path)
    spec = annotations.get_spec("charades_sta")
    with pytest.raises(annotations.AnnotationError, match=r"strict.*start_ge_end.*line 2 "):
        annotations.read_split(spec, path, annotations.Report("train", strict=True), {"AAAAA": 30.0})


def test_json_defects(tmp_path):
    spec = annotations.get_spec("activitynet_captions")
    path = tmp_path / "train.json"
    # The same video twice (json.load would silently keep one), a length mismatch,
    # a bad timestamp and a negative duration.
    path.write_text('{"v_a": {"duration": 10, "timestamps": [[1, 2], [3, 4]], "sentences": ["one", "two"]},'
                    ' "v_b": {"duration": 10, "timestamps": [[1, 2]], "sentences": ["x", "y", "z"]},'
                    ' "v_c": {"duration": 10, "timestamps": [[1, "b"], [2, 3]], "sentences": ["bad", "ok"]},'
                    ' "v_d": {"duration": -5, "timestamps": [[1, 2]], "sentences": ["negative"]},'
                    ' "v_a": {"duration": 10, "timestamps": [[5, 6]], "sentences": ["again"]}}')
    report = annotations.Report("train")
    records = annotations.read_split(spec, str(path), report)
    assert [r.qid for r in records] == ["v_a_0", "v_a_1", "v_c_1"]
    assert report.num_records == 9
    assert report.skipped == {"malformed_record": 4, "bad_duration": 1, "duplicate_qid": 1}
    assert "first at" in report.messages["skipped:duplicate_qid"][0]
    assert f"{path}: video 'v_b'" in report.messages["skipped:malformed_record"][0]
    path.write_text('{"v_a": {"duration": 10,\n "timestamps": [[1, 2]] "sentences": ["x"]}}')
    with pytest.raises(annotations.AnnotationError, match=rf"{path}: malformed JSON at line 2"):
        annotations.read_split(spec, str(path), annotations.Report("train"))


def test_tvr_defects_and_query_only_files(tmp_path):
    spec = annotations.get_spec("tvr")
    good = {"vid_name": "v1", "duration": 60.0, "ts": [1.0, 2.0], "desc": "Sheldon sits.", "type": "v", "desc_id": 7}
    lines = [json.dumps(good), "{not json", json.dumps(dict(good, ts=None, desc_id=8)),
             json.dumps(dict(good, desc="Penny stands.")), json.dumps(dict(good, desc_id=9, ts=[50.0, 70.0]))]
    path = tmp_path / "tvr_val_release.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = annotations.Report("val")
    records = annotations.read_split(spec, str(path), report, {"v1": 65.0})
    assert [(r.qid, r.duration, r.spans) for r in records] == [("7", 65.0, [[1.0, 2.0]]), ("9", 65.0, [[50.0, 65.0]])]
    assert report.skipped == {"unparsable_line": 1, "malformed_record": 1, "duplicate_qid": 1}
    assert report.fixed == {"end_beyond_duration": 1}
    assert f"{path}: line 2" in report.messages["skipped:unparsable_line"][0]
    assert f"{path}: line 4" in report.messages["skipped:duplicate_qid"][0]
    # TVR's test_public release has no ground truth: left out of a folder scan, read as a query-only split
    # when asked for (and an error for the labelled reader).
    lines = [json.dumps({"desc": "Sheldon sits.", "desc_id": 1}),
             json.dumps({"desc": " Penny stands. ", "desc_id": 2, "type": "vt"}), "{not json", json.dumps({"desc": "no id"}), json.dumps({"desc_id": 3, "type": "v"}),
             json.dumps({"desc": " ?! ", "desc_id": 4}), json.dumps({"desc": "again", "desc_id": 1}),
             json.dumps(["desc", "desc_id"]), json.dumps({"desc": "Leonard walks.", "desc_id": 5, "vid_name": "v1"})]
    (tmp_path / "tvr_test_public_release.jsonl").write_text("\n".join(lines) + "\n\n")
    assert list(annotations.find_split_files(spec, str(tmp_path))) == ["val"]
    assert "no ground truth" in annotations.folder_warnings(spec, str(tmp_path))[0]
    public = annotations.find_split_files(spec, str(tmp_path), ["test_public"])["test_public"]
    with pytest.raises(annotations.AnnotationError, match="no 'vid_name' / 'ts'"):
        annotations.read_split(spec, public, annotations.Report("test_public"))
    report = annotations.Report("test_public")
    records = annotations.read_split(spec, public, report, {"v1": 65.0}, labelled=False)
    assert [(r.qid, r.query, r.query_type, r.vid, r.duration, r.spans) for r in records] == [
        ("1", "Sheldon sits.", "", "", None, []), ("2", "Penny stands.", "vt", "", None, []),
        ("5", "Leonard walks.", "", "", None, [])]
    assert report.skipped == {"unparsable_line": 1, "malformed_record": 3, "empty_query": 1, "duplicate_qid": 1}
    assert report.num_records == 9 == len(records) + sum(report.skipped.values())
    assert f"{public}: line 4: needs desc and desc_id" in report.messages["skipped:malformed_record"][0]
    assert f"{public}: line 7" in report.messages["skipped:duplicate_qid"][0]
    with pytest.raises(annotations.AnnotationError, match=r"\[strict\] skipped \(unparsable_line\)"):
        annotations.read_split(spec, public, annotations.Report("test_public", strict=True), labelled=False)
    with pytest.raises(annotations.AnnotationError, match="has no reader of query-only files"):
        annotations.read_split(annotations.get_spec("tacos"), public, annotations.Report("x"), labelled=False)


def test_durations_files(tmp_path):
    (tmp_path / "Charades_v1_train.csv").write_text("id,subject,length\nAAAAA,x,30.5\nBBBBB,y,12\n")
    assert annotations.load_durations(str(tmp_path / "Charades_v1_train.csv")) == {"AAAAA": 30.5, "BBBBB": 12.0}
    (tmp_path / "flat.json").write_text('{"a": 3.5}')
    assert annotations.load_durations(str(tmp_path / "flat.json")) == {"a": 3.5}
    tvr = annotations.load_durations(os.path.join(FIXTURES, "tvr", "tvr_video2dur_idx.json"))
    assert len(tvr) == 1090 + 1089 + 17435 + 2179 and tvr["castle_s01e01_seg02_clip_20"] == 91.56
    public = annotations.load_durations(os.path.join(FIXTURES, "tvr", "tvr_video2dur_idx.json"), "test_public")
    assert len(public) == 1089 and all(tvr[v] == d for v, d in public.items())
    with pytest.raises(annotations.AnnotationError, match="no 'test' entry"):
        annotations.load_durations(os.path.join(FIXTURES, "tvr", "tvr_video2dur_idx.json"), "test")
    (tmp_path / "bad.json").write_text('{"a": "long"}')
    with pytest.raises(annotations.AnnotationError, match="bad.json: video 'a'"):
        annotations.load_durations(str(tmp_path / "bad.json"))
    with pytest.raises(annotations.AnnotationError, match="needs video durations"):
        next(annotations.read_charades_sta(str(tmp_path / "x.txt"), annotations.Report("train"), None))
