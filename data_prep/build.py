r"""Converts a real dataset's annotation and feature files into jvmr TFRecords, once.

    python -m data_prep.build --dataset=charades_sta \
        --annotations=DIR_OR_FILE --features=PATH --output_dir=DIR [--glove=glove.840B.300d.txt]

Writes into ``--output_dir``:

* ``{split}.tfrecord-NNNNN-of-MMMMM``: the examples of each split (``jvmr.data.schema``),
  grouped by video in the order videos first appear in the annotation file;
* for a query-only split (released without ground truth, e.g. TVR ``test_public``,
  converted only when named in ``--splits``): ``{split}_queries.tfrecord-*``, one
  record per query (no video, no ground truth), and ``{split}_corpus.tfrecord-*``,
  one record per video of the split's entry in the durations file (its features
  and duration), in that file's order (``jvmr.data.schema.record_set``);
* ``vocab.txt``: the train split's tokens (``jvmr.data.text.build_vocabulary``); with
  ``--glove`` also the other converted splits' words that GloVe has (after the train
  words, by frequency), so a val/test-only word keeps its GloVe vector instead of
  sharing ``<unk>``'s; ``manifest.json`` records the rule (``vocab_source``: ``train``
  or ``train+glove``) and ``vocab_non_train_words``, the words not seen in train;
* ``embeddings.npy``: with ``--glove``, float32 [V, D] vectors aligned with ``vocab.txt``;
* ``manifest.json``, written last: examples, videos, fixed and skipped records
  (reason -> count, with example messages) per split, the query-only splits
  (``query_only_splits``, with ``num_queries``; their corpus is reported as split
  ``{split}_corpus`` and counted in ``num_videos``; ``num_examples`` holds only the
  labelled splits, so training never evaluates on them), feature dims, clip count,
  vocabulary size, dependency labels, sha256 of the annotation and durations files
  (feature files are named, not hashed: they run to tens of GB), the options and
  the jvmr version.

Every record read is either written or counted under a reason
(``jvmr.data.annotations``), and the run ends with the table of what was fixed and
skipped; ``--strict`` makes the first such record an error. Feature problems are
per video, reason -> action:

| reason                       | action | when                                                      |
|------------------------------|--------|-----------------------------------------------------------|
| missing_{stream}_features    | skip   | no features for the video (TVR query stream: the desc_id) |
| bad_duration                 | skip   | a corpus video whose duration is not a positive number    |
| nonfinite_{stream}_features  | skip   | NaN or Inf in the features                                |
| bad_{stream}_features        | skip   | unreadable, not [T, D], or T = 0                          |
| wrong_{stream}_feature_dim   | skip   | D differs from ``--feature_dim`` (video) or from the first video read (other streams) |

``stream`` is ``video``, ``subtitle`` or ``query``. A wrong dimension is skipped,
not fatal, so one bad video does not stop a conversion; a whole file of the wrong
kind ends in "nothing converted", an error that shows the table. ``--feature_dim``
defaults to the dataset's standard features (Charades-STA I3D 1024, ActivityNet
C3D 500, TACoS C3D 4096, TVR 3072); 0 takes the first video's.

Features are L2-normalised per clip (``--l2_normalize``) and then mean-pooled to
``--num_clips`` linspace bins (``jvmr.data.pipeline.resample_features_np``), in
that order, as 2D-TAN and TVR's loaders do; ``--num_clips=0`` keeps every clip.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from jvmr.data import annotations, features, parsing, pipeline, schema, text

STREAMS = ("video", "subtitle", "query")


# ----------------------------------------------------------------------------- features


@dataclasses.dataclass
class FeatureStreams:
    """The open feature stores: video (required), TVR subtitle and query-token features (optional)."""

    video: features.FeatureStore
    subtitle: features.FeatureStore | None = None
    query: features.FeatureStore | None = None

    def close(self) -> None:
        for store in (self.video, self.subtitle, self.query):
            if store is not None:
                store.close()


def open_streams(video: str, fmt: str = "auto", key: str | None = None, subtitle: str = "",
                 query: str = "") -> FeatureStreams:
    return FeatureStreams(features.open_features(video, fmt, key),
                          features.open_features(subtitle) if subtitle else None,
                          features.open_features(query) if query else None)


def _feature_reason(stream: str, error: features.FeatureError) -> str:
    return f"{error.reason}_{stream}_features"


def load_stream(store: features.FeatureStore, stream: str, key: str, dims: dict[str, int],
                report: annotations.Report, needed_by: str, count: int, num_clips: int = 0,
                l2_normalize: bool = False) -> np.ndarray | None:
    """One video's (or query's) features, normalised and resampled; None (reported) if unusable.

    Args:
      store: the stream's features.
      stream: 'video', 'subtitle' or 'query' (names the report reasons).
      key: the id to look up (vid, or the qid for query features).
      dims: stream -> expected D; a stream missing from it takes the first D read.
      report: where problems are counted.
      needed_by: names the records that need the features (for messages).
      count: how many records a problem skips.
      num_clips: resample to this many clips (0: keep T).
      l2_normalize: L2-normalise each clip first.

    Returns:
      float32 [T or num_clips, D], or None.
    """
    try:
        feats = store.get(key)
    except features.FeatureError as e:
        if e.reason == "missing":
            report.skip(f"missing_{stream}_features", f"{store.path}: no {stream} features for {key!r} "
                        f"({needed_by})", count)
        else:
            report.skip(_feature_reason(stream, e), f"{e} ({needed_by})", count)
        return None
    expected = dims.setdefault(stream, feats.shape[1])
    if feats.shape[1] != expected:
        report.skip(f"wrong_{stream}_feature_dim", f"{store.path}: {stream} features of {key!r} are "
                    f"{list(feats.shape)}, expected dimension {expected} ({needed_by})", count)
        return None
    if l2_normalize:
        feats = features.l2_normalize(feats)
    if num_clips and stream != "query":
        feats = pipeline.resample_features_np(feats, num_clips)
    return feats


# ----------------------------------------------------------------------------- examples


def parse_queries(records: Sequence[annotations.RawRecord], parse: Callable[[list[str]], list[parsing.ParsedQuery]],
                  report: annotations.Report, chunk: int = 2048, progress: bool = False,
                  desc: str = "") -> list[tuple[annotations.RawRecord, parsing.ParsedQuery]]:
    """Parses every query in batches; a query left with no token is reported and dropped."""
    from tqdm import tqdm
    out = []
    with tqdm(total=len(records), desc=desc, unit="query", disable=not progress, file=sys.stderr,
              mininterval=1.0) as bar:
        for i in range(0, len(records), chunk):
            batch = records[i:i + chunk]
            for rec, parsed in zip(batch, parse([r.query for r in batch])):
                if parsed.tokens:
                    out.append((rec, parsed))
                else:
                    report.skip("empty_query", f"{rec.where}: no word left after parsing {rec.query!r}")
            bar.update(len(batch))
    return out


def make_parser(name: str, model: str = parsing.DEFAULT_MODEL,
                batch_size: int = 512) -> Callable[[list[str]], list[parsing.ParsedQuery]]:
    """'spacy' (batched dependency parses) or 'none' (lower-cased words, every word a root)."""
    if name == "spacy":
        return parsing.DependencyParser(model, batch_size=batch_size).parse
    if name == "none":
        return lambda texts: [parsing.unparsed(t) for t in texts]
    raise ValueError(f"--parser must be 'spacy' or 'none', got {name!r}")


def iter_examples(items: Sequence[tuple[annotations.RawRecord, parsing.ParsedQuery]], streams: FeatureStreams,
                  report: annotations.Report, dims: dict[str, int], num_clips: int = 0,
                  l2_normalize: bool = False, progress: bool = False, desc: str = ""
                  ) -> Iterator[schema.Example]:
    """The schema examples of parsed records, grouped by video (each video's features are read once)."""
    from tqdm import tqdm
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(item[0].vid, []).append(item)
    with tqdm(total=len(items), desc=desc, unit="query", disable=not progress, file=sys.stderr,
              mininterval=1.0) as bar:
        load = functools.partial(load_stream, dims=dims, report=report, l2_normalize=l2_normalize)
        for vid, group in groups.items():
            needed_by = f"{len(group)} record(s) of {group[0][0].source}, first at {group[0][0].locator}"
            video = load(streams.video, "video", vid, needed_by=needed_by, count=len(group), num_clips=num_clips)
            subtitle = None
            if video is not None and streams.subtitle is not None:
                subtitle = load(streams.subtitle, "subtitle", vid, needed_by=needed_by, count=len(group),
                                num_clips=num_clips)
            if video is None or (streams.subtitle is not None and subtitle is None):
                bar.update(len(group))
                continue
            for rec, parsed in group:
                query_feats = None
                if streams.query is not None:
                    query_feats = load(streams.query, "query", rec.qid, needed_by=rec.where, count=1)
                    if query_feats is None:
                        bar.update(1)
                        continue
                yield schema.Example(
                    qid=rec.qid, vid=rec.vid, duration=float(rec.duration), query=rec.query,
                    tokens=parsed.tokens, dep_heads=parsed.heads, dep_labels=parsed.labels,
                    gt_spans=np.asarray(rec.spans, np.float32), video_features=video, query_type=rec.query_type,
                    subtitle_features=subtitle, query_features=query_feats)
                bar.update(1)


def iter_queries(items: Sequence[tuple[annotations.RawRecord, parsing.ParsedQuery]], streams: FeatureStreams,
                 report: annotations.Report, dims: dict[str, int], l2_normalize: bool = False
                 ) -> Iterator[schema.Example]:
    """The query records of a query-only split (no video, no ground truth)."""
    for rec, parsed in items:
        query_feats = None
        if streams.query is not None:
            query_feats = load_stream(streams.query, "query", rec.qid, dims, report, needed_by=rec.where, count=1,
                                      l2_normalize=l2_normalize)
            if query_feats is None:
                continue
        yield schema.query_record(rec.qid, rec.query, parsed.tokens, parsed.heads, parsed.labels,
                                  query_type=rec.query_type, query_features=query_feats)


def iter_corpus(videos: dict[str, float], streams: FeatureStreams, report: annotations.Report,
                dims: dict[str, int], source: str, num_clips: int = 0, l2_normalize: bool = False
                ) -> Iterator[schema.Example]:
    """The corpus records of a query-only split: each of ``videos`` (vid -> duration, listed in
    ``source``) with its features; every video is counted in ``report``, written or skipped."""
    load = functools.partial(load_stream, dims=dims, report=report, count=1, num_clips=num_clips,
                             l2_normalize=l2_normalize)
    for vid, duration in videos.items():
        report.num_records += 1
        needed_by = f"corpus video listed in {source}"
        if not (math.isfinite(duration) and duration > 0):
            report.skip("bad_duration", f"{source}: corpus video {vid!r}: duration {duration!r} is not a "
                        f"positive number")
            continue
        video = load(streams.video, "video", vid, needed_by=needed_by)
        subtitle = None
        if video is not None and streams.subtitle is not None:
            subtitle = load(streams.subtitle, "subtitle", vid, needed_by=needed_by)
        if video is None or (streams.subtitle is not None and subtitle is None):
            continue
        yield schema.video_record(vid, float(duration), video, subtitle)


def resolve_durations(spec: annotations.DatasetSpec, annotations_path: str, durations: str = ""
                      ) -> tuple[dict[str, float] | None, str]:
    """Loads the durations file (``durations``, else the dataset's file beside the annotations)."""
    if not durations and spec.durations_file:
        folder = annotations_path if os.path.isdir(annotations_path) else os.path.dirname(annotations_path)
        candidate = os.path.join(folder, spec.durations_file)
        if os.path.isfile(candidate):
            durations = candidate
        elif spec.durations_required:
            raise annotations.AnnotationError(
                f"{spec.name} needs video durations: no {spec.durations_file} beside {annotations_path}; "
                f"pass --durations=FILE (charades.json or Charades_v1_*.csv)")
    return (annotations.load_durations(durations) if durations else None), durations


def corpus_videos(spec: annotations.DatasetSpec, split: str, durations_path: str, annotations_path: str
                  ) -> dict[str, float]:
    """The corpus of a query-only split: vid -> duration, every video of the split's entry in the durations file."""
    if not durations_path:
        raise annotations.AnnotationError(
            f"split {split!r} has no ground truth: its corpus is the videos of its entry in "
            f"{spec.durations_file or 'a per-split durations file'}, which is not beside {annotations_path}; "
            f"pass --durations=FILE")
    videos = annotations.load_durations(durations_path, split)
    if not videos:
        raise annotations.AnnotationError(f"{durations_path}: the {split!r} entry lists no video")
    return videos


def write_records(args: argparse.Namespace, examples: Iterable[schema.Example], report: annotations.Report,
                  num_items: int, split: str, kind: str, source: str, lengths: schema.LengthCounts | None = None
                  ) -> int:
    """Writes one record set (``schema.record_set(split, kind)``) and checks that every record ``report``
    read is written or skipped; returns the number written."""
    name = schema.record_set(split, kind)
    shards = args.num_shards or max(1, math.ceil(num_items / 4096))
    schema.remove_stale_shards(args.output_dir, name, shards)
    n = schema.write_split(examples, args.output_dir, name, shards, source=source, kind=kind, lengths=lengths)
    accounted = n + sum(report.skipped.values())
    if accounted != report.num_records:  # A bug, never the data: every record must be accounted for.
        raise RuntimeError(f"{report.split}: {report.num_records} records read but {n} written and "
                           f"{sum(report.skipped.values())} skipped")
    if report.num_records and not n:
        print(annotations.format_reports([report]), file=sys.stderr)
        raise annotations.AnnotationError(
            f"{source}: nothing converted in split {report.split!r}: all {report.num_records} "
            f"records were skipped (see the table above)")
    return n


# ----------------------------------------------------------------------------- command


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _jvmr_version() -> str:
    from importlib import metadata
    try:
        return metadata.version("jvmr")
    except metadata.PackageNotFoundError:  # A source checkout that was not pip-installed.
        return "unknown (not installed)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m data_prep.build", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(annotations.DATASETS))
    p.add_argument("--annotations", required=True,
                   help="folder with the split files under their usual names, or one file (see --splits)")
    p.add_argument("--features", required=True, help="video features: folder of <vid>.npy, HDF5 file, "
                   "or folder of <vid>.h5")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--splits", default="", help="comma-separated splits to convert (default: all found but the "
                   "query-only ones, e.g. TVR test_public, converted only when named)")
    p.add_argument("--durations", default="", help="durations file (Charades-STA: charades.json or "
                   "Charades_v1_*.csv; TVR: tvr_video2dur_idx.json); default: the usual file beside the annotations")
    p.add_argument("--feature_format", default="auto", choices=("auto",) + features.FORMATS)
    p.add_argument("--feature_key", default=None, help="dataset inside each HDF5 group / file "
                   "(e.g. c3d_features; default: the group's only dataset, or 'feature' per video)")
    p.add_argument("--feature_dim", type=int, default=None,
                   help="expected video feature dimension (default: the dataset's standard; 0: the first video's)")
    p.add_argument("--subtitle_features", default="", help="TVR: HDF5 of subtitle features [S, 768] keyed by vid")
    p.add_argument("--query_features", default="", help="TVR: HDF5 of query token features [L, 768] keyed by desc_id")
    p.add_argument("--num_clips", type=int, default=0, help="mean-pool to this many clips (0: keep all)")
    p.add_argument("--l2_normalize", action="store_true", help="L2-normalise every clip feature")
    p.add_argument("--parser", default="spacy", choices=("spacy", "none"))
    p.add_argument("--parser_model", default=parsing.DEFAULT_MODEL)
    p.add_argument("--parser_batch_size", type=int, default=512)
    p.add_argument("--vocab", default="", help="use this vocab.txt instead of building one from train")
    p.add_argument("--glove", default="", help="GloVe text file; writes embeddings.npy aligned with vocab.txt")
    p.add_argument("--glove_dim", type=int, default=None)
    p.add_argument("--glove_cache_dir", default="", help="cache the vocabulary's GloVe rows here")
    p.add_argument("--num_shards", type=int, default=0, help="shards per split (0: one per 4,096 examples)")
    p.add_argument("--strict", action="store_true", help="any fixed or skipped record is an error")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.num_clips < 0 or args.num_shards < 0:
        p.error("--num_clips and --num_shards must be >= 0")
    return args


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the conversion described by ``parse_args`` options; returns the manifest."""
    start = time.time()
    spec = annotations.get_spec(args.dataset)
    progress = not args.no_progress
    split_files = annotations.find_split_files(spec, args.annotations, [s for s in args.splits.split(",") if s])
    for warning in annotations.folder_warnings(spec, args.annotations):
        print(f"warning: {warning}", file=sys.stderr)
    durations, durations_path = resolve_durations(spec, args.annotations, args.durations)
    os.makedirs(args.output_dir, exist_ok=True)
    manifest_path = os.path.join(args.output_dir, "manifest.json")
    if os.path.exists(manifest_path):  # Never leave a manifest that describes a half-rewritten folder.
        os.remove(manifest_path)

    query_only = [split for split in split_files if split in spec.unlabeled_splits]
    corpora = {split: corpus_videos(spec, split, durations_path, args.annotations) for split in query_only}
    reports = {}
    for split in split_files:
        reports[split] = annotations.Report(split, args.strict)
        if split in query_only:  # The corpus is reported as a split of its own: every listed video is accounted for.
            reports[schema.record_set(split, "video")] = annotations.Report(schema.record_set(split, "video"),
                                                                            args.strict)
    records = {split: annotations.read_split(spec, path, reports[split], durations, labelled=split not in query_only)
               for split, path in split_files.items()}
    parse = make_parser(args.parser, args.parser_model, args.parser_batch_size)
    parsed = {split: parse_queries(records[split], parse, reports[split], progress=progress,
                                   desc=f"{split}: parse") for split in split_files}

    dims = {"video": spec.feature_dim if args.feature_dim is None else args.feature_dim}
    if not dims["video"]:
        del dims["video"]
    streams = open_streams(args.features, args.feature_format, args.feature_key, args.subtitle_features,
                           args.query_features)
    num_examples, num_queries, num_videos, query_types, tokens = {}, {}, {}, {}, {}
    lengths: dict[str, schema.LengthCounts] = {}
    labels: collections.Counter[str] = collections.Counter()
    try:
        for split, items in parsed.items():
            report = reports[split]
            written: list[tuple[str, str, list[str], list[str]]] = []  # (vid, query_type, tokens, labels).

            def track(examples: Iterable[schema.Example]) -> Iterator[schema.Example]:
                for ex in examples:
                    written.append((ex.vid, ex.query_type, ex.tokens, ex.dep_labels))
                    yield ex

            if split in query_only:
                num_queries[split] = write_records(args, track(iter_queries(items, streams, report, dims,
                                                                            args.l2_normalize)),
                                                   report, len(items), split, "query", split_files[split])
                corpus = reports[schema.record_set(split, "video")]
                num_videos[split] = write_records(
                    args, iter_corpus(corpora[split], streams, corpus, dims, durations_path, args.num_clips,
                                      args.l2_normalize), corpus, len(corpora[split]), split, "video", durations_path)
            else:
                examples = iter_examples(items, streams, report, dims, args.num_clips, args.l2_normalize,
                                         progress=progress, desc=f"{split}: write")
                lengths[split] = schema.LengthCounts()
                num_examples[split] = write_records(args, track(examples), report, len(items), split, "example",
                                                    split_files[split], lengths[split])
                num_videos[split] = len({w[0] for w in written})
            query_types[split] = dict(sorted(collections.Counter(w[1] for w in written).items()))
            tokens[split] = [w[2] for w in written]
            labels.update(label for w in written for label in w[3])
    finally:
        streams.close()

    vocab, vocab_source, vectors = _vocabulary(args, tokens)
    vocab_path = os.path.join(args.output_dir, "vocab.txt")
    text.write_vocabulary(vocab, vocab_path + ".tmp")
    os.replace(vocab_path + ".tmp", vocab_path)
    glove = _write_embeddings(args, vocab, vectors) if args.glove else None
    train_words = {w for t in tokens.get("train", ()) for w in t}
    other_words = {w for split, lists in tokens.items() if split != "train" for t in lists for w in t}

    sources = [p for p in list(split_files.values()) + [durations_path] if p]
    manifest = {
        "dataset": spec.name,
        "splits": list(split_files),
        "query_only_splits": query_only,
        "num_examples": num_examples,
        "lengths": {split: counts.to_json() for split, counts in lengths.items()},
        "num_queries": num_queries,
        "num_videos": num_videos,
        "num_records": {s: r.num_records for s, r in reports.items()},
        "skipped": {s: dict(sorted(r.skipped.items())) for s, r in reports.items()},
        "fixed": {s: dict(sorted(r.fixed.items())) for s, r in reports.items()},
        "report_messages": {s: dict(sorted(r.messages.items())) for s, r in reports.items()},
        "query_types": query_types,
        "feature_dim": dims.get("video", 0),
        "feature_dims": dict(sorted(dims.items())),
        "num_clips": args.num_clips,
        "l2_normalized": bool(args.l2_normalize),
        "features": {stream: {"path": os.path.abspath(s.path), "format": s.fmt, "key": s.key}
                     for stream, s in zip(STREAMS, (streams.video, streams.subtitle, streams.query)) if s is not None},
        "vocab_size": len(vocab),
        "vocab_source": vocab_source,
        "vocab_non_train_words": sum(1 for w in vocab if w in other_words and w not in train_words),
        "parser": {"name": args.parser, "model": args.parser_model if args.parser == "spacy" else ""},
        "dependency_labels": sorted(labels),
        "unknown_dependency_labels": sorted(set(labels) - set(text.DEPENDENCY_LABELS)),
        "glove": glove,
        "sources": {os.path.abspath(p): _sha256(p) for p in sources},
        "options": vars(args),
        "jvmr_version": _jvmr_version(),
        "num_shards": {s: len(schema.split_files(args.output_dir, s)) for s in list(num_examples) + [
            schema.record_set(q, kind) for q in query_only for kind in ("query", "video")]},
        "build_seconds": round(time.time() - start, 1),
    }
    schema.write_text_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(annotations.format_reports(reports.values()))
    for split in split_files:
        if split in query_only:
            print(f"{split} (query-only): {num_queries[split]} queries of {reports[split].num_records} records, "
                  f"corpus {num_videos[split]} videos of "
                  f"{reports[schema.record_set(split, 'video')].num_records} listed")
        else:
            print(f"{split}: {num_examples[split]} examples of {reports[split].num_records} records, "
                  f"{num_videos[split]} videos")
    print(f"wrote {args.output_dir} in {manifest['build_seconds']} s (vocabulary {len(vocab)} words, "
          f"video features {manifest['feature_dim']}-d)")
    return manifest


def _vocabulary(args: argparse.Namespace, tokens: dict[str, list[list[str]]]
                ) -> tuple[list[str], str, tuple[np.ndarray, np.ndarray] | None]:
    """(vocabulary, its rule for the manifest, and with the train+glove rule its GloVe (vectors, found))."""
    if args.vocab:
        return text.read_vocabulary(args.vocab), os.path.abspath(args.vocab), None
    if "train" not in tokens:
        print(f"warning: no train split converted and no --vocab given: vocab.txt is built from "
              f"{sorted(tokens)}; to evaluate a model trained elsewhere pass --vocab=ITS_DATA_DIR/vocab.txt",
              file=sys.stderr)
        return text.build_vocabulary(t for split in tokens.values() for t in split), "+".join(sorted(tokens)), None
    train = text.build_vocabulary(tokens["train"])
    if not args.glove:
        return train, "train", None
    # train words + the other splits' words GloVe has: one pass over the file for the candidates
    # decides both which words stay and their vectors (rows are per word, so dropping some changes none).
    seen = set(train)
    others = text.build_vocabulary(t for split, lists in tokens.items() if split != "train" for t in lists)
    candidates = train + [w for w in others[2:] if w not in seen]
    vectors, found = _load_glove(args, candidates)
    keep = np.arange(len(candidates)) < len(train)
    keep |= found
    return [w for w, k in zip(candidates, keep) if k], "train+glove", (vectors[keep], found[keep])


def _load_glove(args: argparse.Namespace, vocab: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from jvmr.data import glove
    return glove.load_glove(args.glove, vocab, dim=args.glove_dim, cache_dir=args.glove_cache_dir or None)


def _write_embeddings(args: argparse.Namespace, vocab: list[str],
                      loaded: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    vectors, found = loaded if loaded is not None else _load_glove(args, vocab)
    path = os.path.join(args.output_dir, "embeddings.npy")
    np.save(path + ".tmp.npy", vectors)
    os.replace(path + ".tmp.npy", path)
    return {"path": os.path.abspath(args.glove), "dim": int(vectors.shape[1]), "found": int(found.sum()),
            "missing": int((~found).sum())}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        build(args)
    except (ValueError, OSError, ImportError) as e:  # Bad input (files, records, options): say what, no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
