"""Text vocabularies shared by every dataset: word tokens and dependency labels.

Word ids: 0 is padding, 1 is the out-of-vocabulary token; real words follow in
the order of the vocabulary file (one token per line, written by the dataset
builders as ``vocab.txt``).

Dependency label ids feed the syntactic GCN (CMIN). The label set is the union
of spaCy's English labels (ClearNLP style, what ``data_prep`` produces) and the
Universal Dependencies v1/v2 labels that CoreNLP emits (what CMIN's released
annotation files use), so either parser's output maps onto one fixed table.
Id 0 is padding, id 1 the self loop the GCN adds to every word, id 2 unknown.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from jvmr import fs

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
PAD_ID = 0
UNK_ID = 1

# spaCy en_core_web_sm (3.x) labels, lower-cased.
_SPACY_LABELS = (
    "root", "acl", "acomp", "advcl", "advmod", "agent", "amod", "appos", "attr",
    "aux", "auxpass", "case", "cc", "ccomp", "compound", "conj", "csubj",
    "csubjpass", "dative", "dep", "det", "dobj", "expl", "intj", "mark", "meta",
    "neg", "nmod", "npadvmod", "nsubj", "nsubjpass", "nummod", "oprd",
    "parataxis", "pcomp", "pobj", "poss", "preconj", "predet", "prep", "prt",
    "punct", "quantmod", "relcl", "xcomp",
)
# Universal Dependencies labels not already above (CoreNLP UD v1 and UD v2).
_UD_LABELS = (
    "obj", "iobj", "obl", "obl:tmod", "obl:npmod", "cop", "mwe", "fixed", "flat",
    "nmod:poss", "nmod:tmod", "nmod:npmod", "compound:prt", "acl:relcl",
    "det:predet", "cc:preconj", "discourse", "vocative", "list", "orphan",
    "goeswith", "reparandum", "clf", "nsubj:pass", "aux:pass", "csubj:pass",
)
DEPENDENCY_LABELS: tuple[str, ...] = ("<pad>", "self", "<unk>") + _SPACY_LABELS + _UD_LABELS
DEP_PAD_ID = 0
DEP_SELF_ID = 1
DEP_UNK_ID = 2
NUM_DEPENDENCY_LABELS = len(DEPENDENCY_LABELS)
_LABEL_TO_ID = {label: i for i, label in enumerate(DEPENDENCY_LABELS)}


def dependency_label_id(label: str) -> int:
    """Maps a parser's label (any case) to its id; unknown labels map to <unk>."""
    return _LABEL_TO_ID.get(label.lower(), DEP_UNK_ID)


def build_vocabulary(token_lists: Iterable[Sequence[str]], min_count: int = 1) -> list[str]:
    """Returns the vocabulary (padding and OOV first, then by frequency, ties by word)."""
    counts: dict[str, int] = {}
    for tokens in token_lists:
        for token in tokens:
            counts[token] = counts.get(token, 0) + 1
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return [PAD_TOKEN, UNK_TOKEN] + [w for w in words if w not in (PAD_TOKEN, UNK_TOKEN)]


def write_vocabulary(words: Sequence[str], path: str) -> None:
    with fs.open(path, "w") as f:
        for w in words:
            if not w or "\n" in w:
                raise ValueError(f"{path}: invalid vocabulary entry {w!r}")
            f.write(w + "\n")


def read_vocabulary(path: str) -> list[str]:
    if not fs.exists(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    with fs.open(path) as f:
        words = [line.rstrip("\n") for line in f]
    if words[:2] != [PAD_TOKEN, UNK_TOKEN]:
        raise ValueError(f"{path}: a vocabulary must start with {PAD_TOKEN!r}, {UNK_TOKEN!r}")
    return words
