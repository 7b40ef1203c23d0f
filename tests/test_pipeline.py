"""Schema round trip and the tf.data pipeline (shapes, graph budget, resampling, eval padding)."""

import ml_collections
import numpy as np
import pytest

from jvmr.data import pipeline, schema, text


def make_example(i: int, t: int = 10, d: int = 8, tokens=("the", "person", "opens", "the", "door")) -> schema.Example:
    rng = np.random.default_rng(i)
    heads = [1, 2, -1, 4, 2][: len(tokens)] if len(tokens) == 5 else [-1] + [0] * (len(tokens) - 1)
    labels = ["det", "nsubj", "root", "det", "dobj"][: len(tokens)] if len(tokens) == 5 else ["root"] + ["dep"] * (len(tokens) - 1)
    return schema.Example(
        qid=f"q{i}", vid=f"v{i}", duration=float(t) * 2.0, query=" ".join(tokens), tokens=list(tokens),
        dep_heads=heads, dep_labels=labels, gt_spans=np.array([[2.0, 6.0], [4.0, 8.0]], np.float32),
        video_features=rng.normal(size=(t, d)).astype(np.float32), query_type="simple")


def dataset_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(
        feature_dim=8, max_video_len=16, max_query_len=4, max_gt_spans=3, video_sampling="pad",
        normalize_features=False, shuffle_buffer=10))
    cfg.update(overrides)
    return cfg


@pytest.fixture()
def data_dir(tmp_path):
    examples = [make_example(i, t=10 + 4 * i) for i in range(5)]
    assert schema.write_split(examples, str(tmp_path), "val", num_shards=2) == 5
    text.write_vocabulary(text.build_vocabulary([e.tokens for e in examples]), str(tmp_path / "vocab.txt"))
    return str(tmp_path)


def test_schema_round_trip(data_dir):
    original = {e.qid: e for e in (make_example(i, t=10 + 4 * i) for i in range(5))}
    decoded = list(schema.read_split(data_dir, "val"))
    assert sorted(e.qid for e in decoded) == sorted(original)
    for e in decoded:
        o = original[e.qid]
        assert (e.vid, e.duration, e.query, e.tokens, e.dep_heads, e.dep_labels, e.query_type) == (
            o.vid, o.duration, o.query, o.tokens, o.dep_heads, o.dep_labels, o.query_type)
        np.testing.assert_array_equal(e.gt_spans, o.gt_spans)
        np.testing.assert_array_equal(e.video_features, o.video_features)
        assert e.subtitle_features is None


@pytest.mark.parametrize("bad, message", [
    (dict(tokens=[], dep_heads=[], dep_labels=[]), "empty query"),
    (dict(gt_spans=np.array([[5.0, 3.0]], np.float32)), "start >= end"),
    (dict(gt_spans=np.array([[5.0, 300.0]], np.float32)), "outside the video"),
    (dict(video_features=np.full((4, 8), np.nan, np.float32)), "NaN"),
    (dict(dep_heads=[7, 2, -1, 4, 2]), "dependency head"),
])
def test_schema_rejects_bad_records(tmp_path, bad, message):
    ex = make_example(0)
    for k, v in bad.items():
        setattr(ex, k, v)
    with pytest.raises(schema.SchemaError, match=message) as err:
        schema.write_split([ex], str(tmp_path), "train", source="fixture.json")
    assert "fixture.json" in str(err.value) and "q0" in str(err.value)


def test_duplicate_qids_rejected(tmp_path):
    with pytest.raises(schema.SchemaError, match="duplicate qid"):
        schema.write_split([make_example(0), make_example(0)], str(tmp_path), "train")


def test_eval_batches_are_static_and_padded(data_dir):
    batches = list(pipeline.as_numpy(pipeline.make_dataset(
        data_dir, "val", dataset_config(), batch_size=4, training=False, inputs=("query_graph",))))
    assert len(batches) == 2
    assert [b["example_mask"].tolist() for b in batches] == [[1, 1, 1, 1], [1, 0, 0, 0]]
    b = batches[0]
    assert b["video_feats"].shape == (4, 16, 8) and b["video_mask"].shape == (4, 16)
    assert b["query_tokens"].shape == (4, 4) and b["edge_senders"].shape == (4, 12)
    assert b["gt_spans"].shape == (4, 3, 2) and b["gt_spans_mask"][0].tolist() == [1, 1, 0]
    # Videos of 10 and 14 clips are padded with masks; 18 clips are mean-pooled to 16.
    lengths = {q.decode(): int(m.sum()) for bb in batches for q, m, e in
               zip(bb["qid"], bb["video_mask"], bb["example_mask"]) if e}
    assert lengths == {"q0": 10, "q1": 14, "q2": 16, "q3": 16, "q4": 16}
    row = [q.decode() for q in b["qid"]].index("q0")
    original = make_example(0, t=10).video_features
    np.testing.assert_allclose(b["video_feats"][row, :10], original, rtol=1e-6)
    assert np.all(b["video_feats"][row, 10:] == 0)
    np.testing.assert_allclose(b["gt_span"][row], [2.0 / 20.0, 6.0 / 20.0], rtol=1e-6)


def test_query_graph_budget(data_dir):
    b = next(pipeline.as_numpy(pipeline.make_dataset(
        data_dir, "val", dataset_config(), batch_size=1, training=False, inputs=("query_graph",))))
    vocab = pipeline.load_vocabulary(data_dir)
    # "the person opens the door" truncated to 4 words; "door" (index 4) is cut away.
    assert [vocab[i] for i in b["query_tokens"][0]] == ["the", "person", "opens", "the"]
    senders, receivers = b["edge_senders"][0], b["edge_receivers"][0]
    labels, dirs, mask = b["edge_labels"][0], b["edge_directions"][0], b["edge_mask"][0]
    L = 4
    # Arcs: the->person (det), person->opens (nsubj); opens is the root; second "the" heads to "door" (cut).
    assert mask[:L].tolist() == [1, 1, 0, 0] and mask[L:2 * L].tolist() == [1, 1, 0, 0]
    assert mask[2 * L:].tolist() == [1, 1, 1, 1]
    assert (senders[0], receivers[0], labels[0]) == (0, 1, text.dependency_label_id("det"))
    assert (senders[L + 1], receivers[L + 1], labels[L + 1]) == (2, 1, text.dependency_label_id("nsubj"))
    assert dirs.tolist() == [0] * L + [1] * L + [2] * L
    assert labels[2 * L:].tolist() == [text.DEP_SELF_ID] * L
    assert np.all(senders[mask == 0] == 0) and np.all(labels[mask == 0] == 0)


def test_only_the_declared_input_groups_are_built(data_dir):
    common = next(pipeline.as_numpy(pipeline.make_dataset(data_dir, "val", dataset_config(), batch_size=5,
                                                          training=False)))
    assert not any(k.startswith("edge_") or k in ("video_index", "subtitle_feats", "query_feats") for k in common)
    b = next(pipeline.as_numpy(pipeline.make_dataset(data_dir, "val", dataset_config(), batch_size=5,
                                                     training=False, inputs=("video_index",))))
    assert set(b) == set(common) | {"video_index"} and b["video_index"].dtype == np.int32
    with pytest.raises(ValueError, match="unknown input group"):
        pipeline.make_dataset(data_dir, "val", dataset_config(), batch_size=5, training=False, inputs=("edges",))


def test_video_index_identifies_the_video(tmp_path):
    # Three queries on v0, two on v1, one on v2: equal index <=> same video.
    examples = [make_example(i) for i in range(6)]
    for ex, vid in zip(examples, ["v0", "v0", "v0", "v1", "v1", "v2"]):
        ex.vid = vid
    schema.write_split(examples, str(tmp_path), "val")
    text.write_vocabulary(text.build_vocabulary([e.tokens for e in examples]), str(tmp_path / "vocab.txt"))
    b = next(pipeline.as_numpy(pipeline.make_dataset(str(tmp_path), "val", dataset_config(), batch_size=6,
                                                     training=False, inputs=("video_index",))))
    same_vid = b["vid"][:, None] == b["vid"][None, :]
    np.testing.assert_array_equal(b["video_index"][:, None] == b["video_index"][None, :], same_vid)


def with_streams(ex: schema.Example, sub_clips: int | None, sub_dim: int = 3, query_len: int = 6,
                 query_dim: int = 5) -> schema.Example:
    rng = np.random.default_rng(100)
    t = ex.video_features.shape[0]
    ex.subtitle_features = rng.normal(size=(t if sub_clips is None else sub_clips, sub_dim)).astype(np.float32)
    ex.query_features = rng.normal(size=(query_len, query_dim)).astype(np.float32)
    return ex


def test_subtitle_and_query_feature_streams(tmp_path):
    # q0: subtitles one clip short of its 10 clips (zero-padded); q1: two clips longer than its 22 (cut);
    # q2: 30 clips with 30 subtitle clips, mean-pooled with the video to the 16-clip grid.
    examples = [with_streams(make_example(0, t=10), 9), with_streams(make_example(1, t=22), 24, query_len=2),
                with_streams(make_example(2, t=30), None)]
    schema.write_split(examples, str(tmp_path), "val")
    text.write_vocabulary(text.build_vocabulary([e.tokens for e in examples]), str(tmp_path / "vocab.txt"))
    cfg = dataset_config(subtitle_dim=3, query_feature_dim=5, video_sampling="resample")
    b = next(pipeline.as_numpy(pipeline.make_dataset(str(tmp_path), "val", cfg, batch_size=3, training=False,
                                                     inputs=("subtitles", "query_features"))))
    order = [q.decode() for q in b["qid"]]
    for ex in examples:
        row = order.index(ex.qid)
        t = ex.video_features.shape[0]
        aligned = np.zeros((t, 3), np.float32)
        n = min(t, ex.subtitle_features.shape[0])
        aligned[:n] = ex.subtitle_features[:n]
        np.testing.assert_allclose(b["subtitle_feats"][row], pipeline.resample_features_np(aligned, 16),
                                   rtol=1e-5, atol=1e-6)
        nq = min(ex.query_features.shape[0], 4)  # max_query_len 4
        np.testing.assert_allclose(b["query_feats"][row, :nq], ex.query_features[:nq])
        assert np.all(b["query_feats"][row, nq:] == 0) and b["query_feats_mask"][row].tolist() == [1] * nq + [0] * (4 - nq)


@pytest.mark.parametrize("stream, sub_dim, query_dim, message", [
    ("subtitles", 4, 5, r"subtitle_features has shape \(\d+, 4\), the dataset config asks for \[N>=1, 3\]"),
    ("query_features", 3, 7, r"query_features has shape \(6, 7\), the dataset config asks for \[N>=1, 5\]"),
    ("subtitles", 0, 5, r"subtitle_features has shape None"),
])
def test_missing_or_wrong_stream_names_the_record(tmp_path, stream, sub_dim, query_dim, message):
    ex = with_streams(make_example(7), None, sub_dim=max(sub_dim, 1), query_dim=query_dim)
    if not sub_dim:
        ex.subtitle_features = None
    good = with_streams(make_example(6), None, sub_dim=3, query_dim=5)
    schema.write_split([good, ex], str(tmp_path), "val")
    text.write_vocabulary(text.build_vocabulary([ex.tokens]), str(tmp_path / "vocab.txt"))
    ds = pipeline.make_dataset(str(tmp_path), "val", dataset_config(subtitle_dim=3, query_feature_dim=5),
                               batch_size=1, training=False, inputs=(stream,))
    with pytest.raises(pipeline.DataError, match=message) as err:
        list(pipeline.as_numpy(ds))
    assert "val.tfrecord-00000-of-00001: record 1 (qid='q7', vid='v7')" in str(err.value)


def test_resample_matches_numpy(data_dir):
    b = next(pipeline.as_numpy(pipeline.make_dataset(
        data_dir, "val", dataset_config(video_sampling="resample"), batch_size=5, training=False)))
    for row, qid in enumerate(b["qid"]):
        i = int(qid.decode()[1:])
        expected = pipeline.resample_features_np(make_example(i, t=10 + 4 * i).video_features, 16)
        np.testing.assert_allclose(b["video_feats"][row], expected, rtol=1e-5, atol=1e-6)
        assert b["video_mask"][row].sum() == 16


def test_resample_numpy_reference():
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)
    # Bounds round(linspace(0, 6, 4)) = [0, 2, 4, 6], capped at 5 as 2D-TAN / VSLNet do: the last bin is clip 4.
    np.testing.assert_allclose(pipeline.resample_features_np(feats, 3), [[1, 2], [5, 6], [8, 9]])
    # Upsampling repeats clips.
    np.testing.assert_allclose(pipeline.resample_features_np(feats[:2], 4), [[0, 1], [0, 1], [2, 3], [2, 3]])


def test_wrong_feature_dim_is_reported(data_dir):
    ds = pipeline.make_dataset(data_dir, "val", dataset_config(feature_dim=7), batch_size=2, training=False)
    with pytest.raises(pipeline.DataError, match=r"val.tfrecord-00000-of-00002: record 0 \(qid='q0', vid='v0'\): "
                       r"video_features has shape \(10, 8\), the dataset config asks for \[N>=1, 7\]"):
        next(pipeline.as_numpy(ds))


def _flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.parametrize("training", [False, True])
def test_damaged_shard_names_file_and_record(data_dir, training):
    """A byte flipped inside the second record of a shard: tf.data stops with a checksum error, the
    message names the shard and the record (found by re-reading the split on the host)."""
    path = schema.split_files(data_dir, "val")[1]
    first = len(schema.serialize(make_example(1, t=14))) + 16  # shard 1 holds q1, q3 (round-robin)
    _flip_byte(path, first + 40)
    ds = pipeline.make_dataset(data_dir, "val", dataset_config(), batch_size=2, training=training)
    with pytest.raises(pipeline.DataError, match=f"{path}: record 1: damaged TFRecord file .*DataLossError"):
        for _ in zip(range(10), pipeline.as_numpy(ds)):
            pass


def test_read_split_names_a_record_off_the_schema_inside_a_chunk(tmp_path, monkeypatch):
    """read_split parses ``READ_CHUNK`` records per TensorFlow call; one record off the schema in a chunk is found
    by decoding that chunk record by record: the records before it are read, then its index is named."""
    import tensorflow as tf
    monkeypatch.setattr(schema, "READ_CHUNK", 3)
    records = [schema.serialize(make_example(i)) for i in range(7)]
    bad = tf.train.Example.FromString(records[4])
    bad.features.feature["video_shape"].int64_list.value[:] = [3, 8]  # 10 x 8 floats stored
    records[4] = bad.SerializeToString()
    path = str(tmp_path / "val.tfrecord-00000-of-00001")
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    read = []
    with pytest.raises(schema.SchemaError, match=f"{path}: record 4: not a record of the schema: video_features: "
                                                 r"80 values do not fit the shape \[3, 8\]"):
        for ex in schema.read_split(str(tmp_path), "val"):
            read.append(ex.qid)
    assert read == ["q0", "q1", "q2", "q3"]
    records[4] = schema.serialize(make_example(4))  # intact: every record read, in order, over 3 chunks
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    got = list(schema.read_split(str(tmp_path), "val"))
    assert [ex.qid for ex in got] == [f"q{i}" for i in range(7)]
    np.testing.assert_array_equal(got[5].video_features, make_example(5).video_features)


def test_shards_cut_at_a_record_boundary_are_caught_by_the_manifest_count(data_dir):
    import json
    with open(f"{data_dir}/manifest.json", "w") as f:
        json.dump({"num_examples": {"val": 5}}, f)
    pipeline.make_dataset(data_dir, "val", dataset_config(), batch_size=2, training=False)  # intact: fine
    path = schema.split_files(data_dir, "val")[1]
    first = len(schema.serialize(make_example(1, t=14))) + 16
    with open(path, "r+b") as f:
        f.truncate(first)  # q3 is gone, q1 is intact: no reader error would ever show it
    with pytest.raises(schema.SchemaError, match="holds 4 records in 2 shard.*manifest says 5"):
        pipeline.make_dataset(data_dir, "val", dataset_config(), batch_size=2, training=False)
    with open(path, "r+b") as f:
        f.truncate(first - 3)
    with pytest.raises(schema.SchemaError, match=f"{path}: record 0: truncated"):
        pipeline.make_dataset(data_dir, "val", dataset_config(), batch_size=2, training=False)


def test_training_stream_is_deterministic(data_dir):
    def first_qids(seed):
        ds = pipeline.make_dataset(data_dir, "val", dataset_config(), batch_size=2, training=True, seed=seed)
        it = pipeline.as_numpy(ds)
        return [q.decode() for _ in range(5) for q in next(it)["qid"]]
    assert first_qids(1) == first_qids(1)
    assert sorted(set(first_qids(1))) == [f"q{i}" for i in range(5)]
