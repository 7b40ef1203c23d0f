"""The embedded corpus benchmark (dataset ``synthetic_corpus``): video corpus moment retrieval.

A query now has one answer in a whole split's corpus of videos: find the video,
then the moment (VCMR), reported with SVMR and VR as TVR does. The videos are the
embedded benchmark's (``jvmr.data.synthetic``: same world, same visual stream,
train / val / test streams), with a second, subtitle-like stream that carries
what the visual stream lacks:

* every event is "talked about": it has a topic (a noun of ``TOPICS``), distinct
  within its video; background stretches carry small talk (``num_chatter_states``
  prototypes). A clip's subtitle feature is the mean topic prototype over its
  time span (crossfades of ``subtitle_blur_clips``) plus noise
  (``subtitle_noise``): topics are invisible in the visual stream and actions in
  the subtitle stream.

Queries carry TVR's description types (``query_type``):

* ``v`` (visual only): a query of the single-video grammar (simple, ordinal,
  relation, between, nested, ...) that no other video of the split answers;
* ``vt`` (both): "the person opens the door while talking about the wedding"
  (the composition and the topic of one event; the pair occurs once in the split);
* ``t`` (subtitles only): "someone talks about the wedding right after talking
  about the money" (two consecutive events' topics; the ordered pair occurs once
  in the split).

Every query's ground truth is its target event's annotated span in its own video,
and no other video of the split holds an event the query describes (checked
for every query against every video with the same composition / topics; in
train, within the query's video only, unless ``unique_in_train``: in-batch
negatives then rarely hold an answer, and the type mix follows the weights).
``build`` writes the real schema (``subtitle_features`` in every record),
``{split}_videos.jsonl`` (timeline, events with topics, queries) and a manifest
with ``feature_dims = {'video': D, 'subtitle': Ds}``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from jvmr.data import schema, synthetic, text

CORPUS_VERSION = 1
SPLITS = ("train", "val", "test")
DESC_TYPES = ("v", "t", "vt")
TOPICS = (
    "wedding", "money", "dinner", "job", "car", "party", "doctor", "exam", "holiday", "rent", "movie", "game",
    "baby", "garden", "birthday", "neighbor", "lawyer", "concert", "flight", "hotel", "interview", "salary",
    "painting", "museum", "beach", "storm", "election", "recipe", "hospital", "bakery", "bicycle", "camera",
    "diamond", "dragon", "engine", "festival", "guitar", "island", "jacket", "kitchen", "library", "marathon",
    "novel", "ocean", "piano", "puzzle", "river", "school", "soccer", "theater", "tiger", "train", "umbrella",
    "village", "violin", "winter", "zoo", "airport", "ballet", "castle", "circus", "dentist", "farm", "forest",
    "funeral", "harbor", "horse", "lottery", "mountain", "office", "opera", "pizza", "prison", "rocket",
    "sandwich", "sister", "brother", "teacher", "tennis", "tournament", "vacation", "volcano", "wallet", "wine",
)
TALK_VERBS = (("talks", "talking"), ("speaks", "speaking"), ("chats", "chatting"))
_STREAM = 7  # SeedSequence stream of the corpus (synthetic uses 0-5)


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """Every knob of the corpus benchmark; sizes are the base generator's query budgets per split
    (``synthetic``); the corpus keeps up to ``queries_per_video`` unique queries per video."""

    synthetic: synthetic.SyntheticConfig = synthetic.SyntheticConfig(
        num_train=9000, num_val=600, num_test=3000, num_test_novel=0, num_test_paraphrase=0, max_clips=128)
    subtitle_dim: int = 64
    num_topics: int = len(TOPICS)
    num_chatter_states: int = 4
    subtitle_noise: float = 0.3
    subtitle_blur_clips: float = 0.5
    queries_per_video: int = 3
    # Train queries are unique in their video (topics are distinct within a video; v queries come from
    # the single-video grammar); val / test queries in their whole split. True: train too (a large
    # train corpus then keeps mostly t queries).
    unique_in_train: bool = False
    v_weight: float = 0.4
    t_weight: float = 0.2
    vt_weight: float = 0.4

    def __post_init__(self):
        if not 2 <= self.num_topics <= len(TOPICS):
            raise ValueError(f"CorpusConfig: num_topics must be in [2, {len(TOPICS)}], got {self.num_topics}")
        if self.synthetic.max_events > self.num_topics:
            raise ValueError("CorpusConfig: every event of a video needs its own topic (num_topics >= max_events)")
        if min(self.v_weight, self.t_weight, self.vt_weight) < 0 or self.v_weight + self.t_weight + self.vt_weight <= 0:
            raise ValueError("CorpusConfig: description-type weights must be >= 0 with a positive sum")
        if self.subtitle_dim < 1 or self.queries_per_video < 1 or self.num_chatter_states < 1:
            raise ValueError("CorpusConfig: subtitle_dim, queries_per_video and num_chatter_states must be >= 1")

    @property
    def type_weights(self) -> dict[str, float]:
        return {"v": self.v_weight, "t": self.t_weight, "vt": self.vt_weight}


def config_from_dict(d: Mapping[str, Any]) -> CorpusConfig:
    d = dict(d)
    base = synthetic.config_from_dict(d.pop("synthetic", {}))
    return CorpusConfig(synthetic=base, **d)


@dataclasses.dataclass(frozen=True)
class CorpusVideo:
    """A base video with its events' topics, its subtitle stream [T, Ds] and its corpus queries."""

    video: synthetic.Video
    topics: tuple[str, ...]  # per event
    subtitles: np.ndarray
    queries: tuple[dict[str, Any], ...]  # qid, desc_type, text, tokens, dep_heads, dep_labels, target, semantics

    def examples(self) -> list[schema.Example]:
        v = self.video
        return [schema.Example(
            qid=q["qid"], vid=v.vid, duration=v.duration, query=q["text"], tokens=list(q["tokens"]),
            dep_heads=list(q["dep_heads"]), dep_labels=list(q["dep_labels"]),
            gt_spans=np.asarray([[v.events[t].gt_start, v.events[t].gt_end] for t in q["targets"]], np.float32),
            video_features=v.features, query_type=q["desc_type"], subtitle_features=self.subtitles)
            for q in self.queries]

    def record(self) -> dict[str, Any]:
        rec = self.video.record()
        rec["topics"] = list(self.topics)
        rec["queries"] = [{k: q[k] for k in ("qid", "desc_type", "text", "target", "targets", "semantics")}
                          for q in self.queries]
        return rec


# ----------------------------------------------------------------------------- language


def _about(topic: str) -> synthetic._Tree:
    """'about the wedding': about (prep) -> wedding (pobj) -> the (det)."""
    return synthetic._word("about").attach(synthetic._noun_phrase(("the", topic)), "pobj")


def vt_sentence(lex: synthetic.Lexicon, rng: np.random.Generator, action: str, obj: str, topic: str,
                variety: bool = True) -> synthetic._Tree:
    """'the person opens the door while talking about the wedding'."""
    q = {"template": "simple", "action": action, "object": obj}
    _, main = synthetic.realise(lex, q, synthetic.surface_choices(rng, lex, q, variety))
    verb = TALK_VERBS[int(rng.integers(len(TALK_VERBS))) if variety else 0][1]
    talk = synthetic._word(verb).attach(synthetic._word("while"), "mark", before=True).attach(_about(topic), "prep")
    return main.attach(talk, "advcl")


def t_sentence(rng: np.random.Generator, topic: str, relation: str, context_topic: str,
               variety: bool = True) -> synthetic._Tree:
    """'someone talks about the wedding right after talking about the money'."""
    pick = (lambda n: int(rng.integers(n))) if variety else (lambda n: 0)  # noqa: E731
    third, _ = TALK_VERBS[pick(len(TALK_VERBS))]
    _, gerund = TALK_VERBS[pick(len(TALK_VERBS))]
    subject = synthetic.SUBJECTS[pick(len(synthetic.SUBJECTS))]
    main = synthetic._word(third).attach(synthetic._noun_phrase(subject), "nsubj", before=True)
    main = main.attach(_about(topic), "prep")
    forms = synthetic.RELATION_WORDS[relation][:-1]  # the last form is test_paraphrase's
    rel = synthetic._relation_word(forms[pick(len(forms))])
    return main.attach(rel.attach(synthetic._word(gerund).attach(_about(context_topic), "prep"), "pcomp"), "prep")


def words(cfg: CorpusConfig) -> list[str]:
    out = set(synthetic.Lexicon.of(cfg.synthetic).words()) | {"while", "about"}
    out |= {w for forms in TALK_VERBS for w in forms} | set(TOPICS[:cfg.num_topics])
    return sorted(out)


# ----------------------------------------------------------------------------- generation


def topic_prototypes(cfg: CorpusConfig) -> tuple[np.ndarray, np.ndarray]:
    """Unit topic prototypes [num_topics, Ds] and small-talk prototypes [num_chatter_states, Ds]."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.synthetic.seed, _STREAM, 0]))
    protos = rng.standard_normal((cfg.num_topics + cfg.num_chatter_states, cfg.subtitle_dim))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    return protos[:cfg.num_topics].astype(np.float32), protos[cfg.num_topics:].astype(np.float32)


def _subtitles(rng: np.random.Generator, cfg: CorpusConfig, video: synthetic.Video, topic_ids: Sequence[int],
               topics: np.ndarray, chatter: np.ndarray) -> np.ndarray:
    """[T, Ds] subtitle features: each segment's topic (events) or small talk (background), crossfaded."""
    rows = []
    for seg in video.segments:
        rows.append(topics[topic_ids[seg.index]] if seg.kind == "event"
                    else chatter[int(rng.integers(len(chatter)))])
    bounds = np.asarray([s.start for s in video.segments[1:]])
    half = np.full(len(bounds), 0.5 * cfg.subtitle_blur_clips * video.clip_seconds)
    w = synthetic.clip_weights(bounds, half, len(video.segments), video.num_clips, video.clip_seconds)
    noise = cfg.subtitle_noise * rng.standard_normal((video.num_clips, cfg.subtitle_dim))
    return (w @ np.asarray(rows) + noise).astype(np.float32)


def _tree_query(tree: synthetic._Tree, **fields) -> dict[str, Any]:
    return dict(fields, text=" ".join(tree.words), tokens=tuple(tree.words), dep_heads=tuple(tree.heads),
                dep_labels=tuple(tree.labels))


def generate_videos(cfg: CorpusConfig, split: str) -> list[CorpusVideo]:
    """The corpus videos of ``split`` with queries unique in the split (deterministic for (cfg, split))."""
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; expected one of {SPLITS}")
    base = synthetic.generate_videos(cfg.synthetic, split)
    lex = synthetic.Lexicon.of(cfg.synthetic)
    topic_vecs, chatter = topic_prototypes(cfg)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.synthetic.seed, _STREAM, 1 + SPLITS.index(split)]))
    # Topics: distinct within a video.
    topic_ids = [[int(i) for i in rng.permutation(cfg.num_topics)[:len(v.events)]] for v in base]
    pairs = [[e.pair for e in v.events] for v in base]
    # Corpus indexes: which videos could answer a query.
    by_pair: dict[synthetic.Pair, set[int]] = collections.defaultdict(set)
    pair_topic = collections.Counter()
    topic_steps = collections.Counter()
    for i, (ps, ts) in enumerate(zip(pairs, topic_ids)):
        for e, (p, k) in enumerate(zip(ps, ts)):
            by_pair[p].add(i)
            pair_topic[(p, k)] += 1
            if e > 0:
                topic_steps[("after", ts[e - 1], k)] += 1  # (relation, context topic, target topic)
                topic_steps[("before", k, ts[e - 1])] += 1

    unique = split != "train" or cfg.unique_in_train

    def v_unique(i: int, q: Mapping[str, Any]) -> bool:
        if not unique:
            return True
        own = (q["action"], q["object"])
        return not any(synthetic.resolve(pairs[j], q) for j in by_pair[own] if j != i)

    mix = synthetic._TemplateMix({k: w for k, w in cfg.type_weights.items() if w > 0})
    out = []
    for i, video in enumerate(base):
        ts = topic_ids[i]
        names = [TOPICS[k] for k in ts]
        cands: dict[int, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
        for t, qs in synthetic.candidates(pairs[i], cfg.synthetic.min_alternatives).items():
            cands[t]["v"] = [q for q in qs if cfg.synthetic.template_weights[q["template"]] > 0 and v_unique(i, q)]
        for t, (p, k) in enumerate(zip(pairs[i], ts)):
            if pair_topic[(p, k)] == 1 or not unique:
                cands[t]["vt"].append({"action": p[0], "object": p[1]})
            for rel, step in (("after", -1), ("before", 1)):
                c = t + step
                if 0 <= c < len(ts) and (topic_steps[(rel, ts[c], k)] == 1 or not unique):  # (rel, ctx, target)
                    cands[t]["t"].append({"relation": rel, "context": c})
        usable = [t for t in range(len(pairs[i])) if any(cands[t][d] for d in DESC_TYPES if cfg.type_weights[d] > 0)]
        queries = []
        for t in rng.permutation(usable)[:cfg.queries_per_video]:
            t = int(t)
            desc = mix.pick(rng, {d for d in DESC_TYPES if cands[t][d]})
            options = cands[t][desc]
            q = options[int(rng.integers(len(options)))]
            qid = f"{video.vid}-c{len(queries)}"
            if desc == "v":  # a multi query keeps every occurrence as an answer
                _, tree = synthetic.realise(lex, q, synthetic.surface_choices(rng, lex, q, cfg.synthetic.surface_variety))
                sem = {k: q[k] for k in ("template", "action", "object", "ordinal", "relation", "context")}
                queries.append(_tree_query(tree, qid=qid, desc_type="v", target=t, semantics=sem,
                                           targets=list(q["targets"])))
            elif desc == "vt":
                tree = vt_sentence(lex, rng, q["action"], q["object"], names[t], cfg.synthetic.surface_variety)
                sem = {"action": q["action"], "object": q["object"], "topic": names[t]}
                queries.append(_tree_query(tree, qid=qid, desc_type="vt", target=t, semantics=sem, targets=[t]))
            else:
                ctx_topic = names[q["context"]]
                tree = t_sentence(rng, names[t], q["relation"], ctx_topic, cfg.synthetic.surface_variety)
                sem = {"topic": names[t], "relation": q["relation"], "context_topic": ctx_topic}
                queries.append(_tree_query(tree, qid=qid, desc_type="t", target=t, semantics=sem, targets=[t]))
        sub_rng = np.random.default_rng(np.random.SeedSequence([cfg.synthetic.seed, _STREAM, 10 + SPLITS.index(split), i]))
        subs = _subtitles(sub_rng, cfg, video, ts, topic_vecs, chatter)
        out.append(CorpusVideo(video=video, topics=tuple(names), subtitles=subs, queries=tuple(queries)))
    return [v for v in out if v.queries] + [v for v in out if not v.queries]


def corpus_answers(videos: Sequence[CorpusVideo], query: Mapping[str, Any]) -> list[tuple[int, tuple[int, ...]]]:
    """Every (video position, event indices) of ``videos`` that ``query`` (a corpus query dict) describes."""
    sem, desc = query["semantics"], query["desc_type"]
    out = []
    for i, cv in enumerate(videos):
        ps, names = [e.pair for e in cv.video.events], cv.topics
        if desc == "v":
            hit = synthetic.resolve(ps, sem)
        elif desc == "vt":
            hit = tuple(e for e, (p, k) in enumerate(zip(ps, names))
                        if p == (sem["action"], sem["object"]) and k == sem["topic"])
        else:
            step = -1 if sem["relation"] == "after" else 1
            hit = tuple(e for e, k in enumerate(names) if k == sem["topic"] and 0 <= e + step < len(names)
                        and names[e + step] == sem["context_topic"])
        if hit:
            out.append((i, hit))
    return out


def _apply_parser(videos: list[CorpusVideo], parser: str) -> list[CorpusVideo]:
    if parser == "gold":
        return videos
    parses = iter(synthetic.parse_texts([q["text"] for v in videos for q in v.queries]))
    out = []
    for v in videos:
        qs = []
        for q in v.queries:
            tokens, heads, labels = next(parses)
            qs.append(dict(q, tokens=tokens, dep_heads=heads, dep_labels=labels))
        out.append(dataclasses.replace(v, queries=tuple(qs)))
    return out


def build(data_dir: str, cfg: CorpusConfig = CorpusConfig(), num_shards: int = 1) -> dict:
    """Builds the corpus benchmark into ``data_dir`` (idempotent, as ``synthetic.build``); returns the manifest."""
    os.makedirs(data_dir, exist_ok=True)
    manifest_path = os.path.join(data_dir, "manifest.json")
    config = json.loads(json.dumps(dataclasses.asdict(cfg)))
    old = synthetic.existing_manifest(data_dir)
    if (old.get("dataset") == "synthetic_corpus" and old.get("config") == config
            and old.get("generator_version") == [synthetic.GENERATOR_VERSION, CORPUS_VERSION]
            and old.get("num_shards") == num_shards
            and all(os.path.exists(p) for s in SPLITS for p in schema.shard_paths(data_dir, s, num_shards))):
        return old
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    num_examples, num_videos, types, tokens = {}, {}, {}, {}
    lengths: dict[str, schema.LengthCounts] = {}
    for split in SPLITS:
        videos = _apply_parser(generate_videos(cfg, split), cfg.synthetic.parser)
        schema.remove_stale_shards(data_dir, split, num_shards)
        lengths[split] = schema.LengthCounts()
        num_examples[split] = schema.write_split((ex for v in videos for ex in v.examples()), data_dir, split,
                                                 num_shards, source=f"synthetic_corpus:{split}", lengths=lengths[split])
        num_videos[split] = len(videos)
        types[split] = dict(sorted(collections.Counter(q["desc_type"] for v in videos for q in v.queries).items()))
        tokens[split] = [q["tokens"] for v in videos for q in v.queries]
        schema.write_text_atomic(os.path.join(data_dir, f"{split}_videos.jsonl"),
                                 "".join(json.dumps(v.record()) + "\n" for v in videos))
    vocab = text.build_vocabulary(tokens["train"])
    missing = [w for w in words(cfg) if w not in set(vocab)]
    vocab += missing
    text.write_vocabulary(vocab, os.path.join(data_dir, "vocab.txt.tmp"))
    os.replace(os.path.join(data_dir, "vocab.txt.tmp"), os.path.join(data_dir, "vocab.txt"))
    manifest = {
        "dataset": "synthetic_corpus",
        "generator_version": [synthetic.GENERATOR_VERSION, CORPUS_VERSION],
        "config": config,
        "num_shards": num_shards,
        "num_examples": num_examples,
        "lengths": {split: counts.to_json() for split, counts in lengths.items()},
        "num_videos": num_videos,
        "query_types": types,
        "feature_dim": cfg.synthetic.feature_dim,
        "feature_dims": {"video": cfg.synthetic.feature_dim, "subtitle": cfg.subtitle_dim},
        "vocab_size": len(vocab),
        "words_missing_from_train": missing,
        "skipped": {},
        "fixed": {},
    }
    schema.write_text_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
