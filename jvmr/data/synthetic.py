"""The embedded grounding benchmark (dataset name ``synthetic``), generated procedurally.

Real clip features cannot be downloaded here, so the library's default dataset
is generated, and it is built to need what the real task needs: reading both
words of a query, and sometimes its temporal structure, to find one event among
several look-alikes.

Videos. A video has T clips (uniform in ``[min_clips, max_clips]``), each
covering ``clip_seconds`` seconds (uniform per video), and holds 5-7 events
separated by at least ``min_gap_clips`` background clips. An event is an
(action, object) composition over a random span of 3-10 clips. Clip features
are compositional:

    event clip      = action_vec[a] + object_vec[o] + style_v + noise
    background clip = background_vec               + style_v + noise

where the prototypes are fixed random unit vectors in R^D (deterministic from
``seed`` and shared by every split), ``style_v`` is a per-video Gaussian offset
(per-dimension std ``video_noise``) and ``noise`` is per-clip Gaussian noise
(per-dimension std ``clip_noise``, i.e. the noise along any direction relative
to the unit-norm prototypes). Event boundaries are therefore visible in the
features, and every event's composition is decodable from them.

Event layout. Lengths and positions are drawn before, and independently of,
the compositions and the choice of query targets.

Compositions. A video holds m distinct compositions drawn from a small pool of
actions and objects (3 x 3 by default), n - m of them twice and the others
once, never two equal ones in a row. Every composition has a same-action and a
same-object distractor in the video, so no query can be answered from one of
its words (this needs m = 4 or m >= 6). How many compositions occur twice is
steered so that the split's share of simple queries follows the mix.

Queries (a tiny English grammar; ``Query`` holds its fields):

* simple: "the person opens the door" -> the only (open, door) event.
* ordinal: "the person opens the door for the first / second time" -> that one of
  exactly two (open, door) events.
* relation: "the person opens the door after closing the box" (or "... before
  the person closes the box") -> the (open, door) event right after (before)
  a (close, box) event.
* then: "the person closes the box and then opens the door" -> the (open, door)
  event right after a (close, box) event.

Uniqueness holds by construction and is checked on every video by
``verify_video``: ``resolve`` (the grammar's semantics) must return exactly the
target; simple targets occur once and have both distractors in the video;
ordinal, relation and then targets occur exactly twice, and for relation and
then the other occurrence is not next to the context event on that side.
A video gets up to ``queries_per_video`` queries with distinct targets drawn
uniformly among its events (test_novel: among its held-out events), so that,
given the video, every event is equally likely to be a target whatever its
length, position or composition: a query-blind model can do no better than a
random event (R@1 at IoU>=0.5 = E[1/num_events], about 17% by default). Each
target's template is picked, towards the configured mix, among those it
allows. Every query comes with its gold dependency parse (spaCy / ClearNLP
labels).

Splits. train, val and test come from disjoint random streams. A fixed set of
``heldout_fraction`` of the (action, object) compositions (spread over actions
and objects) never occurs in train, val or test; ``test_novel`` videos target
only these compositions (the other events may be anything), measuring
compositional generalisation.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from jvmr.data import schema, text

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test", "test_novel")
TEMPLATES = ("simple", "ordinal", "relation", "then")
_SPLIT_STREAM = {"train": 1, "val": 2, "test": 3, "test_novel": 4}  # Stream 0: prototypes.

# Single-word verbs: (base name, 3rd person singular, gerund).
ACTIONS: tuple[tuple[str, str, str], ...] = (
    ("open", "opens", "opening"), ("close", "closes", "closing"), ("wash", "washes", "washing"),
    ("hold", "holds", "holding"), ("throw", "throws", "throwing"), ("push", "pushes", "pushing"),
    ("carry", "carries", "carrying"), ("drop", "drops", "dropping"), ("clean", "cleans", "cleaning"),
    ("lift", "lifts", "lifting"), ("shake", "shakes", "shaking"), ("grab", "grabs", "grabbing"),
)
OBJECTS: tuple[str, ...] = (
    "door", "box", "cup", "book", "phone", "bag", "towel", "bottle", "window", "laptop", "plate", "shoe",
)
_ORDINALS = ("first", "second")
_FUNCTION_WORDS = ("the", "person", "for", "time", "after", "before", "and", "then") + _ORDINALS

Pair = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the benchmark; the defaults are the library's default dataset.

    Sizes are numbers of queries (examples); videos carry up to
    ``queries_per_video`` queries with distinct targets.
    """

    seed: int = 0
    feature_dim: int = 128
    num_actions: int = 8  # The first ones of ACTIONS.
    num_objects: int = 8  # The first ones of OBJECTS.
    actions_per_video: int = 3  # Size of a video's action pool (recurrence).
    objects_per_video: int = 3
    heldout_fraction: float = 0.1  # Of the num_actions * num_objects compositions.
    min_clips: int = 40
    max_clips: int = 64
    min_events: int = 5
    max_events: int = 7
    min_event_clips: int = 3
    max_event_clips: int = 10
    min_gap_clips: int = 1  # Background clips between consecutive events.
    min_clip_seconds: float = 1.0
    max_clip_seconds: float = 3.0
    clip_noise: float = 0.4  # Per-dimension std of the per-clip noise.
    video_noise: float = 0.3  # Per-dimension std of the per-video style offset.
    queries_per_video: int = 3
    simple_weight: float = 0.4  # Target mix of the templates (normalised).
    ordinal_weight: float = 0.3
    relation_weight: float = 0.2
    then_weight: float = 0.1
    relation_clause_prob: float = 0.5  # "after the person closes the box" vs "after closing the box".
    num_train: int = 6000
    num_val: int = 600
    num_test: int = 1000
    num_test_novel: int = 500

    def __post_init__(self):
        def require(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"SyntheticConfig: {msg}")

        require(self.feature_dim >= 1, f"feature_dim must be >= 1, got {self.feature_dim}")
        require(2 <= self.num_actions <= len(ACTIONS), f"num_actions must be in [2, {len(ACTIONS)}]")
        require(2 <= self.num_objects <= len(OBJECTS), f"num_objects must be in [2, {len(OBJECTS)}]")
        require(2 <= self.actions_per_video and 2 <= self.objects_per_video,
                "actions_per_video and objects_per_video must be >= 2")
        require(0.0 <= self.heldout_fraction < 1.0, "heldout_fraction must be in [0, 1)")
        require(self.num_test_novel == 0 or self.num_heldout >= 1,
                "test_novel needs held-out compositions: raise heldout_fraction or set num_test_novel=0")
        require(self.num_actions * self.num_objects - self.num_heldout >= self.max_events,
                "fewer seen compositions than max_events")
        require(3 <= self.min_events <= self.max_events, "need 3 <= min_events <= max_events")
        require(1 <= self.min_event_clips <= self.max_event_clips, "need 1 <= min_event_clips <= max_event_clips")
        require(self.min_gap_clips >= 1, "min_gap_clips must be >= 1 (event boundaries must be visible)")
        require(1 <= self.min_clips <= self.max_clips, "need 1 <= min_clips <= max_clips")
        require(self.min_events * self.min_event_clips + (self.min_events - 1) * self.min_gap_clips
                <= self.min_clips, "min_events events of min_event_clips do not fit in min_clips")
        require(0 < self.min_clip_seconds <= self.max_clip_seconds, "need 0 < min_clip_seconds <= max_clip_seconds")
        require(self.clip_noise >= 0 and self.video_noise >= 0, "noise levels must be >= 0")
        require(self.queries_per_video >= 1, "queries_per_video must be >= 1")
        weights = self.template_weights
        require(all(w >= 0 for w in weights.values()) and sum(weights.values()) > 0,
                "template weights must be >= 0 with a positive sum")
        require(0.0 <= self.relation_clause_prob <= 1.0, "relation_clause_prob must be in [0, 1]")
        require(min(self.num_train, self.num_val, self.num_test, self.num_test_novel) >= 0,
                "split sizes must be >= 0")

    @property
    def num_heldout(self) -> int:
        """Number of held-out compositions (at least one when heldout_fraction > 0)."""
        n = round(self.heldout_fraction * self.num_actions * self.num_objects)
        return max(n, 1) if self.heldout_fraction > 0 else 0

    @property
    def template_weights(self) -> dict[str, float]:
        return {"simple": self.simple_weight, "ordinal": self.ordinal_weight,
                "relation": self.relation_weight, "then": self.then_weight}

    def split_size(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test,
                "test_novel": self.num_test_novel}[split]


def config_from_dict(d: Mapping[str, Any]) -> SyntheticConfig:
    """Builds a config from overrides of the defaults (a dict or an ``ml_collections.ConfigDict``).

    Raises:
      ValueError: on a key that is not a ``SyntheticConfig`` field.
      TypeError: on a value of the wrong type (ints are accepted for float fields).
    """
    if hasattr(d, "to_dict"):
        d = d.to_dict()
    fields = {f.name: f for f in dataclasses.fields(SyntheticConfig)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"unknown synthetic dataset option(s) {unknown}; valid: {sorted(fields)}")
    kwargs = {}
    for key, value in d.items():
        want = fields[key].type
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"synthetic option {key!r} must be a number, got {value!r}")
        if want == "int":
            if not isinstance(value, int):
                raise TypeError(f"synthetic option {key!r} must be an int, got {value!r}")
            kwargs[key] = int(value)
        else:
            kwargs[key] = float(value)
    return SyntheticConfig(**kwargs)


@dataclasses.dataclass(frozen=True)
class Event:
    """One event of a video: a composition over clips [start, end) (end exclusive)."""

    action: str
    object: str
    start: int
    end: int

    @property
    def pair(self) -> Pair:
        return (self.action, self.object)


@dataclasses.dataclass(frozen=True)
class Query:
    """A query: its template fields, its target, and its sentence with the gold parse.

    ``action``/``object`` name the target composition. ``ordinal`` (1 or 2) is set
    for "ordinal"; ``relation`` ("after" or "before") for "relation";
    ``context_action``/``context_object`` for "relation" and "then" (the event
    the target is next to); ``clause`` says whether a relation is written as a
    clause ("after the person closes the box") rather than a gerund phrase.
    """

    qid: str
    template: str
    action: str
    object: str
    target: int  # Index into Video.events.
    ordinal: int = 0
    relation: str = ""
    context_action: str = ""
    context_object: str = ""
    clause: bool = False
    tokens: tuple[str, ...] = ()
    dep_heads: tuple[int, ...] = ()
    dep_labels: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


@dataclasses.dataclass(frozen=True)
class Video:
    """A generated video: features [T, D] float32, its events in temporal order, its queries."""

    vid: str
    clip_seconds: float
    features: np.ndarray
    events: tuple[Event, ...]
    queries: tuple[Query, ...]

    @property
    def num_clips(self) -> int:
        return int(self.features.shape[0])

    @property
    def duration(self) -> float:
        return self.num_clips * self.clip_seconds

    def span_seconds(self, event_index: int) -> tuple[float, float]:
        e = self.events[event_index]
        return (e.start * self.clip_seconds, e.end * self.clip_seconds)

    def examples(self) -> list[schema.Example]:
        """One schema example per query (they share the feature array)."""
        return [schema.Example(
            qid=q.qid, vid=self.vid, duration=self.duration, query=q.text, tokens=list(q.tokens),
            dep_heads=list(q.dep_heads), dep_labels=list(q.dep_labels),
            gt_spans=np.asarray([self.span_seconds(q.target)], np.float32),
            video_features=self.features, query_type=q.template) for q in self.queries]


# ----------------------------------------------------------------------------- grammar


def _verb_forms(action: str) -> tuple[str, str]:
    """(3rd person singular, gerund) of an action name."""
    for base, third, gerund in ACTIONS:
        if base == action:
            return third, gerund
    raise KeyError(f"unknown action {action!r}")


def grammar_words(cfg: SyntheticConfig) -> list[str]:
    """Every word the grammar can produce under ``cfg`` (sorted)."""
    words = set(_FUNCTION_WORDS) | set(OBJECTS[:cfg.num_objects])
    for _, third, gerund in ACTIONS[:cfg.num_actions]:
        words |= {third, gerund}
    return sorted(words)


def realise(template: str, action: str, obj: str, *, ordinal: int = 0, relation: str = "",
            context_action: str = "", context_object: str = "",
            clause: bool = False) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """Writes a query's sentence with its gold dependency parse.

    Returns:
      (tokens, dep_heads, dep_labels), each of length L: lower-case words, the
      index of each word's head (-1 for the root) and spaCy-style arc labels.
    """
    verb = _verb_forms(action)[0]
    # "the person <verb> the <obj>": the=det->person, person=nsubj->verb, the=det->obj, obj=dobj->verb.
    main = (["the", "person", verb, "the", obj], [1, 2, -1, 4, 2], ["det", "nsubj", "root", "det", "dobj"])
    if template == "simple":
        tokens, heads, labels = main
    elif template == "ordinal":
        if ordinal not in (1, 2):
            raise ValueError(f"ordinal must be 1 or 2, got {ordinal}")
        tokens = main[0] + ["for", "the", _ORDINALS[ordinal - 1], "time"]
        heads = main[1] + [2, 8, 8, 5]
        labels = main[2] + ["prep", "det", "amod", "pobj"]
    elif template == "relation":
        if relation not in ("after", "before"):
            raise ValueError(f"relation must be 'after' or 'before', got {relation!r}")
        third, gerund = _verb_forms(context_action)
        if clause:  # ... after the person closes the box: closes=advcl->verb, after=mark->closes.
            tokens = main[0] + [relation, "the", "person", third, "the", context_object]
            heads = main[1] + [8, 7, 8, 2, 10, 8]
            labels = main[2] + ["mark", "det", "nsubj", "advcl", "det", "dobj"]
        else:  # ... after closing the box: after=prep->verb, closing=pcomp->after, box=dobj->closing.
            tokens = main[0] + [relation, gerund, "the", context_object]
            heads = main[1] + [2, 5, 8, 6]
            labels = main[2] + ["prep", "pcomp", "det", "dobj"]
    elif template == "then":
        # the person closes the box and then opens the door: and=cc->closes, opens=conj->closes,
        # then=advmod->opens.
        tokens = ["the", "person", _verb_forms(context_action)[0], "the", context_object,
                  "and", "then", verb, "the", obj]
        heads = [1, 2, -1, 4, 2, 2, 7, 2, 9, 7]
        labels = ["det", "nsubj", "root", "det", "dobj", "cc", "advmod", "conj", "det", "dobj"]
    else:
        raise ValueError(f"unknown template {template!r}")
    return tuple(tokens), tuple(heads), tuple(labels)


def resolve(events: Sequence[Event], query: Query) -> list[int]:
    """The grammar's semantics: indices of every event of ``events`` that ``query`` describes.

    A well-formed query resolves to exactly one event, its target.
    """
    pairs = [e.pair for e in events]
    matches = [i for i, p in enumerate(pairs) if p == (query.action, query.object)]
    if query.template == "simple":
        return matches
    if query.template == "ordinal":
        return [matches[query.ordinal - 1]] if len(matches) >= query.ordinal else []
    context = (query.context_action, query.context_object)
    if query.template == "then" or (query.template == "relation" and query.relation == "after"):
        return [i for i in matches if i > 0 and pairs[i - 1] == context]
    if query.template == "relation" and query.relation == "before":
        return [i for i in matches if i + 1 < len(pairs) and pairs[i + 1] == context]
    raise ValueError(f"query {query.qid!r}: unknown template {query.template!r} / relation {query.relation!r}")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise AssertionError(msg)


def verify_parse(tokens: Sequence[str], heads: Sequence[int], labels: Sequence[str]) -> None:
    """Raises AssertionError unless the parse is a tree (one root, valid heads, no cycle) with known labels."""
    n = len(tokens)
    _check(n > 0 and len(heads) == n and len(labels) == n, f"parse lengths differ: {tokens} {heads} {labels}")
    _check(sum(h == -1 for h in heads) == 1, f"parse of {tokens} must have exactly one root: {heads}")
    for i, (h, label) in enumerate(zip(heads, labels)):
        _check(-1 <= h < n and h != i, f"bad head {h} of word {i} in {tokens}")
        _check((label == "root") == (h == -1), f"word {i} of {tokens}: label {label!r} with head {h}")
        _check(label in text.DEPENDENCY_LABELS, f"label {label!r} not in text.DEPENDENCY_LABELS")
        seen, j = set(), i
        while j != -1:
            _check(j not in seen, f"cycle through word {j} in the parse of {tokens}: {heads}")
            seen.add(j)
            j = heads[j]


def verify_video(video: Video, heldout: frozenset[Pair], novel: bool, min_gap_clips: int = 1) -> None:
    """Checks every guarantee of the benchmark on one video; raises AssertionError naming the video.

    Args:
      video: the video.
      heldout: the held-out compositions (``heldout_pairs(cfg)``).
      novel: whether the video belongs to test_novel (targets must be held out) or to
        train/val/test (no event may be held out).
      min_gap_clips: the background clips required between consecutive events.
    """
    where = f"video {video.vid}"
    t, events = video.num_clips, video.events
    _check(video.features.dtype == np.float32 and video.features.ndim == 2, f"{where}: features not [T, D] float32")
    _check(len(events) >= 1 and events[0].start >= 0 and events[-1].end <= t, f"{where}: events outside the video")
    for e in events:
        _check(e.start < e.end, f"{where}: empty event {e}")
    for a, b in zip(events, events[1:]):
        _check(b.start - a.end >= min_gap_clips, f"{where}: events {a} and {b} not separated by background")
    if not novel:
        _check(all(e.pair not in heldout for e in events), f"{where}: a held-out composition outside test_novel")
    counts = collections.Counter(e.pair for e in events)
    targets = [q.target for q in video.queries]
    _check(len(set(targets)) == len(targets), f"{where}: two queries share a target")
    for q in video.queries:
        qw = f"{where} query {q.qid} {q.text!r}"
        pair = (q.action, q.object)
        _check(0 <= q.target < len(events) and events[q.target].pair == pair, f"{qw}: target is not a {pair} event")
        _check(not novel or pair in heldout, f"{qw}: test_novel target {pair} is not held out")
        got = resolve(events, q)
        _check(got == [q.target], f"{qw}: resolves to events {got}, not exactly the target {q.target}")
        _check((q.tokens, q.dep_heads, q.dep_labels) == realise(
            q.template, q.action, q.object, ordinal=q.ordinal, relation=q.relation,
            context_action=q.context_action, context_object=q.context_object, clause=q.clause),
            f"{qw}: sentence does not match its fields")
        verify_parse(q.tokens, q.dep_heads, q.dep_labels)
        if q.template == "simple":
            _check(counts[pair] == 1, f"{qw}: simple target occurs {counts[pair]} times")
            _check(any(p[0] == q.action and p[1] != q.object for p in counts), f"{qw}: no same-action distractor")
            _check(any(p[1] == q.object and p[0] != q.action for p in counts), f"{qw}: no same-object distractor")
        else:
            _check(counts[pair] == 2, f"{qw}: {q.template} target occurs {counts[pair]} times, not twice")
        if q.template in ("relation", "then"):
            _check((q.context_action, q.context_object) != pair, f"{qw}: context equals the target composition")


# ----------------------------------------------------------------------------- generation


def heldout_pairs(cfg: SyntheticConfig) -> frozenset[Pair]:
    """The held-out compositions: deterministic from ``cfg.seed``, spread evenly over actions and objects."""
    actions = [a[0] for a in ACTIONS[:cfg.num_actions]]
    objects = list(OBJECTS[:cfg.num_objects])
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0, 1]))
    cap_a = math.ceil(cfg.num_heldout / len(actions))
    cap_o = math.ceil(cfg.num_heldout / len(objects))
    chosen: set[Pair] = set()
    per_a: collections.Counter = collections.Counter()
    per_o: collections.Counter = collections.Counter()
    for k in rng.permutation(len(actions) * len(objects)):
        a, o = actions[k // len(objects)], objects[k % len(objects)]
        if len(chosen) < cfg.num_heldout and per_a[a] < cap_a and per_o[o] < cap_o:
            chosen.add((a, o))
            per_a[a] += 1
            per_o[o] += 1
    if len(chosen) != cfg.num_heldout:
        raise ValueError(f"could not spread {cfg.num_heldout} held-out compositions over actions and objects")
    return frozenset(chosen)


def prototypes(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors: actions [A, D], objects [O, D], background [D] (shared by all splits)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0, 0]))

    def unit(n: int) -> np.ndarray:
        v = rng.standard_normal((n, cfg.feature_dim))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    return unit(cfg.num_actions), unit(cfg.num_objects), unit(1)[0]


def _sample_layout(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[int, np.ndarray, np.ndarray]:
    """Draws T and the event spans, independently of any composition.

    Returns:
      (T, starts [N], ends [N]) with clip indices, ends exclusive, in temporal order.
    """
    t = int(rng.integers(cfg.min_clips, cfg.max_clips + 1))
    gap, lo, hi = cfg.min_gap_clips, cfg.min_event_clips, cfg.max_event_clips
    feasible = [n for n in range(cfg.min_events, cfg.max_events + 1) if n * lo + (n - 1) * gap <= t]
    n = int(rng.choice(feasible))
    budget = t - (n - 1) * gap
    for _ in range(100):
        lengths = rng.integers(lo, hi + 1, size=n)
        if lengths.sum() <= budget:
            break
    while lengths.sum() > budget:  # Rarely reached: shrink random events until they fit.
        i = rng.choice(np.flatnonzero(lengths > lo))
        lengths[i] -= 1
    extra = budget - int(lengths.sum())
    # Spread the spare background over the n + 1 gaps, uniformly over compositions (stars and bars).
    bars = np.sort(rng.choice(extra + n, size=n, replace=False))
    gaps = np.diff(np.concatenate([[-1], bars, [extra + n]])) - 1
    gaps[1:n] += gap
    starts = np.cumsum(gaps[:n]) + np.concatenate([[0], np.cumsum(lengths[:-1])])
    return t, starts, starts + lengths


def _has_distractors(pair: Pair, pairs: Sequence[Pair]) -> bool:
    """Whether ``pairs`` holds the same action with another object and the same object with another action."""
    return (any(p[0] == pair[0] and p[1] != pair[1] for p in pairs)
            and any(p[1] == pair[1] and p[0] != pair[0] for p in pairs))


def _sample_pairs(rng: np.random.Generator, cfg: SyntheticConfig, n: int, allowed: list[Pair],
                  required: Pair | None, single_share: float) -> list[Pair]:
    """Draws the compositions of n events, in temporal order.

    The video holds m distinct compositions, d = n - m of them twice and the
    rest once; d is chosen so that the share of single events (the only ones
    a simple query can target) is closest to ``single_share``.
    The m compositions come from a small pool of actions and objects, and each
    has a same-action and a same-object distractor in the video (possible for
    m = 4 or m >= 6: m = 5 is skipped; relaxed only if a tiny config allows
    no such set). Equal compositions are never adjacent.

    Args:
      rng: the video's random stream.
      cfg: the config.
      n: number of events.
      allowed: compositions any event may have.
      required: a composition the video must contain (test_novel's held-out target), or None.
      single_share: the wanted fraction of single events.
    """
    options = [d for d in range(n // 2 + 1) if n - d == 4 or n - d >= 6] or list(range(n // 2 + 1))
    gaps = [abs((n - 2 * d) / n - single_share) for d in options]
    best = [d for d, g in zip(options, gaps) if g <= min(gaps) + 1e-9]
    d = best[rng.integers(len(best))]
    m = n - d
    allowed_set = set(allowed)
    actions = sorted({a for a, _ in allowed})
    objects = sorted({o for _, o in allowed})
    fixed = [required] if required else []
    chosen: list[Pair] = []
    for attempt in range(400):
        grow = attempt // 100  # Widen the pool if small pools keep failing.
        pool_a = _subset(rng, actions, cfg.actions_per_video + grow, required[0] if required else None)
        pool_o = _subset(rng, objects, cfg.objects_per_video + grow, required[1] if required else None)
        cells = [(a, o) for a in sorted(pool_a) for o in sorted(pool_o)
                 if (a, o) in allowed_set and (a, o) != required]
        if len(cells) + len(fixed) < m:
            continue
        chosen = fixed + [cells[i] for i in rng.permutation(len(cells))[:m - len(fixed)]]
        if all(_has_distractors(p, chosen) for p in chosen):
            break
    if len(chosen) < m:  # Pools too small for m compositions: draw them from everything allowed.
        rest = [p for p in allowed if p != required]
        chosen = (fixed + [rest[i] for i in rng.permutation(len(rest))])[:m]
    seq = chosen + [chosen[i] for i in rng.permutation(m)[:d]]
    for _ in range(100):  # Shuffle until equal compositions are not adjacent.
        order = [seq[i] for i in rng.permutation(n)]
        if all(x != y for x, y in zip(order, order[1:])):
            break
    return order


def _subset(rng: np.random.Generator, names: list[str], k: int, keep: str | None) -> set[str]:
    """A random subset of ``k`` names (all if fewer) that contains ``keep`` when given."""
    pool = {keep} if keep else set()
    others = [x for x in names if x != keep]
    pool.update(others[i] for i in rng.permutation(len(others))[:max(0, k - len(pool))])
    return pool


def _candidates(pairs: list[Pair], targets_ok: frozenset[Pair] | None) -> list[dict]:
    """Every (template, target) query with a unique answer over the event compositions ``pairs``.

    Args:
      pairs: compositions of the events in temporal order.
      targets_ok: compositions a target may have (None: any).

    Returns:
      Query field dicts (without qid, surface variant and parse).
    """
    n = len(pairs)
    counts = collections.Counter(pairs)
    out = []
    for t, p in enumerate(pairs):
        if targets_ok is not None and p not in targets_ok:
            continue
        base = {"action": p[0], "object": p[1], "target": t}
        if counts[p] == 1:
            if _has_distractors(p, list(counts)):
                out.append(dict(base, template="simple"))
            continue
        if counts[p] != 2:
            continue
        occ = [i for i, q in enumerate(pairs) if q == p]
        other = occ[1] if occ[0] == t else occ[0]
        out.append(dict(base, template="ordinal", ordinal=occ.index(t) + 1))
        if t > 0 and pairs[t - 1] != p and (other == 0 or pairs[other - 1] != pairs[t - 1]):
            ctx = {"context_action": pairs[t - 1][0], "context_object": pairs[t - 1][1]}
            out.append(dict(base, template="relation", relation="after", **ctx))
            out.append(dict(base, template="then", **ctx))
        if t + 1 < n and pairs[t + 1] != p and (other == n - 1 or pairs[other + 1] != pairs[t + 1]):
            ctx = {"context_action": pairs[t + 1][0], "context_object": pairs[t + 1][1]}
            out.append(dict(base, template="relation", relation="before", **ctx))
    return out


class _TemplateMix:
    """Picks query templates greedily towards the configured mix over a split."""

    def __init__(self, weights: Mapping[str, float]):
        total = sum(weights.values())
        self.share = {k: w / total for k, w in weights.items()}
        self.counts = collections.Counter()
        self.total = 0

    def pick(self, rng: np.random.Generator, available: set[str]) -> str:
        usable = sorted(t for t in available if self.share[t] > 0)
        if not usable:
            return ""
        deficit = {t: self.share[t] * (self.total + 1) - self.counts[t] for t in usable}
        best = max(deficit.values())
        tied = [t for t in usable if deficit[t] >= best - 1e-9]
        choice = tied[rng.integers(len(tied))]
        self.counts[choice] += 1
        self.total += 1
        return choice

    def single_share(self, num_queries: int) -> float:
        """The share of simple queries among the next ``num_queries`` that would restore the mix."""
        want = self.share["simple"] * (self.total + num_queries) - self.counts["simple"]
        return min(max(want / num_queries, 0.0), 1.0)


def _select_queries(rng: np.random.Generator, cfg: SyntheticConfig, cands: list[dict], mix: _TemplateMix,
                    max_queries: int, vid: str) -> tuple[Query, ...]:
    """Chooses up to ``max_queries`` candidates with distinct targets and writes their sentences.

    Targets are visited in uniformly random order, so every candidate event is
    equally likely to be a target whatever its length, position or
    composition; the template of each is then picked towards the mix among
    those the target allows.
    """
    queries: list[Query] = []
    targets = sorted({c["target"] for c in cands})
    for t in (targets[i] for i in rng.permutation(len(targets))):
        if len(queries) == max_queries:
            break
        own = [c for c in cands if c["target"] == t]
        template = mix.pick(rng, {c["template"] for c in own})
        if not template:
            continue
        options = [c for c in own if c["template"] == template]
        fields = dict(options[rng.integers(len(options))])
        if template == "relation":
            fields["clause"] = bool(rng.random() < cfg.relation_clause_prob)
        tokens, heads, labels = realise(
            template, fields["action"], fields["object"], ordinal=fields.get("ordinal", 0),
            relation=fields.get("relation", ""), context_action=fields.get("context_action", ""),
            context_object=fields.get("context_object", ""), clause=fields.get("clause", False))
        queries.append(Query(qid=f"{vid}-q{len(queries)}", tokens=tokens, dep_heads=heads, dep_labels=labels,
                             **fields))
    return tuple(queries)


def generate_videos(cfg: SyntheticConfig, split: str) -> list[Video]:
    """Generates the videos of ``split`` (deterministic for (cfg, split)), each checked by ``verify_video``.

    The videos hold ``cfg.split_size(split)`` queries in all.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _SPLIT_STREAM[split]]))
    act_vecs, obj_vecs, bg_vec = prototypes(cfg)
    act_index = {a[0]: i for i, a in enumerate(ACTIONS[:cfg.num_actions])}
    obj_index = {o: i for i, o in enumerate(OBJECTS[:cfg.num_objects])}
    heldout = heldout_pairs(cfg)
    everything = [(a, o) for a in act_index for o in obj_index]
    seen = [p for p in everything if p not in heldout]
    novel = split == "test_novel"
    allowed = everything if novel else seen
    targets_ok = heldout if novel else None
    mix = _TemplateMix(cfg.template_weights)
    remaining, misses = cfg.split_size(split), 0
    videos: list[Video] = []
    while remaining > 0:
        vid = f"{split}-{len(videos):06d}"
        t, starts, ends = _sample_layout(rng, cfg)
        required = sorted(heldout)[rng.integers(len(heldout))] if novel else None
        num_queries = min(cfg.queries_per_video, remaining)
        pairs = _sample_pairs(rng, cfg, len(starts), allowed, required, mix.single_share(num_queries))
        queries = _select_queries(rng, cfg, _candidates(pairs, targets_ok), mix, num_queries, vid)
        if not queries:  # Only when the template weights exclude every available candidate.
            misses += 1
            if misses > 1000:
                raise ValueError(f"{split}: the template weights {cfg.template_weights} allow no query")
            continue
        # Features: prototype per clip (background or action + object), plus video style and clip noise.
        protos = np.broadcast_to(bg_vec, (t, cfg.feature_dim)).copy()
        for (a, o), s, e in zip(pairs, starts, ends):
            protos[s:e] = act_vecs[act_index[a]] + obj_vecs[obj_index[o]]
        style = cfg.video_noise * rng.standard_normal(cfg.feature_dim, dtype=np.float32)
        noise = cfg.clip_noise * rng.standard_normal((t, cfg.feature_dim), dtype=np.float32)
        video = Video(vid=vid, clip_seconds=float(rng.uniform(cfg.min_clip_seconds, cfg.max_clip_seconds)),
                      features=(protos + style + noise).astype(np.float32),
                      events=tuple(Event(a, o, int(s), int(e)) for (a, o), s, e in zip(pairs, starts, ends)),
                      queries=queries)
        verify_video(video, heldout, novel, cfg.min_gap_clips)
        videos.append(video)
        remaining -= len(queries)
    return videos


def iter_examples(videos: Sequence[Video]) -> Iterator[schema.Example]:
    """Flattens videos into schema examples, in order."""
    for video in videos:
        yield from video.examples()


def generate_split(cfg: SyntheticConfig, split: str) -> list[schema.Example]:
    """The examples of ``split`` (deterministic for (cfg, split)); query_type is the template name."""
    return list(iter_examples(generate_videos(cfg, split)))


# ----------------------------------------------------------------------------- building


def _manifest_matches(data_dir: str, manifest: dict, config: dict, num_shards: int) -> bool:
    if not (manifest.get("dataset") == "synthetic" and manifest.get("config") == config
            and manifest.get("generator_version") == GENERATOR_VERSION
            and manifest.get("num_shards") == num_shards):
        return False
    paths = [p for s in SPLITS for p in schema.shard_paths(data_dir, s, num_shards)]
    return all(os.path.exists(p) for p in paths + [os.path.join(data_dir, "vocab.txt")])


def build(data_dir: str, cfg: SyntheticConfig = SyntheticConfig(), num_shards: int = 1) -> dict:
    """Builds the benchmark into ``data_dir`` and returns its manifest.

    Writes ``{split}.tfrecord-*`` for the four splits, ``vocab.txt`` (train tokens,
    plus, at the end, any grammar word train happens to miss, so nothing is OOV)
    and, last, ``manifest.json``. Idempotent: an existing manifest with the same
    config, generator version and sharding is returned without regenerating.
    The manifest is removed before a rebuild and written only once every file
    is in place, so a crash never leaves a manifest describing a partial build.
    """
    os.makedirs(data_dir, exist_ok=True)
    manifest_path = os.path.join(data_dir, "manifest.json")
    config = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if os.path.exists(manifest_path):
        try:
            with open(manifest_path, encoding="utf-8") as f:
                old = json.load(f)
        except ValueError:  # Unreadable: rebuild.
            old = {}
        if _manifest_matches(data_dir, old, config, num_shards):
            return old
        os.remove(manifest_path)

    num_examples, num_videos, query_types = {}, {}, {}
    train_tokens: list[tuple[str, ...]] = []
    for split in SPLITS:
        videos = generate_videos(cfg, split)
        queries = [q for v in videos for q in v.queries]
        if split == "train":
            train_tokens = [q.tokens for q in queries]
        schema.remove_stale_shards(data_dir, split, num_shards)
        num_examples[split] = schema.write_split(
            iter_examples(videos), data_dir, split, num_shards, source=f"synthetic:{split}")
        num_videos[split] = len(videos)
        query_types[split] = dict(sorted(collections.Counter(q.template for q in queries).items()))

    vocab = text.build_vocabulary(train_tokens)
    missing = [w for w in grammar_words(cfg) if w not in set(vocab)]
    vocab += missing
    tmp_vocab = os.path.join(data_dir, "vocab.txt.tmp")
    text.write_vocabulary(vocab, tmp_vocab)
    os.replace(tmp_vocab, os.path.join(data_dir, "vocab.txt"))

    manifest = {
        "dataset": "synthetic",
        "generator_version": GENERATOR_VERSION,
        "config": config,
        "num_shards": num_shards,
        "num_examples": num_examples,
        "num_videos": num_videos,
        "query_types": query_types,
        "feature_dim": cfg.feature_dim,
        "vocab_size": len(vocab),
        "words_missing_from_train": missing,
        "heldout_pairs": [list(p) for p in sorted(heldout_pairs(cfg))],
        "skipped": {},
        "fixed": {},
    }
    schema.write_text_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
