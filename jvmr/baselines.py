"""Baselines that need no learning: how far can one get without understanding?

A benchmark split is only informative if the query-blind ones stay well below
the models, and the rule-based one says how much is solvable by rules:

* ``random_span``: k spans drawn uniformly at random inside each video.
* ``fixed_prior_span``: the best *fixed* normalised span(s) learned on the
  train split (moment-position prior), predicted for every query.
* ``random_event`` (embedded benchmark): the video's true events in a random
  order, query-blind: the chance level of a query-blind method that finds the
  events perfectly. Averaged over ``num_draws`` random orders.
* ``structure_only`` (embedded benchmark): knows the true events and their
  compositions, and every word of the query but its actions and objects; picks
  among the answers of those words under any of the video's compositions. What
  reading a query's type, counts and direction without grounding it gives.
* ``rule_based`` (embedded benchmark): a generator-aware decoder with no
  learning: per-clip Gaussian log-likelihoods under the generator's own
  prototypes (compositions, idle states, near-misses), a Viterbi path with a
  fixed switch penalty, then the grammar's own semantics (``synthetic.resolve``)
  applied to the query's fields on the decoded events.

On a corpus (``synthetic_corpus``, or any dataset under the ``tvr`` protocol) the
rows are VCMR / SVMR / VR with the corpus evaluator's keys instead:

* ``random_video``: per query, 100 random videos of the split (VR), one random
  span in each (VCMR), and 100 random spans in its own video (SVMR).
* ``prior``: query-blind: one random video order for every query, the
  ``fixed_prior_span`` spans in them (VCMR) and in the query's own video (SVMR).

(The trained query-blind model is a model switch, ``model.query_blind``.)

CLI (absl flags)::

    python -m jvmr.baselines --data_dir=DIR [--splits=test,test_novel] [--output=FILE.json]

prints a table per baseline and split, and writes
``{baseline: {split: {metric_key: value}}}`` with the keys of
``eval_metrics.jsonl`` (the dataset's protocol, plus the headline metric per
query type).
"""

from __future__ import annotations

import collections
import json
import os
import sys
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from jvmr import metrics

_MAX_CHUNK_ELEMENTS = 1 << 22  # IoU entries per vectorised grid-search chunk (~32 MB float64)


def _as_padded(gt_spans: Any, gt_valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """[Q, G, 2] + [Q, G] from either a padded array (+ validity) or a ragged list."""
    if gt_valid is None and not isinstance(gt_spans, np.ndarray):
        return metrics.pad_spans(gt_spans)
    spans = np.asarray(gt_spans, np.float64)
    if spans.ndim == 2:
        spans = spans[:, None, :]
    if spans.ndim != 3 or spans.shape[-1] != 2:
        raise ValueError(f"expected gt spans [Q, G, 2], got {spans.shape}")
    valid = np.ones(spans.shape[:2], bool) if gt_valid is None else np.asarray(gt_valid).astype(bool)
    return spans, valid


def _as_durations(durations: Sequence[float], num_q: int) -> np.ndarray:
    d = np.asarray(durations, np.float64).reshape(-1)
    if d.shape[0] != num_q:
        raise ValueError(f"{d.shape[0]} durations for {num_q} queries")
    bad = ~(np.isfinite(d) & (d > 0))
    if bad.any():
        q = int(np.flatnonzero(bad)[0])
        raise ValueError(f"durations must be positive and finite, query {q} has {d[q]}")
    return d


def random_span_predictions(durations: Sequence[float], seed: int, k: int = 5) -> np.ndarray:
    """k uniformly random spans per video.

    Each span is the sorted pair of two independent uniforms on [0, duration].

    Args:
      durations: [Q] seconds.
      seed: Seed of ``np.random.default_rng``.
      k: Spans per query.

    Returns:
      float64 [Q, k, 2] spans in seconds.
    """
    d = np.asarray(durations, np.float64).reshape(-1)
    u = np.sort(np.random.default_rng(seed).uniform(size=(d.shape[0], k, 2)), axis=-1)
    return u * d[:, None, None]


def random_span(durations: Sequence[float], gt_spans: Any, gt_valid: np.ndarray | None = None, seed: int = 0,
                k: int = 5, *, ks: Sequence[int] = metrics.DEFAULT_KS,
                iou_thresholds: Sequence[float] = metrics.DEFAULT_IOU_THRESHOLDS,
                iou_comparison: str = ">=") -> dict[str, float]:
    """Recall of k uniformly random spans per query (no NMS).

    Args:
      durations: [Q] video durations in seconds.
      gt_spans: [Q, G, 2] ground-truth spans in seconds, or a ragged list of
        [G_i, 2] arrays (then ``gt_valid`` must be ``None``).
      gt_valid: [Q, G] validity, ``None`` for all valid / ragged input.
      seed: Random seed.
      k: Random spans per query (the ranking is their draw order).
      ks, iou_thresholds, iou_comparison: As in ``metrics.recall_at_k``.

    Returns:
      The ``metrics.recall_at_k`` dict (percent).
    """
    spans, valid = _as_padded(gt_spans, gt_valid)
    d = _as_durations(durations, spans.shape[0])
    pred = random_span_predictions(d, seed, k)
    return metrics.recall_at_k(pred, None, spans, valid, ks, iou_thresholds, iou_comparison)


def span_grid(step: float = 0.02) -> np.ndarray:
    """All normalised spans ``[s, e]``, ``0 <= s < e <= 1``, on a grid of ``step``.

    Args:
      step: Grid step; ``1 / step`` must be (close to) an integer.

    Returns:
      float64 [C, 2] spans ordered by start then end (C = n (n + 1) / 2, n = 1 / step).
    """
    n = int(round(1.0 / step))
    if n < 1 or abs(n * step - 1.0) > 1e-6:
        raise ValueError(f"1 / step must be an integer, got step={step}")
    points = np.linspace(0.0, 1.0, n + 1)
    s, e = np.triu_indices(n + 1, k=1)
    return np.stack([points[s], points[e]], axis=-1)


class FixedPrior(NamedTuple):
    """The output of ``fixed_prior_span``.

    Attributes:
      metrics: Test ``recall_at_k`` dict (percent).
      span: float64 [2] the chosen normalised span (the R@1 prediction).
      spans: float64 [K, 2] the normalised spans predicted for R@k (K <= k,
        ``spans[0] == span``).
      train_recall: Train R@1 (percent) of ``span`` at the selection threshold.
    """

    metrics: dict[str, float]
    span: np.ndarray
    spans: np.ndarray
    train_recall: float


def _grid_scores(grid: np.ndarray, gt_norm: np.ndarray, gt_valid: np.ndarray, threshold: float,
                 iou_comparison: str) -> tuple[np.ndarray, np.ndarray]:
    """Per grid span: number of train queries hit at R@1 and summed best IoU."""
    num_c = grid.shape[0]
    num_q, num_g = gt_valid.shape
    hits = np.zeros(num_c, np.int64)
    iou_sum = np.zeros(num_c)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, num_c * num_g))
    for lo in range(0, num_q, chunk):
        gt = gt_norm[lo:lo + chunk]
        iou = metrics.temporal_iou(grid[:, None, None, :], gt[None])  # [C, q, G]
        best = np.where(gt_valid[None, lo:lo + chunk], iou, -1.0).max(axis=2)  # [C, q]
        hits += metrics.iou_passes(best, threshold, iou_comparison).sum(axis=1)
        iou_sum += np.maximum(best, 0.0).sum(axis=1)
    return hits, iou_sum


def fixed_prior_span(train_durations: Sequence[float], train_gt: Any, test_durations: Sequence[float],
                     test_gt: Any, *, train_gt_valid: np.ndarray | None = None,
                     test_gt_valid: np.ndarray | None = None, step: float = 0.02, k: int = 5,
                     nms_threshold: float | None = 0.5, selection_threshold: float = 0.5,
                     ks: Sequence[int] = metrics.DEFAULT_KS,
                     iou_thresholds: Sequence[float] = metrics.DEFAULT_IOU_THRESHOLDS,
                     iou_comparison: str = ">=") -> FixedPrior:
    """The best fixed normalised span(s) learned on train, evaluated on test.

    Every normalised grid span ``[s, e]`` (step ``step``) is scored on the train
    split by its R@1 at IoU (``iou_comparison``) ``selection_threshold``
    (ties: higher mean IoU, then grid order). The best one, times each test
    duration, is the R@1 prediction of every test query; for R@k the grid spans
    ranked this way go through greedy NMS (``nms_threshold``) and the first
    ``k`` survivors are predicted.

    Args:
      train_durations: [Q_train] seconds.
      train_gt: [Q_train, G, 2] spans in seconds, or a ragged list of [G_i, 2].
      test_durations: [Q_test] seconds.
      test_gt: [Q_test, G, 2] spans in seconds, or a ragged list.
      train_gt_valid: [Q_train, G] validity (padded input only).
      test_gt_valid: [Q_test, G] validity (padded input only).
      step: Grid step of the normalised start / end.
      k: Number of spans predicted per query.
      nms_threshold: NMS among the ranked grid spans, ``None`` for none.
      selection_threshold: IoU threshold of the train R@1 being maximised.
      ks, iou_thresholds, iou_comparison: Test metrics, as in
        ``metrics.recall_at_k``.

    Returns:
      ``FixedPrior(metrics, span, spans, train_recall)``.
    """
    spans, train_recall = _select_prior_spans(train_durations, train_gt, train_gt_valid, step, k, nms_threshold,
                                              selection_threshold, iou_comparison)
    te_spans, te_valid = _as_padded(test_gt, test_gt_valid)
    te_d = _as_durations(test_durations, te_spans.shape[0])
    pred = spans[None] * te_d[:, None, None]
    test_metrics = metrics.recall_at_k(pred, None, te_spans, te_valid, ks, iou_thresholds, iou_comparison)
    return FixedPrior(test_metrics, spans[0].copy(), spans, train_recall)


def fixed_prior_spans(train_durations: Sequence[float], train_gt: Any, train_gt_valid: np.ndarray | None = None, *,
                      step: float = 0.02, k: int = 5, nms_threshold: float | None = 0.5,
                      selection_threshold: float = 0.5, iou_comparison: str = ">=") -> np.ndarray:
    """The normalised spans ``fixed_prior_span`` predicts (float64 [K, 2], the best first), learned on train."""
    return _select_prior_spans(train_durations, train_gt, train_gt_valid, step, k, nms_threshold,
                               selection_threshold, iou_comparison)[0]


def _select_prior_spans(train_durations, train_gt, train_gt_valid, step, k, nms_threshold, selection_threshold,
                        iou_comparison) -> tuple[np.ndarray, float]:
    """(grid spans ranked by train R@1 then mean IoU, after NMS, [K, 2]; train R@1 of the first, percent)."""
    tr_spans, tr_valid = _as_padded(train_gt, train_gt_valid)
    tr_d = _as_durations(train_durations, tr_spans.shape[0])
    if tr_spans.shape[0] == 0:
        raise ValueError("empty train split")
    grid = span_grid(step)
    hits, iou_sum = _grid_scores(grid, tr_spans / tr_d[:, None, None], tr_valid, selection_threshold,
                                 iou_comparison)
    # Rank: most train hits, then highest mean IoU, then grid order.
    order = np.lexsort((np.arange(grid.shape[0]), -iou_sum, -hits))
    rank_score = np.empty(grid.shape[0])
    rank_score[order] = np.arange(grid.shape[0], 0, -1, dtype=np.float64)
    kept = metrics.temporal_nms(grid, rank_score, nms_threshold, k)
    return grid[kept], float(100.0 * hits[order[0]] / tr_spans.shape[0])


# ---------------------------------------------------------------------------
# Generator-aware baselines of the embedded benchmark


def _ranked_candidates(ranked: Sequence[Sequence[tuple[float, float]]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, its first k ranked spans as candidates: spans [Q, k, 2] and scores [Q, k] (k, k-1, ...;
    -inf where a query has fewer)."""
    spans = np.zeros((len(ranked), k, 2))
    scores = np.full((len(ranked), k), -np.inf)
    for i, row in enumerate(ranked):
        row = list(row)[:k]
        if row:
            spans[i, :len(row)] = row
            scores[i, :len(row)] = np.arange(k, k - len(row), -1)
    return spans, scores


def _by_query(records: Sequence[dict[str, Any]], qids: Sequence[str]):
    """Yields (video record, query record) of each qid (``{vid}-q{i}``), in order."""
    by_vid = {r["vid"]: r for r in records}
    queries = {q["qid"]: q for r in records for q in r["queries"]}
    for qid in qids:
        yield by_vid[qid.rsplit("-q", 1)[0]], queries[qid]


def _span(events: Sequence[Any], indices: Sequence[int], hull: bool) -> list[tuple[float, float]]:
    """The spans of events (dicts with start / end, or (pair, start, end) tuples); one hull span if ``hull``."""
    spans = [(e["start"], e["end"]) if isinstance(e, dict) else (e[1], e[2]) for e in (events[i] for i in indices)]
    return [(min(s for s, _ in spans), max(t for _, t in spans))] if hull and spans else spans


def random_event_candidates(records: Sequence[dict[str, Any]], qids: Sequence[str], rng: np.random.Generator,
                            k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per query, up to k of its video's true events in a random order (query-blind).

    Args:
      records: ``synthetic.read_videos`` records.
      qids: [Q] query ids (``{vid}-q{i}``).
      rng: random stream.
      k: events per query.

    Returns:
      spans [Q, k, 2] seconds and scores [Q, k] (k, k-1, ...; -inf where the video has fewer events).
    """
    return _ranked_candidates([_span(video["events"], rng.permutation(len(video["events"])), False)
                               for video, _ in _by_query(records, qids)], k)


def structure_only_candidates(records: Sequence[dict[str, Any]], qids: Sequence[str], rng: np.random.Generator,
                              k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the answers of its type / count / direction words under any compositions, in a random order.

    Knows the video's true events and their compositions, and every word of the
    query except its actions and objects (``synthetic.signature``): a model that
    reads the query's structure but not what it is about. Then the other events
    follow, in a random order.

    Returns:
      spans [Q, k, 2] seconds and scores [Q, k].
    """
    from jvmr.data import synthetic
    cache: dict[str, dict] = {}
    ranked = []
    for video, q in _by_query(records, qids):
        events = video["events"]
        if video["vid"] not in cache:
            cache[video["vid"]] = synthetic.structural_answers([(e["action"], e["object"]) for e in events])
        options = sorted(cache[video["vid"]].get(synthetic.signature(q), set()))
        row = [_span(events, options[j], q["hull"])[0] for j in rng.permutation(len(options))]
        used = {t for o in options for t in o}
        ranked.append(row + _span(events, [t for t in rng.permutation(len(events)) if t not in used], False))
    return _ranked_candidates(ranked, k)


def viterbi_switch(log_lik: np.ndarray, switch_penalty: float) -> np.ndarray:
    """The best state path under per-step log-likelihoods [T, S] and a fixed cost per state change; [T] int."""
    t, s = log_lik.shape
    score = log_lik[0].copy()
    back = np.zeros((t, s), np.int64)
    for i in range(1, t):
        best = int(np.argmax(score))
        switch = score[best] - switch_penalty
        stay = score >= switch
        back[i] = np.where(stay, np.arange(s), best)
        score = np.where(stay, score, switch) + log_lik[i]
    path = np.zeros(t, np.int64)
    path[-1] = int(np.argmax(score))
    for i in range(t - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return path


def rule_based_events(features: np.ndarray, clip_seconds: float, cfg: Any, protos: Any,
                      switch_penalty: float = 12.0, rounds: int = 3) -> list[tuple[tuple[str, str], float, float]]:
    """Decodes a video's events from its clip features with the generator's own prototypes (no learning).

    States are every composition, idle state and near-miss; emissions are
    Gaussian with the generator's clip noise around the prototype plus a
    per-video style offset, re-estimated from the decoded path ``rounds`` times.

    Returns:
      [(composition, start seconds, end seconds)] of the decoded events, in order.
    """
    from jvmr.data import synthetic
    lex = synthetic.Lexicon.of(cfg)
    comps = [(a, o) for a in lex.actions for o in lex.objects]
    means = np.concatenate([protos.compositions.reshape(-1, protos.compositions.shape[-1]), protos.idle,
                            protos.near_miss]).astype(np.float64)
    x = np.asarray(features, np.float64)
    var = max(cfg.clip_noise, 1e-3) ** 2
    style = x.mean(0) - means.mean(0)
    path = np.zeros(len(x), np.int64)
    for _ in range(rounds):
        d = ((x - style)[:, None, :] - means[None]) ** 2
        path = viterbi_switch(-d.sum(-1) / (2 * var), switch_penalty)
        style = (x - means[path]).mean(0)
    events = []
    start = 0
    for i in range(1, len(path) + 1):
        if i == len(path) or path[i] != path[start]:
            if path[start] < len(comps):
                events.append((comps[path[start]], start * clip_seconds, i * clip_seconds))
            start = i
    return events


def rule_based_candidates(records: Sequence[dict[str, Any]], features: dict[str, np.ndarray],
                          qids: Sequence[str], cfg: Any, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the spans the grammar's semantics give on the rule-based decoded events.

    The resolved events come first (their hull for "then"); then the other
    events of the queried composition, then every other decoded event, so R@5
    has a list. Queries resolve on the decoded composition sequence exactly as
    ``synthetic.resolve`` defines them.

    Returns:
      spans [Q, k, 2] seconds and scores [Q, k] (descending; -inf when unused).
    """
    from jvmr.data import synthetic
    protos = synthetic.prototypes(cfg)
    decoded: dict[str, list] = {}
    ranked = []
    for video, q in _by_query(records, qids):
        vid = video["vid"]
        if vid not in decoded:
            decoded[vid] = rule_based_events(features[vid], video["clip_seconds"], cfg, protos)
        events = decoded[vid]
        pairs = [p for p, _, _ in events]
        hit = synthetic.resolve(pairs, q)
        rest = sorted((j for j in range(len(events)) if j not in hit), key=lambda j: pairs[j] != (q["action"],
                                                                                                  q["object"]))
        ranked.append(_span(events, hit, q["hull"]) + _span(events, rest, False))
    return _ranked_candidates(ranked, k)


# ---------------------------------------------------------------------------
# CLI


def load_split(data_dir: str, split: str, with_features: bool = True) -> dict[str, Any]:
    """A TFRecord split's qids, vids, durations [Q], padded gt spans [Q, G, 2] + validity, query types,
    and (``with_features``) the feature array of each video."""
    from jvmr.data import schema
    out: dict[str, Any] = {"qid": [], "vid": [], "duration": [], "gt": [], "query_type": [], "features": {}}
    for ex in schema.read_split(data_dir, split):
        out["qid"].append(ex.qid)
        out["vid"].append(ex.vid)
        out["duration"].append(float(ex.duration))
        out["gt"].append(np.asarray(ex.gt_spans, np.float64).reshape(-1, 2))
        out["query_type"].append(ex.query_type)
        if with_features:
            out["features"].setdefault(ex.vid, ex.video_features)
    out["duration"] = np.asarray(out["duration"], np.float64)
    out["gt_spans"], out["gt_valid"] = metrics.pad_spans(out.pop("gt")) if out["qid"] else (
        np.zeros((0, 1, 2)), np.zeros((0, 1), bool))
    return out


def _manifest(data_dir: str) -> dict[str, Any]:
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _average(results: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([r[key] for r in results])) for key in results[0]}


def run_baselines(data_dir: str, splits: Sequence[str] | None = None, train_split: str = "train",
                  protocol: str = "", seed: int = 0, num_draws: int = 20, k: int = 5,
                  grid_step: float = 0.02) -> dict[str, dict[str, dict[str, float]]]:
    """Every applicable baseline on every evaluation split of a built dataset.

    Args:
      data_dir: a dataset directory (``data_prep.build`` or the embedded benchmark).
      splits: splits to evaluate (default: every split of the manifest but ``train_split``).
      train_split: the split the fixed prior is learned on.
      protocol: evaluation protocol (default: the dataset's, ``metrics.DATASET_PROTOCOLS``).
      seed: seed of the random baselines.
      num_draws: random orders averaged by ``random_event``.
      k: spans per query.
      grid_step: grid step of the fixed-prior search.

    Returns:
      ``{baseline: {split: {metric_key: value}}}`` with ``eval_metrics.jsonl``'s keys.
    """
    manifest = _manifest(data_dir)
    dataset = manifest.get("dataset", "")
    protocol = get_protocol_for(dataset, protocol)
    if splits is None:
        splits = [s for s, n in manifest.get("num_examples", {}).items() if n and s != train_split]
        if not splits:
            raise ValueError(f"no evaluation split in {data_dir}/manifest.json: pass --splits")
    train = load_split(data_dir, train_split, with_features=False)
    if not train["qid"]:
        raise ValueError(f"split {train_split!r} in {data_dir} has no examples")
    prior_spans = fixed_prior_spans(train["duration"], train["gt_spans"], train["gt_valid"], step=grid_step, k=k)
    synthetic_cfg = None
    if dataset == "synthetic":
        from jvmr.data import synthetic
        synthetic_cfg = synthetic.config_from_dict(manifest["config"])
    report: dict[str, dict[str, dict[str, float]]] = collections.defaultdict(dict)
    def rng(name: str, split: str) -> np.random.Generator:  # One stream per (baseline, split).
        return np.random.default_rng([seed, *(ord(c) for c in f"{name}/{split}")])

    for split in splits:
        data = load_split(data_dir, split, with_features=synthetic_cfg is not None)
        if not data["qid"]:
            raise ValueError(f"split {split!r} in {data_dir} has no examples")
        d, gt, valid, types = data["duration"], data["gt_spans"], data["gt_valid"], data["query_type"]

        def score(spans, scores):
            return metrics.evaluate_split(protocol, spans, scores, gt, valid, types)[0]

        if dataset == "synthetic_corpus" or protocol.name == "tvr":  # a corpus: VCMR / SVMR / VR rows
            for name, result in _corpus_baselines(data, prior_spans, lambda name: rng(name, split), num_draws).items():
                report[name][split] = result
            continue
        ranks = np.arange(k, 0, -1, dtype=np.float64)[None].repeat(len(d), 0)
        report["random_span"][split] = score(random_span_predictions(d, seed, k), ranks)
        report["fixed_prior_span"][split] = score(prior_spans[None] * d[:, None, None],
                                                  ranks[:, :len(prior_spans)])
        if synthetic_cfg is not None:
            from jvmr.data import synthetic
            records = synthetic.read_videos(data_dir, split)
            for name, candidates in (("random_event", random_event_candidates),
                                     ("structure_only", structure_only_candidates)):
                stream = rng(name, split)
                report[name][split] = _average([score(*candidates(records, data["qid"], stream, k))
                                                for _ in range(num_draws)])
            report["rule_based"][split] = score(*rule_based_candidates(
                records, data["features"], data["qid"], synthetic_cfg, k))
    return {name: dict(v) for name, v in report.items()}


def corpus_baseline_blocks(vids: Sequence[str], durations: np.ndarray, corpus: Sequence[str],
                           corpus_durations: np.ndarray, rng: np.random.Generator,
                           prior_spans: np.ndarray | None = None, k: int = metrics.TVR_MAX_PRED_PER_QUERY
                           ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """TVR prediction blocks (``metrics.evaluate_tvr``) of a baseline that never reads the query.

    Without ``prior_spans`` (``random_video``): per query, ``k`` random distinct videos of the corpus
    (VR) with one uniformly random span in each (VCMR, in that order), and ``k`` random spans in its
    own video (SVMR). With normalised ``prior_spans`` [P, 2] (``prior``): one random video order
    shared by every query (a query-blind ranking), the VCMR moments ``prior_spans`` x that order
    (every prior span of the first video, then the second ...), and the prior spans in the query's
    own video (SVMR).

    Args: vids [Q] / durations [Q]: each query's video and its duration; corpus [V] / corpus_durations [V]:
    the split's videos. Returns {'VCMR', 'SVMR', 'VR'} -> (pred_vid [Q, P], pred_spans [Q, P, 2] seconds,
    pred_valid [Q, P]) with video indices into ``corpus``.
    """
    row = {v: i for i, v in enumerate(corpus)}
    q, v = len(vids), len(corpus)
    own = np.asarray([row[x] for x in vids], np.int64)
    n = min(k, v)
    if prior_spans is None:
        order = np.argsort(rng.random((q, v)), axis=1)[:, :n]  # k distinct random videos per query
        vcmr_spans = random_span_predictions(corpus_durations[order].reshape(-1), int(rng.integers(1 << 31)), 1)
        vcmr = (order, vcmr_spans.reshape(q, n, 2))
        svmr_spans = random_span_predictions(durations, int(rng.integers(1 << 31)), k)
    else:
        order = np.broadcast_to(rng.permutation(v)[:n], (q, n))
        p = len(prior_spans)
        per = max(1, -(-k // p))  # videos whose prior spans fill the k VCMR slots
        moment_vid = np.repeat(order[:, :per], p, axis=1)[:, :k]
        moment_span = np.tile(prior_spans, (per, 1))[:k]
        vcmr = (moment_vid, moment_span[None] * corpus_durations[moment_vid][..., None])
        svmr_spans = np.broadcast_to(prior_spans[None], (q, p, 2)) * durations[:, None, None]
    vr_spans = np.zeros(order.shape + (2,))
    return {"VCMR": (vcmr[0], vcmr[1], np.ones(vcmr[0].shape, bool)),
            "SVMR": (np.broadcast_to(own[:, None], svmr_spans.shape[:2]), svmr_spans,
                     np.ones(svmr_spans.shape[:2], bool)),
            "VR": (order, vr_spans, np.ones(order.shape, bool))}


def _corpus_baselines(data: dict[str, Any], prior_spans: np.ndarray, rng: Callable[[str], np.random.Generator],
                      num_draws: int) -> dict[str, dict[str, float]]:
    """random_video and prior (query-blind) rows of a corpus split under the ``tvr`` protocol (keys as
    ``jvmr.retrieval.evaluate_corpus`` logs them), averaged over ``num_draws`` draws."""
    corpus, first = np.unique(np.asarray(data["vid"]), return_index=True)
    corpus_durations = data["duration"][first]
    own = np.searchsorted(corpus, np.asarray(data["vid"]))
    desc_types = metrics.tvr_desc_types(data["query_type"])
    out = {}
    for name, spans in (("random_video", None), ("prior", prior_spans)):
        stream = rng(name)
        results = []
        for _ in range(num_draws):
            blocks = corpus_baseline_blocks(data["vid"], data["duration"], list(corpus), corpus_durations, stream,
                                            spans)
            full = metrics.evaluate_tvr(blocks, own, data["gt_spans"], data["gt_valid"], desc_types)
            results.append(dict(metrics.flat_metrics(full), **metrics.tvr_type_headlines(full)))
        out[name] = _average(results)
    return out


def get_protocol_for(dataset: str, protocol: str = "") -> metrics.Protocol:
    """The named protocol, else the dataset's (the library default for an unknown dataset)."""
    if protocol:
        return metrics.get_protocol(protocol)
    return metrics.protocol_for_dataset(dataset) if dataset in metrics.DATASET_PROTOCOLS else metrics.DEFAULT_PROTOCOL


def format_report(report: dict[str, dict[str, dict[str, float]]]) -> str:
    """Human-readable tables of a ``run_baselines`` report."""
    lines = []
    for name, by_split in report.items():
        for split, result in by_split.items():
            lines += [f"== {name} on {split} ==", metrics.format_metrics_table(result), ""]
    return "\n".join(lines)


def _define_flags() -> None:
    from absl import flags
    flags.DEFINE_string("data_dir", None, "Directory of the TFRecord splits (jvmr.data.schema) and manifest.json.")
    flags.DEFINE_list("splits", None, "Splits to evaluate (default: every split but --train_split).")
    flags.DEFINE_string("train_split", "train", "Split the fixed prior is learned on.")
    flags.DEFINE_string("protocol", "", "Evaluation protocol (default: the dataset's).")
    flags.DEFINE_string("output", None, "JSON file {baseline: {split: {metric_key: value}}}.")
    flags.DEFINE_integer("seed", 0, "Seed of the random baselines.")
    flags.DEFINE_integer("num_draws", 20, "Random event orders averaged by random_event.")
    flags.DEFINE_float("grid_step", 0.02, "Grid step of the fixed-prior search (normalised).")
    flags.mark_flag_as_required("data_dir")


def main(argv: Sequence[str]) -> None:
    """absl entry point (flags are defined only when run as ``__main__``)."""
    from absl import app, flags
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    report = run_baselines(f.data_dir, f.splits, f.train_split, protocol=f.protocol, seed=f.seed,
                           num_draws=f.num_draws, grid_step=f.grid_step)
    print(format_report(report))
    if f.output:
        os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
        with open(f.output, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, allow_nan=False)
            fh.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main)
