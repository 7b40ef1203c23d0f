"""Tests of the embedded synthetic grounding benchmark (jvmr.data.synthetic)."""

import collections
import dataclasses
import json
import os

import numpy as np
import pytest

from jvmr.data import schema, synthetic, text

SMALL = synthetic.SyntheticConfig(
    seed=3, feature_dim=16, num_train=240, num_val=30, num_test=60, num_test_novel=45)
THIRD = {third: base for base, third, _ in synthetic.ACTIONS}
GERUND = {gerund: base for base, _, gerund in synthetic.ACTIONS}


@pytest.fixture(scope="module")
def videos():
    return {split: synthetic.generate_videos(SMALL, split) for split in synthetic.SPLITS}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("synthetic"))
    return data_dir, synthetic.build(data_dir, SMALL, num_shards=2)


# ----------------------------------------------------------------------------- an independent reading of the grammar


def read_query(tokens):
    """Parses a generated sentence back into (template, target pair, extra fields), independently of the module."""
    if len(tokens) == 10 and tokens[5:7] == ["and", "then"]:
        return "then", (THIRD[tokens[7]], tokens[9]), {"context": (THIRD[tokens[2]], tokens[4])}
    assert tokens[:2] == ["the", "person"] and tokens[3] == "the", tokens
    pair = (THIRD[tokens[2]], tokens[4])
    if len(tokens) == 5:
        return "simple", pair, {}
    if tokens[5] == "for":
        assert tokens[6] == "the" and tokens[8] == "time", tokens
        return "ordinal", pair, {"ordinal": {"first": 1, "second": 2}[tokens[7]]}
    assert tokens[5] in ("after", "before"), tokens
    if tokens[6] == "the":  # ... after the person closes the box
        assert len(tokens) == 11 and tokens[7] == "person" and tokens[9] == "the", tokens
        context = (THIRD[tokens[8]], tokens[10])
    else:  # ... after closing the box
        assert len(tokens) == 9 and tokens[7] == "the", tokens
        context = (GERUND[tokens[6]], tokens[8])
    return "relation", pair, {"relation": tokens[5], "context": context}


def find_targets(pairs, template, pair, extra):
    """Indices of the events (compositions in temporal order) that the reading describes."""
    hits = [i for i, p in enumerate(pairs) if p == pair]
    if template == "simple":
        return hits
    if template == "ordinal":
        return hits[extra["ordinal"] - 1:extra["ordinal"]]
    if template == "then" or extra["relation"] == "after":
        return [i for i in hits if i >= 1 and pairs[i - 1] == extra["context"]]
    return [i for i in hits if i + 1 < len(pairs) and pairs[i + 1] == extra["context"]]


def assert_tree(tokens, heads, labels):
    n = len(tokens)
    assert len(heads) == len(labels) == n
    assert [i for i, h in enumerate(heads) if h == -1] == [labels.index("root")]
    assert labels.count("root") == 1
    for i, h in enumerate(heads):
        assert -1 <= h < n and h != i
        assert labels[i] in text.DEPENDENCY_LABELS and labels[i] not in ("<pad>", "self", "<unk>")
        steps, j = 0, i
        while j != -1:  # Every word reaches the root within n steps: no cycle.
            j, steps = heads[j], steps + 1
            assert steps <= n, f"cycle in {tokens} {heads}"


# ----------------------------------------------------------------------------- config


def test_config_from_dict():
    cfg = synthetic.config_from_dict({"seed": 5, "clip_noise": 1, "num_train": 10})
    assert cfg == dataclasses.replace(synthetic.SyntheticConfig(), seed=5, clip_noise=1.0, num_train=10)
    assert isinstance(cfg.clip_noise, float)

    class ConfigDictLike(dict):
        def to_dict(self):
            return dict(self)

    assert synthetic.config_from_dict(ConfigDictLike(seed=2)).seed == 2
    with pytest.raises(ValueError, match="no_such_knob"):
        synthetic.config_from_dict({"no_such_knob": 1})
    with pytest.raises(TypeError):
        synthetic.config_from_dict({"num_train": 1.5})
    with pytest.raises(ValueError):
        synthetic.SyntheticConfig(min_clips=10)  # 5 events of >= 3 clips do not fit.


def test_default_heldout_pairs_are_spread():
    cfg = synthetic.SyntheticConfig()
    held = synthetic.heldout_pairs(cfg)
    assert len(held) == round(0.1 * 8 * 8) == cfg.num_heldout
    assert max(collections.Counter(a for a, _ in held).values()) == 1
    assert max(collections.Counter(o for _, o in held).values()) == 1
    assert held == synthetic.heldout_pairs(cfg)
    assert held != synthetic.heldout_pairs(dataclasses.replace(cfg, seed=1))


# ----------------------------------------------------------------------------- generation


def test_deterministic_and_splits_differ():
    a = synthetic.generate_split(SMALL, "val")
    b = synthetic.generate_split(SMALL, "val")
    fields = lambda x: (x.qid, x.vid, x.duration, x.query, x.query_type, x.tokens, x.dep_heads,  # noqa: E731
                        x.dep_labels)
    assert [fields(x) for x in a] == [fields(x) for x in b]
    for x, y in zip(a, b):
        assert x.video_features.tobytes() == y.video_features.tobytes()
        assert x.gt_spans.tobytes() == y.gt_spans.tobytes()
    test = synthetic.generate_split(SMALL, "test")
    assert not {x.video_features.tobytes() for x in a} & {x.video_features.tobytes() for x in test}
    other_seed = synthetic.generate_split(dataclasses.replace(SMALL, seed=4), "val")
    assert a[0].video_features.tobytes() != other_seed[0].video_features.tobytes()


def test_sizes_ids_and_spans(videos):
    for split, vids in videos.items():
        examples = [ex for v in vids for ex in v.examples()]
        assert len(examples) == SMALL.split_size(split)
        assert len({ex.qid for ex in examples}) == len(examples)
        assert all(ex.qid.startswith(ex.vid + "-q") and ex.vid.startswith(split + "-") for ex in examples)
        for v in vids:
            assert SMALL.min_clips <= v.num_clips <= SMALL.max_clips
            assert SMALL.min_events <= len(v.events) <= SMALL.max_events
            assert SMALL.min_clip_seconds <= v.clip_seconds <= SMALL.max_clip_seconds
            assert v.features.shape == (v.num_clips, SMALL.feature_dim) and v.features.dtype == np.float32
            assert 1 <= len(v.queries) <= SMALL.queries_per_video
            for e, nxt in zip(v.events, v.events[1:]):
                assert SMALL.min_event_clips <= e.end - e.start <= SMALL.max_event_clips
                assert nxt.start - e.end >= SMALL.min_gap_clips
        for ex in examples:
            ex.validate()
            assert ex.query_type in synthetic.TEMPLATES and ex.query == " ".join(ex.tokens)
            assert 0 <= ex.gt_spans[0, 0] < ex.gt_spans[0, 1] <= ex.duration + 1e-4


def test_every_parse_is_a_tree(videos):
    for vids in videos.values():
        for v in vids:
            for q in v.queries:
                assert_tree(list(q.tokens), list(q.dep_heads), list(q.dep_labels))
                assert all(t.islower() and t.isalpha() for t in q.tokens)
    tokens, heads, labels = synthetic.realise("ordinal", "open", "door", ordinal=2)
    assert " ".join(tokens) == "the person opens the door for the second time"
    arcs = {(tokens[i], labels[i], tokens[h] if h >= 0 else None) for i, h in enumerate(heads)}
    assert arcs == {("the", "det", "person"), ("person", "nsubj", "opens"), ("opens", "root", None),
                    ("the", "det", "door"), ("door", "dobj", "opens"), ("for", "prep", "opens"),
                    ("the", "det", "time"), ("second", "amod", "time"), ("time", "pobj", "for")}
    tokens, heads, labels = synthetic.realise("then", "open", "door", context_action="close", context_object="box")
    assert " ".join(tokens) == "the person closes the box and then opens the door"
    assert (labels[5], tokens[heads[5]]) == ("cc", "closes") and (labels[7], tokens[heads[7]]) == ("conj", "closes")
    assert (labels[6], tokens[heads[6]]) == ("advmod", "opens")


def test_every_target_is_unique_under_the_grammar(videos):
    seen_templates = collections.Counter()
    for vids in videos.values():
        for v in vids:
            pairs = [e.pair for e in v.events]
            counts = collections.Counter(pairs)
            for q, ex in zip(v.queries, v.examples()):
                template, pair, extra = read_query(list(q.tokens))
                assert template == ex.query_type == q.template
                assert find_targets(pairs, template, pair, extra) == [q.target], q.text
                assert synthetic.resolve(v.events, q) == [q.target]
                target = v.events[q.target]
                np.testing.assert_allclose(
                    ex.gt_spans, [[target.start * v.clip_seconds, target.end * v.clip_seconds]], rtol=1e-6)
                if template == "simple":  # Distractors sharing the action and sharing the object.
                    assert counts[pair] == 1
                    assert any(a == pair[0] and o != pair[1] for a, o in pairs)
                    assert any(o == pair[1] and a != pair[0] for a, o in pairs)
                else:
                    assert counts[pair] == 2
                seen_templates[template] += 1
            assert len({q.target for q in v.queries}) == len(v.queries)
    assert set(seen_templates) == set(synthetic.TEMPLATES)
    assert {f.clause for vids in videos.values() for v in vids for f in v.queries if f.template == "relation"} == {
        True, False}


def test_verify_video_rejects_an_ambiguous_query(videos):
    v = videos["train"][0]
    held = synthetic.heldout_pairs(SMALL)
    synthetic.verify_video(v, held, novel=False)
    q = v.queries[0]
    wrong = next(i for i, e in enumerate(v.events) if e.pair != v.events[q.target].pair)
    broken = dataclasses.replace(v, queries=(dataclasses.replace(q, target=wrong),))
    with pytest.raises(AssertionError):
        synthetic.verify_video(broken, held, novel=False)
    with pytest.raises(AssertionError):
        synthetic.verify_video(v, held, novel=True)  # Its targets are not held out.


def test_heldout_compositions(videos):
    held = synthetic.heldout_pairs(SMALL)
    assert len(held) == SMALL.num_heldout >= 1
    for split in ("train", "val", "test"):
        assert not {e.pair for v in videos[split] for e in v.events} & held
    novel = [(v, q) for v in videos["test_novel"] for q in v.queries]
    assert novel and all(v.events[q.target].pair in held for v, q in novel)


def test_distractors_for_every_composition(videos):
    for vids in videos.values():
        for v in vids:
            pairs = {e.pair for e in v.events}
            for a, o in pairs:
                assert any(x == a and y != o for x, y in pairs) and any(y == o and x != a for x, y in pairs)


def test_no_length_or_position_prior():
    cfg = dataclasses.replace(SMALL, num_train=900)
    vids = synthetic.generate_videos(cfg, "train")
    rows = [(v, q) for v in vids for q in v.queries]
    length = lambda e: e.end - e.start  # noqa: E731
    longest = np.mean([length(v.events[q.target]) == max(map(length, v.events)) for v, q in rows])
    centre = np.mean([(v.events[q.target].start + v.events[q.target].end) / 2 / v.num_clips for v, q in rows])
    rank = np.mean([q.target / (len(v.events) - 1) for v, q in rows])
    assert longest < 0.4
    assert abs(centre - 0.5) < 0.1 and abs(rank - 0.5) < 0.1
    # A query-blind guess (a random event of the video) hits IoU >= 0.5 only on the target itself.
    assert np.mean([1 / len(v.events) for v, _ in rows]) <= 0.2
    mix = collections.Counter(q.template for _, q in rows)
    weights = cfg.template_weights
    for template, weight in weights.items():
        assert abs(mix[template] / len(rows) - weight / sum(weights.values())) < 0.05


def test_clean_features_show_compositions_and_boundaries():
    cfg = dataclasses.replace(SMALL, clip_noise=0.0, video_noise=0.0)
    actions, objects, background = synthetic.prototypes(cfg)
    np.testing.assert_allclose(np.linalg.norm(actions, axis=1), 1, rtol=1e-5)
    a_index = {a[0]: i for i, a in enumerate(synthetic.ACTIONS)}
    o_index = {o: i for i, o in enumerate(synthetic.OBJECTS)}
    v = synthetic.generate_videos(cfg, "val")[0]
    expected = np.broadcast_to(background, v.features.shape).copy()
    for e in v.events:
        expected[e.start:e.end] = actions[a_index[e.action]] + objects[o_index[e.object]]
    np.testing.assert_allclose(v.features, expected, atol=1e-6)


# ----------------------------------------------------------------------------- building


def test_build_round_trip(built):
    data_dir, manifest = built
    assert manifest["dataset"] == "synthetic" and manifest["feature_dim"] == SMALL.feature_dim
    assert manifest["config"] == json.loads(json.dumps(dataclasses.asdict(SMALL)))
    assert manifest["skipped"] == {} and manifest["fixed"] == {}
    vocab = text.read_vocabulary(os.path.join(data_dir, "vocab.txt"))
    assert manifest["vocab_size"] == len(vocab) == len(set(vocab))
    assert set(synthetic.grammar_words(SMALL)) <= set(vocab)
    for split in synthetic.SPLITS:
        assert len(schema.split_files(data_dir, split)) == 2
        expected = {ex.qid: ex for ex in synthetic.generate_split(SMALL, split)}
        got = list(schema.read_split(data_dir, split))
        assert manifest["num_examples"][split] == len(got) == len(expected)
        assert manifest["query_types"][split] == dict(collections.Counter(ex.query_type for ex in got))
        for ex in got:
            ref = expected[ex.qid]
            assert (ex.vid, ex.query, ex.query_type, ex.tokens, ex.dep_heads, ex.dep_labels) == (
                ref.vid, ref.query, ref.query_type, ref.tokens, ref.dep_heads, ref.dep_labels)
            np.testing.assert_array_equal(ex.video_features, ref.video_features)
            np.testing.assert_allclose(ex.gt_spans, ref.gt_spans, rtol=1e-6)
            assert ex.duration == pytest.approx(ref.duration, rel=1e-6)
            assert 0 <= ex.gt_spans.min() and ex.gt_spans.max() <= ex.duration + 1e-3
            assert set(ex.tokens) <= set(vocab)


def test_build_is_idempotent_and_rebuilds_on_change(built, tmp_path):
    data_dir, manifest = built
    stamp = {f: os.path.getmtime(os.path.join(data_dir, f)) for f in os.listdir(data_dir)}
    assert synthetic.build(data_dir, SMALL, num_shards=2) == manifest
    assert {f: os.path.getmtime(os.path.join(data_dir, f)) for f in os.listdir(data_dir)} == stamp

    tiny = dataclasses.replace(SMALL, num_train=30, num_val=6, num_test=6, num_test_novel=6)
    out = str(tmp_path / "data")
    synthetic.build(out, tiny, num_shards=3)
    rebuilt = synthetic.build(out, dataclasses.replace(tiny, seed=9), num_shards=1)
    assert rebuilt["config"]["seed"] == 9
    assert all(len(schema.split_files(out, s)) == 1 for s in synthetic.SPLITS)  # Stale shards removed.
    assert {ex.vid for ex in schema.read_split(out, "val")} == {
        ex.vid for ex in synthetic.generate_split(dataclasses.replace(tiny, seed=9), "val")}


def test_crashed_build_leaves_no_manifest(tmp_path, monkeypatch):
    tiny = dataclasses.replace(SMALL, num_train=30, num_val=6, num_test=6, num_test_novel=6)
    out = str(tmp_path / "data")
    synthetic.build(out, tiny)
    real_write = schema.write_split

    def crash_on_test(examples, output_dir, split, *args, **kwargs):
        if split == "test":
            raise RuntimeError("simulated crash")
        return real_write(examples, output_dir, split, *args, **kwargs)

    monkeypatch.setattr(schema, "write_split", crash_on_test)
    with pytest.raises(RuntimeError, match="simulated crash"):
        synthetic.build(out, dataclasses.replace(tiny, seed=1))
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    monkeypatch.setattr(schema, "write_split", real_write)
    assert synthetic.build(out, dataclasses.replace(tiny, seed=1))["config"]["seed"] == 1
