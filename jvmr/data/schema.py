"""The one TFRecord schema for a query-moment example, used by every writer and reader.

One record = one (video, query) pair, stored as a ``tf.train.Example``:

| key                 | type          | meaning                                                   |
|---------------------|---------------|-----------------------------------------------------------|
| qid                 | bytes         | unique query id                                           |
| vid                 | bytes         | video id                                                  |
| duration            | float         | video duration in seconds                                 |
| query               | bytes         | the sentence as written                                   |
| query_type          | bytes         | optional category (TVR: v/t/vt; synthetic: template name) |
| tokens              | bytes[L]      | lower-cased word tokens                                   |
| dep_heads           | int64[L]      | index of each token's syntactic head, -1 for the root     |
| dep_labels          | bytes[L]      | dependency label of the arc token -> head ("root" at root)|
| gt_spans            | float[2G]     | G >= 1 ground-truth spans [start, end] in seconds, flat   |
| video_features      | bytes         | float32 [T, D] clip features, little-endian, C order      |
| video_shape         | int64[2]      | (T, D)                                                    |
| subtitle_features   | bytes         | optional extra stream, float32 [S, Ds] (empty if absent)  |
| subtitle_shape      | int64[2]      | (S, Ds), (0, 0) if absent                                 |
| query_features      | bytes         | optional query token features, float32 [Lq, Dq] (TVR's    |
|                     |               | RoBERTa tokens; empty if absent)                          |
| query_shape         | int64[2]      | (Lq, Dq), (0, 0) if absent                                |

Spans are in seconds so that every dataset (frames, fps, clip grids) is
converted once, at build time; the pipeline maps them to the model's grid.

A split released without ground truth (a *query-only* split, e.g. TVR's
``test_public`` leaderboard queries) is stored as two record sets of the same
keys, named by ``record_set(split, kind)``:

| kind      | files                  | one record per | holds                                                    |
|-----------|------------------------|----------------|----------------------------------------------------------|
| 'example' | ``{split}.tfrecord-*`` | (video, query) | everything above (a labelled split)                      |
| 'query'   | ``{split}_queries.*``  | query          | qid, query, query_type, tokens, dep_*, query_features;   |
|           |                        |                | vid '', duration 0, no gt_spans, no video features       |
| 'video'   | ``{split}_corpus.*``   | corpus video   | vid (also the qid), duration, video / subtitle features; |
|           |                        |                | no query, tokens or gt_spans                             |

``query_record`` and ``video_record`` build them; ``Example.validate(kind=...)``
checks each kind. The dataset's ``manifest.json`` lists such splits under
``query_only_splits``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import struct
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from jvmr import fs
from jvmr.fs import write_text_atomic  # noqa: F401  (schema.write_text_atomic: the data writers' name)

KINDS = ("example", "query", "video")
_RECORD_SET_SUFFIX = {"example": "", "query": "_queries", "video": "_corpus"}


class SchemaError(ValueError):
    """A record that violates the schema; the message names the file and record."""


def record_set(split: str, kind: str = "example") -> str:
    """The file-name prefix of ``split``'s records of ``kind`` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"record kind must be one of {KINDS}, got {kind!r}")
    return split + _RECORD_SET_SUFFIX[kind]


@dataclasses.dataclass
class Example:
    """The canonical in-memory query-moment example (what builders produce)."""

    qid: str
    vid: str
    duration: float
    query: str
    tokens: list[str]
    dep_heads: list[int]
    dep_labels: list[str]
    gt_spans: np.ndarray  # [G, 2] float32 seconds
    video_features: np.ndarray  # [T, D] float32
    query_type: str = ""
    subtitle_features: np.ndarray | None = None  # [S, Ds] float32
    query_features: np.ndarray | None = None  # [Lq, Dq] float32

    def validate(self, source: str = "<memory>", kind: str = "example") -> None:
        """Raises SchemaError naming ``source`` and the qid if the example is malformed.

        ``kind``: 'example' (query, video and ground truth), 'query' (a query of a
        query-only split: no video, no ground truth) or 'video' (a corpus video: no query).
        """
        if kind not in KINDS:
            raise ValueError(f"record kind must be one of {KINDS}, got {kind!r}")
        where = f"{source}: record qid={self.qid!r}"
        if not self.qid:
            raise SchemaError(f"{source}: record with empty qid (vid={self.vid!r})")
        if kind != "query" and not (isinstance(self.duration, (int, float)) and math.isfinite(self.duration)
                                    and self.duration > 0):
            raise SchemaError(f"{where}: duration must be a positive finite number, got {self.duration!r}")
        if kind == "video":
            if self.tokens or self.query_features is not None:
                raise SchemaError(f"{where}: a corpus video record has no query")
        else:
            if not self.tokens:
                raise SchemaError(f"{where}: empty query {self.query!r}")
            if not (len(self.tokens) == len(self.dep_heads) == len(self.dep_labels)):
                raise SchemaError(
                    f"{where}: tokens/dep_heads/dep_labels lengths differ "
                    f"({len(self.tokens)}/{len(self.dep_heads)}/{len(self.dep_labels)})")
            for h in self.dep_heads:
                if not -1 <= h < len(self.tokens):
                    raise SchemaError(f"{where}: dependency head {h} outside [-1, {len(self.tokens)})")
        spans = np.asarray(self.gt_spans, np.float32)
        if kind != "example":
            if spans.size:
                raise SchemaError(f"{where}: a {kind} record has no ground truth, got spans {spans.tolist()}")
        else:
            if spans.ndim != 2 or spans.shape[1] != 2 or spans.shape[0] < 1:
                raise SchemaError(f"{where}: gt_spans must be [G>=1, 2], got shape {spans.shape}")
            if not np.all(np.isfinite(spans)):
                raise SchemaError(f"{where}: non-finite ground-truth span {spans.tolist()}")
            if np.any(spans[:, 0] >= spans[:, 1]):
                raise SchemaError(f"{where}: ground-truth span with start >= end {spans.tolist()}")
            if np.any(spans[:, 0] < 0) or np.any(spans[:, 1] > self.duration + 1e-3):
                raise SchemaError(f"{where}: span {spans.tolist()} outside the video [0, {self.duration}]")
        feats = np.asarray(self.video_features)
        if kind == "query":
            if feats.size or self.subtitle_features is not None:
                raise SchemaError(f"{where}: a query record of a query-only split has no video features")
        else:
            if feats.ndim != 2 or feats.shape[0] < 1 or feats.shape[1] < 1:
                raise SchemaError(f"{where}: video_features must be [T>=1, D>=1], got shape {feats.shape}")
            if not np.all(np.isfinite(feats)):
                raise SchemaError(f"{where}: video {self.vid!r} features contain NaN or Inf")
        for name in ("subtitle_features", "query_features"):
            extra = getattr(self, name)
            if extra is None:
                continue
            extra = np.asarray(extra)
            if extra.ndim != 2:
                raise SchemaError(f"{where}: {name} must be [N, D], got shape {extra.shape}")
            if not np.all(np.isfinite(extra)):
                raise SchemaError(f"{where}: {name} contain NaN or Inf")


def query_record(qid: str, query: str, tokens: list[str], dep_heads: list[int], dep_labels: list[str],
                 query_type: str = "", query_features: np.ndarray | None = None) -> Example:
    """A query of a query-only split (kind 'query'): no video, no ground truth."""
    return Example(qid=qid, vid="", duration=0.0, query=query, tokens=tokens, dep_heads=dep_heads,
                   dep_labels=dep_labels, gt_spans=np.zeros((0, 2), np.float32),
                   video_features=np.zeros((0, 0), np.float32), query_type=query_type, query_features=query_features)


def video_record(vid: str, duration: float, video_features: np.ndarray,
                 subtitle_features: np.ndarray | None = None) -> Example:
    """A corpus video of a query-only split (kind 'video'); its qid is its vid."""
    return Example(qid=vid, vid=vid, duration=duration, query="", tokens=[], dep_heads=[], dep_labels=[],
                   gt_spans=np.zeros((0, 2), np.float32), video_features=video_features,
                   subtitle_features=subtitle_features)


def _bytes(values: Sequence[bytes]):
    import tensorflow as tf
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _floats(values):
    import tensorflow as tf
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _ints(values):
    import tensorflow as tf
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def serialize(example: Example) -> bytes:
    """Serializes a validated example to ``tf.train.Example`` bytes."""
    import tensorflow as tf
    feats = np.ascontiguousarray(example.video_features, dtype="<f4")
    sub = example.subtitle_features
    sub = np.zeros((0, 0), "<f4") if sub is None else np.ascontiguousarray(sub, dtype="<f4")
    qf = example.query_features
    qf = np.zeros((0, 0), "<f4") if qf is None else np.ascontiguousarray(qf, dtype="<f4")
    feature = {
        "qid": _bytes([example.qid.encode()]),
        "vid": _bytes([example.vid.encode()]),
        "duration": _floats([float(example.duration)]),
        "query": _bytes([example.query.encode()]),
        "query_type": _bytes([example.query_type.encode()]),
        "tokens": _bytes([t.encode() for t in example.tokens]),
        "dep_heads": _ints([int(h) for h in example.dep_heads]),
        "dep_labels": _bytes([label.encode() for label in example.dep_labels]),
        "gt_spans": _floats(np.asarray(example.gt_spans, np.float32).reshape(-1).tolist()),
        "video_features": _bytes([feats.tobytes()]),
        "video_shape": _ints(list(feats.shape)),
        "subtitle_features": _bytes([sub.tobytes()]),
        "subtitle_shape": _ints(list(sub.shape)),
    }
    if example.query_features is not None:  # Written only when present: older readers never see it.
        feature["query_features"] = _bytes([qf.tobytes()])
        feature["query_shape"] = _ints(list(qf.shape))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec():
    """The ``tf.io.parse_single_example`` spec of the schema."""
    import tensorflow as tf
    return {
        "qid": tf.io.FixedLenFeature([], tf.string),
        "vid": tf.io.FixedLenFeature([], tf.string),
        "duration": tf.io.FixedLenFeature([], tf.float32),
        "query": tf.io.FixedLenFeature([], tf.string),
        "query_type": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "tokens": tf.io.VarLenFeature(tf.string),
        "dep_heads": tf.io.VarLenFeature(tf.int64),
        "dep_labels": tf.io.VarLenFeature(tf.string),
        "gt_spans": tf.io.VarLenFeature(tf.float32),
        "video_features": tf.io.FixedLenFeature([], tf.string),
        "video_shape": tf.io.FixedLenFeature([2], tf.int64),
        "subtitle_features": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "subtitle_shape": tf.io.FixedLenFeature([2], tf.int64, default_value=[0, 0]),
        "query_features": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "query_shape": tf.io.FixedLenFeature([2], tf.int64, default_value=[0, 0]),
    }


def parse(serialized):
    """Parses one serialized record into dense tensors (variable lengths kept)."""
    import tensorflow as tf
    ex = tf.io.parse_single_example(serialized, feature_spec())
    out = {k: ex[k] for k in ("qid", "vid", "duration", "query", "query_type")}
    out["tokens"] = tf.sparse.to_dense(ex["tokens"], default_value=b"")
    out["dep_heads"] = tf.cast(tf.sparse.to_dense(ex["dep_heads"]), tf.int32)
    out["dep_labels"] = tf.sparse.to_dense(ex["dep_labels"], default_value=b"")
    out["gt_spans"] = tf.reshape(tf.sparse.to_dense(ex["gt_spans"]), [-1, 2])
    shape = tf.cast(ex["video_shape"], tf.int32)
    out["video_features"] = tf.reshape(tf.io.decode_raw(ex["video_features"], tf.float32), shape)
    sub_shape = tf.cast(ex["subtitle_shape"], tf.int32)
    out["subtitle_features"] = tf.reshape(tf.io.decode_raw(ex["subtitle_features"], tf.float32), sub_shape)
    query_shape = tf.cast(ex["query_shape"], tf.int32)
    out["query_features"] = tf.reshape(tf.io.decode_raw(ex["query_features"], tf.float32), query_shape)
    return out


def parse_records(serialized: Sequence[bytes]) -> list[dict[str, Any]]:
    """:func:`parse` of many records with one ``tf.io.parse_example`` call (the pipeline's parser, so the same
    records are refused), then numpy: the same arrays per record, with one TensorFlow call for all of them
    instead of about fifteen eager ops per record (:func:`parse` run eagerly). Raises ``tf.errors.OpError`` when a record is not of the schema and
    ``ValueError`` naming the record's position when its arrays do not fit their shapes."""
    import tensorflow as tf
    n = len(serialized)
    batch = tf.io.parse_example(tf.constant(list(serialized), tf.string), feature_spec())
    dense, ragged = {}, {}
    for key, value in batch.items():
        if isinstance(value, tf.SparseTensor):
            counts = np.bincount(value.indices.numpy()[:, 0], minlength=n)
            ragged[key] = np.split(value.values.numpy(), np.cumsum(counts)[:-1])
        else:
            dense[key] = value.numpy()
    out = []
    for i in range(n):
        ex: dict[str, Any] = {k: dense[k][i] for k in ("qid", "vid", "duration", "query", "query_type")}
        ex["tokens"], ex["dep_labels"] = list(ragged["tokens"][i]), list(ragged["dep_labels"][i])
        ex["dep_heads"] = ragged["dep_heads"][i].astype(np.int32)  # as tf.cast: wraps
        gt = ragged["gt_spans"][i]
        if gt.size % 2:
            raise ValueError(f"record {i}: gt_spans has {gt.size} values, not (start, end) pairs")
        ex["gt_spans"] = gt.reshape(-1, 2)
        for name, shape_key in (("video_features", "video_shape"), ("subtitle_features", "subtitle_shape"),
                                ("query_features", "query_shape")):
            data, shape = dense[name][i], tuple(int(d) for d in dense[shape_key][i].astype(np.int32))
            if not data:  # tf.reshape's own rules for an empty tensor (it accepts e.g. [0, -1] and [1, -2])
                shape = _empty_reshape(shape)
            if len(data) % 4:
                raise ValueError(f"record {i}: {name} has {len(data)} bytes, not a float32 array")
            try:
                ex[name] = np.frombuffer(data, np.float32).reshape(shape)
            except ValueError as e:
                raise ValueError(f"record {i}: {name}: {len(data) // 4} values do not fit the shape "
                                 f"{list(shape)} ({e})") from None
        out.append(ex)
    return out


@functools.lru_cache(maxsize=64)
def _empty_reshape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape ``tf.reshape`` gives an empty tensor for ``shape`` (``ValueError`` when it refuses)."""
    import tensorflow as tf
    try:
        return tuple(tf.reshape(tf.zeros([0], tf.float32), shape).shape)
    except (tf.errors.OpError, ValueError) as e:
        raise ValueError(f"no empty array of shape {list(shape)}") from e


def _example_from(ex: Mapping[str, Any], source: str, kind: str) -> Example:
    """A validated ``Example`` from :func:`parse_records`' arrays of one record."""
    try:
        text = {k: ex[k].decode("utf-8") for k in ("qid", "vid", "query", "query_type")}
        tokens = [t.decode("utf-8") for t in ex["tokens"]]
        labels = [t.decode("utf-8") for t in ex["dep_labels"]]
    except UnicodeDecodeError as e:
        raise SchemaError(f"{source}: a text field is not UTF-8 ({e.reason} at byte {e.start})") from None
    sub, qf = ex["subtitle_features"], ex["query_features"]
    example = Example(
        **text, duration=float(ex["duration"]), tokens=tokens, dep_heads=[int(h) for h in ex["dep_heads"]],
        dep_labels=labels, gt_spans=ex["gt_spans"], video_features=ex["video_features"],
        subtitle_features=sub if sub.size else None, query_features=qf if qf.size else None)
    example.validate(source, kind)
    return example


def _check_message(serialized: bytes, source: str) -> None:
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    try:
        tf.train.Example.FromString(serialized)
    except DecodeError as e:
        raise SchemaError(f"{source}: not a tf.train.Example ({e})") from None


def decode(serialized: bytes, source: str = "<memory>", kind: str = "example") -> Example:
    """Parses one record back into a validated ``Example`` of ``kind`` (host side: tools, tests, and the
    diagnosis of a split the input pipeline could not read). ``SchemaError`` names ``source`` (``file: record i``)."""
    import tensorflow as tf
    _check_message(serialized, source)
    try:
        ex = parse_records([serialized])[0]
    except tf.errors.OpError as e:
        raise SchemaError(f"{source}: not a record of the schema: {first_line(e.message)}") from None
    except UnicodeDecodeError:  # TensorFlow failing to build the message of a parse error
        raise SchemaError(f"{source}: not a record of the schema") from None
    except ValueError as e:
        raise SchemaError(f"{source}: not a record of the schema: {str(e).removeprefix('record 0: ')}") from None
    return _example_from(ex, source, kind)


def first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line if len(line) <= 300 else line[:297] + "..."


def shard_paths(output_dir: str, split: str, num_shards: int) -> list[str]:
    return [os.path.join(output_dir, f"{split}.tfrecord-{i:05d}-of-{num_shards:05d}")
            for i in range(num_shards)]


def read_manifest(data_dir: str) -> dict[str, Any]:
    """A data directory's ``manifest.json`` ({} when it has none)."""
    import json
    path = os.path.join(data_dir, "manifest.json")
    if not fs.exists(path):
        return {}
    with fs.open(path) as f:
        return json.load(f)


def split_files(data_dir: str, split: str) -> list[str]:
    """The sorted shard files of ``split`` in ``data_dir``; raises if there are none."""
    files = fs.glob(os.path.join(data_dir, f"{split}.tfrecord-*-of-*"))
    if not files:
        raise FileNotFoundError(f"no TFRecord shards for split {split!r} in {data_dir}")
    return files


def remove_stale_shards(output_dir: str, split: str, num_shards: int) -> None:
    """Deletes shards of ``split`` left by an earlier build with another shard count."""
    keep = set(shard_paths(output_dir, split, num_shards))
    for path in fs.glob(os.path.join(output_dir, f"{split}.tfrecord-*-of-*")):
        if path not in keep:
            fs.remove(path)


class LengthCounts:
    """How many records have each query length (tokens) and video length (clips): the manifest's ``lengths``,
    from which training reports the queries and videos longer than its grid (``jvmr.train.length_warnings``)."""

    def __init__(self):
        self.query_tokens: collections.Counter[int] = collections.Counter()  # per record
        self.video_clips: collections.Counter[int] = collections.Counter()  # per distinct video
        self._videos: set[str] = set()

    def add(self, example: Example) -> None:
        if example.tokens:
            self.query_tokens[len(example.tokens)] += 1
        feats = np.shape(example.video_features)
        if len(feats) == 2 and feats[0] and example.vid not in self._videos:
            self._videos.add(example.vid)
            self.video_clips[int(feats[0])] += 1

    def to_json(self) -> dict[str, dict[str, int]]:
        return {"query_tokens": {str(k): v for k, v in sorted(self.query_tokens.items())},
                "video_clips": {str(k): v for k, v in sorted(self.video_clips.items())}}


def write_split(examples: Iterable[Example], output_dir: str, split: str, num_shards: int = 1,
                source: str = "<memory>", kind: str = "example", lengths: LengthCounts | None = None) -> int:
    """Validates and writes ``examples`` round-robin into ``num_shards`` files; returns the count.

    ``split`` is the file-name prefix (``record_set(split, kind)`` for a query-only split's records);
    ``lengths``, if given, counts the written records' query and video lengths.
    """
    import tensorflow as tf
    os.makedirs(output_dir, exist_ok=True)
    paths = shard_paths(output_dir, split, num_shards)
    writers = [tf.io.TFRecordWriter(p + ".tmp") for p in paths]
    seen: set[str] = set()
    n = 0
    try:
        for ex in examples:
            ex.validate(source, kind)
            if ex.qid in seen:
                raise SchemaError(f"{source}: duplicate qid {ex.qid!r} in split {split!r}")
            seen.add(ex.qid)
            writers[n % num_shards].write(serialize(ex))
            if lengths is not None:
                lengths.add(ex)
            n += 1
    finally:
        for w in writers:
            w.close()
    for p in paths:  # Rename only once everything was written: no half-written splits.
        os.replace(p + ".tmp", p)
    return n


READ_CHUNK = 256  # records parsed per TensorFlow call by read_split


def read_split(data_dir: str, split: str, kind: str = "example") -> Iterator[Example]:
    """Iterates over the validated records of ``kind`` of a split (host side, for tools and tests).

    A damaged shard (truncated, or a record whose checksum fails) or a record that is not a valid
    ``Example`` raises ``SchemaError`` naming the shard file and the record's index in it.
    """
    import tensorflow as tf
    for path in split_files(data_dir, record_set(split, kind)):
        chunk: list[tuple[int, bytes]] = []
        records = file_records(path)
        damage = None
        while True:
            try:
                item = next(records, None)
            except SchemaError as e:  # a damaged file: the records before the damage first, then the error
                item, damage = None, e
            if item is not None:
                chunk.append(item)
            if chunk and (item is None or len(chunk) == READ_CHUNK):
                try:
                    parsed = parse_records([r for _, r in chunk])
                except (tf.errors.OpError, UnicodeDecodeError, ValueError):
                    parsed = None  # one of them is not of the schema: decode one by one to name it
                for j, (i, record) in enumerate(chunk):
                    source = f"{path}: record {i}"
                    if parsed is None:
                        yield decode(record, source, kind)
                    else:
                        _check_message(record, source)
                        yield _example_from(parsed[j], source, kind)
                chunk = []
            if damage is not None:
                raise damage
            if item is None:
                break


def checked_items(iterator, error: Callable[[int, Exception], Exception]) -> Iterator[tuple[int, Any]]:
    """(index, item) of a tf.data iterator; a TensorFlow error while producing item i raises ``error(i, e)``
    instead (from ``e``), so that the caller can name what failed."""
    import tensorflow as tf
    i = 0
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            raise error(i, e) from e
        yield i, item
        i += 1


def file_records(path: str) -> Iterator[tuple[int, bytes]]:
    """(index, bytes) of the records of one TFRecord file; a damaged file raises ``SchemaError``."""
    import tensorflow as tf
    def damaged(i: int, e) -> SchemaError:
        return SchemaError(f"{path}: record {i}: damaged TFRecord file ({type(e).__name__}: {first_line(e.message)})")
    for i, record in checked_items(iter(tf.data.TFRecordDataset(path)), damaged):
        yield i, record.numpy()


_HEADER = struct.Struct("<QI")  # TFRecord framing: uint64 length, uint32 masked CRC32C of the length


def count_records(path: str) -> int | None:
    """The number of records of one local TFRecord file, from its framing alone (no record is read).

    Raises ``SchemaError`` naming the file and the record when the framing does not end exactly at the
    end of the file (a truncated or overwritten shard). Remote files (``gs://``...) are not walked: None.
    """
    if fs.is_remote(path):
        return None
    size = os.path.getsize(path)
    pos, n = 0, 0
    with open(path, "rb") as f:
        while pos < size:
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                raise SchemaError(f"{path}: record {n}: truncated TFRecord file (a partial header at byte {pos} "
                                  f"of {size})")
            length, _ = _HEADER.unpack(header)
            end = pos + _HEADER.size + length + 4
            if end > size:
                raise SchemaError(f"{path}: record {n}: truncated or damaged TFRecord file (the record at byte "
                                  f"{pos} claims {length} bytes; the file has {size})")
            f.seek(end)
            pos, n = end, n + 1
    return n


def check_split(data_dir: str, split: str, kind: str = "example", expected: int | None = None) -> int | None:
    """Walks the framing of every shard of a split (``count_records``) and compares the total with
    ``expected`` (the manifest's count): a shard cut at a record boundary is caught here, since no
    record of it is damaged. Returns the total (None for remote files)."""
    counts = [count_records(p) for p in split_files(data_dir, record_set(split, kind))]
    if any(c is None for c in counts):
        return None
    total = sum(counts)
    if expected is not None and total != expected:
        raise SchemaError(f"{data_dir}: split {record_set(split, kind)!r} holds {total} records in "
                          f"{len(counts)} shard(s), but its manifest says {expected}: shards are missing, cut short "
                          f"or from another build")
    return total
