"""python -m data_prep.build: full real annotation files with fabricated features, read back through the pipeline."""

import itertools
import json
import os
import subprocess
import sys
import zlib

import h5py
import ml_collections
import numpy as np
import pytest

from data_prep import build
from jvmr.data import annotations, glove, pipeline, schema, text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def fake_features(key: str, t: int, dim: int) -> np.ndarray:
    """Deterministic float32 [t, dim] features of one video (or query) id."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return rng.standard_normal((t, dim), dtype=np.float32)


def write_npy_dir(path, keys, t: int, dim: int) -> str:
    os.makedirs(path, exist_ok=True)
    for key in keys:
        np.save(os.path.join(path, f"{os.path.splitext(key)[0]}.npy"), fake_features(key, t, dim))
    return str(path)


def write_hdf5(path, keys, t: int, dim: int, sub_key: str | None = None) -> str:
    with h5py.File(path, "w") as f:
        for key in keys:
            node = f.create_group(key) if sub_key else f
            node.create_dataset(sub_key or key, data=fake_features(key, t, dim))
    return str(path)


def video_ids(dataset: str) -> list[str]:
    folder = os.path.join(FIXTURES, dataset)
    spec = annotations.get_spec(dataset)
    durations = annotations.load_durations(os.path.join(folder, spec.durations_file)) if spec.durations_file else None
    vids = {}
    for path in annotations.find_split_files(spec, folder).values():
        vids.update((r.vid, None) for r in spec.read(path, annotations.Report("x"), durations))
    return list(vids)


def run_build(*argv: str) -> dict:
    return build.build(build.parse_args([*argv, "--no_progress"]))


def dataset_config(feature_dim: int, max_video_len: int = 4, max_query_len: int = 12) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        feature_dim=feature_dim, max_video_len=max_video_len, max_query_len=max_query_len, max_gt_spans=2,
        video_sampling="pad", normalize_features=False, shuffle_buffer=10))


def read_back(data_dir: str, split: str, cfg, max_batches: int | None = None) -> dict[str, np.ndarray]:
    """An evaluation pass of the training pipeline (the first ``max_batches`` of 1024), padding removed."""
    ds = pipeline.make_dataset(data_dir, split, cfg, batch_size=1024, training=False, inputs=("query_graph",))
    batches = list(itertools.islice(pipeline.as_numpy(ds), max_batches))
    out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    keep = out["example_mask"] > 0
    return {k: v[keep] for k, v in out.items()}


def check_read_back(data_dir: str, split: str, dataset: str, dim: int, t: int, manifest: dict,
                    max_batches: int | None = None) -> dict:
    """Reads a split back through the pipeline and compares it with the annotations and fabricated features."""
    import tensorflow as tf
    num_records = sum(1 for _ in tf.data.TFRecordDataset(schema.split_files(data_dir, split)))
    assert num_records == manifest["num_examples"][split]
    batch = read_back(data_dir, split, dataset_config(dim, max_video_len=max(t, 4)), max_batches)
    qids = [q.decode() for q in batch["qid"]]
    assert len(qids) == len(set(qids)) == min(num_records, 1024 * (max_batches or num_records))
    # Spans and durations equal the cleaned annotation records; features equal the fabricated ones.
    spec = annotations.get_spec(dataset)
    folder = os.path.join(FIXTURES, dataset)
    durations = annotations.load_durations(os.path.join(folder, spec.durations_file)) if spec.durations_file else None
    path = annotations.find_split_files(spec, folder, [split])[split]
    records = {r.qid: r for r in annotations.read_split(spec, path, annotations.Report(split), durations)}
    assert set(qids) <= set(records) and len(records) == num_records
    want = np.array([records[q].spans[0] for q in qids], np.float32)
    np.testing.assert_array_equal(batch["gt_spans"][:, 0], want)
    np.testing.assert_array_equal(batch["gt_spans_mask"], np.tile([1.0, 0.0], (len(qids), 1)))
    np.testing.assert_array_equal(batch["duration"], np.array([records[q].duration for q in qids], np.float32))
    np.testing.assert_allclose(batch["gt_span"], want / batch["duration"][:, None], rtol=1e-6)
    assert batch["video_feats"].shape == (len(qids), max(t, 4), dim)
    np.testing.assert_array_equal(batch["video_mask"].sum(1), np.full(len(qids), t))
    for i in range(0, len(qids), 997):  # A spread sample of the features.
        np.testing.assert_array_equal(batch["video_feats"][i, :t], fake_features(records[qids[i]].vid, t, dim))
    assert (batch["query_mask"].sum(1) > 0).all()
    return batch


def convert_fixture(tmp_path, dataset: str, *argv: str) -> tuple[dict, str]:
    """Converts the full annotation files of ``dataset`` in tests/fixtures (no parser) into tmp_path/out."""
    out = str(tmp_path / "out")
    return run_build(f"--dataset={dataset}", f"--annotations={FIXTURES}/{dataset}", f"--output_dir={out}",
                     "--parser=none", *argv), out


def expect_accounting(manifest: dict, split: str, published: int, skipped: dict, fixed: dict) -> None:
    assert manifest["num_records"][split] == published
    assert manifest["skipped"][split] == skipped and manifest["fixed"][split] == fixed
    assert manifest["num_examples"][split] == published - sum(skipped.values())


def test_charades_sta_full_i3d_npy(tmp_path):
    feats = write_npy_dir(tmp_path / "i3d", video_ids("charades_sta"), t=2, dim=1024)
    m, out = convert_fixture(tmp_path, "charades_sta", f"--features={feats}")
    expect_accounting(m, "train", 12_408, {}, {"end_beyond_duration": 1802})
    expect_accounting(m, "test", 3_720, {}, {"end_beyond_duration": 562})
    assert m["num_videos"] == {"train": 5338, "test": 1334}
    assert m["feature_dim"] == 1024 and m["features"]["video"]["format"] == "npy_dir"
    assert m["num_shards"] == {"train": 4, "test": 1}
    assert m["vocab_source"] == "train" and m["vocab_size"] == len(text.read_vocabulary(f"{out}/vocab.txt"))
    assert set(m["sources"]) == {os.path.join(FIXTURES, "charades_sta", n) for n in (
        "charades_sta_train.txt", "charades_sta_test.txt", "charades.json")}
    assert all(len(h) == 64 for h in m["sources"].values())
    assert m["options"]["dataset"] == "charades_sta" and "jvmr_version" in m
    with open(f"{out}/manifest.json") as f:
        assert json.load(f)["num_examples"] == {"train": 12_408, "test": 3_720}
    check_read_back(out, "test", "charades_sta", 1024, 2, m)


def test_activitynet_full_c3d_hdf5_with_sub_key(tmp_path):
    feats = write_hdf5(tmp_path / "sub_activitynet_v1-3.c3d.hdf5", video_ids("activitynet_captions"), t=2, dim=500,
                       sub_key="c3d_features")
    m, out = convert_fixture(tmp_path, "activitynet_captions", f"--features={feats}")
    assert m["splits"] == ["train", "val_1"]
    expect_accounting(m, "train", 37_421, {"start_ge_end": 4}, {"end_beyond_duration": 261})
    expect_accounting(m, "val_1", 17_505, {}, {"end_beyond_duration": 134})
    assert m["features"]["video"]["format"] == "hdf5" and m["feature_dim"] == 500
    check_read_back(out, "val_1", "activitynet_captions", 500, 2, m, max_batches=4)


def test_tacos_full_c3d_one_hdf5(tmp_path):
    feats = write_hdf5(tmp_path / "tall_c3d_features.hdf5", video_ids("tacos"), t=1, dim=4096)
    m, out = convert_fixture(tmp_path, "tacos", f"--features={feats}")
    expect_accounting(m, "train", 9_790, {}, {"end_beyond_duration": 43})
    expect_accounting(m, "val", 4_436, {}, {})
    expect_accounting(m, "test", 4_001, {}, {"end_beyond_duration": 5})
    check_read_back(out, "test", "tacos", 4096, 1, m)


def test_tvr_val_full_video_subtitle_query_streams(tmp_path):
    with open(os.path.join(FIXTURES, "tvr", "tvr_val_release.jsonl")) as f:
        desc_ids = [str(json.loads(line)["desc_id"]) for line in f]
    vids = video_ids("tvr")
    video = write_hdf5(tmp_path / "video.h5", vids, t=1, dim=3072)
    subtitle = write_hdf5(tmp_path / "sub.h5", vids, t=1, dim=768)
    query = write_hdf5(tmp_path / "query.h5", desc_ids, t=2, dim=768)
    m, out = convert_fixture(tmp_path, "tvr", f"--features={video}", f"--subtitle_features={subtitle}",
                             f"--query_features={query}")
    expect_accounting(m, "val", 10_895, {}, {})
    assert m["query_types"]["val"] == {"t": 964, "v": 8097, "vt": 1834}
    assert m["feature_dims"] == {"query": 768, "subtitle": 768, "video": 3072}
    assert m["vocab_source"] == "val"  # No train split here.
    batch = check_read_back(out, "val", "tvr", 3072, 1, m, max_batches=4)
    assert {t.decode() for t in batch["query_type"]} == {"v", "t", "vt"}
    first = next(schema.read_split(out, "val"))
    np.testing.assert_array_equal(first.subtitle_features, fake_features(first.vid, 1, 768))
    np.testing.assert_array_equal(first.query_features, fake_features(first.qid, 2, 768))


def write_small_charades(tmp_path, lines: list[str], durations: dict[str, float]) -> str:
    folder = tmp_path / "ann"
    folder.mkdir()
    (folder / "charades_sta_train.txt").write_text("\n".join(lines) + "\n")
    (folder / "charades.json").write_text(json.dumps({v: {"duration": d} for v, d in durations.items()}))
    return str(folder)


TVR_WORDS = ("sheldon penny leonard howard sits stands opens closes the door couch coffee laptop walks into "
             "kitchen talks about money wedding").split()


def write_small_tvr(root, num_videos=(("train", 8), ("val", 4), ("test_public", 5)), queries_per_video: int = 2,
                    num_public: int = 6, extra_public_lines: tuple[str, ...] = (), missing: tuple[str, ...] = (),
                    seed: int = 0) -> dict:
    """A TVR-like folder ``root/ann`` and its features: ``tvr_{split}_release.jsonl`` of the labelled splits
    (``queries_per_video`` queries of every video), ``tvr_test_public_release.jsonl`` (``num_public`` lines of
    desc / desc_id, ``type`` on every other one, then ``extra_public_lines`` as written),
    ``tvr_video2dur_idx.json`` listing every split's videos, and HDF5 video (12 clips x 32-d), subtitle (12 x 8)
    and query-token (5 x 8, keyed by desc_id) features of every video and desc_id but ``missing``."""
    rng = np.random.default_rng(seed)
    ann = root / "ann"
    ann.mkdir()
    sentence = lambda: " ".join(rng.choice(TVR_WORDS, size=int(rng.integers(3, 8)))).capitalize() + "."  # noqa: E731
    vids = {split: [f"show_s01e{i:02d}_{split}_clip_{j:02d}" for j in range(n)]
            for i, (split, n) in enumerate(num_videos)}
    video2dur, durations, desc_ids, next_id = {}, {}, {}, 1000
    for split, names in vids.items():
        video2dur[split] = {}
        for vid in names:
            durations[vid] = round(float(rng.uniform(20, 90)), 2)
            video2dur[split][vid] = [durations[vid], len(durations) - 1]
    (ann / "tvr_video2dur_idx.json").write_text(json.dumps(video2dur))
    for split, names in vids.items():
        rows = []
        if split == "test_public":
            for i in range(num_public):
                rows.append({"desc": sentence(), "desc_id": next_id + i, **({"type": "v"} if i % 2 else {})})
        else:
            for vid, _ in itertools.product(names, range(queries_per_video)):
                d = durations[vid]
                start = float(rng.uniform(0, d - 6))
                ts = [round(start, 2), round(start + float(rng.uniform(2, 6)), 2)]
                rows.append({"vid_name": vid, "duration": d, "ts": ts, "desc": sentence(),
                             "type": str(rng.choice(["v", "t", "vt"])), "desc_id": next_id + len(rows)})
        next_id += 1000
        desc_ids[split] = [r["desc_id"] for r in rows]
        lines = [json.dumps(r) for r in rows] + (list(extra_public_lines) if split == "test_public" else [])
        (ann / f"tvr_{split}_release.jsonl").write_text("\n".join(lines) + "\n")
    all_vids = [v for names in vids.values() for v in names if v not in missing]
    queries = [str(q) for ids in desc_ids.values() for q in ids if str(q) not in missing]
    return {"annotations": str(ann), "vids": vids, "durations": durations, "desc_ids": desc_ids,
            "video": write_hdf5(root / "video.h5", all_vids, t=12, dim=32),
            "subtitle": write_hdf5(root / "sub.h5", all_vids, t=12, dim=8),
            "query": write_hdf5(root / "query.h5", queries, t=5, dim=8)}


def build_small_tvr(tvr: dict, output_dir: str, *argv: str) -> dict:
    return run_build("--dataset=tvr", f"--annotations={tvr['annotations']}", f"--features={tvr['video']}",
                     f"--subtitle_features={tvr['subtitle']}", f"--query_features={tvr['query']}",
                     f"--output_dir={output_dir}", "--feature_dim=32", "--parser=none", *argv)


def test_tvr_test_public_is_a_query_set_plus_a_corpus(tmp_path, capsys):
    tvr = write_small_tvr(tmp_path, missing=("show_s01e02_test_public_clip_03",))
    only_val = build_small_tvr(tvr, str(tmp_path / "val"), "--splits=val")
    out = str(tmp_path / "out")
    m = build_small_tvr(tvr, out, "--splits=val,test_public")
    # The labelled split is written as without test_public (the same tf.train.Example records: their bytes vary
    # between processes with protobuf's map order); test_public is no example split.
    import tensorflow as tf
    records = [[tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(schema.split_files(d, "val"))]
               for d in (str(tmp_path / "val"), out)]
    assert len(records[0]) == 8 and records[0] == records[1]
    assert only_val["num_examples"] == m["num_examples"] == {"val": 8} and only_val["query_only_splits"] == []
    assert m["splits"] == ["val", "test_public"] and m["query_only_splits"] == ["test_public"]
    assert m["num_queries"] == {"test_public": 6} and m["num_records"]["test_public"] == 6
    assert m["num_shards"] == {"val": 1, "test_public_queries": 1, "test_public_corpus": 1}
    # The missing corpus video is skipped and counted, with the file and the video named.
    assert m["num_videos"]["test_public"] == 4 and m["num_records"]["test_public_corpus"] == 5
    assert m["skipped"]["test_public_corpus"] == {"missing_video_features": 1}
    message = m["report_messages"]["test_public_corpus"]["skipped:missing_video_features"][0]
    assert tvr["video"] in message and "show_s01e02_test_public_clip_03" in message
    assert "tvr_video2dur_idx.json" in message
    printed = capsys.readouterr().out
    assert "test_public (query-only): 6 queries of 6 records, corpus 4 videos of 5 listed" in printed
    queries = list(schema.read_split(out, "test_public", "query"))
    assert [q.qid for q in queries] == [str(i) for i in tvr["desc_ids"]["test_public"]]
    assert [q.query_type for q in queries] == ["", "v"] * 3
    assert all(q.vid == "" and q.gt_spans.shape == (0, 2) and q.video_features.size == 0 for q in queries)
    np.testing.assert_array_equal(queries[2].query_features, fake_features(queries[2].qid, 5, 8))
    corpus = list(schema.read_split(out, "test_public", "video"))
    want = [v for v in tvr["vids"]["test_public"] if v != "show_s01e02_test_public_clip_03"]
    assert [v.vid for v in corpus] == want and all(not v.tokens and v.gt_spans.size == 0 for v in corpus)
    assert [v.duration for v in corpus] == [pytest.approx(tvr["durations"][v]) for v in want]
    np.testing.assert_array_equal(corpus[0].video_features, fake_features(want[0], 12, 32))
    np.testing.assert_array_equal(corpus[0].subtitle_features, fake_features(want[0], 12, 8))
    # --strict: the missing corpus video is an error naming the file and the video.
    with pytest.raises(annotations.AnnotationError, match=r"strict.*show_s01e02_test_public_clip_03"):
        build_small_tvr(tvr, str(tmp_path / "strict"), "--splits=test_public", "--strict")
    # A folder scan still leaves test_public out; a durations file without its entry is an error.
    assert build_small_tvr(tvr, str(tmp_path / "scan"))["splits"] == ["train", "val"]
    dur = tmp_path / "ann" / "tvr_video2dur_idx.json"
    dur.write_text(json.dumps({k: v for k, v in json.loads(dur.read_text()).items() if k != "test_public"}))
    with pytest.raises(annotations.AnnotationError, match="no 'test_public' entry"):
        build_small_tvr(tvr, str(tmp_path / "nodur"), "--splits=test_public")


def test_feature_defects_are_reported_and_strict_fails(tmp_path, capsys):
    folder = write_small_charades(tmp_path, [
        "GOOD1 1.0 5.0##a person opens a door.", "GOOD1 2.0 6.0##a person sits down.",
        "MISS1 1.0 5.0##missing features.", "NANV1 1.0 5.0##nan features.", "NANV1 2.0 5.0##nan again.",
        "WDIM1 1.0 5.0##wrong dimension.", "RANK1 1.0 5.0##three dimensional array."],
        {v: 30.0 for v in ("GOOD1", "MISS1", "NANV1", "WDIM1", "RANK1")})
    feats = tmp_path / "feats"
    write_npy_dir(feats, ["GOOD1"], t=3, dim=1024)
    nan = fake_features("NANV1", 3, 1024)
    nan[1, 5] = np.nan
    np.save(feats / "NANV1.npy", nan)
    np.save(feats / "WDIM1.npy", fake_features("WDIM1", 3, 512))
    np.save(feats / "RANK1.npy", np.zeros((3, 2, 1024), np.float32))
    out = str(tmp_path / "out")
    m = run_build("--dataset=charades_sta", f"--annotations={folder}", f"--features={feats}", f"--output_dir={out}",
                  "--parser=none")
    assert m["num_examples"] == {"train": 2}
    assert m["skipped"]["train"] == {"missing_video_features": 1, "nonfinite_video_features": 2,
                                     "wrong_video_feature_dim": 1, "bad_video_features": 1}
    messages = m["report_messages"]["train"]
    assert "MISS1" in messages["skipped:missing_video_features"][0]
    assert "NANV1.npy" in messages["skipped:nonfinite_video_features"][0]
    assert "2 record(s)" in messages["skipped:nonfinite_video_features"][0]
    assert "expected dimension 1024" in messages["skipped:wrong_video_feature_dim"][0]
    assert "line 6" in messages["skipped:wrong_video_feature_dim"][0]
    printed = capsys.readouterr().out
    assert "wrong_video_feature_dim" in printed and "train: 2 examples of 7 records" in printed
    # --strict: the first problem is an error naming the file; the command exits 1 and writes no manifest.
    assert build.main(["--dataset=charades_sta", f"--annotations={folder}", f"--features={feats}",
                       f"--output_dir={out}", "--parser=none", "--strict", "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert "strict" in err and "MISS1" in err and not os.path.exists(f"{out}/manifest.json")
    # Features of another kind altogether: nothing converted is an error, with the table.
    assert build.main(["--dataset=charades_sta", f"--annotations={folder}", f"--features={feats}",
                       f"--output_dir={out}", "--parser=none", "--feature_dim=2048", "--no_progress"]) == 1
    assert "nothing converted" in capsys.readouterr().err


def test_command_line_resample_normalise_glove(tmp_path):
    folder = write_small_charades(tmp_path, [
        "VIDAA 1.0 5.0##The person opens the door.", "VIDBB 2.0 6.0##A person sits on a chair.",
        "VIDBB 0.5 3.0##person holding a zebra."], {"VIDAA": 20.0, "VIDBB": 25.0})
    feats = write_npy_dir(tmp_path / "feats", ["VIDAA", "VIDBB"], t=10, dim=1024)
    glove = tmp_path / "glove.txt"
    glove.write_text("the 0.1 0.2 0.3\nperson 1 2 3\nopens -1 0 1\n. . . 9 9 9\ndoor 4 5 6\n")
    out = str(tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, "-m", "data_prep.build", "--dataset=charades_sta", f"--annotations={folder}",
         f"--features={feats}", f"--output_dir={out}", "--parser=none", "--num_clips=4", "--l2_normalize",
         f"--glove={glove}", "--num_shards=2"],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "train: 3 examples of 3 records, 2 videos" in proc.stdout
    assert len(schema.split_files(out, "train")) == 2
    examples = {e.qid: e for e in schema.read_split(out, "train")}
    assert sorted(examples) == ["VIDAA_1", "VIDBB_2", "VIDBB_3"]
    # Numpy reference: row-wise L2 normalisation, then 2D-TAN's mean over 4 bins of the 10 clips:
    # bounds round([0, 2.5, 5, 7.5, 10]) = [0, 2, 5, 8, 10], capped at 9.
    x = fake_features("VIDBB", 10, 1024).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    want = np.stack([x[0:2].mean(0), x[2:5].mean(0), x[5:8].mean(0), x[8:9].mean(0)])
    np.testing.assert_allclose(examples["VIDBB_3"].video_features, want, rtol=1e-5, atol=1e-6)
    assert examples["VIDBB_2"].tokens == ["a", "person", "sits", "on", "a", "chair"]
    vocab = text.read_vocabulary(f"{out}/vocab.txt")
    emb = np.load(f"{out}/embeddings.npy")
    assert emb.shape == (len(vocab), 3) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb[vocab.index("person")], [1, 2, 3])
    np.testing.assert_array_equal(emb[vocab.index("door")], [4, 5, 6])
    np.testing.assert_array_equal(emb[0], 0)
    with open(f"{out}/manifest.json") as f:
        m = json.load(f)
    assert m["glove"]["found"] == 4 and m["glove"]["dim"] == 3 and m["num_clips"] == 4 and m["l2_normalized"]
    # Rebuilding with fewer shards leaves no stale shard; a split without train reuses a vocabulary.
    m = run_build("--dataset=charades_sta", f"--annotations={folder}", f"--features={feats}",
                  f"--output_dir={out}", "--parser=none", "--num_shards=1")
    assert len(schema.split_files(out, "train")) == 1 and m["num_shards"] == {"train": 1}
    other = str(tmp_path / "other")
    m = run_build("--dataset=charades_sta", f"--annotations={folder}/charades_sta_train.txt", "--splits=test",
                  f"--features={feats}", f"--output_dir={other}", "--parser=none", f"--vocab={out}/vocab.txt")
    assert m["splits"] == ["test"] and m["vocab_source"] == os.path.abspath(f"{out}/vocab.txt")
    assert text.read_vocabulary(f"{other}/vocab.txt") == vocab


def test_spacy_parses_map_to_known_labels(tmp_path):
    with open(os.path.join(FIXTURES, "charades_sta", "charades_sta_test.txt")) as f:
        lines = f.read().splitlines()[:300]
    folder = tmp_path / "ann"
    folder.mkdir()
    (folder / "charades_sta_test.txt").write_text("\n".join(lines) + "\n")
    (folder / "charades.json").symlink_to(os.path.join(FIXTURES, "charades_sta", "charades.json"))
    feats = write_npy_dir(tmp_path / "feats", sorted({line.split()[0] for line in lines}), t=2, dim=1024)
    out = str(tmp_path / "out")
    m = run_build("--dataset=charades_sta", f"--annotations={folder}", f"--features={feats}", f"--output_dir={out}")
    assert m["num_examples"] == {"test": 300} and m["parser"]["name"] == "spacy"
    assert m["unknown_dependency_labels"] == [] and {"root", "nsubj", "dobj", "det"} <= set(m["dependency_labels"])
    batch = read_back(out, "test", dataset_config(1024, max_query_len=30))
    arcs = (batch["edge_mask"] > 0) & (batch["edge_directions"] < 2)
    assert arcs.sum() > 1000
    labels = batch["edge_labels"][arcs]
    assert not np.isin(labels, [text.DEP_PAD_ID, text.DEP_SELF_ID, text.DEP_UNK_ID]).any()
    assert labels.max() < text.NUM_DEPENDENCY_LABELS
    for ex in schema.read_split(out, "test"):  # Every parse is a forest over its own tokens with a root.
        assert -1 in ex.dep_heads and all(-1 <= h < len(ex.tokens) for h in ex.dep_heads)
        assert all((lab == "root") == (h == -1) for h, lab in zip(ex.dep_heads, ex.dep_labels))


def test_glove_vocabulary_adds_other_splits_words_that_glove_has(tmp_path):
    """--glove: vocabulary = train words + (val/test words that GloVe has); others stay <unk>."""
    folder = write_small_charades(tmp_path, [
        "VIDAA 1.0 5.0##the person opens the door.", "VIDBB 2.0 6.0##a person sits."],
        {"VIDAA": 20.0, "VIDBB": 25.0})
    (tmp_path / "ann" / "charades_sta_test.txt").write_text(
        "VIDAA 1.0 4.0##the zebra opens paris unicorn door.\nVIDBB 0.5 3.0##zebra sits zebra.\n")
    feats = write_npy_dir(tmp_path / "feats", ["VIDAA", "VIDBB"], t=6, dim=1024)
    vectors = {"the": [0.1, 0.2, 0.3], "person": [1, 2, 3], "zebra": [7, 8, 9], "Paris": [-4, 5, -6],
               "door": [4, 5, 6]}  # "Paris" only cased; "unicorn" absent
    glove_path = tmp_path / "glove.txt"
    glove_path.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()))
    train_words = {"the", "person", "opens", "door", "a", "sits"}
    test_words = {"the", "zebra", "opens", "paris", "unicorn", "door", "sits"}
    in_glove = {w.lower() for w in vectors}

    out = str(tmp_path / "out")
    m = run_build("--dataset=charades_sta", f"--annotations={folder}", f"--features={feats}", f"--output_dir={out}",
                  "--parser=none", f"--glove={glove_path}")
    vocab = text.read_vocabulary(f"{out}/vocab.txt")
    assert set(vocab) == {text.PAD_TOKEN, text.UNK_TOKEN} | train_words | (test_words & in_glove)
    # The train words first, in build_vocabulary's order (as without GloVe).
    assert vocab[:len(train_words) + 2] == text.build_vocabulary(["the person opens the door".split(),
                                                                  "a person sits".split()])
    assert m["vocab_source"] == "train+glove" and m["vocab_non_train_words"] == 2  # zebra, paris
    emb = np.load(f"{out}/embeddings.npy")
    assert emb.shape == (len(vocab), 3)
    for i, w in enumerate(vocab):
        want = {k.lower(): v for k, v in vectors.items()}.get(w)
        if w == text.PAD_TOKEN:
            np.testing.assert_array_equal(emb[i], 0.0)
        elif want is not None:
            np.testing.assert_allclose(emb[i], want, err_msg=w)
        else:
            np.testing.assert_array_equal(emb[i], glove.oov_vector(w, 3), err_msg=w)
    assert m["glove"]["found"] == len(in_glove) and m["glove"]["missing"] == len(vocab) - len(in_glove)
    # Read back: test-only words GloVe has get their own ids, "unicorn" is <unk>.
    batch = read_back(out, "test", dataset_config(1024, max_video_len=6, max_query_len=8))
    first = [q.decode() for q in batch["qid"]].index("VIDAA_1")
    ids = batch["query_tokens"][first][:6].tolist()
    assert ids == [vocab.index(w) for w in ("the", "zebra", "opens", "paris")] + [text.UNK_ID, vocab.index("door")]

    # Without --glove the vocabulary stays train-only: zebra is <unk> too.
    m = run_build("--dataset=charades_sta", f"--annotations={folder}", f"--features={feats}",
                  f"--output_dir={tmp_path / 'plain'}", "--parser=none")
    plain = set(text.read_vocabulary(f"{tmp_path / 'plain'}/vocab.txt"))
    assert plain == {text.PAD_TOKEN, text.UNK_TOKEN} | train_words
    assert m["vocab_source"] == "train" and m["vocab_non_train_words"] == 0
