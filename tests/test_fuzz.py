"""Property-based tests (hypothesis) of every reader of user files: malformed input ends in a clear error
naming the file (and the record where there is one), or in a counted skip; never a raw exception from
inside a library, never a record dropped without being counted.

Readers covered: the annotation readers of the four datasets and the durations files
(``jvmr.data.annotations``), the feature readers (``jvmr.data.features``: ``.npy`` folders and HDF5),
the TFRecord parser (``jvmr.data.schema``: records and shard files), and the prediction / ground-truth
readers and evaluators of ``jvmr.evaluate``. Each property runs ``EXAMPLES`` generated cases,
derandomized so that CI sees the same cases every run.
"""

import json
import math
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jvmr import evaluate
from jvmr.data import annotations, features, schema

EXAMPLES = 300
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ----------------------------------------------------------------------------- value strategies

# Numbers as they turn up in real files, and the ones that break arithmetic.
numbers = st.one_of(
    st.floats(-1e3, 1e3), st.integers(-5, 5), st.sampled_from([0, 0.0, -0.0, 1e308, -1e308, 1e-320, 2**63, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True))
json_scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                  st.dictionaries(st.text(max_size=5), inner,
                                                                                  max_size=3)), max_leaves=8)
# Queries: words, punctuation only, whitespace, other scripts and control characters (no line breaks).
queries = st.one_of(st.sampled_from(["a person opens the door.", "", "   ", "?!", "...", "person sits", "\t"]),
                    st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=20))
vids = st.sampled_from(["v1", "v2", "v3", "s30-d52", "vid.avi", "", " "])
invalid_utf8 = st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\x80"])


def _number_text(x) -> str:
    return repr(x) if not isinstance(x, float) or math.isfinite(x) else str(x)


def _dumps(x) -> str:
    """JSON as Python writes it, NaN / Infinity included (they occur in files written by Python)."""
    return json.dumps(x, allow_nan=True)


def _object_text(items) -> str:
    """A JSON object that may repeat keys (``json.dumps`` of a dict cannot)."""
    return "{" + ", ".join(f"{json.dumps(k)}: {_dumps(v)}" for k, v in items) + "}"


def _write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _check_records(records, report, expected_records: int | None, labelled: bool = True):
    """What every successful read must satisfy: each record counted, every written record usable."""
    skipped = sum(report.skipped.values())
    assert report.num_records == len(records) + skipped, (report.to_json(), len(records))
    if expected_records is not None:
        assert report.num_records == expected_records, report.to_json()
    assert len({r.qid for r in records}) == len(records)
    for r in records:
        assert any(ch.isalnum() for ch in r.query), r
        if not labelled:
            continue
        assert 0 < r.duration <= annotations.MAX_SECONDS, r
        for s, e in r.spans:
            assert 0 <= s < e <= r.duration and np.float32(s) < np.float32(e), r


def _expect_error(error: Exception, path: str) -> None:
    assert str(path) in str(error), f"error does not name {path}: {error}"


# ----------------------------------------------------------------------------- annotation readers

charades_lines = st.one_of(
    st.builds(lambda v, s, e, q, sep: f"{v} {_number_text(s)} {_number_text(e)}{sep}{q}".encode(),
              vids, numbers, numbers, queries, st.sampled_from(["##", "##", "#", " "])),
    st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=30).map(str.encode),
    st.tuples(st.text(max_size=5).filter(lambda t: "\n" not in t), invalid_utf8).map(lambda t: t[0].encode() + t[1]),
)


def _num_nonblank(lines: list[bytes]) -> int:
    n = 0
    for line in lines:
        try:
            n += bool(line.decode("utf-8").rstrip("\r").strip())
        except UnicodeDecodeError:
            n += 1
    return n


@FUZZ
@given(lines=st.lists(charades_lines, max_size=8), durations=st.dictionaries(vids, numbers, max_size=4),
       crlf=st.booleans())
def test_charades_reader(workdir, lines, durations, crlf):
    path = _write(workdir / "charades_sta_test.txt", (b"\r\n" if crlf else b"\n").join(lines))
    durations = {k: float(v) for k, v in durations.items() if annotations._number(v) is not None}
    report = annotations.Report("test")
    try:
        records = annotations.read_split(annotations.get_spec("charades_sta"), path, report, durations)
    except annotations.AnnotationError as e:
        _expect_error(e, path)
        return
    _check_records(records, report, _num_nonblank(lines))


def _sentence_entry():
    stamps = st.lists(st.one_of(st.tuples(numbers, numbers).map(list), json_values), max_size=3)
    sentences = st.lists(st.one_of(queries, json_scalars), max_size=3)
    entry = st.fixed_dictionaries({}, optional={
        "duration": st.one_of(numbers, json_scalars), "timestamps": st.one_of(stamps, json_values),
        "sentences": st.one_of(sentences, json_values), "fps": st.one_of(numbers, json_scalars),
        "num_frames": st.one_of(numbers, json_scalars)})
    return st.one_of(entry, entry, json_values)


def _expected_sentences(items) -> int:
    return sum(max([len(rec[k]) for k in ("timestamps", "sentences") if isinstance(rec.get(k), list)] + [1])
               if isinstance(rec, dict) else 1 for _, rec in items)


@FUZZ
@given(dataset=st.sampled_from(["activitynet_captions", "tacos"]),
       items=st.lists(st.tuples(vids, _sentence_entry()), max_size=4),
       damage=st.sampled_from(["none", "none", "truncate", "not_utf8", "not_object"]))
def test_video_json_readers(workdir, dataset, items, damage):
    text = _object_text(items).encode()
    if damage == "truncate":
        text = text[:len(text) // 2]
    elif damage == "not_utf8":
        text = text[:1] + b"\xff" + text[1:]
    elif damage == "not_object":
        text = b"[" + text + b"]"
    path = _write(workdir / "val_1.json" if dataset == "activitynet_captions" else workdir / "test.json", text)
    report = annotations.Report("split")
    try:
        records = annotations.read_split(annotations.get_spec(dataset), path, report, None)
    except annotations.AnnotationError as e:
        _expect_error(e, path)
        assert damage != "none" or not items, e
        return
    assert damage == "none"
    _check_records(records, report, _expected_sentences(items))


tvr_fields = st.fixed_dictionaries({}, optional={
    "vid_name": st.one_of(vids, json_scalars), "duration": st.one_of(numbers, json_scalars),
    "ts": st.one_of(st.tuples(numbers, numbers).map(list), json_values), "desc": st.one_of(queries, json_scalars),
    "type": st.sampled_from(["v", "t", "vt", "", 3]),
    "desc_id": st.one_of(st.integers(0, 4), st.sampled_from(["7", "", "x"]), json_scalars)})
jsonl_lines = st.one_of(tvr_fields.map(lambda r: _dumps(r).encode()), tvr_fields.map(lambda r: _dumps(r).encode()),
                        json_values.map(lambda v: _dumps(v).encode()),
                        st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
                                max_size=20).map(str.encode),
                        st.tuples(tvr_fields, invalid_utf8).map(lambda t: _dumps(t[0]).encode()[:-1] + t[1] + b"}"))


@FUZZ
@given(lines=st.lists(jsonl_lines, max_size=6), query_only=st.booleans(),
       durations=st.none() | st.dictionaries(vids, numbers, max_size=3))
def test_tvr_readers(workdir, lines, query_only, durations):
    path = _write(workdir / "tvr_val_release.jsonl", b"\n".join(lines))
    spec = annotations.get_spec("tvr")
    if durations is not None:
        durations = {k: float(v) for k, v in durations.items() if annotations._number(v) is not None}
    report = annotations.Report("val")
    try:
        records = annotations.read_split(spec, path, report, durations, labelled=not query_only)
    except annotations.AnnotationError as e:
        _expect_error(e, path)
        return
    _check_records(records, report, _num_nonblank(lines), labelled=not query_only)


durations_json = st.one_of(
    st.lists(st.tuples(vids, st.one_of(numbers, st.fixed_dictionaries({"duration": numbers}),
                                       st.tuples(numbers, st.integers(0, 9)).map(list), json_values)), max_size=4)
    .map(_object_text),
    st.lists(st.tuples(st.sampled_from(["train", "val", "test_public"]),
                       st.lists(st.tuples(vids, st.tuples(numbers, st.integers(0, 9)).map(list)), max_size=3)
                       .map(lambda items: items)), max_size=3)
    .map(lambda splits: "{" + ", ".join(f"{json.dumps(s)}: {_object_text(v)}" for s, v in splits) + "}"),
    json_values.map(_dumps))
durations_csv = st.lists(st.tuples(st.one_of(vids, st.text(max_size=4)), st.one_of(numbers.map(_number_text),
                                                                                     st.text(max_size=4))),
                         max_size=4).map(lambda rows: "id,length\n" + "".join(f"{v},{d}\n" for v, d in rows))


@FUZZ
@given(text=st.one_of(durations_json, durations_csv), as_csv=st.booleans(),
       split=st.sampled_from([None, None, "val", "test_public"]), damage=st.sampled_from(["none", "none", "not_utf8",
                                                                                            "truncate"]))
def test_durations_reader(workdir, text, as_csv, split, damage):
    data = text.encode()
    if damage == "not_utf8":
        data = data[:3] + b"\xff" + data[3:]
    elif damage == "truncate":
        data = data[:len(data) // 2]
    path = _write(workdir / ("durations.csv" if as_csv else "durations.json"), data)
    try:
        out = annotations.load_durations(path, split)
    except annotations.AnnotationError as e:
        _expect_error(e, path)
        return
    assert isinstance(out, dict)
    for vid, d in out.items():
        assert isinstance(vid, str) and isinstance(d, float), (vid, d)
        assert as_csv or math.isfinite(d), (vid, d)  # CSV lengths may be 'nan': cleaning skips them (bad_duration)


# ----------------------------------------------------------------------------- feature readers

feature_dtypes = st.sampled_from(["<f4", "<f8", ">f4", "<f2", "<i8", "|u1", "|b1", "<c8", "<U3", "|S2",
                                  [("a", "<f4"), ("b", "<i4")]])


@st.composite
def feature_arrays(draw):
    """Arrays of any rank, dtype and size; values that include NaN, Inf and float32 overflow."""
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    dtype = np.dtype(draw(feature_dtypes))
    size = int(np.prod(shape))
    if dtype.kind == "f":
        values = draw(st.lists(st.sampled_from([0.0, 1.5, -2.0, np.nan, np.inf, -np.inf, 1e300]) | st.floats(-9, 9),
                               min_size=size, max_size=size))
        with np.errstate(over="ignore"):
            return np.array(values, np.float64).astype(dtype).reshape(shape)
    if dtype.kind in "iub":
        return np.array(draw(st.lists(st.integers(0, 1), min_size=size, max_size=size))).astype(dtype).reshape(shape)
    return np.zeros(shape, dtype)


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _check_features(get, path, vid):
    try:
        arr = get(vid)
    except features.FeatureError as e:
        _expect_error(e, path)
        assert repr(vid) in str(e) or "HDF5" in str(e), e
        assert e.reason in ("missing", "nonfinite", "bad")
        return None
    assert arr.dtype == np.float32 and arr.ndim == 2 and arr.shape[0] >= 1 and arr.shape[1] >= 1
    assert np.all(np.isfinite(arr))
    return arr


@FUZZ
@given(arr=feature_arrays(), damage=st.sampled_from(["none", "none", "truncate", "garbage", "pickle", "header"]),
       cut=st.floats(0, 1), vid=st.sampled_from(["v1", "v1.avi", "v2"]))
def test_npy_feature_reader(workdir, arr, damage, cut, vid):
    folder = workdir / f"npy_{damage}"
    folder.mkdir(exist_ok=True)
    data = _npy_bytes(arr)
    if damage == "truncate":
        data = data[:int(cut * len(data))]
    elif damage == "garbage":
        data = bytes(np.random.default_rng(int(cut * 1000)).integers(0, 256, int(cut * 200), np.uint8))
    elif damage == "pickle":
        data = _npy_bytes(np.array([{"x": 1}, None], dtype=object))
    elif damage == "header":
        data = data.replace(b"'shape': (", b"'shape': (7, ", 1)
    path = _write(folder / "v1.npy", data)
    with features.open_features(str(folder)) as store:
        got = _check_features(store.get, path if vid != "v2" else str(folder), vid)
    if got is not None:
        assert damage == "none" and np.array_equal(got, np.asarray(arr, np.float32))


@FUZZ
@given(arr=feature_arrays(), layout=st.sampled_from(["dataset", "group", "group2", "key", "missing"]),
       damage=st.sampled_from(["none", "none", "none", "truncate", "garbage"]), cut=st.floats(0.05, 0.95))
def test_hdf5_feature_reader(workdir, arr, layout, damage, cut):
    import h5py
    if arr.dtype.kind == "U":  # HDF5 stores byte strings
        arr = arr.astype("S3")
    path = str(workdir / f"feats_{layout}.h5")
    with h5py.File(path, "w") as f:
        if layout == "dataset":
            f.create_dataset("v1", data=arr)
        elif layout in ("group", "key"):
            f.create_group("v1").create_dataset("c3d_features", data=arr)
        elif layout == "group2":
            g = f.create_group("v1")
            g.create_dataset("a", data=arr)
            g.create_dataset("b", data=arr)
        else:
            f.create_dataset("v9", data=arr)
    if damage != "none":
        with open(path, "rb") as f:
            data = f.read()
        _write(path, data[:int(cut * len(data))] if damage == "truncate" else b"\x89HDF\r\n" + data[7:64])
    key = "c3d_features" if layout == "key" else None
    try:
        store = features.open_features(path, key=key)
    except features.FeatureError as e:
        _expect_error(e, path)
        assert damage != "none"
        return
    with store:
        got = _check_features(store.get, path, "v1")
    if got is not None:
        assert np.array_equal(got, np.asarray(arr, np.float32))


# ----------------------------------------------------------------------------- prediction readers, evaluators

qids = st.one_of(st.sampled_from(["q1", "q2", "q3", "", "1"]), st.integers(0, 3), json_scalars)
windows2 = st.lists(st.one_of(st.tuples(numbers, numbers).map(list), st.tuples(st.floats(0, 50), st.floats(0, 50))
                              .map(sorted), json_values), max_size=3)
windows3 = st.lists(st.one_of(st.tuples(st.floats(0, 50), st.floats(0, 50), st.floats(-1, 1))
                              .map(lambda t: sorted(t[:2]) + [t[2]]), st.tuples(numbers, numbers, numbers).map(list),
                              json_values), max_size=4)


def _row(qid_key, qid, key, windows, extra):
    row = {} if qid_key is None else {qid_key: qid}
    if windows is not None:
        row[key] = windows
    return {**extra, **row}


gt_rows = st.builds(_row, st.sampled_from(["qid", "qid", None]), qids, st.sampled_from(["relevant_windows"]),
                    st.none() | windows2, st.fixed_dictionaries({}, optional={"duration": numbers, "vid": vids}))
pred_rows = st.builds(_row, st.sampled_from(["qid", "qid", None]), qids, st.sampled_from(["pred_relevant_windows"]),
                      st.none() | windows3, st.fixed_dictionaries({}, optional={"vid": vids}))


def _jsonl(rows, damage: str) -> bytes:
    data = b"".join(_dumps(r).encode() + b"\n" for r in rows)
    if damage == "not_utf8":
        data = b'{"qid": "\xff"}\n' + data
    elif damage == "truncate":
        data = data[:max(len(data) - 3, 0)]
    elif damage == "not_json":
        data = data + b"[1, 2\n"
    return data


def _check_recall_metrics(result, num_gt):
    """R@k,IoU=t is a share of the queries (a count over num_gt), grows with k and shrinks with t; mIoU is a
    mean of IoUs (a NaN or overflowed IoU breaks these)."""
    recall = {}
    for key, value in result.items():
        match = re.fullmatch(r"R@(\d+),IoU=([\d.]+)", key)
        if match:
            count = value * num_gt / 100
            assert abs(count - round(count)) < 1e-6 * num_gt, (key, value, num_gt)
            recall[int(match.group(1)), float(match.group(2))] = value
    assert recall, result
    miou = result["mIoU"]
    for (k, t), r in recall.items():  # top-1 IoUs: r% of the queries at >= t (or > t), the rest below t
        if k == 1:
            assert t * r - 0.02 <= miou <= r + t * (100 - r) + 0.02, (t, r, miou)
    for (k, t), value in recall.items():
        for (k2, t2), other in recall.items():
            if k2 >= k and t2 <= t:
                assert other >= value, (k, t, value, k2, t2, other)
    assert result["num_queries"] == num_gt


@FUZZ
@given(gt=st.lists(gt_rows, max_size=4), preds=st.lists(pred_rows, max_size=4),
       protocol=st.sampled_from(["jvmr", "2dtan", "moment_detr"]),
       damage=st.sampled_from(["none", "none", "none", "not_utf8", "truncate", "not_json"]))
def test_jsonl_evaluator(workdir, gt, preds, protocol, damage):
    gt_path = _write(workdir / "gt.jsonl", _jsonl(gt, "none"))
    pred_path = _write(workdir / "pred.jsonl", _jsonl(preds, damage))
    try:
        result = evaluate.run(protocol, pred_path, gt_path)
    except evaluate.InputError as e:
        assert gt_path in str(e) or pred_path in str(e), e
        return
    assert damage in ("none", "truncate")
    if protocol != "moment_detr":
        _check_recall_metrics(result, len(gt))
    assert result["num_missing_predictions"] == len({r["qid"] for r in gt} - {r["qid"] for r in preds})


@FUZZ
@given(gt=st.lists(st.tuples(st.floats(0, 100), st.floats(0.01, 20)).map(lambda t: [t[0], t[0] + t[1]]),
                   min_size=1, max_size=5),
       shift=st.sampled_from([0.0, 1e6]), protocol=st.sampled_from(["jvmr", "2dtan"]))
def test_evaluator_scores_oracle_and_miss(workdir, gt, shift, protocol):
    """Perfect predictions score 100 at every IoU, predictions far away 0 (whatever the spans' lengths)."""
    gt_path = _write(workdir / "gt_oracle.jsonl", _jsonl([{"qid": i, "relevant_windows": [w]}
                                                         for i, w in enumerate(gt)], "none"))
    pred_path = _write(workdir / "pred_oracle.jsonl", _jsonl(
        [{"qid": i, "pred_relevant_windows": [[w[0] + shift, w[1] + shift, 1.0]]} for i, w in enumerate(gt)], "none"))
    result = evaluate.run(protocol, pred_path, gt_path)
    expected = 100.0 if shift == 0 else 0.0
    for key, value in result.items():
        if key.startswith("R@") or key == "mIoU":
            assert value == pytest.approx(expected, abs=1e-6), (key, value)


tvr_gt_rows = st.fixed_dictionaries({"desc_id": st.one_of(st.integers(0, 3), json_scalars),
                                     "vid_name": st.one_of(vids, json_scalars),
                                     "ts": st.one_of(st.tuples(st.floats(0, 9), st.floats(0, 9)).map(sorted),
                                                     json_values)},
                                    optional={"type": st.sampled_from(["v", "t", "vt", "x"]), "duration": numbers})
tvr_entries = st.fixed_dictionaries({"desc_id": st.one_of(st.integers(0, 3), json_scalars)}, optional={
    "predictions": st.lists(st.one_of(st.tuples(st.integers(0, 3), st.floats(0, 9), st.floats(0, 9), numbers)
                                      .map(list), json_values), max_size=3),
    "desc": queries})
tvr_submissions = st.fixed_dictionaries({}, optional={
    "video2idx": st.one_of(st.dictionaries(vids, st.integers(0, 3), max_size=4), json_values),
    "SVMR": st.one_of(st.lists(tvr_entries, max_size=3), json_values),
    "VCMR": st.lists(tvr_entries, max_size=3), "VR": st.lists(tvr_entries, max_size=2)})


@FUZZ
@given(gt=st.lists(tvr_gt_rows, max_size=4), sub=st.one_of(tvr_submissions, tvr_submissions, json_values),
       damage=st.sampled_from(["none", "none", "none", "not_utf8", "truncate"]))
def test_tvr_evaluator(workdir, gt, sub, damage):
    gt_path = _write(workdir / "tvr_gt.jsonl", _jsonl(gt, "none"))
    data = _dumps(sub).encode()
    if damage == "not_utf8":
        data = b'{"\xff": 1, ' + data[1:]
    elif damage == "truncate":
        data = data[:len(data) // 2]
    pred_path = _write(workdir / "tvr_sub.json", data)
    try:
        result = evaluate.run("tvr", pred_path, gt_path)
    except evaluate.InputError as e:
        assert gt_path in str(e) or pred_path in str(e), e
        return
    assert damage == "none"  # a damaged submission is always refused
    num_queries = result["num_queries"]
    for task in ("VCMR", "SVMR", "VR"):
        by_k: dict[str, list[tuple[int, float]]] = {}
        for key, value in result.get(task, {}).items():
            match = re.fullmatch(r"(?:(.+)-)?r(\d+)", key)
            assert match, (task, key)
            count = value * num_queries / 100  # percentages rounded to 2 decimals: a count of queries
            assert abs(count - round(count)) <= 0.005 * num_queries / 100 + 1e-9, (task, key, value, num_queries)
            by_k.setdefault(match.group(1) or "", []).append((int(match.group(2)), value))
        for prefix, values in by_k.items():  # recall grows with k
            values.sort()
            assert all(a[1] <= b[1] for a, b in zip(values, values[1:])), (task, prefix, values)


# ----------------------------------------------------------------------------- TFRecord parser


def _example(qid: str = "q0", num_clips: int = 3, dim: int = 4, num_words: int = 3) -> schema.Example:
    rng = np.random.default_rng(len(qid))
    return schema.Example(
        qid=qid, vid="v" + qid, duration=12.5, query="a man opens a door", tokens=["a", "man", "opens"][:num_words],
        dep_heads=[1, 2, -1][:num_words], dep_labels=["det", "nsubj", "root"][:num_words],
        gt_spans=np.array([[1.0, 4.5]], np.float32),
        video_features=rng.normal(size=(num_clips, dim)).astype(np.float32))


def _feature_value(draw):
    import tensorflow as tf
    kind = draw(st.sampled_from(["bytes", "float", "int", "none"]))
    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=draw(st.lists(st.binary(max_size=16),
                                                                                  max_size=3))))
    if kind == "float":
        return tf.train.Feature(float_list=tf.train.FloatList(value=draw(st.lists(
            st.floats(width=32, allow_nan=True), max_size=4))))
    if kind == "int":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=draw(st.lists(st.integers(-2**63, 2**63 - 1),
                                                                                  max_size=3))))
    return None


@st.composite
def damaged_records(draw):
    """A valid record, then one kind of damage: bytes flipped, cut or added, or one feature replaced by a
    value of any type (or removed)."""
    import tensorflow as tf
    data = schema.serialize(_example())
    damage = draw(st.sampled_from(["flip", "truncate", "append", "feature", "feature", "random"]))
    if damage == "flip":
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    elif damage == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif damage == "append":
        data = data + draw(st.binary(min_size=1, max_size=8))
    elif damage == "random":
        data = draw(st.binary(max_size=64))
    else:
        proto = tf.train.Example.FromString(data)
        key = draw(st.sampled_from(sorted(schema.feature_spec())))
        value = _feature_value(draw)
        if value is None:
            if key in proto.features.feature:
                del proto.features.feature[key]
        else:
            proto.features.feature[key].CopyFrom(value)
        data = proto.SerializeToString()
    return data


@FUZZ
@given(data=damaged_records())
def test_record_decoder(data):
    try:
        ex = schema.decode(data, "shard-00000: record 7")
    except schema.SchemaError as e:
        assert str(e).startswith("shard-00000: record 7"), e
        return
    ex.validate()  # whatever decodes is a usable example
    assert ex.video_features.dtype == np.float32 and ex.video_features.ndim == 2


@FUZZ
@given(data=damaged_records())
def test_host_parser_agrees_with_the_pipeline_parser(data):
    """``schema.parse_records`` (host tools, one TensorFlow call per chunk of records, then numpy) refuses
    exactly the records that ``schema.parse`` (the tf.data pipeline's) refuses, and gives the same arrays."""
    import tensorflow as tf
    try:
        tf.train.Example.FromString(data)
    except Exception:
        return  # not a message: both readers refuse it before parsing (schema.decode / the checksum)
    try:
        want = {k: v.numpy() for k, v in schema.parse(tf.constant(data, tf.string)).items()}
    except (tf.errors.OpError, UnicodeDecodeError):
        want = None
    try:
        got = schema.parse_records([data])[0]
    except (tf.errors.OpError, UnicodeDecodeError, ValueError):
        got = None
    assert (want is None) == (got is None), (want, got)
    if want is not None:
        for key, value in want.items():
            if isinstance(value, bytes) or value.dtype == object:  # strings: bytes, or arrays of bytes
                assert (got[key] == value) if isinstance(value, bytes) else (list(got[key]) == list(value)), key
            else:
                np.testing.assert_array_equal(got[key], value, err_msg=key)
                assert np.asarray(got[key]).dtype == value.dtype, key


@settings(FUZZ, max_examples=100)
@given(damage=st.sampled_from(["flip", "truncate", "cut_at_record"]), where=st.floats(0, 1),
       bit=st.integers(0, 7))
def test_shard_reader(workdir, damage, where, bit):
    """A damaged shard: reading names the file and record; a shard cut at a record boundary, whose remaining
    records are all intact, is caught by the count the manifest keeps."""
    out = str(workdir / "shards")
    originals = [_example(f"q{i}") for i in range(3)]
    assert schema.write_split(originals, out, "val") == 3
    path = schema.split_files(out, "val")[0]
    with open(path, "rb") as f:
        data = original = f.read()
    if damage == "flip":
        i = min(int(where * len(data)), len(data) - 1)
        data = data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1:]
    elif damage == "truncate":
        data = data[:int(where * len(data))]
    else:
        sizes = [12 + len(schema.serialize(ex)) + 4 for ex in originals]
        data = data[:sum(sizes[:int(where * 2.99)])]
    _write(path, data)
    errors = []
    try:
        got = list(schema.read_split(out, "val"))
    except schema.SchemaError as e:
        assert str(e).startswith(f"{path}: record "), e
        errors.append(e)
    else:
        assert [g.qid for g in got] == [o.qid for o in originals[:len(got)]]
        for g, o in zip(got, originals):
            np.testing.assert_array_equal(g.video_features, o.video_features)
    try:
        assert schema.check_split(out, "val", expected=3) == 3
    except schema.SchemaError as e:
        assert str(e).startswith(f"{path}: record ") or str(e).startswith(f"{out}: split 'val' holds "), e
        errors.append(e)
    assert bool(errors) == (data != original), errors  # every change is caught, nothing intact is refused
