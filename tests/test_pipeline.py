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
        data_dir, "val", dataset_config(), batch_size=4, training=False)))
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
        data_dir, "val", dataset_config(), batch_size=1, training=False)))
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
    import tensorflow as tf
    ds = pipeline.make_dataset(data_dir, "val", dataset_config(feature_dim=7), batch_size=2, training=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature dim"):
        next(pipeline.as_numpy(ds))


def test_training_stream_is_deterministic(data_dir):
    def first_qids(seed):
        ds = pipeline.make_dataset(data_dir, "val", dataset_config(), batch_size=2, training=True, seed=seed)
        it = pipeline.as_numpy(ds)
        return [q.decode() for _ in range(5) for q in next(it)["qid"]]
    assert first_qids(1) == first_qids(1)
    assert sorted(set(first_qids(1))) == [f"q{i}" for i in range(5)]
