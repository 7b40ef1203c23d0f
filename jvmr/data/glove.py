"""GloVe word vectors from the text format, restricted to a vocabulary and cached.

``load_glove`` streams a ``glove.840B.300d.txt``-style file once (one word and D
floats per line, space separated; a word2vec text header ``N D`` is skipped) and
keeps only the vocabulary's words, so the 5.6 GB file never sits in memory.

* Words that contain spaces (``glove.840B`` has a few, e.g. ``. . .``): the last
  D fields of a line are the vector, the rest is the word.
* Case: our tokens are lower-cased and ``glove.840B`` is cased. A vocabulary word
  takes the vector of the identical GloVe word; failing that, of the first
  (most frequent: GloVe files are sorted by frequency) case variant, so
  ``iphone`` gets ``iPhone``'s vector. A word listed twice keeps its first vector.
* Row of ``<pad>``: zeros. Rows of ``<unk>`` and of words not in the file: drawn
  from normal(0, 0.1^2) per dimension (the scale of GloVe's own entries) by a
  generator seeded with (``seed``, the word), so a word's vector does not depend on
  the rest of the vocabulary and rebuilding with more words changes no old row.
* Cache: ``cache_dir/glove-<hash>.npz``, the hash over the file's name, the
  vocabulary, ``dim`` and ``seed``; it also records the file's size and mtime and
  is rebuilt when they change. A cache whose GloVe file was since deleted is
  still used, so the big file can be removed after a build.

Builders save the result as ``DIR/embeddings.npy`` aligned with ``DIR/vocab.txt``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Sequence

import numpy as np

from jvmr.data import text

OOV_STDDEV = 0.1
_CACHE_VERSION = 1


def oov_vector(word: str, dim: int, seed: int = 0) -> np.ndarray:
    """The random float32 [dim] vector of a word missing from GloVe (deterministic in seed and word)."""
    digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
    rng = np.random.default_rng([seed, int.from_bytes(digest, "little")])
    return rng.normal(0.0, OOV_STDDEV, dim).astype(np.float32)


def _parse_vector(fields: list[str], path: str, lineno: int) -> np.ndarray:
    try:
        vec = np.asarray(fields, dtype=np.float32)
    except ValueError as e:
        raise ValueError(f"{path}:{lineno}: non-numeric vector value ({e})") from None
    if not np.all(np.isfinite(vec)):
        raise ValueError(f"{path}:{lineno}: NaN or Inf in the vector")
    return vec


def _is_header(line: str) -> bool:
    fields = line.split(" ")
    return len(fields) == 2 and all(x.isdigit() for x in fields)


def _read_glove(path: str, vocab: Sequence[str], dim: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """One pass over the file -> ([V, D] vectors of found words, [V] found, D)."""
    index = {w: i for i, w in enumerate(vocab) if w not in (text.PAD_TOKEN, text.UNK_TOKEN)}
    rank = np.full(len(vocab), 2, np.int8)  # 0: identical word found, 1: a case variant, 2: none yet.
    vectors: dict[int, np.ndarray] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip()
            if not line:
                continue
            if lineno == 1 and _is_header(line):  # word2vec text format: "N D".
                header_dim = int(line.split(" ")[1])
                if dim is not None and dim != header_dim:
                    raise ValueError(f"{path}:1: header says dimension {header_dim}, dim={dim} was asked")
                dim = header_dim
                continue
            num_spaces = line.count(" ")
            if dim is None:  # Inferred from the first vector line.
                dim = num_spaces
                if dim < 1:
                    raise ValueError(f"{path}:{lineno}: expected a word and its vector, got {line[:80]!r}")
            if num_spaces < dim:
                raise ValueError(f"{path}:{lineno}: expected a word and {dim} values, got {num_spaces} "
                                 f"fields after the first (line starts {line[:40]!r}); pass dim= if the "
                                 f"dimension was inferred wrongly")
            word = line[:line.index(" ")] if num_spaces == dim else line.rsplit(" ", dim)[0]
            i = index.get(word)
            if i is not None:
                if rank[i] > 0:
                    vectors[i] = _parse_vector(line.rsplit(" ", dim)[1:], path, lineno)
                    rank[i] = 0
                continue
            i = index.get(word.lower())
            if i is not None and rank[i] > 1:
                vectors[i] = _parse_vector(line.rsplit(" ", dim)[1:], path, lineno)
                rank[i] = 1
    if dim is None:
        raise ValueError(f"{path}: no vectors in the file")
    emb = np.zeros((len(vocab), dim), np.float32)
    for i, vec in vectors.items():
        emb[i] = vec
    return emb, rank < 2, dim


def _cache_path(cache_dir: str, path: str, vocab: Sequence[str], dim: int | None, seed: int) -> str:
    h = hashlib.sha256()
    for part in (str(_CACHE_VERSION), os.path.basename(path), str(dim), str(seed), str(len(vocab))):
        h.update(part.encode() + b"\0")
    for w in vocab:
        h.update(w.encode("utf-8") + b"\n")
    return os.path.join(cache_dir, f"glove-{h.hexdigest()[:20]}.npz")


def _file_stamp(path: str) -> np.ndarray | None:
    """[size, mtime_ns] of the file, or None if it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return np.array([st.st_size, st.st_mtime_ns], np.int64)


def load_glove(path: str, vocab: Sequence[str], *, dim: int | None = None, cache_dir: str | None = None,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``vocab`` from the GloVe text file ``path`` (see the module docstring).

    Args:
      path: the GloVe text file.
      vocab: [V] words, e.g. ``text.read_vocabulary(...)`` (``<pad>`` first).
      dim: the vector size; inferred from the first line when None.
      cache_dir: where to keep the ``.npz`` cache; no caching when None.
      seed: seed of the out-of-vocabulary vectors.

    Returns:
      (embeddings float32 [V, D], found bool [V]: the word's vector came from the file).
    """
    path = os.fspath(path)
    vocab = list(vocab)
    if len(set(vocab)) != len(vocab):
        raise ValueError(f"load_glove: the vocabulary repeats words, e.g. "
                         f"{next(w for i, w in enumerate(vocab) if w in vocab[:i])!r}")
    stamp = _file_stamp(path)
    cache = _cache_path(cache_dir, path, vocab, dim, seed) if cache_dir else None
    if cache and os.path.exists(cache):
        with np.load(cache, allow_pickle=False) as z:
            if stamp is None or np.array_equal(z["stamp"], stamp):
                return z["embeddings"], z["found"]
    if stamp is None:
        raise FileNotFoundError(f"GloVe file not found: {path}")
    emb, found, d = _read_glove(path, vocab, dim)
    for i, w in enumerate(vocab):
        if not found[i] and w != text.PAD_TOKEN:
            emb[i] = oov_vector(w, d, seed)
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, embeddings=emb, found=found, stamp=stamp)
            os.replace(tmp, cache)  # Atomic: a crash never leaves a half-written cache.
        except BaseException:
            os.remove(tmp)
            raise
    return emb, found
