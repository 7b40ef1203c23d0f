"""Corpus-level moment retrieval: encode every video once, then search a whole corpus per query.

For unimodal-encoder models (ReLoCLNet): a :class:`CorpusIndex` holds every clip
of every video of a corpus, unpadded (video v owns rows ``offsets[v]:offsets[v+1]``),
per stream: the L2-normalised retrieval keys and the raw context vectors H_m.
:func:`search` scores a batch of queries against all of it in matrix products:

1. VR: phi[q, v] = mean_m max_{t in v} cos(q_m, h_{m,t}) (the model's retrieval score);
   the ``num_videos`` best videos per query;
2. localisation inside each of them with the model's own head (S_t = mean_m h_{m,t} . q'_m,
   Conv1D start / end, softmax over the video's clips);
3. VCMR: every (video, i, j) with ``min_len <= j - i + 1 <= max_len`` clips ranked by
   ``alpha * phi + log P_start(i) + log P_end(j)`` (the released inference's
   exp(alpha * phi) P_start P_end, in log space); the ``num_moments`` best.

Clip t of a video's n clips covers [t / n, (t + 1) / n] of its duration (the
training grid's convention, ``jvmr.models.spans``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jvmr import metrics as metrics_lib
from jvmr.models import reloclnet
from jvmr.models.layers import masked_log_softmax

INDEX_VERSION = 1
_ARRAYS = ("durations", "offsets", "keys", "context")


@dataclasses.dataclass
class CorpusIndex:
    """Every clip of a corpus, per stream (M streams, C clips in all, V videos, width d).

    Attributes:
      vids: [V] video ids.
      durations: [V] float32 seconds.
      offsets: [V + 1] int64: video v's clips are rows offsets[v]:offsets[v + 1].
      keys: [M, C, d] float32 L2-normalised H_m rows (retrieval).
      context: [M, C, d] float32 H_m rows (localisation).
      info: what built it (model name and settings, vocabulary hash): a search
        with another model is refused.
    """

    vids: list[str]
    durations: np.ndarray
    offsets: np.ndarray
    keys: np.ndarray
    context: np.ndarray
    info: dict[str, Any]

    @property
    def num_videos(self) -> int:
        return len(self.vids)

    @property
    def num_clips(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        for name in _ARRAYS:
            np.save(os.path.join(directory, f"{name}.npy"), getattr(self, name))
        with open(os.path.join(directory, "index.json"), "w") as f:
            json.dump({"version": INDEX_VERSION, "vids": self.vids, "info": self.info}, f)

    @classmethod
    def load(cls, directory: str, mmap: bool = True) -> "CorpusIndex":
        path = os.path.join(directory, "index.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: {directory!r} is not a corpus index")
        with open(path) as f:
            meta = json.load(f)
        if meta.get("version") != INDEX_VERSION:
            raise ValueError(f"{path}: index version {meta.get('version')}, this jvmr reads {INDEX_VERSION}")
        arrays = {name: np.load(os.path.join(directory, f"{name}.npy"), mmap_mode="r" if mmap else None)
                  for name in _ARRAYS}
        return cls(vids=list(meta["vids"]), info=meta["info"], **arrays)


def build_index(encode_context, batches: Iterable[Mapping[str, np.ndarray]], info: Mapping[str, Any]) -> CorpusIndex:
    """Encodes each distinct video of ``batches`` once.

    Args:
      encode_context: batch -> {'context': [B, M, T, d]} (the model's context encoder).
      batches: pipeline batches (``video_feats``, ``video_mask``, ``vid``, ``duration``,
        ``example_mask``, and the streams the model reads); records of a video seen before are skipped.
      info: stored with the index.
    """
    seen: set[str] = set()
    vids, durations, rows = [], [], []
    for batch in batches:
        names = [v.decode() for v in batch["vid"]]
        new = [i for i, (n, e) in enumerate(zip(names, batch["example_mask"])) if e > 0 and n not in seen]
        if not new:
            continue
        context = np.asarray(encode_context(batch)["context"])  # [B, M, T, d]
        for i in new:
            if names[i] in seen:  # twice in this batch
                continue
            seen.add(names[i])
            n = int(np.sum(batch["video_mask"][i] > 0))
            vids.append(names[i])
            durations.append(float(batch["duration"][i]))
            rows.append(context[i, :, :n])
    if not rows:
        raise ValueError("no video to index")
    offsets = np.concatenate([[0], np.cumsum([r.shape[1] for r in rows])]).astype(np.int64)
    context = np.concatenate(rows, axis=1).astype(np.float32)
    keys = context / np.maximum(np.linalg.norm(context, axis=-1, keepdims=True), reloclnet.COSINE_EPS)
    return CorpusIndex(vids=vids, durations=np.asarray(durations, np.float32), offsets=offsets, keys=keys,
                       context=context, info=dict(info))


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """num_videos: videos localised per query (released: 100); num_moments: VCMR moments kept (200);
    alpha: weight of the video score (released q2c_alpha: 30); min_len / max_len: moment length in
    clips (max_len 0 = no limit)."""

    num_videos: int = 100
    num_moments: int = 200
    alpha: float = 30.0
    min_len: int = 1
    max_len: int = 0


def _device_index(index: CorpusIndex) -> dict[str, jax.Array]:
    lengths = index.lengths
    clip_video = np.repeat(np.arange(index.num_videos), lengths)
    return {"keys": jnp.asarray(index.keys), "context": jnp.asarray(index.context),
            "starts": jnp.asarray(index.offsets[:-1]), "lengths": jnp.asarray(lengths),
            "clip_video": jnp.asarray(clip_video)}


def video_scores(keys: jax.Array, clip_video: jax.Array, num_videos: int, query: jax.Array) -> jax.Array:
    """phi [Q, V] = mean_m max over each video's clips of cos(q_m, key_{m,t}); keys [M, C, d] unit rows."""
    q = reloclnet.l2_normalize(query)  # [Q, M, d]
    sims = jnp.einsum("qmd,mcd->cqm", q, keys)  # [C, Q, M]
    per_video = jax.ops.segment_max(sims, clip_video, num_segments=num_videos, indices_are_sorted=True)
    return jnp.mean(per_video, axis=-1).T


def localize(context: jax.Array, starts: jax.Array, lengths: jax.Array, videos: jax.Array, local_query: jax.Array,
             conv_start: jax.Array, conv_end: jax.Array, max_clips: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Start / end log-probabilities [Q, K, T] of each query in each of its K ``videos`` [Q, K].

    T = ``max_clips`` (>= every video's length); also returns the [Q, K, T] clip mask.
    """
    t = jnp.arange(max_clips)
    n = lengths[videos]  # [Q, K]
    mask = (t[None, None, :] < n[..., None]).astype(jnp.float32)
    rows = jnp.minimum(starts[videos][..., None] + t, context.shape[1] - 1)  # [Q, K, T]
    q, k = videos.shape
    ctx = context[:, rows.reshape(-1)].reshape(context.shape[0], q, k, max_clips, -1)  # [M, Q, K, T, d]
    ctx = jnp.moveaxis(ctx, 0, 2).reshape(q * k, context.shape[0], max_clips, -1)  # [QK, M, T, d]
    lq = jnp.repeat(local_query, k, axis=0)  # [QK, M, d]
    start, end = reloclnet.localization_logits(lq, ctx, mask.reshape(q * k, -1), conv_start, conv_end)
    log_start = masked_log_softmax(start, mask.reshape(q * k, -1)).reshape(q, k, -1)
    log_end = masked_log_softmax(end, mask.reshape(q * k, -1)).reshape(q, k, -1)
    return log_start, log_end, mask


def rank_moments(video_term: jax.Array, log_start: jax.Array, log_end: jax.Array, mask: jax.Array,
                 num_moments: int, min_len: int, max_len: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Top ``num_moments`` (k, i, j) by video_term[q, k] + log P_start(i) + log P_end(j).

    Returns (k [Q, N], i [Q, N], j [Q, N], scores [Q, N]; -inf where fewer exist).
    """
    q, k, t = log_start.shape
    i = jnp.arange(t)[:, None]
    j = jnp.arange(t)[None, :]
    allowed = (j - i + 1 >= max(min_len, 1))
    if max_len > 0:
        allowed = allowed & (j - i + 1 <= max_len)
    valid = mask > 0
    allowed = allowed[None, None] & valid[..., :, None] & valid[..., None, :]
    joint = video_term[..., None, None] + log_start[..., :, None] + log_end[..., None, :]
    joint = jnp.where(allowed, joint, -jnp.inf).reshape(q, k * t * t)
    scores, flat = jax.lax.top_k(joint, min(num_moments, k * t * t))
    return flat // (t * t), (flat // t) % t, flat % t, scores


@functools.partial(jax.jit, static_argnames=("num_videos", "max_clips", "settings"))
def _search(arrays, query, local_query, conv_start, conv_end, *, num_videos: int, max_clips: int,
            settings: SearchSettings):
    phi = video_scores(arrays["keys"], arrays["clip_video"], num_videos, query)
    k = min(settings.num_videos, num_videos)
    top_phi, top_videos = jax.lax.top_k(phi, k)
    log_start, log_end, mask = localize(arrays["context"], arrays["starts"], arrays["lengths"], top_videos,
                                        local_query, conv_start, conv_end, max_clips)
    which, i, j, scores = rank_moments(settings.alpha * top_phi, log_start, log_end, mask, settings.num_moments,
                                       settings.min_len, settings.max_len)
    return top_videos, top_phi, jnp.take_along_axis(top_videos, which, axis=1), i, j, scores


@functools.partial(jax.jit, static_argnames=("max_clips", "settings"))
def _svmr(arrays, videos, local_query, conv_start, conv_end, *, max_clips: int, settings: SearchSettings):
    log_start, log_end, mask = localize(arrays["context"], arrays["starts"], arrays["lengths"], videos[:, None],
                                        local_query, conv_start, conv_end, max_clips)
    _, i, j, scores = rank_moments(jnp.zeros(videos.shape + (1,)), log_start, log_end, mask,
                                   settings.num_moments, settings.min_len, settings.max_len)
    return i, j, scores


class CorpusSearcher:
    """Exact search over a :class:`CorpusIndex` with a model's query encoder and localisation head."""

    def __init__(self, index: CorpusIndex, conv_start: np.ndarray, conv_end: np.ndarray,
                 settings: SearchSettings = SearchSettings()):
        self.index = index
        self.arrays = _device_index(index)
        self.conv = (jnp.asarray(conv_start), jnp.asarray(conv_end))
        self.settings = settings
        self.max_clips = int(index.lengths.max())

    def _seconds(self, videos: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        n = self.index.lengths[videos].astype(np.float64)
        d = self.index.durations[videos].astype(np.float64)
        return np.stack([i / n * d, (j + 1) / n * d], axis=-1)

    def search(self, query: np.ndarray, local_query: np.ndarray) -> dict[str, np.ndarray]:
        """VR and VCMR for queries [Q, M, d] (q_m) / [Q, M, d] (q'_m).

        Returns video_rank [Q, K] (index rows), video_scores [Q, K] (phi), moment_videos [Q, N],
        moment_spans [Q, N, 2] seconds, moment_scores [Q, N] (-inf: no moment).
        """
        videos, phi, mv, i, j, scores = jax.device_get(_search(
            self.arrays, jnp.asarray(query), jnp.asarray(local_query), *self.conv,
            num_videos=self.index.num_videos, max_clips=self.max_clips, settings=self.settings))
        return {"video_rank": videos, "video_scores": phi, "moment_videos": mv,
                "moment_spans": self._seconds(mv, i, j), "moment_scores": scores}

    def localize_in(self, videos: np.ndarray, local_query: np.ndarray) -> dict[str, np.ndarray]:
        """SVMR: the best moments of each query in a given video (index rows [Q])."""
        i, j, scores = jax.device_get(_svmr(self.arrays, jnp.asarray(videos), jnp.asarray(local_query), *self.conv,
                                            max_clips=self.max_clips, settings=self.settings))
        return {"moment_spans": self._seconds(np.broadcast_to(np.asarray(videos)[:, None], i.shape), i, j),
                "moment_scores": scores}


# ----------------------------------------------------------------------------- evaluation


def tvr_submission(index: CorpusIndex, qids, queries, vcmr: Mapping[str, np.ndarray],
                   svmr: Mapping[str, np.ndarray] | None = None, max_pred: int = metrics_lib.TVR_MAX_PRED_PER_QUERY
                   ) -> dict[str, Any]:
    """A TVR submission {video2idx, VCMR, SVMR, VR} (rows [video_idx, st, ed, score], ranked, <= max_pred)."""
    def rows(videos, spans, scores):
        return [[int(v), float(a), float(b), float(c)] for v, (a, b), c in zip(videos, spans, scores)
                if np.isfinite(c)][:max_pred]
    out: dict[str, Any] = {"video2idx": {v: i for i, v in enumerate(index.vids)}, "VCMR": [], "VR": []}
    for q, (qid, text) in enumerate(zip(qids, queries)):
        desc_id = metrics_lib._tvr_desc_id(qid)
        out["VCMR"].append({"desc_id": desc_id, "desc": text, "predictions": rows(
            vcmr["moment_videos"][q], vcmr["moment_spans"][q], vcmr["moment_scores"][q])})
        out["VR"].append({"desc_id": desc_id, "desc": text, "predictions": [
            [int(v), 0.0, 0.0, float(c)] for v, c in zip(vcmr["video_rank"][q][:max_pred], vcmr["video_scores"][q])]})
    if svmr is not None:
        out["SVMR"] = []
        for q, (qid, text) in enumerate(zip(qids, queries)):
            videos = np.full(svmr["moment_scores"].shape[1], svmr["video"][q])
            out["SVMR"].append({"desc_id": metrics_lib._tvr_desc_id(qid), "desc": text, "predictions": rows(
                videos, svmr["moment_spans"][q], svmr["moment_scores"][q])})
    return out


def _blocks(submission: Mapping[str, Any], num_queries: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """TVR submission blocks -> evaluate_tvr's (pred_vid, pred_spans, pred_valid) arrays."""
    blocks = {}
    for task in metrics_lib.TVR_TASK_TYPES:
        if task not in submission:
            continue
        entries = submission[task]
        width = max(1, max(len(e["predictions"]) for e in entries))
        vid = np.zeros((num_queries, width), np.int64)
        spans = np.zeros((num_queries, width, 2))
        valid = np.zeros((num_queries, width), bool)
        for q, e in enumerate(entries):
            p = np.asarray(e["predictions"], np.float64).reshape(-1, 4)
            vid[q, :len(p)], spans[q, :len(p)], valid[q, :len(p)] = p[:, 0], p[:, 1:3], True
        blocks[task] = (vid, spans, valid)
    return blocks


def evaluate_corpus(encode_query, encode_context, params: Mapping[str, Any],
                    batches: Iterable[Mapping[str, np.ndarray]], settings: SearchSettings,
                    info: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """VCMR / SVMR / VR of a split against its own corpus (every video of the split), TVR's evaluator.

    ``encode_query`` / ``encode_context``: batch -> the model's encodings; ``params``
    holds the localisation kernels ``conv_start`` / ``conv_end``. Returns the flat
    metrics (``VCMR-0.5-r1``, ..., ``{type}/VCMR-0.5-r1``) and the predictions
    (``submission``: the TVR submission; ``metrics``: the full result).
    """
    batches = list(batches)
    index = build_index(encode_context, batches, info)
    row = {v: i for i, v in enumerate(index.vids)}
    searcher = CorpusSearcher(index, np.asarray(params["conv_start"]), np.asarray(params["conv_end"]), settings)
    host: dict[str, list] = {k: [] for k in ("qid", "vid", "query", "query_type")}
    gts, gt_masks, found = [], [], []
    for batch in batches:
        keep = batch["example_mask"] > 0
        enc = encode_query(batch)
        q, lq = np.asarray(enc["query"])[keep], np.asarray(enc["local_query"])[keep]
        vids = [v.decode() for v in batch["vid"][keep]]
        result = searcher.search(q, lq)
        result.update({f"svmr_{k}": v for k, v in searcher.localize_in(np.asarray([row[v] for v in vids]), lq).items()})
        found.append(result)
        for k in host:
            host[k].extend(x.decode() for x in batch[k][keep])
        gts.append(batch["gt_spans"][keep])
        gt_masks.append(batch["gt_spans_mask"][keep] > 0)
    merged = {k: np.concatenate([f[k] for f in found]) for k in found[0]}
    gt_vid = np.asarray([row[v] for v in host["vid"]])
    svmr = {"video": gt_vid, "moment_spans": merged["svmr_moment_spans"], "moment_scores": merged["svmr_moment_scores"]}
    submission = tvr_submission(index, host["qid"], host["query"], merged, svmr)
    types = np.asarray(host["query_type"])
    desc_types = types if len(types) and set(types) <= set(metrics_lib.TVR_DESC_TYPES) else None
    gt, gt_valid = np.concatenate(gts), np.concatenate(gt_masks)
    full = metrics_lib.evaluate_tvr(_blocks(submission, len(gt_vid)), gt_vid, gt, gt_valid, desc_types)
    flat = metrics_lib.flat_metrics(full)
    if desc_types is not None:
        for task in metrics_lib.TVR_TASK_TYPES:
            key = "r1" if task == "VR" else "0.5-r1"
            for dt in sorted(set(desc_types)):
                flat[f"{dt}/{task}-{key}"] = full[f"{task}_by_type"][f"{dt}-{key}"]
    flat["num_videos"] = index.num_videos
    return flat, {"submission": submission, "metrics": full, "index": index}
