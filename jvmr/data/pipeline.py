"""tf.data input pipeline: TFRecords of the schema -> static-shaped numpy batches.

A batch is a dictionary (B = batch size, T = the model's clip grid
``dataset.max_video_len``, L = ``dataset.max_query_len``, E = 3 * L edges,
G = ``dataset.max_gt_spans``). Every batch has the common keys; a model declares
the optional groups it reads (``jvmr.registry.ModelSpec.inputs``) and only those
are built:

| key               | shape / dtype      | meaning                                                    |
|-------------------|--------------------|------------------------------------------------------------|
| video_feats       | [B, T, D] float32  | clip features, resampled or padded to T                    |
| video_mask        | [B, T] float32     | 1 for real clips (always a prefix)                         |
| query_tokens      | [B, L] int32       | word ids (0 padding, 1 out of vocabulary)                  |
| query_mask        | [B, L] float32     | 1 for real words (prefix)                                  |
| *query_graph*     |                    |                                                            |
| edge_senders      | [B, E] int32       | query graph: sending word (local index)                    |
| edge_receivers    | [B, E] int32       | receiving word (local index)                               |
| edge_labels       | [B, E] int32       | dependency label id (``text.DEPENDENCY_LABELS``)           |
| edge_directions   | [B, E] int32       | 0 dependent->head, 1 head->dependent, 2 self loop          |
| edge_mask         | [B, E] float32     | 1 for real edges                                           |
| *video_index*     |                    |                                                            |
| video_index       | [B] int32          | hash of the video id (same video <=> same index, whp.)     |
| *subtitles*       |                    |                                                            |
| subtitle_feats    | [B, T, Ds] float32 | subtitle stream on the video's clip grid (shares video_mask)|
| *query_features*  |                    |                                                            |
| query_feats       | [B, L, Dq] float32 | pre-extracted query token features                         |
| query_feats_mask  | [B, L] float32     | 1 for real feature tokens (prefix)                         |
| *common*          |                    |                                                            |
| gt_span           | [B, 2] float32     | first ground-truth span as a fraction of the duration      |
| gt_spans          | [B, G, 2] float32  | all ground-truth spans in seconds                          |
| gt_spans_mask     | [B, G] float32     | 1 for real spans                                           |
| duration          | [B] float32        | seconds                                                    |
| example_mask      | [B] float32        | 0 for the padding examples that fill the last eval batch   |
| qid, vid, query   | [B] bytes          | host-side identifiers (never sent to the device)           |
| query_type        | [B] bytes          | template / query category                                  |

Stream widths (``dataset.feature_dim``, ``subtitle_dim``, ``query_feature_dim``)
come from the manifest (``jvmr.train.resolve_dataset``); a record whose stream is
missing or of another width stops the pipeline with an error naming its qid and vid.
The subtitle stream is aligned to the video's clips first (cut or zero-padded to
the video's clip count: TVR pools subtitles per clip, sometimes one clip off).

A query-only split (``jvmr.data.schema``: no ground truth) is read per record kind,
``make_dataset(..., kind='query')`` for its queries and ``kind='video'`` for its
corpus: their batches hold only the query keys or only the video keys, each built
exactly as for a labelled example.

The edge budget is fixed: slot i holds the arc word i -> head(i), slot L + i the
reverse arc, slot 2L + i word i's self loop; arcs whose head was truncated
away are masked. The fraction-of-duration convention makes spans independent of
the grid: in ``pad`` mode the valid clips cover the whole video, in
``resample`` mode all T clips do.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Iterator, NamedTuple

import numpy as np

from jvmr.data import schema, text

HOST_KEYS = ("qid", "vid", "query", "query_type")
LABEL_KEYS = ("gt_span", "gt_spans", "gt_spans_mask", "duration")  # what losses and metrics read, not models
INPUT_GROUPS = ("query_graph", "video_index", "subtitles", "query_features")


def resample_features_np(feats: np.ndarray, num_clips: int) -> np.ndarray:
    """Mean-pools [T, D] features to ``num_clips`` linspace bins, exactly as 2D-TAN and VSLNet do.

    Bounds are ``round(arange(num_clips + 1) / num_clips * T)`` (their arithmetic,
    so halves round the same way) capped at ``T - 1``; bin i
    is the mean of clips ``[b_i, b_{i+1})``, or clip ``b_i`` alone when that is
    empty (so clips repeat when T < num_clips). Because of the cap, the last clip
    only enters when a bin starts there: the official loaders' quirk, kept so
    that features resampled here match theirs.
    """
    t = feats.shape[0]
    idx = np.minimum(np.round(np.arange(num_clips + 1, dtype=np.float64) / num_clips * t).astype(np.int64), t - 1)
    start, end = idx[:-1], idx[1:]
    end = np.where(end > start, end, start + 1)
    cs = np.concatenate([np.zeros((1, feats.shape[1]), np.float64), np.cumsum(feats, 0, dtype=np.float64)])
    return ((cs[end] - cs[start]) / (end - start)[:, None]).astype(np.float32)


def _resample_features(feats, num_clips: int):
    import tensorflow as tf
    t = tf.shape(feats)[0]
    idx = tf.cast(tf.round(tf.range(num_clips + 1, dtype=tf.float64) / num_clips * tf.cast(t, tf.float64)), tf.int32)
    idx = tf.minimum(idx, t - 1)  # as resample_features_np (2D-TAN / VSLNet)
    start, end = idx[:-1], idx[1:]
    end = tf.where(end > start, end, start + 1)
    cs = tf.concat([tf.zeros([1, tf.shape(feats)[1]], tf.float64),
                    tf.cumsum(tf.cast(feats, tf.float64), axis=0)], axis=0)
    pooled = (tf.gather(cs, end) - tf.gather(cs, start)) / tf.cast(end - start, tf.float64)[:, None]
    return tf.cast(pooled, tf.float32)


def _fit_video(feats, num_clips: int, sampling: str):
    """Returns ([num_clips, D] features, [num_clips] mask)."""
    import tensorflow as tf
    t = tf.shape(feats)[0]
    if sampling == "resample":
        return _resample_features(feats, num_clips), tf.ones([num_clips], tf.float32)
    if sampling != "pad":
        raise ValueError(f"dataset.video_sampling must be 'pad' or 'resample', got {sampling!r}")

    def pad():
        padded = tf.pad(feats, [[0, num_clips - t], [0, 0]])
        return padded, tf.cast(tf.range(num_clips) < t, tf.float32)

    def shrink():
        return _resample_features(feats, num_clips), tf.ones([num_clips], tf.float32)

    out, mask = tf.cond(t <= num_clips, pad, shrink)
    out.set_shape([num_clips, None])
    mask.set_shape([num_clips])
    return out, mask


def _build_graph(heads, label_ids, num_words, max_len: int):
    """Fixed-budget edge lists (see module docstring) for one query."""
    import tensorflow as tf
    pos = tf.range(max_len, dtype=tf.int32)
    word_valid = pos < num_words
    heads = tf.pad(heads[:max_len], [[0, max_len - tf.minimum(tf.shape(heads)[0], max_len)]],
                   constant_values=-1)
    label_ids = tf.pad(label_ids[:max_len], [[0, max_len - tf.minimum(tf.shape(label_ids)[0], max_len)]])
    arc_valid = word_valid & (heads >= 0) & (heads < num_words)
    safe_heads = tf.where(arc_valid, heads, 0)
    zeros = tf.zeros_like(pos)
    senders = tf.concat([tf.where(arc_valid, pos, 0), safe_heads, tf.where(word_valid, pos, 0)], 0)
    receivers = tf.concat([safe_heads, tf.where(arc_valid, pos, 0), tf.where(word_valid, pos, 0)], 0)
    labels = tf.concat([tf.where(arc_valid, label_ids, 0), tf.where(arc_valid, label_ids, 0),
                        tf.where(word_valid, text.DEP_SELF_ID + zeros, 0)], 0)
    directions = tf.concat([zeros, zeros + 1, zeros + 2], 0)
    mask = tf.cast(tf.concat([arc_valid, arc_valid, word_valid], 0), tf.float32)
    return {"edge_senders": senders, "edge_receivers": receivers, "edge_labels": labels,
            "edge_directions": directions, "edge_mask": mask}


def _checked_features(feats, dim: int, what: str, ex):
    """``feats`` [N, D] after asserting N > 0 and D == dim (the message names the record)."""
    import tensorflow as tf
    check = tf.debugging.Assert(
        tf.logical_and(tf.equal(tf.shape(feats)[1], dim), tf.shape(feats)[0] > 0),
        [f"{what} missing or not {dim}-d (dataset config / manifest)", "qid", ex["qid"], "vid", ex["vid"],
         "shape", tf.shape(feats)])
    with tf.control_dependencies([check]):
        return tf.identity(feats)


def make_preprocess_fn(dataset_config, vocab: list[str], inputs: tuple[str, ...] = (), kind: str = "example",
                       labels: bool = True):
    """Returns the per-record map function (parsed record -> fixed-shape example) building the
    common keys and the optional ``inputs`` groups (``INPUT_GROUPS``).

    ``kind`` is the record kind (``jvmr.data.schema.KINDS``): 'example' builds every key;
    'query' (a query of a query-only split) only the query keys (``query_tokens``,
    ``query_mask``, the query groups), 'video' (a corpus video) only the video keys
    (``video_feats``, ``video_mask``, ``duration``, the video groups); both keep
    ``example_mask`` and the host keys. A key is built the same way for every kind.
    ``labels=False`` leaves out the ground truth (``gt_span``, ``gt_spans``, ``gt_spans_mask``): the
    training batches of a weakly supervised model never carry a boundary.
    """
    import tensorflow as tf
    unknown = set(inputs) - set(INPUT_GROUPS)
    if unknown:
        raise ValueError(f"unknown input group(s) {sorted(unknown)}; known: {INPUT_GROUPS}")
    if kind not in schema.KINDS:
        raise ValueError(f"record kind must be one of {schema.KINDS}, got {kind!r}")
    num_clips = int(dataset_config.max_video_len)
    max_len = int(dataset_config.max_query_len)
    max_gt = int(dataset_config.max_gt_spans)
    feature_dim = int(dataset_config.feature_dim)
    sampling = str(dataset_config.video_sampling)
    normalize = bool(dataset_config.get("normalize_features", False))
    word_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(vocab), tf.range(len(vocab), dtype=tf.int32)),
        default_value=text.UNK_ID)
    label_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(text.DEPENDENCY_LABELS)),
                                            tf.range(text.NUM_DEPENDENCY_LABELS, dtype=tf.int32)),
        default_value=text.DEP_UNK_ID)

    def video_keys(ex):
        feats = ex["video_features"]
        check = tf.debugging.Assert(
            tf.equal(tf.shape(feats)[1], feature_dim),
            ["video feature dim differs from dataset.feature_dim", feature_dim, "qid", ex["qid"],
             "vid", ex["vid"], "shape", tf.shape(feats)])
        with tf.control_dependencies([check]):
            feats = tf.identity(feats)
        if normalize:
            feats = tf.math.l2_normalize(feats, axis=-1)
        video, video_mask = _fit_video(feats, num_clips, sampling)
        out = {"video_feats": tf.ensure_shape(video, [num_clips, feature_dim]), "video_mask": video_mask,
               "duration": ex["duration"]}
        if "video_index" in inputs:
            out["video_index"] = tf.cast(tf.strings.to_hash_bucket_fast(ex["vid"], 2**31 - 1), tf.int32)
        if "subtitles" in inputs:
            sub = _checked_features(ex["subtitle_features"], int(dataset_config.subtitle_dim), "subtitle stream", ex)
            t = tf.shape(ex["video_features"])[0]
            sub = tf.pad(sub[:t], [[0, t - tf.minimum(tf.shape(sub)[0], t)], [0, 0]])
            if normalize:
                sub = tf.math.l2_normalize(sub, axis=-1)
            sub, _ = _fit_video(sub, num_clips, sampling)
            out["subtitle_feats"] = tf.ensure_shape(sub, [num_clips, int(dataset_config.subtitle_dim)])
        return out

    def query_keys(ex):
        tokens = ex["tokens"]
        num_words = tf.minimum(tf.shape(tokens)[0], max_len)
        ids = word_table.lookup(tf.strings.lower(tokens))[:max_len]
        out = {"query_tokens": tf.pad(ids, [[0, max_len - num_words]]),
               "query_mask": tf.cast(tf.range(max_len) < num_words, tf.float32)}
        if "query_graph" in inputs:
            out.update(_build_graph(ex["dep_heads"], label_table.lookup(tf.strings.lower(ex["dep_labels"])),
                                    num_words, max_len))
        if "query_features" in inputs:
            dq = int(dataset_config.query_feature_dim)
            qf = _checked_features(ex["query_features"], dq, "query token features", ex)
            n = tf.minimum(tf.shape(qf)[0], max_len)
            out["query_feats"] = tf.ensure_shape(tf.pad(qf[:max_len], [[0, max_len - n], [0, 0]]), [max_len, dq])
            out["query_feats_mask"] = tf.cast(tf.range(max_len) < n, tf.float32)
        return out

    def label_keys(ex):
        duration = ex["duration"]
        spans = tf.clip_by_value(ex["gt_spans"], 0.0, duration)
        num_gt = tf.minimum(tf.shape(spans)[0], max_gt)
        gt_spans = tf.pad(spans[:max_gt], [[0, max_gt - num_gt], [0, 0]])
        return {"gt_span": spans[0] / duration, "gt_spans": tf.ensure_shape(gt_spans, [max_gt, 2]),
                "gt_spans_mask": tf.cast(tf.range(max_gt) < num_gt, tf.float32)}

    def preprocess(ex):
        out = {"example_mask": tf.constant(1.0), **{k: ex[k] for k in HOST_KEYS}}
        if kind != "query":
            out.update(video_keys(ex))
        if kind != "video":
            out.update(query_keys(ex))
        if kind == "example" and labels:
            out.update(label_keys(ex))
        return out

    return preprocess


def _pad_batch(batch_size: int):
    """Pads a possibly short batch with masked examples up to ``batch_size``."""
    import tensorflow as tf

    def pad(batch):
        n = tf.shape(batch["example_mask"])[0]
        out = {}
        for key, value in batch.items():
            paddings = [[0, batch_size - n]] + [[0, 0]] * (len(value.shape) - 1)
            padded = tf.pad(value, paddings, constant_values="" if value.dtype == tf.string else 0)
            out[key] = tf.ensure_shape(padded, [batch_size] + value.shape[1:])
        return out

    return pad


def load_vocabulary(data_dir: str) -> list[str]:
    return text.read_vocabulary(os.path.join(data_dir, "vocab.txt"))


def make_dataset(data_dir: str, split: str, dataset_config, *, batch_size: int, training: bool,
                 seed: int = 0, vocab: list[str] | None = None, shard_index: int = 0,
                 num_shards: int = 1, inputs: tuple[str, ...] = (), kind: str = "example", labels: bool = True,
                 start_batch: int = 0):
    """Builds the tf.data pipeline of one split, with the optional ``inputs`` groups.

    ``kind`` picks the records (``jvmr.data.schema.record_set``): 'example' (a labelled
    split), or a query-only split's 'query' or 'video' (corpus) records, with only
    their keys (``make_preprocess_fn``); ``labels=False``: without the ground-truth keys.

    Training: parse -> preprocess -> cache -> shuffle -> repeat -> batch (drop remainder) -> prefetch. The
    order is a function of ``seed`` alone; ``start_batch`` skips the first batches of it, so a run resumed
    at step s with ``start_batch=s`` sees exactly the batches an uninterrupted run sees from step s.
    Evaluation: one pass in file order; the last batch is padded with examples whose
    ``example_mask`` is 0, so every batch has the same static shape.
    ``shard_index`` / ``num_shards`` split the examples between hosts.
    """
    import tensorflow as tf
    vocab = vocab if vocab is not None else load_vocabulary(data_dir)
    files = schema.split_files(data_dir, schema.record_set(split, kind))
    schema.check_split(data_dir, split, kind, expected=_manifest_count(data_dir, split, kind))
    ds = tf.data.TFRecordDataset(files)
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)
    ds = _batches(ds, dataset_config, batch_size=batch_size, training=training, seed=seed, vocab=vocab,
                  inputs=inputs, kind=kind, labels=labels, start_batch=start_batch)
    _SOURCES[ds] = _Source(files, kind, _stream_widths(dataset_config, inputs, kind))
    return ds


_MANIFEST_COUNTS = {"example": "num_examples", "query": "num_queries", "video": "num_videos"}


def _manifest_count(data_dir: str, split: str, kind: str) -> int | None:
    """The number of records of ``kind`` the data directory's manifest lists for ``split`` (None: not listed)."""
    count = schema.read_manifest(data_dir).get(_MANIFEST_COUNTS[kind], {}).get(split)
    return int(count) if isinstance(count, int) else None


class _Source(NamedTuple):
    """Where a pipeline's records come from, to name the bad one if tf.data fails (``as_numpy``)."""

    files: list[str]
    kind: str
    widths: dict[str, int]  # stream -> the width the pipeline asserts


def _stream_widths(dataset_config, inputs: tuple[str, ...], kind: str) -> dict[str, int]:
    widths = {}
    if kind != "query":
        widths["video_features"] = int(dataset_config.feature_dim)
        if "subtitles" in inputs:
            widths["subtitle_features"] = int(dataset_config.subtitle_dim)
    if kind != "video" and "query_features" in inputs:
        widths["query_features"] = int(dataset_config.query_feature_dim)
    return widths


_SOURCES: "weakref.WeakKeyDictionary[Any, _Source]" = weakref.WeakKeyDictionary()


def find_bad_record(source: _Source) -> str | None:
    """Reads the records of ``source`` on the host, in order, and describes the first one the pipeline
    cannot use (``file: record i (qid, vid): why``), or returns None if every record is usable."""
    for path in source.files:
        try:
            for i, record in schema.file_records(path):
                ex = schema.decode(record, f"{path}: record {i}", source.kind)
                for stream, width in source.widths.items():
                    arr = getattr(ex, stream)
                    shape = None if arr is None else tuple(np.shape(arr))
                    if shape is None or len(shape) != 2 or shape[0] < 1 or shape[1] != width:
                        return (f"{path}: record {i} (qid={ex.qid!r}, vid={ex.vid!r}): {stream} has shape {shape}, "
                                f"the dataset config asks for [N>=1, {width}]")
        except schema.SchemaError as e:
            return str(e)
    return None


class DataError(RuntimeError):
    """The input pipeline could not read a split; the message names the shard file and record when found."""


def _checked(iterator, source: _Source | None) -> Iterator[dict[str, np.ndarray]]:
    if source is None:
        yield from iterator
        return

    def data_error(_, e) -> DataError:
        return DataError(find_bad_record(source) or f"reading {source.files[0]} (and {len(source.files) - 1} other "
                         f"shard(s)) failed though every record reads on the host: {schema.first_line(e.message)}")
    for _, batch in schema.checked_items(iterator, data_error):
        yield batch


def examples_dataset(examples, dataset_config, *, batch_size: int, vocab: list[str], inputs: tuple[str, ...] = (),
                     labels: bool = False):
    """Evaluation batches of in-memory ``schema.Example``s, built exactly as ``make_dataset`` builds a
    split's records (serialised, parsed, preprocessed, the last batch padded); no ground truth by default."""
    import tensorflow as tf
    serialized = [schema.serialize(ex) for ex in examples]
    if not serialized:
        raise ValueError("no examples")
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(serialized, tf.string))
    return _batches(ds, dataset_config, batch_size=batch_size, training=False, seed=0, vocab=vocab, inputs=inputs,
                    kind="example", labels=labels)


def _batches(ds, dataset_config, *, batch_size: int, training: bool, seed: int, vocab: list[str],
             inputs: tuple[str, ...], kind: str, labels: bool, start_batch: int = 0):
    """Serialised records -> batches (``make_dataset``)."""
    import tensorflow as tf
    ds = ds.map(schema.parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(make_preprocess_fn(dataset_config, vocab, inputs, kind, labels), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    if training:
        ds = ds.cache()
        ds = ds.shuffle(int(dataset_config.get("shuffle_buffer", 10_000)), seed=seed,
                        reshuffle_each_iteration=True)
        ds = ds.repeat()
        if start_batch:  # examples, not batches: skipping skips no batch assembly (the stream is endless)
            ds = ds.skip(int(start_batch) * batch_size)
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        ds = ds.batch(batch_size).map(_pad_batch(batch_size))
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = 2
    ds = ds.with_options(options)
    return ds.prefetch(2)


def as_numpy(ds) -> Iterator[dict[str, np.ndarray]]:
    """Yields numpy batches of a tf.data pipeline. For a ``make_dataset`` pipeline, a record it cannot read
    (a damaged shard, a record off the schema, a stream of another width) raises ``DataError`` naming the
    shard file, the record's index and its qid, found by re-reading the split on the host."""
    return _checked(ds.as_numpy_iterator(), _SOURCES.get(ds))


def device_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops the host-only string keys from a batch."""
    return {k: v for k, v in batch.items() if k not in HOST_KEYS}
