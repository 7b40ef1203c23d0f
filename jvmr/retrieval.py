"""Corpus-level moment retrieval: encode every video once, then search a whole corpus per query.

For unimodal-encoder models (ReLoCLNet): a :class:`CorpusIndex` holds every clip
of every video of a corpus, unpadded (video v owns rows ``offsets[v]:offsets[v+1]``),
per stream: the context vectors H_m and their norms. :class:`CorpusSearcher` scores
a batch of queries against all of it:

1. VR: phi[q, v] = mean_m max_{t in v} cos(q_m, h_{m,t}) (the model's retrieval score),
   one matrix product per block of whole videos reduced to per-video maxima in cache;
   the ``num_videos`` best videos per query;
2. localisation inside each of them with the model's own head (S_t = mean_m h_{m,t} . q'_m,
   Conv1D start / end, softmax over the video's clips), each video read once for all
   the batch's queries that retrieved it;
3. VCMR: every (video, i, j) with ``min_len <= j - i + 1 <= max_len`` clips ranked by
   ``alpha * phi + log P_start(i) + log P_end(j)`` (the released inference's
   exp(alpha * phi) P_start P_end, in log space); the ``num_moments`` best, found
   exactly without scoring every (i, j) (:func:`rank_moments`).

Clip t of a video's n clips covers [t / n, (t + 1) / n] of its duration (the
training grid's convention, ``jvmr.models.spans``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jvmr import fs
from jvmr import metrics as metrics_lib
from jvmr.models import reloclnet
from jvmr.models.layers import masked_log_softmax
from jvmr.models.reloclnet import localization_conv

INDEX_VERSION = 2
_ARRAYS = ("durations", "offsets", "norms", "context")


@dataclasses.dataclass
class CorpusIndex:
    """Every clip of a corpus, per stream (M streams, C clips in all, V videos, width d).

    Attributes:
      vids: [V] video ids.
      durations: [V] float32 seconds.
      offsets: [V + 1] int64: video v's clips are rows offsets[v]:offsets[v + 1].
      norms: [M, C] float32 L2 norms of the H_m rows (retrieval reads cosines).
      context: [M, C, d] float32 H_m rows.
      info: what built it (model name and settings, vocabulary hash): a search
        with another model is refused.
    """

    vids: list[str]
    durations: np.ndarray
    offsets: np.ndarray
    norms: np.ndarray
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

    def save(self, directory: str, arrays: tuple[str, ...] = _ARRAYS) -> None:
        os.makedirs(directory, exist_ok=True)
        for name in arrays:
            np.save(os.path.join(directory, f"{name}.npy"), getattr(self, name))
        with open(os.path.join(directory, "index.json"), "w") as f:
            json.dump({"version": INDEX_VERSION, "vids": self.vids, "info": self.info}, f)

    @classmethod
    def load(cls, directory: str, mmap: bool = True) -> "CorpusIndex":
        meta = fs.read_versioned_json(os.path.join(directory, "index.json"), "version", INDEX_VERSION,
                                      "a corpus index")
        arrays = {name: np.load(os.path.join(directory, f"{name}.npy"), mmap_mode="r" if mmap else None)
                  for name in _ARRAYS}
        return cls(vids=list(meta["vids"]), info=meta["info"], **arrays)


def clip_norms(context: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """[M, C] L2 norms of the context rows [M, C, d] (clamped like :func:`jvmr.models.layers.l2_normalize`)."""
    out = np.empty(context.shape[:2], np.float32)
    for a in range(0, context.shape[1], chunk):
        c = np.asarray(context[:, a:a + chunk])
        out[:, a:a + chunk] = np.sqrt(np.einsum("mcd,mcd->mc", c, c))
    return np.maximum(out, reloclnet.COSINE_EPS)


def build_index(encode_context, batches: Iterable[Mapping[str, np.ndarray]], info: Mapping[str, Any],
                directory: str | None = None, chunk_rows: int = 1 << 16) -> CorpusIndex:
    """Encodes each distinct video of ``batches`` once.

    Args:
      encode_context: batch -> {'context': [B, M, T, d]} (the model's context encoder).
      batches: pipeline batches (``video_feats``, ``video_mask``, ``vid``, ``duration``,
        ``example_mask``, and the streams the model reads); records of a video seen before are skipped.
      info: stored with the index.
      directory: if given, the index is written there while it is built (each video's rows appended to one
        file per stream, then copied into ``context.npy`` ``chunk_rows`` clips at a time) and returned
        memory-mapped: a corpus larger than memory can be indexed. Else it is built in memory.
    """
    seen: set[str] = set()
    vids, durations, lengths, rows = [], [], [], []  # rows: [M, n, d] per video, in memory only
    parts: list[Any] = []  # with ``directory``: one open file of rows per stream
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
            if n < 1:
                raise ValueError(f"video {names[i]!r} has no valid clip (video_mask all zero): cannot index it")
            vids.append(names[i])
            durations.append(float(batch["duration"][i]))
            lengths.append(n)
            if directory is None:
                rows.append(context[i, :, :n])
                continue
            if not parts:
                os.makedirs(directory, exist_ok=True)
                parts = [open(os.path.join(directory, f"context.{m}.part"), "wb") for m in range(context.shape[1])]
            for m, f in enumerate(parts):
                f.write(np.ascontiguousarray(context[i, m, :n], np.float32).tobytes())
    if not vids:
        raise ValueError("no video to index")
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if directory is None:
        context = np.concatenate(rows, axis=1).astype(np.float32)
        return CorpusIndex(vids=vids, durations=np.asarray(durations, np.float32), offsets=offsets,
                           norms=clip_norms(context), context=context, info=dict(info))
    total, d = int(offsets[-1]), int(context.shape[-1])
    for f in parts:
        f.close()
    stored = np.lib.format.open_memmap(os.path.join(directory, "context.npy"), mode="w+", dtype=np.float32,
                                       shape=(len(parts), total, d))
    for m, f in enumerate(parts):
        part = np.memmap(f.name, np.float32, "r", shape=(total, d))
        for a in range(0, total, chunk_rows):
            stored[m, a:a + chunk_rows] = part[a:a + chunk_rows]
        del part
        os.remove(f.name)
    stored.flush()
    del stored
    context = np.load(os.path.join(directory, "context.npy"), mmap_mode="r")
    index = CorpusIndex(vids=vids, durations=np.asarray(durations, np.float32), offsets=offsets,
                        norms=clip_norms(context, chunk_rows), context=context, info=dict(info))
    index.save(directory, arrays=tuple(a for a in _ARRAYS if a != "context"))
    return CorpusIndex.load(directory)


@dataclasses.dataclass(frozen=True)
class AnnSettings:
    """The approximate VR path: per stream, a faiss inverted-file index over the unit clip vectors
    (``nlist`` k-means lists, 0 = about 4 sqrt(clips) with >= 39 clips each; 8-bit scalar-quantised
    codes); a query probes ``nprobe`` lists per stream for its ``clips_per_stream`` best clips, ranks
    their videos by the scores seen (a stream without a seen clip counts its lowest seen score), and
    re-scores the ``rescore`` best of them exactly (phi from every clip). The defaults cost 0.35-0.58
    points of VR R@100 on the trained embedded corpus benchmark (README)."""

    nlist: int = 0
    nprobe: int = 64
    clips_per_stream: int = 1000
    rescore: int = 200
    train_size: int = 100_000  # k-means sample (at least 40 per list)
    seed: int = 0


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


def _log_softmax(logits: jax.Array, valid: jax.Array) -> jax.Array:
    return jnp.where(valid, masked_log_softmax(logits, valid), -jnp.inf)


def _shift_left(x: jax.Array, s: int, fill: float) -> jax.Array:
    """y[..., t] = x[..., t + s] (``fill`` past the end)."""
    if s == 0:
        return x
    pad = jnp.full(x.shape[:-1] + (s,), fill, x.dtype)
    return jnp.concatenate([x[..., s:], pad], axis=-1)[..., :x.shape[-1]]


@dataclasses.dataclass
class _Bucket:
    """Videos whose clip counts round up to one padded length L, in blocks of G videos.

    host_keys: [blocks, M, G * L, d] unit rows (a video's last clip repeated up to L, so the
    maximum over its rows is the maximum over its clips) and ``keys``, the same on the
    device (``jax.device_put`` aliases a large host array on CPU); norms: [blocks, M, G * L];
    videos: [blocks * G] index rows (the last ones repeated to fill the last block).
    """

    length: int
    per_block: int
    videos: np.ndarray
    num_real: int
    host_keys: np.ndarray
    keys: jax.Array | None  # None: out of core (``layout_dir``), scored a chunk of blocks at a time
    norms: np.ndarray


def _bucket_layout(index: CorpusIndex, granule: int, block_clips: int, chunk_rows: int = 1 << 18,
                   layout_dir: str | None = None) -> list[_Bucket]:
    lengths = index.lengths
    padded = -(-lengths // granule) * granule
    m, d = index.context.shape[0], index.context.shape[2]
    buckets = []
    for length in np.unique(padded):
        videos = np.flatnonzero(padded == length)
        per_block = max(1, block_clips // int(length))
        blocks = -(-len(videos) // per_block)
        filled = np.concatenate([videos, np.full(blocks * per_block - len(videos), videos[-1])])
        t = np.minimum(np.arange(length)[None, :], lengths[filled][:, None] - 1)
        rows = (index.offsets[filled][:, None] + t).reshape(blocks, per_block * length)
        if layout_dir is None:
            keys = np.empty((blocks, m, per_block * length, d), np.float32)
            norms = np.empty((blocks, m, per_block * length), np.float32)
        else:  # on disk, memory-mapped: the page cache holds what fits
            os.makedirs(layout_dir, exist_ok=True)
            keys, norms = (np.lib.format.open_memmap(os.path.join(layout_dir, f"{name}_{int(length)}.npy"), "w+",
                                                     np.float32, shape)
                           for name, shape in (("keys", (blocks, m, per_block * length, d)),
                                               ("norms", (blocks, m, per_block * length))))
        step = max(1, chunk_rows // (per_block * int(length)))  # blocks per chunk: bounded extra memory
        for b in range(0, blocks, step):
            r = rows[b:b + step]  # [chunk, G * L]
            n = np.asarray(index.norms)[:, r]  # [M, chunk, G * L]
            norms[b:b + step] = n.transpose(1, 0, 2)
            keys[b:b + step] = (np.asarray(index.context[:, r.reshape(-1)]).reshape(m, *r.shape, d)
                                / n[..., None]).transpose(1, 0, 2, 3)
        if layout_dir is not None:
            keys.flush()
            norms.flush()
            buckets.append(_Bucket(int(length), per_block, filled, len(videos), keys, None, norms))
            continue
        keys.flags.writeable = False  # the device array may alias it (jax.device_put on CPU does not copy)
        buckets.append(_Bucket(int(length), per_block, filled, len(videos), keys, jax.device_put(keys), norms))
    return buckets


@functools.partial(jax.jit, static_argnames=("length",))
def _bucket_scores(keys: jax.Array, query: jax.Array, *, length: int) -> jax.Array:
    """phi [Q, blocks * G] of unit queries [M, Q, d] against one bucket's keys [blocks, M, G * L, d]."""
    def block(carry, k):
        s = jnp.einsum("mqd,mcd->mqc", query, k)
        m, q, c = s.shape
        return carry, jnp.mean(jnp.max(s.reshape(m, q, c // length, length), axis=3), axis=0)
    _, out = jax.lax.scan(block, None, keys)  # [blocks, Q, G]
    return jnp.moveaxis(out, 0, 1).reshape(query.shape[1], -1)


RANK_CHUNK = 50  # queries ranked per iteration (:func:`_rank_moments`)


@functools.partial(jax.jit, static_argnames=("num_moments", "lo", "width", "chunk"))
def _rank_moments(sims, lengths, video_term, conv_start, conv_end, *, num_moments: int, lo: int, width: int,
                  chunk: int):
    """:func:`_rank_chunk` over ``chunk`` queries at a time (``lax.map``): the [chunk, K, T] intermediates
    stay small enough to be reused between iterations, where [Q, K, T] ones would be fresh memory each call
    (page faults: about twice the time at Q = 1,000, K = 100, T = 124). Padded queries have no valid clip."""
    q = sims.shape[0]
    chunk = min(chunk, q)
    n = -(-q // chunk)

    def split(x):
        x = jnp.pad(x, [(0, n * chunk - q)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((n, chunk) + x.shape[1:])
    out = jax.lax.map(lambda xs: _rank_chunk(*xs, conv_start, conv_end, num_moments=num_moments, lo=lo,
                                             width=width), (split(sims), split(lengths), split(video_term)))
    return tuple(o.reshape((n * chunk,) + o.shape[2:])[:q] for o in out)


def _rank_chunk(sims, lengths, video_term, conv_start, conv_end, *, num_moments: int, lo: int, width: int):
    q, k, t = sims.shape
    valid = jnp.arange(t) < lengths[..., None]
    flat = sims.reshape(q * k, t)
    log_start = _log_softmax(localization_conv(flat, conv_start).reshape(q, k, t), valid).reshape(q, k * t)
    log_end = _log_softmax(localization_conv(flat, conv_end).reshape(q, k, t), valid)
    best, span = _shift_left(log_end, lo, -jnp.inf), 1  # max of log P_end over [i + lo, i + lo + span - 1]
    while 2 * span <= width:
        best, span = jnp.maximum(best, _shift_left(best, span, -jnp.inf)), 2 * span
    if span < width:
        best = jnp.maximum(best, _shift_left(best, width - span, -jnp.inf))
    bound = jnp.where(valid, video_term[..., None] + log_start.reshape(q, k, t) + best, -jnp.inf)
    n = min(num_moments, k * t)
    _, cand = jax.lax.top_k(bound.reshape(q, k * t), n)  # [Q, n] flat (k, i): the n best starts
    ck, ci = cand // t, cand % t
    cj = ci[..., None] + lo + jnp.arange(width)  # [Q, n, width] their allowed ends
    ends = (ck[..., None] * t + jnp.minimum(cj, t - 1)).reshape(q, -1)
    end_lp = jnp.take_along_axis(log_end.reshape(q, k * t), ends, axis=1).reshape(cj.shape)
    head = jnp.take_along_axis(video_term, ck, 1) + jnp.take_along_axis(log_start, cand, 1)
    scores = jnp.where(cj < t, head[..., None] + end_lp, -jnp.inf).reshape(q, n * width)
    top, pick = jax.lax.top_k(scores, min(num_moments, n * width))
    which = pick // width
    return (jnp.take_along_axis(ck, which, 1), jnp.take_along_axis(ci, which, 1),
            jnp.take_along_axis(cj.reshape(q, -1), pick, 1), top)


def rank_moments(sims: np.ndarray, lengths: np.ndarray, video_term: np.ndarray, conv_start, conv_end, *,
                 num_moments: int, min_len: int, max_len: int) -> tuple[np.ndarray, ...]:
    """The ``num_moments`` best (k, i, j) of each query by video_term[q, k] + log P_start(i) + log P_end(j).

    Args: sims [Q, K, T] (S_t of each query in each of its K videos, zero past a video's
    ``lengths`` [Q, K]); video_term [Q, K]; conv_start / conv_end [ker] kernels.
    Moments have ``min_len <= j - i + 1 <= max_len`` clips (``max_len`` 0: any).

    Exact without scoring every (i, j): with B(k, i) = video_term + log P_start(i) + the best
    allowed log P_end(j) (the best moment starting at i), the N-th largest B is a lower bound
    of the N-th best moment's score, so every one of the N best moments starts at one of the
    N best (k, i); only those starts' allowed ends are scored. Returns (k, i, j, scores),
    each [Q, N']; scores -inf where fewer moments exist.
    """
    t = sims.shape[2]
    lo = max(min_len, 1) - 1  # j - i >= lo
    width = min(max_len - lo, t - lo) if max_len > 0 else t - lo  # allowed ends per start
    if width <= 0:
        raise ValueError(f"no moment length in [{min_len}, {max_len}] fits {t} clips")
    return jax.device_get(_rank_moments(sims, lengths, video_term, conv_start, conv_end, num_moments=num_moments,
                                        lo=lo, width=width, chunk=RANK_CHUNK))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), reloclnet.COSINE_EPS)


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Column indices [Q, n] of each row's n largest scores, best first."""
    part = np.argpartition(scores, scores.shape[1] - n, axis=1)[:, -n:] if n < scores.shape[1] else np.tile(
        np.arange(scores.shape[1]), (scores.shape[0], 1))
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


class CorpusSearcher:
    """Exact search over a :class:`CorpusIndex` with a model's query encoder and localisation head.

    The corpus is laid out once (``__init__``) in buckets of videos of one padded length
    (clip counts rounded up to ``granule``), in blocks of about ``block_clips`` clips:
    VR is one jitted scan per bucket, a matrix product per block reduced at once to
    per-video maxima. Localisation reads each of the batch's top videos once for all
    the queries that retrieved it, ``group_videos`` videos of a bucket per batched
    matrix product (``threads`` host threads). Give it many queries per
    call (hundreds to thousands): the corpus is read once per call. Only this layout
    (one float32 copy of the corpus) is kept, not the index's arrays: in memory, or with
    ``layout_dir`` on disk, memory-mapped, for a corpus larger than memory (VR then
    scores about ``chunk_bytes`` of it at a time; localisation reads only the top videos'
    rows).
    """

    def __init__(self, index: CorpusIndex, conv_start: np.ndarray, conv_end: np.ndarray,
                 settings: SearchSettings = SearchSettings(), granule: int = 4, block_clips: int = 832,
                 threads: int = 1, group_videos: int = 16, ann: AnnSettings | None = None,
                 layout_dir: str | None = None, chunk_bytes: int = 1 << 28):
        if np.any(index.lengths < 1):
            raise ValueError("CorpusIndex: every video needs at least one clip")
        self.vids, self.durations, self.lengths = index.vids, np.asarray(index.durations), index.lengths
        self.num_videos, self.num_streams = index.num_videos, index.context.shape[0]
        self.conv = (jnp.asarray(conv_start, jnp.float32), jnp.asarray(conv_end, jnp.float32))
        self.settings = settings
        self.threads = threads
        self.group_videos = group_videos
        self.chunk_bytes = chunk_bytes
        self.buckets = _bucket_layout(index, granule, block_clips, layout_dir=layout_dir)
        self.max_clips = max(b.length for b in self.buckets)  # T of the localisation arrays (>= every length)
        self._where = np.zeros((self.num_videos, 3), np.int64)  # bucket, block, slot of each video
        for i, b in enumerate(self.buckets):
            pos = np.arange(b.num_real)
            self._where[b.videos[:b.num_real]] = np.stack([np.full_like(pos, i), pos // b.per_block,
                                                           pos % b.per_block], axis=1)
        self.ann = None
        if ann is not None:
            self.build_ann(ann)

    def _seconds(self, videos: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        n = self.lengths[videos].astype(np.float64)
        d = self.durations[videos].astype(np.float64)
        return np.stack([i / n * d, (j + 1) / n * d], axis=-1)

    def video_scores(self, query: np.ndarray) -> np.ndarray:
        """phi [Q, V] = mean_m max over each video's clips of cos(q_m, h_{m,t}); query [Q, M, d]."""
        q = jnp.asarray(np.ascontiguousarray(np.moveaxis(_unit(query), 1, 0)))  # [M, Q, d]
        phi = np.empty((q.shape[1], self.num_videos), np.float32)
        for b in self.buckets:
            if b.keys is not None:
                scores = np.asarray(_bucket_scores(b.keys, q, length=b.length))
            else:  # out of core: about chunk_bytes of the memory-mapped layout on the device at a time
                step = max(1, self.chunk_bytes // b.host_keys[0].nbytes)
                scores = np.concatenate([np.asarray(_bucket_scores(jnp.asarray(b.host_keys[a:a + step]), q,
                                                                   length=b.length))
                                         for a in range(0, b.host_keys.shape[0], step)], axis=1)
            phi[:, b.videos[:b.num_real]] = scores[:, :b.num_real]
        return phi

    def _video_groups(self, videos: np.ndarray, group: int = 64):
        """Yields (bucket, video rows [n], pairs [n, P]): the distinct videos of ``videos`` [Q, K] (index
        rows; < 0 skipped) in groups of at most ``group`` videos of one bucket with similar numbers of
        (q, k) pairs naming them; ``pairs`` holds those pairs' flat positions q * K + k (-1 pads)."""
        flat = videos.reshape(-1)
        order = np.argsort(flat, kind="stable")
        ordered = flat[order]
        starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
        counts = np.diff(np.concatenate([starts, [len(flat)]]))
        keep = ordered[starts] >= 0
        starts, counts, vids = starts[keep], counts[keep], ordered[starts][keep]
        bucket_of = self._where[vids, 0]
        for bucket in np.unique(bucket_of):
            chosen = np.flatnonzero(bucket_of == bucket)
            chosen = chosen[np.argsort(counts[chosen], kind="stable")]
            for g in range(0, len(chosen), group):
                c = chosen[g:g + group]
                cols = np.arange(counts[c].max())
                pos = np.minimum(starts[c][:, None] + cols, len(order) - 1)
                yield bucket, vids[c], np.where(cols < counts[c][:, None], order[pos], -1)

    def clip_sims(self, videos: np.ndarray, local_query: np.ndarray) -> np.ndarray:
        """S [Q, K, T] = mean_m h_{m,t} . q'_m of each query in each of its ``videos`` [Q, K] (zero past a
        video's end); each video's clips are read once for every query that asks for it."""
        return self.rescore(videos, None, local_query)[1]

    def rescore(self, videos: np.ndarray, query: np.ndarray | None, local_query: np.ndarray | None = None
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Exact phi [Q, K] (with ``query``; -inf where ``videos`` < 0) and clip similarities S [Q, K, T]
        (with ``local_query``, :meth:`clip_sims`) of each query in each of its ``videos`` [Q, K], both
        from one read of each video."""
        q, k = videos.shape
        unit = None if query is None else _unit(query)
        lq = None if local_query is None else np.asarray(local_query, np.float32) / self.num_streams
        phi = None if query is None else np.full(q * k, -np.inf, np.float32)
        sims = None if local_query is None else np.zeros((q * k, self.max_clips), np.float32)

        def work(groups):
            for bucket, vids, pairs in groups:  # batched matrix products over the group's videos
                b = self.buckets[bucket]
                _, block, slot = self._where[vids].T
                shape = (b.host_keys.shape[0], self.num_streams, b.per_block, b.length)
                keys = b.host_keys.reshape(shape + (-1,))[block, :, slot]  # [n, M, L, d]
                valid = pairs >= 0
                rows = np.maximum(pairs, 0) // k  # [n, P]
                if unit is not None:  # repeated last clips leave the maximum unchanged
                    s = np.matmul(unit[rows].transpose(0, 2, 1, 3), keys.transpose(0, 1, 3, 2))  # [n, M, P, L]
                    phi[pairs[valid]] = s.max(axis=3).mean(axis=1)[valid]
                if lq is not None:
                    s = np.matmul(lq[rows].transpose(0, 2, 1, 3), keys.transpose(0, 1, 3, 2))
                    s = np.einsum("nmpl,nml->npl", s, b.norms.reshape(shape)[block, :, slot])
                    s *= np.arange(b.length) < self.lengths[vids][:, None, None]
                    sims[pairs[valid], :b.length] = s[valid]

        groups = list(self._video_groups(videos, self.group_videos))
        if self.threads > 1 and len(groups) > 1:
            with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(work, [groups[i::self.threads] for i in range(self.threads)]))
        else:
            work(groups)
        return (None if phi is None else phi.reshape(q, k),
                None if sims is None else sims.reshape(q, k, self.max_clips))

    def _real_rows(self, stream: int):
        """Yields (unit rows [n, d], owning videos [n]) of every real (not repeated) clip of ``stream``,
        one block-chunk at a time (no copy of the whole corpus)."""
        for b in self.buckets:
            real = np.zeros((b.host_keys.shape[0], b.per_block, b.length), bool)
            pos = np.arange(b.num_real)
            owners = b.videos[:b.num_real]
            real[pos // b.per_block, pos % b.per_block] = np.arange(b.length) < self.lengths[owners][:, None]
            real = real.reshape(real.shape[0], -1)
            owner = np.broadcast_to(b.videos.reshape(-1, b.per_block)[:, :, None],
                                    (real.shape[0], b.per_block, b.length)).reshape(real.shape)
            step = max(1, (1 << 16) // real.shape[1])
            for a in range(0, real.shape[0], step):
                keep = real[a:a + step]
                yield b.host_keys[a:a + step, stream][keep], owner[a:a + step][keep]

    def build_ann(self, ann: AnnSettings) -> None:
        """Builds the approximate VR path (:class:`AnnSettings`): one faiss index per stream."""
        import faiss
        clips = int(np.sum(self.lengths))
        nlist = min(ann.nlist or max(1, min(int(4 * np.sqrt(clips)), clips // 39)), clips)  # faiss: >= 39 per list
        rng = np.random.default_rng(ann.seed)
        self._ann, self._clip_video = [], []
        for m in range(self.num_streams):
            take = np.sort(rng.choice(clips, min(clips, max(ann.train_size, 40 * nlist)), replace=False))
            sample, seen = [], 0
            for rows, _ in self._real_rows(m):
                pick = take[(take >= seen) & (take < seen + len(rows))] - seen
                sample.append(rows[pick])
                seen += len(rows)
            d = sample[0].shape[1]
            index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
            index.train(np.ascontiguousarray(np.concatenate(sample)))
            owners = []
            for rows, owner in self._real_rows(m):  # faiss ids: the order of addition
                index.add(np.ascontiguousarray(rows))
                owners.append(owner)
            index.nprobe = ann.nprobe
            self._ann.append(index)
            self._clip_video.append(np.concatenate(owners))
        self.ann = ann

    def ann_candidates(self, query: np.ndarray) -> np.ndarray:
        """Approximate VR: the ``rescore`` most promising videos [Q, R] of each query (-1 pads)."""
        ann = self.ann
        unit = _unit(query)
        q = unit.shape[0]
        seen = np.empty((self.num_streams, q, self.num_videos), np.float32)
        found = []
        for m, index in enumerate(self._ann):
            scores, clips = index.search(np.ascontiguousarray(unit[:, m]), ann.clips_per_stream)
            ok = clips >= 0
            vids = np.where(ok, self._clip_video[m][np.maximum(clips, 0)], -1)
            floor = np.min(np.where(ok, scores, np.inf), axis=1)  # an unseen clip scores at most this
            seen[m] = np.where(np.isfinite(floor), floor, -1.0)[:, None]
            rows = np.broadcast_to(np.arange(q)[:, None], vids.shape)
            np.maximum.at(seen[m], (rows[ok], vids[ok]), scores[ok])
            found.append(vids)
        approx = seen.mean(axis=0)  # [Q, V]
        vids = np.concatenate(found, axis=1)  # [Q, F]
        score = np.where(vids >= 0, np.take_along_axis(approx, np.maximum(vids, 0), 1), -np.inf)
        order = np.lexsort((vids, -score), axis=1)
        vids, score = np.take_along_axis(vids, order, 1), np.take_along_axis(score, order, 1)
        first = np.concatenate([np.ones((q, 1), bool), vids[:, 1:] != vids[:, :-1]], axis=1) & (vids >= 0)
        rank = np.cumsum(first, axis=1) - 1
        cand = np.full((q, ann.rescore), -1, np.int64)
        keep = first & (rank < ann.rescore)
        cand[np.nonzero(keep)[0], rank[keep]] = vids[keep]
        return cand

    def _rank(self, videos: np.ndarray, video_term: np.ndarray, local_query: np.ndarray,
              sims: np.ndarray | None = None):
        s = self.settings
        if sims is None:
            sims = self.clip_sims(videos, local_query)
        return rank_moments(sims, self.lengths[videos].astype(np.int32), video_term.astype(np.float32), *self.conv,
                            num_moments=s.num_moments, min_len=s.min_len, max_len=s.max_len)

    def search(self, query: np.ndarray, local_query: np.ndarray) -> dict[str, np.ndarray]:
        """VR and VCMR for queries [Q, M, d] (q_m) / [Q, M, d] (q'_m); exact, or approximate VR with ``ann``.

        Returns video_rank [Q, K] (index rows; -1 past the candidates ANN found), video_scores [Q, K]
        (phi), moment_videos [Q, N], moment_spans [Q, N, 2] seconds, moment_scores [Q, N] (-inf: no moment).
        """
        k = min(self.settings.num_videos, self.num_videos)
        sims = None
        if self.ann is None:
            phi = self.video_scores(query)
            videos = _top(phi, k)
            top_phi = np.take_along_axis(phi, videos, 1)
        else:  # candidates -1 (fewer found than asked) score -inf
            candidates = self.ann_candidates(query)
            fused = candidates.shape[1] <= k  # every candidate is localised: one read of each video
            phi, sims = self.rescore(candidates, query, local_query if fused else None)
            best = _top(phi, min(k, phi.shape[1]))
            videos, top_phi = np.take_along_axis(candidates, best, 1), np.take_along_axis(phi, best, 1)
            if fused:
                sims = np.take_along_axis(sims, best[..., None], 1)
        term = np.where(videos >= 0, self.settings.alpha * top_phi, -np.inf)
        which, i, j, scores = self._rank(np.maximum(videos, 0), term, local_query, sims)
        mv = np.take_along_axis(videos, which, axis=1)
        return {"video_rank": videos, "video_scores": top_phi, "moment_videos": mv,
                "moment_spans": self._seconds(mv, i, j), "moment_scores": scores}

    def localize_in(self, videos: np.ndarray, local_query: np.ndarray) -> dict[str, np.ndarray]:
        """SVMR: the best moments of each query in a given video (index rows [Q])."""
        videos = np.asarray(videos)[:, None]
        _, i, j, scores = self._rank(videos, np.zeros(videos.shape, np.float32), local_query)
        return {"moment_spans": self._seconds(np.broadcast_to(videos, i.shape), i, j), "moment_scores": scores}


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
            [int(v), 0.0, 0.0, float(c)] for v, c in zip(vcmr["video_rank"][q], vcmr["video_scores"][q])
            if v >= 0 and np.isfinite(c)][:max_pred]})
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


def encode_queries(encode_query, batches: Iterable[Mapping[str, np.ndarray]],
                   strings: tuple[str, ...] = ("qid", "query"), arrays: tuple[str, ...] = (),
                   source: str = "the batches") -> dict[str, Any]:
    """Encodes every real query (``example_mask`` > 0) of ``batches`` with the model's query encoder;
    ValueError naming ``source`` when there is none.

    Returns query / local_query [N, M, d] (q_m / q'_m), the batch's ``strings`` keys decoded
    (lists of N; the sentence ``query`` is returned as ``query_text``) and its ``arrays`` keys
    concatenated ([N, ...]).
    """
    out: dict[str, list] = {k: [] for k in ("query", "local_query", *arrays)}
    text = {k: [] for k in strings}
    for batch in batches:
        keep = batch["example_mask"] > 0
        enc = jax.device_get(encode_query(batch))
        for k in ("query", "local_query"):
            out[k].append(np.asarray(enc[k])[keep])
        for k in arrays:
            out[k].append(batch[k][keep])
        for k in strings:
            text[k].extend(x.decode() for x in batch[k][keep])
    if not out["query"]:
        raise ValueError(f"{source} has no query")
    result: dict[str, Any] = {k: np.concatenate(v) for k, v in out.items()}
    result.update({("query_text" if k == "query" else k): v for k, v in text.items()})
    return result


def search_all(searcher: CorpusSearcher, query: np.ndarray, local_query: np.ndarray, search_batch: int = 1024,
               svmr_videos: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:meth:`CorpusSearcher.search` over all queries [N, M, d] in chunks of ``search_batch`` (the corpus is
    read once per chunk), merged; with ``svmr_videos`` [N] (index rows) also SVMR in those videos
    (``svmr_moment_spans`` / ``svmr_moment_scores``)."""
    found = []
    for a in range(0, len(query), search_batch):
        qs = slice(a, a + search_batch)
        result = searcher.search(query[qs], local_query[qs])
        if svmr_videos is not None:
            result.update({f"svmr_{k}": v for k, v in searcher.localize_in(svmr_videos[qs], local_query[qs]).items()})
        found.append(result)
    return {k: np.concatenate([f[k] for f in found]) for k in found[0]}


def evaluate_corpus(encode_query, encode_context, params: Mapping[str, Any],
                    batches: Iterable[Mapping[str, np.ndarray]], settings: SearchSettings,
                    info: Mapping[str, Any], search_batch: int = 1024, ann: AnnSettings | None = None
                    ) -> tuple[dict[str, float], dict[str, Any]]:
    """VCMR / SVMR / VR of a split against its own corpus (every video of the split), TVR's evaluator.

    ``encode_query`` / ``encode_context``: batch -> the model's encodings; ``params``
    holds the localisation kernels ``conv_start`` / ``conv_end``; ``ann``: approximate VR
    (:class:`AnnSettings`) instead of the exact search. Returns the flat
    metrics (``VCMR-0.5-r1``, ..., ``{type}/VCMR-0.5-r1``) and the predictions
    (``submission``: the TVR submission; ``metrics``: the full result).
    """
    batches = list(batches)
    index = build_index(encode_context, batches, info)
    row = {v: i for i, v in enumerate(index.vids)}
    searcher = CorpusSearcher(index, np.asarray(params["conv_start"]), np.asarray(params["conv_end"]), settings,
                              ann=ann)
    enc = encode_queries(encode_query, batches, strings=("qid", "vid", "query", "query_type"),
                         arrays=("gt_spans", "gt_spans_mask"))
    gt_vid = np.asarray([row[v] for v in enc["vid"]])
    merged = search_all(searcher, enc["query"], enc["local_query"], search_batch, svmr_videos=gt_vid)
    svmr = {"video": gt_vid, "moment_spans": merged["svmr_moment_spans"], "moment_scores": merged["svmr_moment_scores"]}
    submission = tvr_submission(index, enc["qid"], enc["query_text"], merged, svmr)
    desc_types = metrics_lib.tvr_desc_types(enc["query_type"])
    gt, gt_valid = enc["gt_spans"], enc["gt_spans_mask"] > 0
    full = metrics_lib.evaluate_tvr(_blocks(submission, len(gt_vid)), gt_vid, gt, gt_valid, desc_types)
    flat = dict(metrics_lib.flat_metrics(full), **metrics_lib.tvr_type_headlines(full))
    flat["num_videos"] = index.num_videos
    return flat, {"submission": submission, "metrics": full, "index": index}
