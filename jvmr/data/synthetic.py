"""The embedded grounding benchmark, v2 (dataset name ``synthetic``), generated procedurally.

Real clip features cannot be downloaded here, so the library's default dataset is
generated. It is built so that only reading the query, and sometimes reasoning
over the order of events, finds the answer; README.md ("The embedded benchmark")
lists its properties and the baselines that bound what rules and priors reach.

World. Actions and objects (the first ``num_actions`` / ``num_objects`` of
``ACTIONS`` / ``OBJECTS``) compose events. Their appearance is non-additive:

    e(a, o) = unit(a + o + interaction * unit(tanh(gain * (M_a a) * (M_o o))))

with fixed random unit prototypes (actions come in look-alike pairs, e.g. open /
close, with cosine ``action_similarity``) and fixed random matrices: an
additive model fitted on the seen compositions predicts an unseen one at
cosine ~0.78 only (it still shares its action and object). Between events the video shows one of several idle
states or a near-miss (an action's prototype without its object, e.g. reaching
for something). Every prototype is deterministic from ``seed`` and shared by all
splits.

Time. A video of T clips (log-uniform in [min_clips, max_clips]) of
``clip_seconds`` each holds 4-6 events of varied length (heavy-tailed, 6-60% of
the video), mostly adjacent with no gap. Appearance changes by a linear
crossfade of 0.5-3 clips around each boundary; a clip's feature is the mean
appearance over its time span, shifted towards the action or the object
(``view_jitter``), plus a per-video style offset, a per-event instance offset
and per-clip noise (one clip is ambiguous, an event is not). Ground truth is the
event's annotated span in continuous seconds, off the clip grid: the true span
with each boundary moved by annotator disagreement (``annotation_jitter``).

Language. Queries are sentences from a small grammar with several surface forms
per subject, action, object and relation word, parsed by the same spaCy path as
real data (``jvmr.data.parsing``; ``parser='gold'`` uses the grammar's own trees).
Query types (``Query.template``):

* simple: "the person opens the door" (the only such event; the video has a
  same-action and a same-object distractor);
* multi: a simple sentence whose composition occurs 2-3 times: every occurrence
  is a ground-truth span;
* ordinal: "... for the second / third time";
* relation: "... right after closing the box", "... before someone shuts the
  box"; always with a hard negative (the other occurrence on the opposite side
  of the context event), so the direction word decides;
* then: "someone shuts the box and then opens the door": one span over both
  events; the reversed order names another pair (``then_weight``; off by
  default, as it rarely has another answer of its words in 4-6 events);
* between: "... between washing the cup and lifting the bag";
* nested: "... after the person closes the box for the second time".

Splits. train, val, test and test_paraphrase draw compositions from the seen
ones; ``heldout_blocks`` 2 x 2 blocks of compositions (actions {a1, a2} x
objects {o1, o2}) never occur there. Every event of a ``test_novel`` video is a
held-out composition, so "pick the composition never seen in training" is a
random event. ``test_paraphrase`` videos are drawn like test, but each query
fronts its modifier ("after closing the box, the person opens the door"), a
construction that never occurs in the other splits (its words all do).

Every query also has ``min_alternatives`` other answers in its video among the
queries with the same words but other compositions (``signature``), so reading
a query's type, count and direction words without its actions and objects does
not find the target.

Targets. A video gets up to ``queries_per_video`` queries with distinct target
events, visited in uniformly random order among the events that some template
can describe uniquely, so that, given the video, every event is equally likely
to be a target whatever its length, position or appearance.

``build`` writes the splits as TFRecords of the real schema, ``vocab.txt``,
``{split}_videos.jsonl`` (each video's timeline and each query's semantics, for
``jvmr.baselines`` and tests; no model reads it) and ``manifest.json``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from jvmr.data import schema, text

GENERATOR_VERSION = 2
SPLITS = ("train", "val", "test", "test_novel", "test_paraphrase")
TEMPLATES = ("simple", "multi", "ordinal", "relation", "then", "between", "nested")
FRONTABLE = ("ordinal", "relation", "between", "nested")  # test_paraphrase's templates
PARSERS = ("spacy", "gold")
_SPLIT_STREAM = {"train": 1, "val": 2, "test": 3, "test_novel": 4, "test_paraphrase": 5}  # 0: prototypes

# Actions: (name, look-alike group, surface forms as (3rd person singular, gerund), particle last).
ACTIONS: tuple[tuple[str, int, tuple[tuple[str, str], ...]], ...] = (
    ("open", 0, (("opens", "opening"),)),
    ("close", 0, (("closes", "closing"), ("shuts", "shutting"))),
    ("lift", 1, (("lifts", "lifting"), ("picks up", "picking up"), ("raises", "raising"))),
    ("put down", 1, (("puts down", "putting down"), ("sets down", "setting down"))),
    ("wash", 2, (("washes", "washing"), ("rinses", "rinsing"))),
    ("wipe", 2, (("wipes", "wiping"), ("cleans", "cleaning"))),
    ("hold", 3, (("holds", "holding"), ("grips", "gripping"))),
    ("throw", 3, (("throws", "throwing"), ("tosses", "tossing"))),
    ("push", 4, (("pushes", "pushing"), ("shoves", "shoving"))),
    ("shake", 4, (("shakes", "shaking"),)),
    ("carry", 5, (("carries", "carrying"),)),
    ("drop", 5, (("drops", "dropping"),)),
)
OBJECTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("door", ("door",)), ("box", ("box", "carton")), ("cup", ("cup", "mug")), ("book", ("book", "notebook")),
    ("phone", ("phone", "cellphone")), ("bag", ("bag", "backpack")), ("towel", ("towel", "cloth")),
    ("bottle", ("bottle",)), ("laptop", ("laptop", "computer")), ("plate", ("plate", "dish")),
    ("shoe", ("shoe", "sneaker")), ("window", ("window",)),
)
SUBJECTS: tuple[tuple[str, ...], ...] = (
    ("the", "person"), ("a", "person"), ("the", "man"), ("the", "woman"), ("someone",), ("he",), ("she",))
# The last form of each relation is held out for test_paraphrase (its words occur in the other forms).
RELATION_WORDS = {"after": (("after",), ("just", "after"), ("right", "after")),
                  "before": (("before",), ("right", "before"), ("just", "before"))}
ORDINALS = ("first", "second", "third")

Pair = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the benchmark; the defaults are the library's default dataset.

    Sizes are numbers of queries; lengths are in clips of the video's own grid
    (models see it resampled or padded to ``dataset.max_video_len``).
    """

    seed: int = 0
    feature_dim: int = 128
    num_actions: int = 8
    num_objects: int = 8
    actions_per_video: int = 3  # A video's action pool (so actions and objects recur).
    objects_per_video: int = 3
    heldout_blocks: int = 4  # 2 x 2 blocks of compositions never seen outside test_novel.
    # Time.
    min_clips: int = 40
    max_clips: int = 256  # log-uniform in [min_clips, max_clips]
    min_clip_seconds: float = 0.5
    max_clip_seconds: float = 2.0
    min_events: int = 4  # 3-event videos cannot give every event a query with another answer of its words.
    max_events: int = 6
    max_repeats: int = 3  # Occurrences of one composition in a video.
    gap_prob: float = 0.25  # Background between two consecutive events (else adjacent).
    edge_gap_prob: float = 0.7  # Background before the first / after the last event.
    event_length_shape: float = 0.5  # Gamma shape of event lengths (smaller: more varied).
    gap_length_scale: float = 0.3  # Mean background stretch relative to an event's share (both above the minimum).
    min_event_fraction: float = 0.06  # Of the video.
    max_event_fraction: float = 0.6
    min_event_clips: float = 2.0
    min_blur_clips: float = 0.5  # Crossfade width at a boundary.
    max_blur_clips: float = 3.0
    # Appearance.
    interaction: float = 1.0  # Weight of the non-additive composition term.
    interaction_gain: float = 1.0
    action_similarity: float = 0.5  # Cosine between look-alike actions.
    num_idle_states: int = 4
    near_miss_prob: float = 0.4  # A background stretch shows a near-miss instead of an idle state.
    annotation_jitter: float = 0.15  # Std of each annotated boundary's shift, relative to the event length.
    view_jitter: float = 0.8  # A clip shows the action or the object more, by up to this much.
    clip_noise: float = 0.3  # Per-dimension std of the per-clip noise.
    instance_noise: float = 0.04  # Per-dimension std of each event's own offset.
    video_noise: float = 0.1  # Per-dimension std of the per-video style offset.
    # Queries.
    queries_per_video: int = 3
    min_alternatives: int = 1  # Other answers of a query's type / count / direction words in its video.
    simple_weight: float = 0.22  # Template mix (normalised).
    multi_weight: float = 0.06
    ordinal_weight: float = 0.18
    relation_weight: float = 0.24
    then_weight: float = 0.0  # Rarely has a hard negative and another answer in 4-6 events: off by default.
    between_weight: float = 0.1
    nested_weight: float = 0.12
    surface_variety: bool = True  # Synonyms, subjects and relation words vary (else the first form of each).
    parser: str = "spacy"  # 'spacy' (jvmr.data.parsing, as real data) or 'gold' (the grammar's trees).
    num_train: int = 12000
    num_val: int = 1000
    num_test: int = 5000
    num_test_novel: int = 2000
    num_test_paraphrase: int = 2000

    def __post_init__(self):
        def require(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"SyntheticConfig: {msg}")

        require(self.feature_dim >= 1, f"feature_dim must be >= 1, got {self.feature_dim}")
        require(2 <= self.num_actions <= len(ACTIONS), f"num_actions must be in [2, {len(ACTIONS)}]")
        require(2 <= self.num_objects <= len(OBJECTS), f"num_objects must be in [2, {len(OBJECTS)}]")
        require(2 <= self.actions_per_video and 2 <= self.objects_per_video,
                "actions_per_video and objects_per_video must be >= 2")
        require(0 <= 2 * self.heldout_blocks <= min(self.num_actions, self.num_objects),
                "heldout_blocks 2 x 2 blocks must fit in the actions and objects")
        require(self.num_test_novel == 0 or self.heldout_blocks >= 1,
                "test_novel needs held-out compositions: set heldout_blocks >= 1 or num_test_novel=0")
        require(3 <= self.min_events <= self.max_events, "need 3 <= min_events <= max_events")
        require(2 <= self.max_repeats <= 3, "max_repeats must be 2 or 3")
        require(1 <= self.min_clips <= self.max_clips, "need 1 <= min_clips <= max_clips")
        require(0 < self.min_clip_seconds <= self.max_clip_seconds, "need 0 < min_clip_seconds <= max_clip_seconds")
        require(0 < self.min_event_fraction < self.max_event_fraction <= 1, "need 0 < min < max event fraction <= 1")
        require(self.max_events * self.min_event_fraction < 1, "max_events events of min_event_fraction do not fit")
        require(self.min_events * max(self.min_event_clips, 1.0) <= self.min_clips,
                "min_events events of min_event_clips do not fit in min_clips")
        require(0 <= self.min_blur_clips <= self.max_blur_clips, "need 0 <= min_blur_clips <= max_blur_clips")
        require(min(self.gap_prob, self.edge_gap_prob, self.near_miss_prob) >= 0
                and max(self.gap_prob, self.edge_gap_prob, self.near_miss_prob) <= 1, "probabilities in [0, 1]")
        require(self.event_length_shape > 0 and self.gap_length_scale >= 0, "bad length distribution")
        require(-1 < self.action_similarity < 1, "action_similarity must be in (-1, 1)")
        require(self.num_idle_states >= 1, "num_idle_states must be >= 1")
        require(min(self.clip_noise, self.instance_noise, self.video_noise, self.interaction, self.view_jitter,
                    self.annotation_jitter) >= 0,
                "noise levels and interaction must be >= 0")
        require(self.queries_per_video >= 1, "queries_per_video must be >= 1")
        require(self.min_alternatives >= 0, "min_alternatives must be >= 0")
        weights = self.template_weights
        require(all(w >= 0 for w in weights.values()) and sum(weights.values()) > 0,
                "template weights must be >= 0 with a positive sum")
        require(self.num_test_paraphrase == 0 or sum(weights[t] for t in FRONTABLE) > 0,
                f"test_paraphrase needs one of {FRONTABLE} to have a positive weight")
        require(self.parser in PARSERS, f"parser must be one of {PARSERS}, got {self.parser!r}")
        require(min(self.split_size(s) for s in SPLITS) >= 0, "split sizes must be >= 0")

    @property
    def template_weights(self) -> dict[str, float]:
        return {t: getattr(self, f"{t}_weight") for t in TEMPLATES}

    def split_size(self, split: str) -> int:
        return getattr(self, f"num_{split}")


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
        if want == "bool":
            if not isinstance(value, bool):
                raise TypeError(f"synthetic option {key!r} must be a bool, got {value!r}")
            kwargs[key] = value
            continue
        if want == "str":
            if not isinstance(value, str):
                raise TypeError(f"synthetic option {key!r} must be a string, got {value!r}")
            kwargs[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"synthetic option {key!r} must be a number, got {value!r}")
        if want == "int":
            if not isinstance(value, int):
                raise TypeError(f"synthetic option {key!r} must be an int, got {value!r}")
            kwargs[key] = int(value)
        else:
            kwargs[key] = float(value)
    return SyntheticConfig(**kwargs)


# ----------------------------------------------------------------------------- data classes


@dataclasses.dataclass(frozen=True)
class Event:
    """One event: a composition over [start, end) seconds, annotated as [gt_start, gt_end].

    The annotation is the true span with each boundary moved by annotator
    disagreement (``SyntheticConfig.annotation_jitter``); ground truth is the annotation.
    """

    action: str
    object: str
    start: float
    end: float
    gt_start: float
    gt_end: float

    @property
    def pair(self) -> Pair:
        return (self.action, self.object)


@dataclasses.dataclass(frozen=True)
class Segment:
    """A stretch of a video's timeline: an event (``index`` into the events), an idle state or a near-miss.

    ``state`` is the idle state's index, or the near-miss action's index in ``ACTIONS``.
    """

    kind: str  # 'event' | 'idle' | 'near_miss'
    start: float
    end: float
    index: int = -1
    state: int = -1


@dataclasses.dataclass(frozen=True)
class Query:
    """A query: its semantics, its target events, and its sentence with its parse.

    ``targets`` are event indices; the ground truth is one span per target, or
    one span over all of them when ``hull`` ("then"). ``context`` holds the
    compositions the query refers to besides its own (relation / then / nested:
    one; between: two). ``ordinal`` counts the target's occurrences (ordinal)
    or the context's (nested). ``hard_negative`` marks relation / then / nested
    queries whose answer changes with the direction word. ``surface`` records
    the surface choices, so ``realise`` rewrites exactly the same words.
    """

    qid: str
    template: str
    action: str
    object: str
    target: int  # The query's own event (the later one of "then"): distinct within a video.
    targets: tuple[int, ...]
    hull: bool = False
    ordinal: int = 0
    relation: str = ""
    context: tuple[Pair, ...] = ()
    fronted: bool = False
    hard_negative: bool = False
    surface: tuple[tuple[str, int], ...] = ()
    text: str = ""
    tokens: tuple[str, ...] = ()
    dep_heads: tuple[int, ...] = ()
    dep_labels: tuple[str, ...] = ()

    def semantics(self) -> dict[str, Any]:
        """The JSON-able fields ``resolve`` reads."""
        return {"template": self.template, "action": self.action, "object": self.object,
                "ordinal": self.ordinal, "relation": self.relation, "context": [list(c) for c in self.context]}


@dataclasses.dataclass(frozen=True)
class Video:
    """A generated video: features [T, D] float32, its timeline and events, its queries."""

    vid: str
    clip_seconds: float
    features: np.ndarray
    events: tuple[Event, ...]
    segments: tuple[Segment, ...]
    queries: tuple[Query, ...]

    @property
    def num_clips(self) -> int:
        return int(self.features.shape[0])

    @property
    def duration(self) -> float:
        return self.num_clips * self.clip_seconds

    def gt_spans(self, query: Query) -> np.ndarray:
        """[G, 2] float32 seconds: one span per target, or their hull."""
        spans = [(self.events[i].gt_start, self.events[i].gt_end) for i in query.targets]
        if query.hull:
            spans = [(min(s for s, _ in spans), max(e for _, e in spans))]
        return np.asarray(spans, np.float32)

    def examples(self) -> list[schema.Example]:
        """One schema example per query (they share the feature array)."""
        return [schema.Example(
            qid=q.qid, vid=self.vid, duration=self.duration, query=q.text, tokens=list(q.tokens),
            dep_heads=list(q.dep_heads), dep_labels=list(q.dep_labels), gt_spans=self.gt_spans(q),
            video_features=self.features, query_type=q.template) for q in self.queries]

    def record(self) -> dict[str, Any]:
        """The JSON line of ``{split}_videos.jsonl``: timeline, events and query semantics."""
        return {
            "vid": self.vid, "duration": self.duration, "clip_seconds": self.clip_seconds,
            "num_clips": self.num_clips,
            "events": [dataclasses.asdict(e) for e in self.events],
            "segments": [dataclasses.asdict(s) for s in self.segments],
            "queries": [{"qid": q.qid, "text": q.text, "target": q.target, "targets": list(q.targets), "hull": q.hull,
                         "fronted": q.fronted, "hard_negative": q.hard_negative, **q.semantics()}
                        for q in self.queries],
        }


def events_from_record(record: Mapping[str, Any]) -> list[Event]:
    return [Event(**e) for e in record["events"]]


# ----------------------------------------------------------------------------- semantics


def resolve(pairs: Sequence[Pair], query: Mapping[str, Any] | Query) -> tuple[int, ...]:
    """The grammar's semantics: every event index that ``query`` describes, over the event compositions.

    ``query`` is a ``Query`` or its ``semantics()`` dict. A well-formed query
    resolves to exactly its targets ("then": the context event and the target).
    """
    q = query.semantics() if isinstance(query, Query) else query
    pairs = [tuple(p) for p in pairs]
    x = (q["action"], q["object"])
    ctx = [tuple(c) for c in q.get("context", ())]
    occ = [i for i, p in enumerate(pairs) if p == x]
    n, kind, rel = len(pairs), q["template"], q.get("relation", "")
    if kind in ("simple", "multi"):
        return tuple(occ)
    if kind == "ordinal":
        k = q["ordinal"]
        return (occ[k - 1],) if len(occ) >= k else ()
    if kind == "then":
        return tuple(j for i in occ if i > 0 and pairs[i - 1] == ctx[0] for j in (i - 1, i))
    if kind == "relation":
        step = -1 if rel == "after" else 1
        return tuple(i for i in occ if 0 <= i + step < n and pairs[i + step] == ctx[0])
    if kind == "between":
        return tuple(i for i in occ if ctx[0] in pairs[:i] and ctx[1] in pairs[i + 1:])
    if kind == "nested":
        c_occ = [i for i, p in enumerate(pairs) if p == ctx[0]]
        k = q["ordinal"]
        if len(c_occ) < k:
            return ()
        i = c_occ[k - 1] + (1 if rel == "after" else -1)
        return (i,) if 0 <= i < n and pairs[i] == x else ()
    raise ValueError(f"unknown template {kind!r}")


def _has_distractors(pair: Pair, pairs: Sequence[Pair]) -> bool:
    """Whether ``pairs`` holds the same action with another object and the same object with another action."""
    return (any(p[0] == pair[0] and p[1] != pair[1] for p in pairs)
            and any(p[1] == pair[1] and p[0] != pair[0] for p in pairs))


def candidates(pairs: Sequence[Pair], min_alternatives: int = 0) -> dict[int, list[dict[str, Any]]]:
    """Every query with a unique answer over the event compositions ``pairs``, by target event.

    A relation or then query must have a hard negative (the other direction /
    order names another event), so that ignoring "before" / "after" fails; a
    query must have at least ``min_alternatives`` other answers among the
    video's queries of the same ``signature`` (same type, count and direction
    words, other compositions), so that its compositions must be read.

    Returns:
      ``{event index: [semantics dict + targets, hull, hard_negative, alternatives], ...}``;
      the index is the query's own event (for "then", the later one).
    """
    n = len(pairs)
    counts = collections.Counter(pairs)
    out: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)

    def add(t: int, **fields) -> None:
        q = {"template": fields.pop("template"), "action": pairs[t][0], "object": pairs[t][1], "ordinal": 0,
             "relation": "", "context": [], **fields}
        got = resolve(pairs, q)
        want = (t - 1, t) if q["template"] == "then" else (t,)
        if q["template"] == "multi":
            want = tuple(i for i, p in enumerate(pairs) if p == pairs[t])
        hard = _hard_negative(pairs, q, got)
        if got == want and (hard or q["template"] not in ("relation", "then")):
            out[t].append(dict(q, targets=got, hull=q["template"] == "then", hard_negative=hard))

    for t, x in enumerate(pairs):
        occ = [i for i, p in enumerate(pairs) if p == x]
        if counts[x] == 1:
            if _has_distractors(x, list(counts)):
                add(t, template="simple")
        else:
            add(t, template="multi")  # At every occurrence, so that it takes no position's targets.
            add(t, template="ordinal", ordinal=occ.index(t) + 1)
            for before in pairs[:t]:
                for after in pairs[t + 1:]:
                    if before != x and after != x and before != after:
                        add(t, template="between", context=[list(before), list(after)])
        for rel, step in (("after", -1), ("before", 1)):
            if 0 <= t + step < n:
                c = pairs[t + step]
                add(t, template="relation", relation=rel, context=[list(c)])
                if rel == "after":
                    add(t, template="then", context=[list(c)])
                c_occ = [i for i, p in enumerate(pairs) if p == c]
                plain = {"template": "relation", "action": x[0], "object": x[1], "relation": rel, "context": [c]}
                if len(c_occ) >= 2 and len(resolve(pairs, plain)) >= 2:  # The count is needed.
                    add(t, template="nested", relation=rel, context=[list(c)], ordinal=c_occ.index(t + step) + 1)
    # "between" and "nested" list each context once.
    for t in out:
        seen, unique = set(), []
        for q in out[t]:
            key = _key(q)
            if key not in seen:
                seen.add(key)
                unique.append(q)
        out[t] = unique
    # Another instantiation of the same words but the compositions answers elsewhere.
    answers = _answers(out)
    kept = {t: [dict(q, alternatives=len(answers[signature(q)]) - 1) for q in qs] for t, qs in out.items()}
    kept = {t: [q for q in qs if q["alternatives"] >= min_alternatives] for t, qs in kept.items()}
    return {t: qs for t, qs in kept.items() if qs}


def _answers(cands: Mapping[int, Sequence[Mapping[str, Any]]]) -> dict[tuple, set[tuple[int, ...]]]:
    """Per ``signature``, the target tuples of the queries in ``cands``."""
    answers: dict[tuple, set] = collections.defaultdict(set)
    for qs in cands.values():
        for q in qs:
            answers[signature(q)].add(tuple(q["targets"]))
    return dict(answers)


def _key(q: Mapping[str, Any]) -> str:
    """A query's semantics (template, compositions, count, direction) as a string."""
    return json.dumps({k: q[k] for k in ("template", "action", "object", "relation", "context", "ordinal")})


def signature(q: Mapping[str, Any]) -> tuple[str, int, str]:
    """What a query says besides its compositions: (template, ordinal, relation).

    A model that reads the query's type and direction / count words but not its
    actions and objects can only pick among the answers of a video's queries
    with the same signature (``jvmr.baselines``' ``structure_only``).
    """
    return (q["template"], int(q.get("ordinal", 0)), q.get("relation", ""))


def _hard_negative(pairs: Sequence[Pair], q: Mapping[str, Any], targets: tuple[int, ...]) -> bool:
    """Relation / then / nested: whether the opposite direction word names another event."""
    if q["template"] not in ("relation", "then", "nested"):
        return False
    rel = "after" if q["template"] == "then" else q["relation"]
    flipped = dict(q, template="relation" if q["template"] == "then" else q["template"],
                   relation="before" if rel == "after" else "after")
    other = resolve(pairs, flipped)
    return bool(other) and not set(other) & set(targets)


# ----------------------------------------------------------------------------- grammar


class _Tree:
    """A dependency tree under construction: words, heads (-1 root) and labels."""

    def __init__(self, words: Sequence[str], heads: Sequence[int], labels: Sequence[str]):
        self.words, self.heads, self.labels = list(words), list(heads), list(labels)

    @property
    def root(self) -> int:
        return self.heads.index(-1)

    def attach(self, child: "_Tree", label: str, head: int | None = None, before: bool = False) -> "_Tree":
        """``child`` (its root labelled ``label``) under word ``head`` (default: the root), placed before/after."""
        head = self.root if head is None else head
        if before:
            off = len(child.words)
            heads = [h + off if h >= 0 else -1 for h in self.heads]
            c_heads = [h if h >= 0 else head + off for h in child.heads]
            c_labels = [lab if h >= 0 else label for h, lab in zip(child.heads, child.labels)]
            return _Tree(child.words + self.words, c_heads + heads, c_labels + self.labels)
        off = len(self.words)
        c_heads = [h + off if h >= 0 else head for h in child.heads]
        c_labels = [lab if h >= 0 else label for h, lab in zip(child.heads, child.labels)]
        return _Tree(self.words + child.words, self.heads + c_heads, self.labels + c_labels)


def _word(w: str) -> _Tree:
    return _Tree([w], [-1], ["root"])


def _noun_phrase(words: Sequence[str]) -> _Tree:
    """'the cup' / 'someone': determiner (det) + noun."""
    tree = _word(words[-1])
    for w in reversed(words[:-1]):
        tree = tree.attach(_word(w), "det", before=True)
    return tree


def _verb_phrase(verb: str, obj: Sequence[str]) -> _Tree:
    """'picks up the cup': verb (+ prt) + dobj."""
    parts = verb.split()
    tree = _word(parts[0])
    for p in parts[1:]:
        tree = tree.attach(_word(p), "prt")
    return tree.attach(_noun_phrase(("the",) + tuple(obj)), "dobj")


def _clause(subject: Sequence[str], verb: str, obj: Sequence[str]) -> _Tree:
    return _verb_phrase(verb, obj).attach(_noun_phrase(subject), "nsubj", before=True)


def _ordinal_phrase(k: int) -> _Tree:
    """'for the second time': for (prep) -> time (pobj) -> the (det), second (amod)."""
    time = _word("time").attach(_word(ORDINALS[k - 1]), "amod", before=True).attach(_word("the"), "det", before=True)
    return _word("for").attach(time, "pobj")


def _relation_word(words: Sequence[str]) -> _Tree:
    tree = _word(words[-1])
    return tree.attach(_word(words[0]), "advmod", before=True) if len(words) > 1 else tree


@dataclasses.dataclass(frozen=True)
class Lexicon:
    """The surface forms of the configured actions and objects."""

    actions: Mapping[str, tuple[tuple[str, str], ...]]
    groups: Mapping[str, int]
    objects: Mapping[str, tuple[str, ...]]

    @staticmethod
    def of(cfg: SyntheticConfig) -> "Lexicon":
        acts = ACTIONS[:cfg.num_actions]
        return Lexicon({a: forms for a, _, forms in acts}, {a: g for a, g, _ in acts},
                       {o: forms for o, forms in OBJECTS[:cfg.num_objects]})

    def words(self) -> list[str]:
        """Every word the grammar can produce (sorted)."""
        out = {"the", "a", "for", "time", "and", "then", "between", *ORDINALS}
        out |= {w for s in SUBJECTS for w in s} | {w for r in RELATION_WORDS.values() for f in r for w in f}
        for forms in self.actions.values():
            out |= {w for third, gerund in forms for w in (third + " " + gerund).split()}
        out |= {w for forms in self.objects.values() for w in forms}
        return sorted(out)


def surface_choices(rng: np.random.Generator, lex: Lexicon, q: Mapping[str, Any], variety: bool = True,
                    paraphrase: bool = False) -> tuple[tuple[str, int], ...]:
    """Draws the surface form of every slot a query's sentence has (the first of each without ``variety``).

    Outside ``paraphrase`` the held-out relation form (the last of ``RELATION_WORDS``)
    is never drawn; with it, the construction (``construction`` 1: "the second time
    ...", "after ... and before ...") may be the held-out alternative one.
    """
    pairs = [(q["action"], q["object"])] + [tuple(c) for c in q.get("context", ())]
    pick = (lambda n: int(rng.integers(n))) if variety else (lambda n: 0)  # noqa: E731
    out = [("subject", pick(len(SUBJECTS)))]
    for i, (a, o) in enumerate(pairs):
        out.append((f"verb{i}", pick(len(lex.actions[a]))))
        out.append((f"object{i}", pick(len(lex.objects[o]))))
    if q["template"] in ("relation", "nested"):
        out.append(("relation", pick(3 if paraphrase else 2)))
        out.append(("subject_ctx", pick(len(SUBJECTS))))
        out.append(("clause", int(q["template"] == "nested" or rng.random() < 0.5)))
    if paraphrase and q["template"] in ("ordinal", "between"):
        out.append(("construction", int(rng.random() < 0.5)))
    return tuple(out)


def realise(lex: Lexicon, q: Mapping[str, Any], surface: Sequence[tuple[str, int]],
            fronted: bool = False) -> tuple[str, _Tree]:
    """Writes a query's sentence (with a comma after a fronted modifier) and its gold tree (no punctuation)."""
    s = dict(surface)
    pairs = [(q["action"], q["object"])] + [tuple(c) for c in q.get("context", ())]
    verbs = [lex.actions[a][s[f"verb{i}"]] for i, (a, _) in enumerate(pairs)]
    objs = [(lex.objects[o][s[f"object{i}"]],) for i, (_, o) in enumerate(pairs)]
    subject = SUBJECTS[s["subject"]]
    kind = q["template"]
    if kind == "then":  # someone shuts the box and then opens the door: root = first verb.
        first = _clause(subject, verbs[1][0], objs[1])
        second = _verb_phrase(verbs[0][0], objs[0]).attach(_word("then"), "advmod", before=True)
        tree = first.attach(_word("and"), "cc").attach(second, "conj")
        return " ".join(tree.words), tree
    main = _clause(subject, verbs[0][0], objs[0])
    if kind in ("simple", "multi"):
        return " ".join(main.words), main
    alternative = s.get("construction", 0) == 1
    if kind == "ordinal" and alternative:  # the second time someone opens the door
        time = _ordinal_phrase(q["ordinal"])
        tree = main.attach(_Tree(time.words[1:], [h - 1 if h > 0 else -1 for h in time.heads[1:]],
                                 time.labels[1:]), "npadvmod", before=True)
        return " ".join(tree.words), tree
    if kind == "ordinal":
        modifier, label = _ordinal_phrase(q["ordinal"]), "prep"
    elif kind == "between" and alternative:  # after washing the cup and before lifting the bag
        before = _word("before").attach(_verb_phrase(verbs[2][1], objs[2]), "pcomp")
        modifier = _word("after").attach(_verb_phrase(verbs[1][1], objs[1]), "pcomp")
        modifier, label = modifier.attach(_word("and"), "cc").attach(before, "conj"), "prep"
    elif kind == "between":  # between washing the cup and lifting the bag
        first = _verb_phrase(verbs[1][1], objs[1])
        first = first.attach(_word("and"), "cc").attach(_verb_phrase(verbs[2][1], objs[2]), "conj")
        modifier, label = _word("between").attach(first, "pcomp"), "prep"
    elif kind in ("relation", "nested"):
        rel = _relation_word(RELATION_WORDS[q["relation"]][s["relation"]])
        if s["clause"]:  # after the person closes the box [for the second time]
            clause = _clause(SUBJECTS[s["subject_ctx"]], verbs[1][0], objs[1])
            if kind == "nested":
                clause = clause.attach(_ordinal_phrase(q["ordinal"]), "prep")
            modifier, label = clause.attach(rel, "mark", before=True), "advcl"
        else:  # after closing the box
            modifier, label = rel.attach(_verb_phrase(verbs[1][1], objs[1]), "pcomp"), "prep"
    else:
        raise ValueError(f"unknown template {kind!r}")
    tree = main.attach(modifier, label, before=fronted)
    if not fronted:
        return " ".join(tree.words), tree
    cut = len(modifier.words)
    return " ".join(tree.words[:cut]) + ", " + " ".join(tree.words[cut:]), tree


@functools.lru_cache(maxsize=None)
def _spacy_parser():
    from jvmr.data import parsing
    return parsing.DependencyParser()


def parse_texts(texts: Sequence[str]) -> list[tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]]:
    """spaCy parses (``jvmr.data.parsing``, the real-data path) of ``texts``, each distinct text parsed once."""
    unique = sorted(set(texts))
    try:
        parsed = dict(zip(unique, _spacy_parser().parse(unique)))
    except (ImportError, OSError) as e:
        raise type(e)(f"{e}\nThe embedded benchmark parses its queries with spaCy by default; install the "
                      "project with its 'data' extra (README) or set --config.dataset.synthetic.parser=gold") from e
    out = []
    for t in texts:
        p = parsed[t]
        if not p.tokens:
            raise ValueError(f"spaCy returned no tokens for the generated query {t!r}")
        out.append((tuple(p.tokens), tuple(p.heads), tuple(p.labels)))
    return out


# ----------------------------------------------------------------------------- appearance


def heldout_blocks(cfg: SyntheticConfig) -> tuple[tuple[Pair, ...], ...]:
    """The held-out 2 x 2 blocks of compositions: deterministic from ``cfg.seed``, disjoint in actions and objects."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0, 1]))
    actions = [ACTIONS[i][0] for i in rng.permutation(cfg.num_actions)]
    objects = [OBJECTS[i][0] for i in rng.permutation(cfg.num_objects)]
    return tuple(tuple((actions[2 * b + i], objects[2 * b + j]) for i in range(2) for j in range(2))
                 for b in range(cfg.heldout_blocks))


def heldout_pairs(cfg: SyntheticConfig) -> frozenset[Pair]:
    return frozenset(p for block in heldout_blocks(cfg) for p in block)


@dataclasses.dataclass(frozen=True)
class Prototypes:
    """Fixed appearance vectors (unit norm, [*, D] float32), shared by every split."""

    actions: np.ndarray  # [A, D]
    objects: np.ndarray  # [O, D]
    compositions: np.ndarray  # [A, O, D] e(a, o)
    views: np.ndarray  # [A, O, D] (a - o) / |a + o + interaction * phi|: shifts e(a, o) towards a or o
    idle: np.ndarray  # [I, D]
    near_miss: np.ndarray  # [A, D]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def prototypes(cfg: SyntheticConfig) -> Prototypes:
    """The world's appearance (see the module docstring)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0, 0]))
    d = cfg.feature_dim
    n_groups = 1 + max(g for _, g, _ in ACTIONS)
    base = _unit(rng.standard_normal((len(ACTIONS), d)))
    shared = _unit(rng.standard_normal((n_groups, d)))
    # unit(u + beta s) has cosine beta^2 / (1 + beta^2) with its look-alike.
    beta = math.sqrt(cfg.action_similarity / (1 - cfg.action_similarity)) if cfg.action_similarity > 0 else 0.0
    groups = np.asarray([g for _, g, _ in ACTIONS])
    actions = _unit(base + beta * shared[groups])[:cfg.num_actions]
    objects = _unit(rng.standard_normal((len(OBJECTS), d)))[:cfg.num_objects]
    m_a = rng.standard_normal((d, d))  # pre-activations ~ N(0, 1) per unit: tanh(gain * .) saturates
    m_o = rng.standard_normal((d, d))
    inter = _unit(np.tanh(cfg.interaction_gain * (actions @ m_a.T)[:, None, :] * (objects @ m_o.T)[None, :, :]))
    raw = actions[:, None, :] + objects[None, :, :] + cfg.interaction * inter
    norm = np.linalg.norm(raw, axis=-1, keepdims=True)
    comps = raw / norm
    views = (actions[:, None, :] - objects[None, :, :]) / norm
    idle = _unit(rng.standard_normal((cfg.num_idle_states, d)))
    near = _unit(actions + _unit(rng.standard_normal((cfg.num_actions, d))))
    f32 = lambda x: np.ascontiguousarray(x, np.float32)  # noqa: E731
    return Prototypes(f32(actions), f32(objects), f32(comps), f32(views), f32(idle), f32(near))


def clip_weights(boundaries: np.ndarray, half_widths: np.ndarray, num_segments: int, num_clips: int,
                 clip_seconds: float) -> np.ndarray:
    """[T, S] share of each segment in each clip's time span, with linear crossfades at the boundaries (exact).

    Across boundary k the fade lambda_k(t) rises linearly from 0 to 1 over
    [b_k - h_k, b_k + h_k] (a step when h_k = 0); segment s weighs
    lambda_{s-1}(t) - lambda_s(t) (crossfades never overlap), and a clip's share
    is that weight's mean over the clip, integrated in closed form.

    Args:
      boundaries: [S - 1] seconds between consecutive segments (increasing).
      half_widths: [S - 1] half-width of each crossfade (seconds; 0 = a cut).
      num_segments: S.
      num_clips: T.
      clip_seconds: clip length.
    """
    edges = np.arange(num_clips + 1, dtype=np.float64) * clip_seconds
    b = np.asarray(boundaries, np.float64)[:, None]
    h = np.asarray(half_widths, np.float64)[:, None]
    x = edges[None, :] - (b - h)  # time since the fade began
    ramp = np.where(h > 0, np.clip(x, 0, 2 * h) ** 2 / np.maximum(4 * h, 1e-300), 0.0)
    integral = ramp + np.maximum(x - 2 * h, 0.0)  # int_{-inf}^{t} lambda_k
    mean_fade = np.diff(integral, axis=1) / clip_seconds  # [S - 1, T]
    fades = np.concatenate([np.ones((1, num_clips)), mean_fade, np.zeros((1, num_clips))])
    assert fades.shape[0] == num_segments + 1
    return (fades[:-1] - fades[1:]).T


# ----------------------------------------------------------------------------- generation


class _TemplateMix:
    """Picks query templates greedily towards the configured mix over a split."""

    def __init__(self, weights: Mapping[str, float]):
        total = sum(weights.values())
        self.share = {k: w / total for k, w in weights.items()}
        self.counts: collections.Counter = collections.Counter()
        self.total = 0

    def deficit(self, template: str) -> float:
        return self.share[template] * (self.total + 1) - self.counts[template]

    def pick(self, rng: np.random.Generator, available: set[str]) -> str:
        usable = sorted(t for t in available if self.share.get(t, 0) > 0)
        if not usable:
            return ""
        best = max(self.deficit(t) for t in usable)
        tied = [t for t in usable if self.deficit(t) >= best - 1e-9]
        choice = tied[rng.integers(len(tied))]
        self.counts[choice] += 1
        self.total += 1
        return choice


def _sample_compositions(rng: np.random.Generator, cfg: SyntheticConfig, n: int, cells: list[Pair],
                         all_repeated: bool = False) -> list[Pair]:
    """n event compositions from ``cells``: m distinct ones, some repeated (<= max_repeats), distractors preferred.

    With ``all_repeated`` every one of the m compositions occurs at least twice.
    """
    lo = max(2, math.ceil(n / cfg.max_repeats))
    hi = min(n // 2 if all_repeated else n, len(cells))
    if lo > hi:
        return []
    m = hi if rng.random() < 0.15 else int(rng.integers(lo, max(lo, hi - 1) + 1))
    chosen: list[Pair] = []
    for _ in range(30):
        chosen = [cells[i] for i in rng.permutation(len(cells))[:m]]
        if all(_has_distractors(p, chosen) for p in chosen):
            break
    counts = [2 if all_repeated else 1] * m
    for _ in range(n - sum(counts)):
        open_ = [i for i in range(m) if counts[i] < cfg.max_repeats]
        counts[open_[rng.integers(len(open_))]] += 1
    return [p for p, c in zip(chosen, counts) for _ in range(c)]


def _order(rng: np.random.Generator, multiset: list[Pair], plant: bool = False, tries: int = 50) -> list[Pair] | None:
    """A random order of ``multiset`` with no two equal compositions in a row (None if none was found).

    With ``plant``, a pattern X C X (a composition twice around another) is placed
    at a random position first: it gives relation queries their hard negative.
    """
    repeated = sorted({p for p in multiset if multiset.count(p) >= 2})
    for _ in range(tries):
        if plant and repeated and len(set(multiset)) >= 2:
            x = repeated[rng.integers(len(repeated))]
            others = sorted(set(multiset) - {x})
            c = others[rng.integers(len(others))]
            rest = list(multiset)
            for p in (x, c, x):
                rest.remove(p)
            rest = [rest[i] for i in rng.permutation(len(rest))]
            at = int(rng.integers(len(rest) + 1))
            order = rest[:at] + [x, c, x] + rest[at:]
        else:
            order = [multiset[i] for i in rng.permutation(len(multiset))]
        if all(a != b for a, b in zip(order, order[1:])):
            return order
    return None


def _sample_timeline(rng: np.random.Generator, cfg: SyntheticConfig, n: int, num_clips: int,
                     clip_seconds: float) -> tuple[list[tuple[str, float, float]], np.ndarray]:
    """Segments [(kind, start, end)] in seconds ('event' / 'gap') covering the video, and crossfade half-widths."""
    duration = num_clips * clip_seconds
    kinds = []
    if rng.random() < cfg.edge_gap_prob:
        kinds.append("gap")
    for i in range(n):
        kinds.append("event")
        if i < n - 1 and rng.random() < cfg.gap_prob:
            kinds.append("gap")
    if rng.random() < cfg.edge_gap_prob:
        kinds.append("gap")
    is_event = np.asarray([k == "event" for k in kinds])
    min_len = max(cfg.min_event_fraction * duration, cfg.min_event_clips * clip_seconds)
    max_len = cfg.max_event_fraction * duration
    for _ in range(100):  # Each event: the minimum plus a share of the rest; gaps: a share of the rest.
        w = np.where(is_event, rng.gamma(cfg.event_length_shape, 1.0, len(kinds)),
                     rng.gamma(1.0, cfg.gap_length_scale * cfg.event_length_shape, len(kinds)))
        lengths = w / w.sum() * (duration - n * min_len) + np.where(is_event, min_len, 0.0)
        if lengths[is_event].max() <= max_len:
            break
    else:  # Cap the longest events; what they lose goes to the gaps (or to the other events).
        for _ in range(20):
            excess = np.maximum(lengths - max_len, 0.0) * is_event
            if excess.sum() <= 1e-9:
                break
            lengths -= excess
            take = ~is_event if (~is_event).any() else is_event & (lengths < max_len)
            lengths[take] += excess.sum() * w[take] / w[take].sum()
    ends = np.cumsum(lengths)
    ends[-1] = duration
    starts = np.concatenate([[0.0], ends[:-1]])
    blur = rng.uniform(cfg.min_blur_clips, cfg.max_blur_clips, len(kinds) - 1) * clip_seconds / 2
    blur = np.minimum(blur, 0.4 * np.minimum(lengths[:-1], lengths[1:]))
    return [(k, float(s), float(e)) for k, s, e in zip(kinds, starts, ends)], blur


def _render(rng: np.random.Generator, cfg: SyntheticConfig, protos: Prototypes, lex: Lexicon,
            pairs: list[Pair], timeline: list[tuple[str, float, float]], blur: np.ndarray, num_clips: int,
            clip_seconds: float, pool_actions: list[str]) -> tuple[np.ndarray, tuple[Segment, ...]]:
    """Clip features [T, D] of a timeline and its segments."""
    action_index = {a: i for i, a in enumerate(lex.actions)}
    object_index = {o: i for i, o in enumerate(lex.objects)}
    appearance, views, segments, e = [], [], [], 0
    for kind, s, t in timeline:
        view = np.zeros(cfg.feature_dim)
        if kind == "event":
            a, o = pairs[e]
            vec = protos.compositions[action_index[a], object_index[o]]
            view = protos.views[action_index[a], object_index[o]]
            segments.append(Segment("event", s, t, index=e))
            e += 1
        elif rng.random() < cfg.near_miss_prob:
            k = action_index[pool_actions[rng.integers(len(pool_actions))]]
            vec = protos.near_miss[k]
            segments.append(Segment("near_miss", s, t, state=k))
        else:
            k = int(rng.integers(len(protos.idle)))
            vec = protos.idle[k]
            segments.append(Segment("idle", s, t, state=k))
        appearance.append(vec + cfg.instance_noise * rng.standard_normal(cfg.feature_dim))
        views.append(view)
    bounds = np.asarray([s for _, s, _ in timeline[1:]])
    w = clip_weights(bounds, blur, len(timeline), num_clips, clip_seconds)
    # Each clip shows the action or the object more (e(a, o) + v (a - o) / |.|, v ~ U(-jitter, jitter)).
    visibility = cfg.view_jitter * rng.uniform(-1.0, 1.0, num_clips)
    style = cfg.video_noise * rng.standard_normal(cfg.feature_dim)
    noise = cfg.clip_noise * rng.standard_normal((num_clips, cfg.feature_dim))
    feats = w @ np.asarray(appearance) + (w * visibility[:, None]) @ np.asarray(views) + style + noise
    return feats.astype(np.float32), tuple(segments)


def _annotate(rng: np.random.Generator, cfg: SyntheticConfig, start: float, end: float,
              duration: float) -> tuple[float, float]:
    """An annotator's span of the event [start, end): each boundary moved by N(0, (jitter * length)^2),
    at most a quarter of the length, inside the video."""
    length = end - start
    shift = np.clip(rng.normal(0.0, cfg.annotation_jitter * length, 2), -0.25 * length, 0.25 * length)
    return float(max(start + shift[0], 0.0)), float(min(end + shift[1], duration))


def _pick_order(rng: np.random.Generator, multiset: list[Pair], mix: _TemplateMix,
                allowed_templates: set[str], min_alternatives: int, tries: int = 8) -> tuple[list[Pair], dict] | None:
    """Of a few random orders (half with a planted X C X), the one whose candidates best serve the
    templates the mix lacks, among those where every event can be described (None if there is none)."""
    best, best_score = None, -math.inf
    for i in range(tries):
        order = _order(rng, multiset, plant=bool(i % 2))
        if order is None:
            return None
        cands = candidates(order, min_alternatives)
        if not all(any(q["template"] in allowed_templates for q in cands.get(t, ())) for t in range(len(order))):
            continue  # A target is drawn among all events: each must have a query.
        avail = collections.Counter(q["template"] for qs in cands.values() for q in qs
                                    if q["template"] in allowed_templates)
        hard = sum(q["hard_negative"] for qs in cands.values() for q in qs)
        score = sum(max(mix.deficit(t), 0.0) + 0.05 for t in avail) + 0.01 * hard + 0.02 * len(cands)
        if score > best_score:
            best, best_score = (order, cands), score
    return best


def _select_queries(rng: np.random.Generator, cfg: SyntheticConfig, lex: Lexicon, cands: dict[int, list[dict]],
                    mix: _TemplateMix, allowed: set[str], max_queries: int, vid: str,
                    fronted: bool) -> list[Query]:
    """Up to ``max_queries`` queries with distinct target events drawn uniformly among all the video's events
    (``_pick_order`` keeps only orders in which every event has a query)."""
    queries: list[Query] = []
    asked: set[str] = set()  # A multi query asked at one occurrence is the same query at the others.
    for t in rng.permutation(len(cands))[:max_queries]:
        t = int(t)
        own = [q for q in cands[t] if q["template"] in allowed and _key(q) not in asked]
        template = mix.pick(rng, {q["template"] for q in own})  # Never empty: see _pick_order.
        options = [q for q in own if q["template"] == template]
        hard = [q for q in options if q["hard_negative"]]
        options = hard or options
        q = options[rng.integers(len(options))]
        asked.add(_key(q))
        surface = surface_choices(rng, lex, q, cfg.surface_variety, paraphrase=fronted)
        sentence, tree = realise(lex, q, surface, fronted=fronted)
        queries.append(Query(
            qid=f"{vid}-q{len(queries)}", template=template, action=q["action"], object=q["object"],
            target=t, targets=tuple(q["targets"]), hull=q["hull"], ordinal=q["ordinal"], relation=q["relation"],
            context=tuple(tuple(c) for c in q["context"]), fronted=fronted, hard_negative=q["hard_negative"],
            surface=surface, text=sentence, tokens=tuple(tree.words), dep_heads=tuple(tree.heads),
            dep_labels=tuple(tree.labels)))
    return queries


def generate_videos(cfg: SyntheticConfig, split: str) -> list[Video]:
    """Generates the videos of ``split`` (deterministic for (cfg, split)), each checked by ``verify_video``.

    The videos hold ``cfg.split_size(split)`` queries in all. Query parses are
    the grammar's gold trees here; ``generate_split`` / ``build`` apply ``cfg.parser``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _SPLIT_STREAM[split]]))
    protos, lex = prototypes(cfg), Lexicon.of(cfg)
    blocks = heldout_blocks(cfg)
    held = heldout_pairs(cfg)
    actions, objects = list(lex.actions), list(lex.objects)
    novel, fronted = split == "test_novel", split == "test_paraphrase"
    allowed = {t for t in (FRONTABLE if fronted else TEMPLATES) if cfg.template_weights[t] > 0}
    mix = _TemplateMix({t: w for t, w in cfg.template_weights.items() if t in allowed})
    remaining, misses = cfg.split_size(split), 0
    videos: list[Video] = []
    while remaining > 0:
        vid = f"{split}-{len(videos):06d}"
        n = int(rng.integers(cfg.min_events, cfg.max_events + 1))
        if novel:
            chosen = [blocks[i] for i in rng.permutation(len(blocks))[:1 + int(n > 4 and len(blocks) > 1)]]
            cells = [p for b in chosen for p in b]
        else:
            pool_a = [actions[i] for i in rng.permutation(len(actions))[:cfg.actions_per_video]]
            pool_o = [objects[i] for i in rng.permutation(len(objects))[:cfg.objects_per_video]]
            cells = [(a, o) for a in pool_a for o in pool_o if (a, o) not in held]
        # test_paraphrase's templates need every composition at least twice.
        multiset = _sample_compositions(rng, cfg, n, cells, all_repeated=fronted)
        picked = _pick_order(rng, multiset, mix, allowed, cfg.min_alternatives) if multiset else None
        num_queries = min(cfg.queries_per_video, remaining)
        queries = _select_queries(rng, cfg, lex, picked[1], mix, allowed, num_queries, vid, fronted) if picked else []
        if not queries:
            misses += 1
            if misses > 100 * (len(videos) + 10):
                raise ValueError(f"{split}: the configuration yields no video whose every event has a query "
                                 f"(template weights {cfg.template_weights}, min_alternatives {cfg.min_alternatives})")
            continue
        pairs = picked[0]
        num_clips = int(round(math.exp(rng.uniform(math.log(cfg.min_clips), math.log(cfg.max_clips)))))
        clip_seconds = float(rng.uniform(cfg.min_clip_seconds, cfg.max_clip_seconds))
        timeline, blur = _sample_timeline(rng, cfg, len(pairs), num_clips, clip_seconds)
        pool_actions = sorted({a for a, _ in cells})
        feats, segments = _render(rng, cfg, protos, lex, pairs, timeline, blur, num_clips, clip_seconds,
                                  pool_actions)
        duration = num_clips * clip_seconds
        events = tuple(Event(a, o, seg.start, seg.end, *_annotate(rng, cfg, seg.start, seg.end, duration))
                       for (a, o), seg in zip(pairs, (s for s in segments if s.kind == "event")))
        video = Video(vid=vid, clip_seconds=clip_seconds, features=feats, events=events, segments=segments,
                      queries=tuple(queries))
        verify_video(video, held, split, lex, cfg.min_alternatives)
        videos.append(video)
        remaining -= len(queries)
    return videos


def apply_parser(videos: Sequence[Video], parser: str) -> list[Video]:
    """The videos with every query's tokens and parse from ``parser`` ('gold' returns them unchanged)."""
    if parser == "gold":
        return list(videos)
    if parser != "spacy":
        raise ValueError(f"parser must be one of {PARSERS}, got {parser!r}")
    parses = iter(parse_texts([q.text for v in videos for q in v.queries]))
    out = []
    for v in videos:
        qs = []
        for q in v.queries:
            tokens, heads, labels = next(parses)
            qs.append(dataclasses.replace(q, tokens=tokens, dep_heads=heads, dep_labels=labels))
        out.append(dataclasses.replace(v, queries=tuple(qs)))
    return out


def iter_examples(videos: Sequence[Video]) -> Iterator[schema.Example]:
    """Flattens videos into schema examples, in order."""
    for video in videos:
        yield from video.examples()


def generate_split(cfg: SyntheticConfig, split: str) -> list[schema.Example]:
    """The examples of ``split`` (deterministic for (cfg, split)), parsed by ``cfg.parser``."""
    return list(iter_examples(apply_parser(generate_videos(cfg, split), cfg.parser)))


# ----------------------------------------------------------------------------- checks


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


def structural_answers(pairs: Sequence[Pair]) -> dict[tuple, set[tuple[int, ...]]]:
    """Per ``signature``, the target tuples of every unique-answer query over ``pairs`` (any compositions)."""
    return _answers(candidates(pairs))


def verify_video(video: Video, heldout: frozenset[Pair], split: str, lex: Lexicon, min_alternatives: int = 0) -> None:
    """Checks every guarantee of the benchmark on one video; raises AssertionError naming the video and query."""
    where = f"video {video.vid}"
    events, pairs = video.events, [e.pair for e in video.events]
    _check(video.features.dtype == np.float32 and video.features.ndim == 2, f"{where}: features not [T, D] float32")
    _check(np.all(np.isfinite(video.features)), f"{where}: non-finite features")
    segs = video.segments
    _check(abs(segs[0].start) < 1e-9 and abs(segs[-1].end - video.duration) < 1e-6, f"{where}: timeline gaps")
    _check(all(abs(a.end - b.start) < 1e-9 for a, b in zip(segs, segs[1:])), f"{where}: segments not contiguous")
    _check([s.index for s in segs if s.kind == "event"] == list(range(len(events))), f"{where}: event order")
    for e in events:
        _check(0 <= e.start < e.end <= video.duration + 1e-6, f"{where}: bad event {e}")
        _check(0 <= e.gt_start < e.gt_end <= video.duration + 1e-6, f"{where}: bad annotation {e}")
    _check(all(a != b for a, b in zip(pairs, pairs[1:])), f"{where}: equal compositions in a row")
    if split == "test_novel":
        _check(all(p in heldout for p in pairs), f"{where}: a test_novel event is not held out")
    else:
        _check(not any(p in heldout for p in pairs), f"{where}: a held-out composition outside test_novel")
    answers = structural_answers(pairs)
    primaries = [q.target for q in video.queries]
    _check(len(set(primaries)) == len(primaries), f"{where}: two queries share a target")
    for q in video.queries:
        qw = f"{where} query {q.qid} {q.text!r}"
        _check(resolve(pairs, q) == q.targets, f"{qw}: resolves to {resolve(pairs, q)}, not {q.targets}")
        _check(q.target == q.targets[-1] or q.template == "multi", f"{qw}: target {q.target} not in {q.targets}")
        _check(q.target in q.targets, f"{qw}: target {q.target} not in {q.targets}")
        others = answers.get(signature(q.semantics()), set()) - {q.targets}
        _check(len(others) >= min_alternatives, f"{qw}: only {len(others)} other answers of its signature")
        _check(q.fronted == (split == "test_paraphrase"), f"{qw}: fronted only in test_paraphrase")
        _check(q.template != "simple" or len(q.targets) == 1, f"{qw}: simple with several targets")
        _check(q.template != "multi" or len(q.targets) >= 2, f"{qw}: multi with one target")
        sentence, tree = realise(lex, q.semantics(), q.surface, q.fronted)
        _check(sentence == q.text, f"{qw}: sentence does not match its fields ({sentence!r})")
        _check((tuple(tree.words), tuple(tree.heads), tuple(tree.labels)) == (q.tokens, q.dep_heads, q.dep_labels),
               f"{qw}: gold parse does not match")
        verify_parse(q.tokens, q.dep_heads, q.dep_labels)


# ----------------------------------------------------------------------------- statistics


def split_statistics(videos: Sequence[Video]) -> dict[str, Any]:
    """Facts of a split the README quotes and the tests pin: sizes, coverage quantiles, template mix."""
    cover, types, hard, relation_free = [], collections.Counter(), 0, 0
    relation_like = 0
    for v in videos:
        pairs = [e.pair for e in v.events]
        for q in v.queries:
            types[q.template] += 1
            span = v.gt_spans(q)
            cover.append(float(np.max(span[:, 1] - span[:, 0]) / v.duration))
            if q.template in ("relation", "then", "nested"):  # Share whose other direction names another event.
                relation_like += 1
                hard += q.hard_negative
            if q.template == "relation":
                # Ignoring the direction word: X next to the context on either side.
                either = {i for rel in ("after", "before")
                          for i in resolve(pairs, dict(q.semantics(), relation=rel))}
                relation_free += len(either) == 1
    num_relation = types["relation"]
    cover_a = np.asarray(cover)
    return {
        "num_queries": int(sum(types.values())),
        "num_videos": len(videos),
        "query_types": dict(sorted(types.items())),
        "target_coverage": {"mean": round(float(cover_a.mean()), 4) if cover else 0.0,
                            **{f"q{int(q * 100)}": round(float(np.quantile(cover_a, q)), 4) if cover else 0.0
                               for q in (0.1, 0.5, 0.9)},
                            "share_above_half": round(float(np.mean(cover_a > 0.5)), 4) if cover else 0.0},
        "hard_negative_share_relation_then_nested": round(hard / max(relation_like, 1), 4),
        "relation_answerable_without_direction": round(relation_free / max(num_relation, 1), 4),
        "num_clips": {"min": min(v.num_clips for v in videos), "max": max(v.num_clips for v in videos)}
        if videos else {},
        "mean_events": round(float(np.mean([len(v.events) for v in videos])), 3) if videos else 0.0,
    }


# ----------------------------------------------------------------------------- building


def existing_manifest(data_dir: str) -> dict:
    """``DATA_DIR/manifest.json`` of an earlier build ({} when absent or unreadable: rebuild)."""
    try:
        with open(os.path.join(data_dir, "manifest.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _manifest_matches(data_dir: str, manifest: dict, config: dict, num_shards: int) -> bool:
    if not (manifest.get("dataset") == "synthetic" and manifest.get("config") == config
            and manifest.get("generator_version") == GENERATOR_VERSION
            and manifest.get("num_shards") == num_shards):
        return False
    paths = [p for s in SPLITS for p in schema.shard_paths(data_dir, s, num_shards)]
    paths += [os.path.join(data_dir, f"{s}_videos.jsonl") for s in SPLITS]
    return all(os.path.exists(p) for p in paths + [os.path.join(data_dir, "vocab.txt")])


def build(data_dir: str, cfg: SyntheticConfig = SyntheticConfig(), num_shards: int = 1) -> dict:
    """Builds the benchmark into ``data_dir`` and returns its manifest.

    Writes ``{split}.tfrecord-*`` for every split, ``{split}_videos.jsonl``,
    ``vocab.txt`` (train tokens, plus, at the end, any grammar word train
    happens to miss, so nothing is OOV) and, last, ``manifest.json``.
    Idempotent: an existing manifest with the same config, generator version and
    sharding is returned without regenerating. The manifest is removed before a
    rebuild and written only once every file is in place.
    """
    os.makedirs(data_dir, exist_ok=True)
    manifest_path = os.path.join(data_dir, "manifest.json")
    config = json.loads(json.dumps(dataclasses.asdict(cfg)))
    old = existing_manifest(data_dir)
    if _manifest_matches(data_dir, old, config, num_shards):
        return old
    if os.path.exists(manifest_path):
        os.remove(manifest_path)

    num_examples, num_videos, stats = {}, {}, {}
    lengths: dict[str, schema.LengthCounts] = {}
    token_sets: dict[str, list[tuple[str, ...]]] = {}
    texts: dict[str, list[str]] = {}
    for split in SPLITS:
        videos = apply_parser(generate_videos(cfg, split), cfg.parser)
        token_sets[split] = [q.tokens for v in videos for q in v.queries]
        texts[split] = [q.text for v in videos for q in v.queries]
        schema.remove_stale_shards(data_dir, split, num_shards)
        lengths[split] = schema.LengthCounts()
        num_examples[split] = schema.write_split(
            iter_examples(videos), data_dir, split, num_shards, source=f"synthetic:{split}", lengths=lengths[split])
        num_videos[split] = len(videos)
        stats[split] = split_statistics(videos)
        schema.write_text_atomic(os.path.join(data_dir, f"{split}_videos.jsonl"),
                                 "".join(json.dumps(v.record()) + "\n" for v in videos))

    train_texts = set(texts["train"])
    for split in SPLITS:
        if split != "train":
            stats[split]["share_of_query_strings_in_train"] = round(
                float(np.mean([t in train_texts for t in texts[split]])) if texts[split] else 0.0, 4)
    vocab = text.build_vocabulary(token_sets["train"])
    missing = [w for w in Lexicon.of(cfg).words() if w not in set(vocab)]
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
        "lengths": {split: counts.to_json() for split, counts in lengths.items()},
        "num_videos": num_videos,
        "query_types": {s: stats[s]["query_types"] for s in SPLITS},
        "statistics": stats,
        "feature_dim": cfg.feature_dim,
        "vocab_size": len(vocab),
        "words_missing_from_train": missing,
        "heldout_pairs": [list(p) for p in sorted(heldout_pairs(cfg))],
        "skipped": {},
        "fixed": {},
    }
    schema.write_text_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_videos(data_dir: str, split: str) -> list[dict[str, Any]]:
    """The ``{split}_videos.jsonl`` records of a built benchmark."""
    path = os.path.join(data_dir, f"{split}_videos.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist (is {data_dir} a synthetic benchmark of generator "
                                f"version {GENERATOR_VERSION}?)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
