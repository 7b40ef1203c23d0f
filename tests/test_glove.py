"""GloVe text loader: vectors, case handling, OOV init, padding, errors and the cache."""

import os

import numpy as np
import pytest

from jvmr.data import glove, text

DIM = 6


def vec(seed: int) -> np.ndarray:
    return np.round(np.random.default_rng(seed).normal(size=DIM), 5).astype(np.float32)


def line(word: str, v: np.ndarray) -> str:
    return word + " " + " ".join(f"{x:.5f}" for x in v) + "\n"


@pytest.fixture()
def glove_file(tmp_path):
    """A small glove.840B-style file: cased words, a word with spaces, a duplicate."""
    entries = [(",", vec(0)), ("The", vec(2)), ("the", vec(1)), ("person", vec(3)), (". . .", vec(4)),
               ("iPhone", vec(5)), ("IPHONE", vec(6)), ("door", vec(7)), ("person", vec(8)), ("opens", vec(9))]
    path = tmp_path / "glove.840B.6d.txt"
    path.write_text("".join(line(w, v) for w, v in entries), encoding="utf-8")
    return str(path), entries


VOCAB = [text.PAD_TOKEN, text.UNK_TOKEN, "the", "person", "opens", "door", "iphone", "zebra", ". . .", ","]


def test_vectors_found_and_oov(glove_file):
    path, entries = glove_file
    emb, found = glove.load_glove(path, VOCAB, seed=3)
    assert emb.shape == (len(VOCAB), DIM) and emb.dtype == np.float32 and found.dtype == bool
    expected = {"the": vec(1),  # The identical word beats an earlier case variant ("The").
                "person": vec(3),  # The first of a duplicated word wins.
                "opens": vec(9), "door": vec(7),
                "iphone": vec(5),  # Only case variants: the first (most frequent) one.
                ". . .": vec(4), ",": vec(0)}
    for i, w in enumerate(VOCAB):
        if w in expected:
            assert found[i], w
            np.testing.assert_array_equal(emb[i], expected[w], err_msg=w)
    assert found.tolist() == [w in expected for w in VOCAB]
    np.testing.assert_array_equal(emb[0], 0.0)  # <pad>
    for w in (text.UNK_TOKEN, "zebra"):
        i = VOCAB.index(w)
        np.testing.assert_array_equal(emb[i], glove.oov_vector(w, DIM, seed=3))
    # OOV rows are deterministic per (seed, word), independent of the rest of the vocabulary.
    emb2, _ = glove.load_glove(path, [text.PAD_TOKEN, "zebra", text.UNK_TOKEN], seed=3)
    np.testing.assert_array_equal(emb2[1], emb[VOCAB.index("zebra")])
    np.testing.assert_array_equal(emb2[2], emb[1])
    emb3, _ = glove.load_glove(path, VOCAB, seed=4)
    assert not np.allclose(emb3[1], emb[1])
    np.testing.assert_array_equal(emb3[found], emb[found])


def test_oov_distribution():
    draws = np.stack([glove.oov_vector(f"w{i}", 300, seed=0) for i in range(400)])
    assert abs(draws.mean()) < 0.002 and abs(draws.std() - glove.OOV_STDDEV) < 0.002
    assert not np.allclose(draws[0], draws[1])


def test_explicit_dim_and_word2vec_header(tmp_path, glove_file):
    path, entries = glove_file
    emb, found = glove.load_glove(path, VOCAB, dim=DIM)
    ref, ref_found = glove.load_glove(path, VOCAB)
    np.testing.assert_array_equal(emb, ref)
    np.testing.assert_array_equal(found, ref_found)
    w2v = tmp_path / "w2v.txt"
    w2v.write_text(f"{len(entries)} {DIM}\n" + open(path, encoding="utf-8").read(), encoding="utf-8")
    emb2, found2 = glove.load_glove(str(w2v), VOCAB)
    np.testing.assert_array_equal(emb2, ref)
    with pytest.raises(ValueError, match=r"w2v\.txt:1: header says dimension 6, dim=5"):
        glove.load_glove(str(w2v), VOCAB, dim=5)


@pytest.mark.parametrize("bad, message", [
    ("door 0.1 0.2 0.3\n", r"glove\.txt:3: expected a word and 6 values, got 3 fields"),
    ("door 0.1 0.2 0.3 x 0.5 0.6\n", r"glove\.txt:3: non-numeric vector value"),
    ("door 0.1 0.2 0.3 nan 0.5 0.6\n", r"glove\.txt:3: NaN or Inf"),
])
def test_bad_lines_name_file_and_line(tmp_path, bad, message):
    path = tmp_path / "glove.txt"
    path.write_text(line("the", vec(1)) + "\n" + bad + line("person", vec(3)), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        glove.load_glove(str(path), VOCAB)


def test_other_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="GloVe file not found"):
        glove.load_glove(str(tmp_path / "missing.txt"), VOCAB)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.txt: no vectors"):
        glove.load_glove(str(empty), VOCAB)
    with pytest.raises(ValueError, match="repeats words, e.g. 'the'"):
        glove.load_glove(str(empty), VOCAB + ["the"])


def test_cache_hit_survives_deleting_the_file(tmp_path, glove_file):
    path, _ = glove_file
    cache = str(tmp_path / "cache")
    emb, found = glove.load_glove(path, VOCAB, cache_dir=cache)
    assert len(os.listdir(cache)) == 1
    os.remove(path)
    emb2, found2 = glove.load_glove(path, VOCAB, cache_dir=cache)
    np.testing.assert_array_equal(emb2, emb)
    np.testing.assert_array_equal(found2, found)
    assert emb2.dtype == np.float32 and found2.dtype == bool
    with pytest.raises(FileNotFoundError):  # A vocabulary change misses the cache and needs the file.
        glove.load_glove(path, VOCAB + ["window"], cache_dir=cache)
    with pytest.raises(FileNotFoundError):  # So does another seed.
        glove.load_glove(path, VOCAB, cache_dir=cache, seed=1)


def test_cache_invalidation(tmp_path, glove_file):
    path, entries = glove_file
    cache = str(tmp_path / "cache")
    glove.load_glove(path, VOCAB, cache_dir=cache)
    # Vocabulary change: a new cache entry with the right rows.
    vocab2 = VOCAB + ["window"]
    with open(path, "a", encoding="utf-8") as f:
        f.write(line("window", vec(11)))
    emb2, found2 = glove.load_glove(path, vocab2, cache_dir=cache)
    assert found2[-1] and len(os.listdir(cache)) == 2
    np.testing.assert_array_equal(emb2[-1], vec(11))
    # The file changed since the first call (size and mtime): the cached entry is rebuilt.
    emb3, found3 = glove.load_glove(path, VOCAB, cache_dir=cache)
    np.testing.assert_array_equal(emb3, emb2[:-1])
    new_door = vec(12)
    content = open(path, encoding="utf-8").read().replace(line("door", vec(7)), line("door", new_door))
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)
    emb4, _ = glove.load_glove(path, VOCAB, cache_dir=cache)
    np.testing.assert_array_equal(emb4[VOCAB.index("door")], new_door)
    assert all(n.endswith(".npz") for n in os.listdir(cache))  # No temporary files left.
