"""Tests of the embedded grounding benchmark v2 (jvmr.data.synthetic): its guarantees and its difficulty."""

import collections
import dataclasses
import json
import math
import os

import numpy as np
import pytest

from jvmr.data import schema, synthetic, text

# The default world and timeline at small sizes (gold parses: spaCy is tested once, below).
SMALL = synthetic.SyntheticConfig(parser="gold", num_train=900, num_val=150, num_test=600, num_test_novel=450,
                                  num_test_paraphrase=300)
TINY = dataclasses.replace(SMALL, feature_dim=16, num_train=60, num_val=12, num_test=12, num_test_novel=12,
                           num_test_paraphrase=12)


@pytest.fixture(scope="module")
def videos():
    return {split: synthetic.generate_videos(SMALL, split) for split in synthetic.SPLITS}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("synthetic"))
    return data_dir, synthetic.build(data_dir, TINY, num_shards=2)


# ----------------------------------------------------------------------------- an independent reading of the grammar

_LEX = synthetic.Lexicon.of(synthetic.SyntheticConfig())
_THIRD = {third: a for a, forms in _LEX.actions.items() for third, _ in forms}
_GERUND = {gerund: a for a, forms in _LEX.actions.items() for _, gerund in forms}
_OBJECT = {w: o for o, forms in _LEX.objects.items() for w in forms}
_SUBJECTS = {" ".join(s) for s in synthetic.SUBJECTS}


def _verb_object(words, forms):
    """Reads '<verb form> the <object>' at the start of ``words``: (pair, rest)."""
    for form in sorted(forms, key=len, reverse=True):
        n = len(form.split())
        if words[:n] == form.split():
            assert words[n] == "the", words
            return (forms[form], _OBJECT[words[n + 1]]), words[n + 2:]
    raise AssertionError(f"no verb at {words}")


def _clause(words):
    """Reads '<subject> <verb> the <object>': (pair, rest)."""
    for k in (2, 1):
        if " ".join(words[:k]) in _SUBJECTS:
            return _verb_object(words[k:], _THIRD)
    raise AssertionError(f"no subject at {words}")


def _modifier(words):
    """Reads a modifier ('for the second time', 'the second time', 'right after closing the box', 'between
    ...', 'after ... and before ...'): (fields, rest)."""
    if words[0] == "for":
        assert words[1] == "the" and words[3] == "time", words
        return {"ordinal": synthetic.ORDINALS.index(words[2]) + 1}, words[4:]
    if words[0] == "the" and words[1] in synthetic.ORDINALS:  # test_paraphrase: "the second time someone ..."
        assert words[2] == "time", words
        return {"ordinal": synthetic.ORDINALS.index(words[1]) + 1}, words[3:]
    if words[0] == "between":
        c1, rest = _verb_object(words[1:], _GERUND)
        assert rest[0] == "and", rest
        c2, rest = _verb_object(rest[1:], _GERUND)
        return {"template": "between", "context": [c1, c2]}, rest
    if words[0] == "after" and "before" in words and words[words.index("before") - 1] == "and":
        c1, rest = _verb_object(words[1:], _GERUND)  # test_paraphrase: "after washing ... and before lifting ..."
        assert rest[:2] == ["and", "before"], rest
        c2, rest = _verb_object(rest[2:], _GERUND)
        return {"template": "between", "context": [c1, c2]}, rest
    if words[0] in ("right", "just"):
        words = words[1:]
    rel, words = words[0], words[1:]
    assert rel in ("after", "before"), words
    if words[0] in _GERUND or " ".join(words[:2]) in _GERUND:
        c, rest = _verb_object(words, _GERUND)
    else:
        c, rest = _clause(words)
    fields = {"template": "relation", "relation": rel, "context": [c]}
    if rest[:1] == ["for"]:  # The context's own ordinal: nested.
        more, rest = _modifier(rest)
        fields.update(template="nested", **more)
    return fields, rest


def read_query(sentence):
    """The semantics of a generated sentence, read without the generator: {template, action, object, ...}."""
    words = sentence.replace(",", "").split()
    if "then" in words:
        i = words.index("and")
        c, rest = _clause(words[:i] + ["x"])  # Only the first clause's pair.
        x, rest = _verb_object(words[i + 2:], _THIRD)
        assert not rest and words[i + 1] == "then", words
        return {"template": "then", "action": x[0], "object": x[1], "ordinal": 0, "relation": "",
                "context": [list(c)]}
    fields = {}
    if words[0] not in _SUBJECTS and " ".join(words[:2]) not in _SUBJECTS:  # A fronted modifier.
        fields, words = _modifier(words)
    x, rest = _clause(words)
    if rest:
        assert not fields, sentence
        fields, rest = _modifier(rest)
        assert not rest, sentence
    template = fields.pop("template", "ordinal" if "ordinal" in fields else "simple")
    fields["context"] = [list(c) for c in fields.get("context", [])]
    return {"template": template, "action": x[0], "object": x[1], "ordinal": 0, "relation": "", **fields}


def independent_resolve(pairs, q):
    """Which events a reading describes, written from the grammar's definition (not from synthetic.resolve)."""
    x, ctx = (q["action"], q["object"]), [tuple(c) for c in q["context"]]
    hits = [i for i, p in enumerate(pairs) if p == x]
    if q["template"] == "simple":
        return hits
    if q["template"] == "ordinal":
        return hits[q["ordinal"] - 1:q["ordinal"]]
    if q["template"] == "then":
        return [i for i in hits if i >= 1 and pairs[i - 1] == ctx[0]]
    if q["template"] == "between":
        return [i for i in hits if any(p == ctx[0] for p in pairs[:i]) and any(p == ctx[1] for p in pairs[i + 1:])]
    if q["template"] == "relation":
        if q["relation"] == "after":
            return [i for i in hits if i >= 1 and pairs[i - 1] == ctx[0]]
        return [i for i in hits if i + 1 < len(pairs) and pairs[i + 1] == ctx[0]]
    occurrences = [i for i, p in enumerate(pairs) if p == ctx[0]]  # nested
    if len(occurrences) < q["ordinal"]:
        return []
    j = occurrences[q["ordinal"] - 1] + (1 if q["relation"] == "after" else -1)
    return [j] if 0 <= j < len(pairs) and pairs[j] == x else []


# ----------------------------------------------------------------------------- config


def test_config_from_dict_and_validation():
    cfg = synthetic.config_from_dict({"seed": 5, "clip_noise": 1, "num_train": 10, "parser": "gold"})
    assert cfg == dataclasses.replace(synthetic.SyntheticConfig(), seed=5, clip_noise=1.0, num_train=10, parser="gold")

    class ConfigDictLike(dict):
        def to_dict(self):
            return dict(self)

    assert synthetic.config_from_dict(ConfigDictLike(seed=2)).seed == 2
    with pytest.raises(ValueError, match="no_such_knob"):
        synthetic.config_from_dict({"no_such_knob": 1})
    with pytest.raises(TypeError):
        synthetic.config_from_dict({"num_train": 1.5})
    with pytest.raises(TypeError):
        synthetic.config_from_dict({"parser": 1})
    with pytest.raises(ValueError, match="parser"):
        synthetic.SyntheticConfig(parser="stanza")
    with pytest.raises(ValueError, match="heldout_blocks"):
        synthetic.SyntheticConfig(heldout_blocks=5)
    with pytest.raises(ValueError, match="min_clips"):
        synthetic.SyntheticConfig(min_clips=4)


def test_deterministic_and_seeded():
    a = synthetic.generate_videos(TINY, "val")
    b = synthetic.generate_videos(TINY, "val")
    assert [(v.vid, [q.text for q in v.queries]) for v in a] == [(v.vid, [q.text for q in v.queries]) for v in b]
    assert all(np.array_equal(x.features, y.features) for x, y in zip(a, b))
    other = synthetic.generate_videos(dataclasses.replace(TINY, seed=4), "val")
    assert [q.text for v in a for q in v.queries] != [q.text for v in other for q in v.queries]
    test = synthetic.generate_videos(TINY, "test")
    assert not any(np.array_equal(x.features, y.features) for x in a for y in test)  # Disjoint streams.


# ----------------------------------------------------------------------------- semantics


def test_every_query_reads_back_to_exactly_its_targets(videos):
    """An independent reading of each sentence, resolved by an independent semantics, gives the targets."""
    for split, vids in videos.items():
        for v in vids:
            pairs = [e.pair for e in v.events]
            for q in v.queries:
                reading = read_query(q.text)
                want = q.semantics()
                if q.template == "multi":  # A simple sentence; the video makes it several spans.
                    want["template"] = "simple"
                assert reading == want, q.text
                assert tuple(independent_resolve(pairs, reading) if q.template != "multi" else
                             [i for i, p in enumerate(pairs) if p == (q.action, q.object)]) == (
                    q.targets[-1:] if q.template == "then" else q.targets), (split, q.text)
                if q.template == "then":
                    assert q.targets == (q.targets[1] - 1, q.targets[1]) and q.hull
                assert q.target == q.targets[-1] or q.template == "multi"


def test_direction_words_change_the_answer(videos):
    """Relation and then queries always have a hard negative: the other direction names another event."""
    flipped_count = 0
    for vids in videos.values():
        for v in vids:
            pairs = [e.pair for e in v.events]
            for q in v.queries:
                if q.template not in ("relation", "then", "nested"):
                    continue
                reading = read_query(q.text)
                if q.template == "then":
                    reading = dict(reading, template="relation", relation="after")
                other = dict(reading, relation="before" if reading["relation"] == "after" else "after")
                if q.template == "nested" and not q.hard_negative:
                    continue
                got = independent_resolve(pairs, other)
                assert got and not set(got) & set(q.targets), (q.text, pairs)  # The direction word decides.
                if q.template != "nested":
                    ignoring = set(independent_resolve(pairs, reading)) | set(got)
                    assert len(ignoring) >= 2  # Without the direction the query is ambiguous.
                flipped_count += 1
    assert flipped_count > 300


def test_then_queries_read_back_and_need_their_order():
    """'then' is off by default (rarely has another answer in 4-6 events); its grammar and semantics still hold."""
    pairs = [("open", "door"), ("close", "box"), ("open", "door"), ("wash", "cup")]
    q = {"template": "then", "action": "open", "object": "door", "ordinal": 0, "relation": "",
         "context": [["close", "box"]]}
    assert synthetic.resolve(pairs, q) == (1, 2)
    assert synthetic.resolve(pairs, dict(q, action="close", object="box", context=[["open", "door"]])) == (0, 1)
    lex = synthetic.Lexicon.of(SMALL)
    surface = synthetic.surface_choices(np.random.default_rng(0), lex, q)
    sentence, tree = synthetic.realise(lex, q, surface)
    assert read_query(sentence) == q and sentence.split()[-5:-3] == ["and", "then"]
    synthetic.verify_parse(tree.words, tree.heads, tree.labels)
    got = synthetic.candidates(pairs)[2]
    assert any(c["template"] == "then" and c["targets"] == (1, 2) and c["hull"] and c["hard_negative"] for c in got)


def test_nested_and_between_need_every_part(videos):
    """Dropping the context's ordinal (nested) or one context (between) makes the query ambiguous."""
    checked = collections.Counter()
    for vids in videos.values():
        for v in vids:
            pairs = [e.pair for e in v.events]
            for q in v.queries:
                reading = read_query(q.text)
                if q.template == "nested":
                    plain = dict(reading, template="relation")
                    assert len(independent_resolve(pairs, plain)) >= 2, q.text
                elif q.template == "between":
                    assert sum(p == (q.action, q.object) for p in pairs) >= 2  # "simple" would not do.
                else:
                    continue
                checked[q.template] += 1
    assert checked["nested"] > 50 and checked["between"] > 50


def test_multi_span_queries_name_every_occurrence(videos):
    multi = [(v, q) for vids in videos.values() for v in vids for q in v.queries if q.template == "multi"]
    assert len(multi) > 20
    for v, q in multi:
        occurrences = [i for i, e in enumerate(v.events) if e.pair == (q.action, q.object)]
        assert list(q.targets) == occurrences and len(occurrences) >= 2
        np.testing.assert_allclose(v.gt_spans(q), [[v.events[i].gt_start, v.events[i].gt_end] for i in occurrences])


def test_verify_video_catches_a_broken_query(videos):
    held = synthetic.heldout_pairs(SMALL)
    lex = synthetic.Lexicon.of(SMALL)
    v = videos["test"][0]
    synthetic.verify_video(v, held, "test", lex)
    q = v.queries[0]
    wrong = next(i for i in range(len(v.events)) if i not in q.targets)
    broken = dataclasses.replace(v, queries=(dataclasses.replace(q, targets=(wrong,), target=wrong),))
    with pytest.raises(AssertionError, match="resolves"):
        synthetic.verify_video(broken, held, "test", lex)
    with pytest.raises(AssertionError, match="held out"):
        synthetic.verify_video(v, held, "test_novel", lex)


# ----------------------------------------------------------------------------- splits


def test_heldout_compositions_never_leave_test_novel(videos):
    blocks = synthetic.heldout_blocks(SMALL)
    held = synthetic.heldout_pairs(SMALL)
    assert len(held) == 4 * SMALL.heldout_blocks
    actions = [a for b in blocks for a, _ in b]
    objects = [o for b in blocks for _, o in b]
    assert len(set(actions)) == 2 * len(blocks) and len(set(objects)) == 2 * len(blocks)  # Disjoint 2 x 2 blocks.
    for split, vids in videos.items():
        pairs = {e.pair for v in vids for e in v.events}
        if split == "test_novel":
            assert pairs <= held
            # Each video holds >= 2 held-out compositions, all of its events: "the odd one out" is a random event.
            assert all(len({e.pair for e in v.events}) >= 2 for v in vids)
        else:
            assert not pairs & held, split
    # Every action and object of a held-out block is seen in training with other partners.
    train_pairs = {e.pair for v in videos["train"] for e in v.events}
    for a, o in held:
        assert any(p[0] == a for p in train_pairs) and any(p[1] == o for p in train_pairs)


def test_test_paraphrase_uses_only_unseen_constructions_of_seen_words(videos):
    train_texts = {q.text.replace(",", "") for v in videos["train"] for q in v.queries}
    train_words = {w for v in videos["train"] for q in v.queries for w in q.tokens}
    para = [q for v in videos["test_paraphrase"] for q in v.queries]
    assert {q.template for q in para} == set(synthetic.FRONTABLE)
    for q in para:
        assert q.fronted and q.text.replace(",", "") not in train_texts
        assert set(q.tokens) <= train_words, q.text
    assert not any(q.fronted or "," in q.text for split in ("train", "val", "test", "test_novel")
                   for v in videos[split] for q in v.queries)
    # The held-out constructions and relation forms all occur, and never outside test_paraphrase.
    held_out = ("^the first time", "^the second time", "^the third time", " and before ", "right after",
                "just before")

    def has(text, h):
        return text.startswith(h[1:]) if h.startswith("^") else h in text

    assert all(any(has(q.text, h) for q in para) for h in held_out if "third" not in h)
    assert not any(has(q.text, h) for split in ("train", "val", "test", "test_novel") for v in videos[split]
                   for q in v.queries for h in held_out)


# Target coverage (largest GT span / duration) per split, for the SMALL sizes: (mean, q10, q50, q90) +- tolerance.
PINNED_COVERAGE = {
    "train": (0.184, 0.061, 0.142, 0.377), "val": (0.193, 0.064, 0.139, 0.386), "test": (0.194, 0.062, 0.143, 0.405),
    "test_novel": (0.191, 0.059, 0.142, 0.401), "test_paraphrase": (0.188, 0.067, 0.149, 0.391),
}


@pytest.mark.parametrize("split", synthetic.SPLITS)
def test_target_length_distribution_is_pinned(videos, split):
    stats = synthetic.split_statistics(videos[split])
    cov = stats["target_coverage"]
    mean, q10, q50, q90 = PINNED_COVERAGE[split]
    assert cov["mean"] == pytest.approx(mean, abs=0.01), cov
    assert cov["q10"] == pytest.approx(q10, abs=0.01), cov
    assert cov["q50"] == pytest.approx(q50, abs=0.015), cov
    assert cov["q90"] == pytest.approx(q90, abs=0.03), cov
    for v in videos[split]:
        for q in v.queries:
            cover = np.diff(v.gt_spans(q), axis=1)[:, 0] / v.duration
            assert cover.min() >= 0.5 * SMALL.min_event_fraction  # The annotation moves each boundary <= 1/4.
            assert cover.max() <= (1.0 if q.hull else 1.5 * SMALL.max_event_fraction)  # "then": two events


def test_annotations_disagree_with_the_true_boundaries_a_little(videos):
    events = [e for v in videos["test"] for e in v.events]
    rel = np.asarray([[(e.gt_start - e.start) / (e.end - e.start), (e.gt_end - e.end) / (e.end - e.start)]
                      for e in events])
    inner = rel[np.abs(rel) < 0.2499]  # Not clamped at a quarter of the length (or the video's ends).
    normal = np.random.default_rng(0).normal(0.0, SMALL.annotation_jitter, 100_000)
    assert np.std(inner) == pytest.approx(np.std(normal[np.abs(normal) < 0.25]), rel=0.1)
    assert np.abs(rel).max() <= 0.25 + 1e-9
    iou = [min(e.end, e.gt_end) - max(e.start, e.gt_start) for e in events] / np.asarray(
        [max(e.end, e.gt_end) - min(e.start, e.gt_start) for e in events])
    assert 0.75 < np.mean(iou) < 0.9 and np.mean(iou < 0.7) > 0.05  # IoU 0.7 is not free even when exact


def test_videos_are_long_enough_to_be_resampled_and_boundaries_are_off_grid(videos):
    vids = videos["test"]
    assert max(v.num_clips for v in vids) > 128 and min(v.num_clips for v in vids) < 64
    edges = np.asarray([b / v.clip_seconds for v in vids for e in v.events for b in (e.start, e.end)
                        if 0 < b < v.duration - 1e-6])  # Inner boundaries (the video's ends are on the grid).
    on_grid = np.abs(edges - np.round(edges)) < 1e-3
    assert on_grid.mean() < 0.01
    adjacent = sum(a.end == b.start for v in vids for a, b in zip(v.events, v.events[1:]))
    assert adjacent > 0.4 * sum(len(v.events) - 1 for v in vids)  # Many events follow each other without a gap.


# ----------------------------------------------------------------------------- appearance


def test_clip_weights_match_brute_force_integration():
    bounds = np.array([3.3, 7.1, 9.0])
    half = np.array([0.8, 0.0, 0.5])
    w = synthetic.clip_weights(bounds, half, 4, 12, 1.0)
    np.testing.assert_allclose(w.sum(1), 1.0)
    # Brute force: a fine midpoint rule of the piecewise-linear weights.
    t = (np.arange(12 * 4000) + 0.5) / 4000
    ref = np.zeros((t.size, 4))
    for i, x in enumerate(t):
        seg = int(np.searchsorted(bounds, x, side="right"))
        ref[i, seg] = 1.0
        for k, (b, h) in enumerate(zip(bounds, half)):
            if h > 0 and abs(x - b) < h:
                lam = (x - b + h) / (2 * h)
                ref[i] = 0
                ref[i, k], ref[i, k + 1] = 1 - lam, lam
    np.testing.assert_allclose(w, ref.reshape(12, 4000, 4).mean(1), atol=1e-4)
    assert w.min() >= -1e-12


def test_compositions_are_not_additive():
    """An additive model fitted on the seen compositions does not predict the held-out ones."""
    cfg = synthetic.SyntheticConfig()
    protos = synthetic.prototypes(cfg)
    lex = synthetic.Lexicon.of(cfg)
    held = synthetic.heldout_pairs(cfg)
    acts, objs = list(lex.actions), list(lex.objects)
    cells = [(i, j) for i in range(len(acts)) for j in range(len(objs))]
    design = np.zeros((len(cells), len(acts) + len(objs)))
    for r, (i, j) in enumerate(cells):
        design[r, i] = design[r, len(acts) + j] = 1.0
    y = protos.compositions.reshape(len(cells), -1)
    seen = np.asarray([(acts[i], objs[j]) not in held for i, j in cells])
    coef, *_ = np.linalg.lstsq(design[seen], y[seen], rcond=None)
    pred = design[~seen] @ coef
    cos = np.sum(pred * y[~seen], 1) / np.linalg.norm(pred, axis=1) / np.linalg.norm(y[~seen], axis=1)
    assert cos.mean() < 0.85  # An unseen composition looks new ...
    assert cos.mean() > 0.4  # ... but still shares its action and object.
    # Look-alike actions (e.g. open / close) are close.
    assert float(protos.actions[0] @ protos.actions[1]) == pytest.approx(cfg.action_similarity, abs=0.15)


def test_a_clip_is_ambiguous_but_an_event_is_not():
    """Nearest-prototype labels (with the generator's own prototypes) are poor per clip, good per event."""
    cfg = dataclasses.replace(SMALL, video_noise=0.0, num_test=300)
    protos = synthetic.prototypes(cfg)
    lex = synthetic.Lexicon.of(cfg)
    a_i = {a: i for i, a in enumerate(lex.actions)}
    o_i = {o: i for i, o in enumerate(lex.objects)}
    d = protos.compositions.shape[-1]
    means = np.concatenate([protos.compositions.reshape(-1, d), protos.idle, protos.near_miss])
    clip_ok, event_ok = [], []
    for v in synthetic.generate_videos(cfg, "test"):
        centres = (np.arange(v.num_clips) + 0.5) * v.clip_seconds
        for e in v.events:
            inside = (centres > e.start + v.clip_seconds) & (centres < e.end - v.clip_seconds)
            if inside.sum() < 4:
                continue
            label = a_i[e.action] * len(o_i) + o_i[e.object]
            x = v.features[inside]
            clip_ok += list(np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), 1) == label)
            event_ok.append(np.argmin(((x.mean(0) - means) ** 2).sum(-1)) == label)
    assert np.mean(clip_ok) < 0.7, np.mean(clip_ok)  # An oracle mislabels over 30% of the clips ...
    assert np.mean(event_ok) > 0.95, np.mean(event_ok)  # ... and under 5% of the events.


# ----------------------------------------------------------------------------- a query-blind probe


def _event_features(v):
    """Query-blind features of each event: timing, repetition in the video, appearance."""
    feats = []
    centres = (np.arange(v.num_clips) + 0.5) * v.clip_seconds
    means = []
    for e in v.events:
        inside = (centres >= e.start) & (centres < e.end)
        means.append(v.features[inside].mean(0) if inside.any() else v.features.mean(0))
    means = np.asarray(means)
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    sim = unit @ unit.T
    n = len(v.events)
    for i, e in enumerate(v.events):
        feats.append(np.concatenate([
            [(e.end - e.start) / v.duration, e.start / v.duration, e.end / v.duration, i / (n - 1),
             float(i == 0), float(i == n - 1), float(n), np.sum(sim[i] > 0.8) - 1, np.sort(sim[i])[-2]],
            means[i] - means.mean(0)]))
    return np.asarray(feats)


def _pad(data):
    """[Q, N, F] event features, [Q, N] mask, [Q] targets."""
    n = max(len(f) for f, _ in data)
    z = np.zeros((len(data), n, data[0][0].shape[1]))
    mask = np.zeros((len(data), n), bool)
    for i, (f, _) in enumerate(data):
        z[i, :len(f)], mask[i, :len(f)] = f, True
    return z, mask, np.asarray([t for _, t in data])


def _fit_probe(data, steps=400, lr=0.5, l2=1e-3):
    """Conditional logit (softmax over a video's events) fitted by gradient descent on standardised features."""
    z, mask, target = _pad(data)
    mu, sd = z[mask].mean(0), z[mask].std(0) + 1e-6
    z = (z - mu) / sd
    w = np.zeros(z.shape[-1])
    rows = np.arange(len(z))
    for _ in range(steps):
        logits = np.where(mask, z @ w, -np.inf)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = np.einsum("qn,qnf->f", p, z) - z[rows, target].sum(0)
        w -= lr * (grad / len(z) + l2 * w)
    return w, mu, sd


def _probe_accuracy(probe, data):
    w, mu, sd = probe
    z, mask, target = _pad(data)
    return float(np.mean(np.argmax(np.where(mask, ((z - mu) / sd) @ w, -np.inf), 1) == target))


def _probe_data(vids, biased=False):
    out = []
    for v in vids:
        f = _event_features(v)
        for q in v.queries:
            if q.template in ("simple", "ordinal", "relation", "between", "nested"):
                target = int(np.argmax([e.end - e.start for e in v.events])) if biased else q.target
                out.append((f, target))
    return out


@pytest.fixture(scope="module")
def large():
    """Enough queries to see a 2-point prior: train 6,000, test / test_novel 2,000, test_paraphrase 1,000."""
    cfg = dataclasses.replace(SMALL, num_train=6000, num_test=2000, num_test_novel=2000, num_test_paraphrase=1000)
    return {split: synthetic.generate_videos(cfg, split) for split in ("train", "test", "test_novel",
                                                                        "test_paraphrase")}


def test_a_query_blind_probe_stays_at_chance(large):
    """A probe of timing, repetition and appearance, trained on train, cannot tell the target; the same probe
    does find a planted length prior (so the test can fail)."""
    probe = _fit_probe(_probe_data(large["train"]))
    for split in ("test", "test_novel", "test_paraphrase"):
        data = _probe_data(large[split])
        chance = float(np.mean([1.0 / len(f) for f, _ in data]))
        assert _probe_accuracy(probe, data) < chance + 0.025, split
    biased = _fit_probe(_probe_data(large["train"], biased=True))
    assert _probe_accuracy(biased, _probe_data(large["test"], biased=True)) > 0.8


def _pattern(v):
    """Which events share a composition: 'ABAB', 'ABCBD', ... (what a query-blind model can see)."""
    names = {}
    return "".join(chr(65 + names.setdefault(e.pair, len(names))) for e in v.events)


def test_no_prior_over_event_patterns_and_positions(large):
    """The best query-blind lookup (pattern of repeated events x position, learned on train from every ground-
    truth event) is within 3 points of a random event on every test split (the issue's bar for a query-blind
    model); it is above chance only through multi-span queries, whose ground truth holds every occurrence."""
    counts = collections.defaultdict(collections.Counter)
    for v in large["train"]:
        for q in v.queries:
            counts[_pattern(v)].update(q.targets)
    for split in ("test", "test_novel", "test_paraphrase"):
        hit, chance = [], []
        for v in large[split]:
            seen = counts[_pattern(v)]
            best = max(range(len(v.events)), key=lambda i: (seen[i], -i))
            for q in v.queries:
                hit.append(best in q.targets)
                chance.append(1 / len(v.events) if q.hull else len(q.targets) / len(v.events))
        assert np.mean(hit) < np.mean(chance) + 0.03, (split, np.mean(hit), np.mean(chance))


# ----------------------------------------------------------------------------- language


def test_gold_parses_are_trees_with_known_labels(videos):
    for v in videos["test_paraphrase"][:50] + videos["test"][:50]:
        for q in v.queries:
            synthetic.verify_parse(q.tokens, q.dep_heads, q.dep_labels)
            assert q.text.replace(",", "").split() == list(q.tokens)


def test_surface_forms_vary():
    lex = synthetic.Lexicon.of(SMALL)
    vids = synthetic.generate_videos(SMALL, "train")
    texts = [q.text for v in vids for q in v.queries]
    words = {w for t in texts for w in t.replace(",", "").split()}
    assert {"shuts", "closes", "mug", "cup", "someone", "she", "right", "just"} <= words
    assert len(set(texts)) > 0.6 * len(texts)
    assert set(words) <= set(lex.words())


def test_spacy_parses_every_sentence_as_real_data_is_parsed():
    cfg = dataclasses.replace(TINY, parser="spacy")
    para, val = synthetic.generate_videos(cfg, "test_paraphrase"), synthetic.generate_videos(cfg, "val")
    parsed = synthetic.apply_parser(para + val, "spacy")
    for gold, got in zip(para + val, parsed):
        for g, q in zip(gold.queries, got.queries):
            assert q.tokens == g.tokens  # Same words (the comma is dropped, as data_prep drops punctuation).
            synthetic.verify_parse(q.tokens, q.dep_heads, q.dep_labels)
    # spaCy reads the fronted modifier as the gold tree does: attached to the main verb.
    agree = [np.mean(np.asarray(q.dep_heads) == np.asarray(g.dep_heads))
             for gold, got in zip(para, parsed) for g, q in zip(gold.queries, got.queries)]
    assert np.mean(agree) > 0.8
    examples = synthetic.generate_split(cfg, "val")  # The split as build() writes it.
    assert [ex.tokens for ex in examples] == [list(q.tokens) for v in parsed[len(para):] for q in v.queries]
    assert [ex.dep_heads for ex in examples] == [list(q.dep_heads) for v in parsed[len(para):] for q in v.queries]


# ----------------------------------------------------------------------------- building


def test_build_round_trip(built):
    data_dir, manifest = built
    assert manifest["dataset"] == "synthetic" and manifest["generator_version"] == synthetic.GENERATOR_VERSION
    assert manifest["config"] == json.loads(json.dumps(dataclasses.asdict(TINY)))
    vocab = text.read_vocabulary(os.path.join(data_dir, "vocab.txt"))
    assert manifest["vocab_size"] == len(vocab) == len(set(vocab))
    assert set(synthetic.Lexicon.of(TINY).words()) <= set(vocab)
    stats = manifest["statistics"]
    for split in synthetic.SPLITS:
        assert stats[split]["num_queries"] == TINY.split_size(split)
        assert stats[split]["relation_answerable_without_direction"] == 0.0
        assert stats[split]["hard_negative_share_relation_then_nested"] > 0.9
    assert stats["test_novel"]["share_of_query_strings_in_train"] == 0.0  # Its compositions are never in train.
    assert stats["test_paraphrase"]["share_of_query_strings_in_train"] == 0.0
    for split in synthetic.SPLITS:
        assert len(schema.split_files(data_dir, split)) == 2
        vids = synthetic.generate_videos(TINY, split)
        expected = {ex.qid: ex for ex in synthetic.iter_examples(vids)}
        got = list(schema.read_split(data_dir, split))
        assert manifest["num_examples"][split] == len(got) == len(expected) == TINY.split_size(split)
        records = {r["vid"]: r for r in synthetic.read_videos(data_dir, split)}
        assert list(records) == [v.vid for v in vids]
        for ex in got:
            ref = expected[ex.qid]
            assert (ex.vid, ex.query, ex.query_type, ex.tokens, ex.dep_heads, ex.dep_labels) == (
                ref.vid, ref.query, ref.query_type, ref.tokens, ref.dep_heads, ref.dep_labels)
            np.testing.assert_array_equal(ex.video_features, ref.video_features)
            np.testing.assert_allclose(ex.gt_spans, ref.gt_spans, rtol=1e-6)
            rec = records[ex.vid]
            q = next(q for q in rec["queries"] if q["qid"] == ex.qid)
            pairs = [(e["action"], e["object"]) for e in rec["events"]]
            assert synthetic.resolve(pairs, q) == tuple(q["targets"])
            assert set(ex.tokens) <= set(vocab)


def test_build_is_idempotent_and_rebuilds_on_change(built, tmp_path):
    data_dir, manifest = built
    stamp = {f: os.path.getmtime(os.path.join(data_dir, f)) for f in os.listdir(data_dir)}
    assert synthetic.build(data_dir, TINY, num_shards=2) == manifest
    assert {f: os.path.getmtime(os.path.join(data_dir, f)) for f in os.listdir(data_dir)} == stamp
    out = str(tmp_path / "data")
    synthetic.build(out, TINY, num_shards=3)
    rebuilt = synthetic.build(out, dataclasses.replace(TINY, seed=9), num_shards=1)
    assert rebuilt["config"]["seed"] == 9
    assert all(len(schema.split_files(out, s)) == 1 for s in synthetic.SPLITS)  # Stale shards removed.


def test_crashed_build_leaves_no_manifest(tmp_path, monkeypatch):
    out = str(tmp_path / "data")
    synthetic.build(out, TINY)
    real_write = schema.write_split

    def crash_on_test(examples, output_dir, split, *args, **kwargs):
        if split == "test":
            raise RuntimeError("simulated crash")
        return real_write(examples, output_dir, split, *args, **kwargs)

    monkeypatch.setattr(schema, "write_split", crash_on_test)
    with pytest.raises(RuntimeError, match="simulated crash"):
        synthetic.build(out, dataclasses.replace(TINY, seed=1))
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    monkeypatch.setattr(schema, "write_split", real_write)
    assert synthetic.build(out, dataclasses.replace(TINY, seed=1))["config"]["seed"] == 1
