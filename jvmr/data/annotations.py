"""Readers of the public annotation files, and the one place where records are checked and cleaned.

Each reader turns one annotation file of one split into canonical raw records
(``RawRecord``: qid, vid, duration and spans in seconds, query, query type, and
where the record came from). ``DATASETS`` registers them by dataset name:

| dataset              | splits (file names looked for in a folder)                      | qid                 |
|----------------------|------------------------------------------------------------------|---------------------|
| charades_sta         | train / test: ``charades_sta_{train,test}.txt``                 | ``{vid}_{line}``    |
| activitynet_captions | train / val_1 / val_2: ``{train,val_1,val_2}.json``             | ``{vid}_{i}``       |
| tacos                | train / val / test: ``{train,val,test}.json`` (2D-TAN split)    | ``{vid}_{i}``       |
| tvr                  | train / val / test_public: ``tvr_{train,val,test_public}_release.jsonl`` | ``desc_id`` |

``line`` is the 1-based line number in the file and ``i`` the 0-based index of
the sentence in the video's list, so a qid points back at its source record.

* Charades-STA lines are ``VID start end##sentence`` in seconds; durations come
  from a separate file (``charades.json`` of VSLNet, ``{vid: {"duration": s}}``,
  or the Charades ``Charades_v1_*.csv`` with ``id`` and ``length`` columns).
* ActivityNet Captions (official JSON): ``{vid: {duration, timestamps, sentences}}``.
  ``val_1`` and ``val_2`` stay two splits under their own names; nothing is called
  ``test`` (2D-TAN's ``val.json`` / ``test.json`` are val_1 / val_2 renamed).
* TACoS (2D-TAN JSON): timestamps in frames, converted with the video's ``fps``;
  the duration is ``num_frames / fps``.
* TVR (jsonl): ``vid_name, duration, ts, desc, type, desc_id``; the query type
  (v / t / vt) is kept. Durations come from ``tvr_video2dur_idx.json`` when given
  (``{split: {vid: [duration, index]}}``), else from the record. ``test_public``
  holds only ``desc`` / ``desc_id`` (and maybe ``type``; no ground truth): it is
  a *query-only* split (``DatasetSpec.unlabeled_splits``), read by
  ``read_tvr_queries`` (``read_split(..., labelled=False)``) into records with no
  video, duration or span; its corpus is the split's entry of the durations file
  (``load_durations(path, split)``). It is left out when a folder is scanned and
  converted only when asked for (``data_prep.build --splits=...,test_public``).

Cleaning (``clean``), with every change counted in a ``Report`` by reason:

| reason                | action | when                                                         |
|-----------------------|--------|--------------------------------------------------------------|
| start_below_zero      | fixed  | a span starts before 0: clipped to 0                         |
| end_beyond_duration   | fixed  | a span ends after the video: clipped to the duration         |
| start_ge_end          | skip   | start >= end (as written, or once clipped to the video)      |
| missing_duration      | skip   | no duration for the video                                    |
| bad_duration          | skip   | duration not a positive number of at most 1e9 s (MAX_SECONDS) |
| empty_query           | skip   | the query has no letter or digit                             |
| duplicate_qid         | skip   | a qid seen before in the split (only the first is considered) |
| unparsable_line       | skip   | a line that is not ``VID start end##sentence`` / not JSON    |
| malformed_record      | skip   | a record missing fields or with wrong types                  |

A query-only split's records are checked for duplicate_qid, empty_query,
unparsable_line and malformed_record only (they have no duration or span).

A file that cannot be read at all (missing, not JSON) raises ``AnnotationError``
naming it. With ``Report(strict=True)`` the first fix or skip raises instead.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
import os
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from jvmr.metrics.spans import MAX_SECONDS

_MAX_MESSAGES = 5  # Example messages kept per (kind, reason).


class AnnotationError(ValueError):
    """Annotation input that cannot be used; the message names the file (and record)."""


@dataclasses.dataclass
class RawRecord:
    """One query of an annotation file, before parsing and features.

    Attributes:
      qid: unique query id within the split.
      vid: video id as the annotation names it.
      duration: video length in seconds (None: unknown, reported by ``clean``).
      query: the sentence, stripped.
      spans: [G, 2] ground-truth [start, end] pairs in seconds.
      source: the annotation file.
      locator: where in ``source`` (``line 12``, ``video 'v_x' sentence 3``).
      query_type: dataset category (TVR: v / t / vt), else ''.
    """

    qid: str
    vid: str
    duration: float | None
    query: str
    spans: list[list[float]]
    source: str
    locator: str
    query_type: str = ""

    @property
    def where(self) -> str:
        return f"{self.source}: {self.locator} (qid={self.qid!r}, vid={self.vid!r})"


class Report:
    """What was fixed and skipped in one split, by reason, with a few example messages.

    ``num_records`` counts every record read (written, or skipped for a reason), so
    ``num_records == written + sum(skipped.values())`` once a split is done.
    """

    def __init__(self, split: str, strict: bool = False):
        self.split = split
        self.strict = strict
        self.fixed: collections.Counter[str] = collections.Counter()
        self.skipped: collections.Counter[str] = collections.Counter()
        self.messages: dict[str, list[str]] = collections.defaultdict(list)
        self.num_records = 0

    def _add(self, kind: str, reason: str, message: str, count: int) -> None:
        if self.strict:
            raise AnnotationError(f"[strict] {kind} ({reason}) in split {self.split!r}: {message}")
        (self.fixed if kind == "fixed" else self.skipped)[reason] += count
        examples = self.messages[f"{kind}:{reason}"]
        if len(examples) < _MAX_MESSAGES:
            examples.append(message)

    def fix(self, reason: str, message: str) -> None:
        """Counts a record that was repaired (it is still written)."""
        self._add("fixed", reason, message, 1)

    def skip(self, reason: str, message: str, count: int = 1) -> None:
        """Counts ``count`` records that are not written."""
        self._add("skipped", reason, message, count)

    def skip_unread(self, reason: str, message: str, count: int = 1) -> None:
        """Counts records skipped while reading the file (they never became a ``RawRecord``)."""
        self.num_records += count
        self.skip(reason, message, count)

    def to_json(self) -> dict[str, Any]:
        return {"num_records": self.num_records, "fixed": dict(sorted(self.fixed.items())),
                "skipped": dict(sorted(self.skipped.items())), "messages": dict(sorted(self.messages.items()))}


def format_reports(reports: Iterable[Report]) -> str:
    """A plain-text table of what was fixed and skipped, per split and reason, with one example each."""
    rows = [("split", "action", "reason", "count", "example")]
    for r in reports:
        for kind, counts in (("fixed", r.fixed), ("skipped", r.skipped)):
            for reason, n in sorted(counts.items()):
                example = r.messages[f"{kind}:{reason}"][0]
                rows.append((r.split, kind, reason, str(n), example if len(example) <= 110 else example[:107] + "..."))
    if len(rows) == 1:
        return "nothing fixed or skipped"
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i != 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             + "  " + row[4] for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- file helpers


class _KeyCheckedDict(dict):
    """A JSON object that remembers duplicate keys (``json`` would silently keep the last one)."""

    duplicates: list[tuple[str, Any]]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _KeyCheckedDict:
    out = _KeyCheckedDict()
    out.duplicates = []
    for key, value in pairs:
        if key in out:
            out.duplicates.append((key, value))
        else:
            out[key] = value
    return out


def load_json(path: str) -> Any:
    """Loads a JSON file; objects remember duplicate keys in ``.duplicates``. Raises ``AnnotationError``."""
    if not os.path.isfile(path):
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_pairs_hook)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e})") from e


def _number(x: Any) -> float | None:
    """``x`` as a finite float, or None (bools and strings are not numbers here)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        x = float(x)
    except OverflowError:  # A JSON integer beyond float range.
        return None
    return x if math.isfinite(x) else None


def _pair(x: Any) -> list[float] | None:
    if not isinstance(x, (list, tuple)) or len(x) != 2:
        return None
    s, e = _number(x[0]), _number(x[1])
    return None if s is None or e is None else [s, e]


def load_durations(path: str, split: str | None = None) -> dict[str, float]:
    """Video durations in seconds from a durations file.

    Accepts VSLNet's ``charades.json`` (``{vid: {"duration": s, ...}}``), TVR's
    ``tvr_video2dur_idx.json`` (``{split: {vid: [s, index]}}``, all splits merged),
    a flat ``{vid: s}`` JSON, or a CSV with ``id`` and ``length`` columns
    (``Charades_v1_train.csv``). With ``split`` (a per-split file such as TVR's):
    only that split's videos, in file order (a query-only split's corpus).
    """
    if split is not None and path.lower().endswith(".csv"):
        raise AnnotationError(f"{path}: a durations CSV has no splits (asked for the videos of {split!r})")
    if path.lower().endswith(".csv"):
        if not os.path.isfile(path):
            raise AnnotationError(f"{path}: durations file not found")
        out: dict[str, float] = {}
        first_line: dict[str, int] = {}
        try:
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"id", "length"} <= set(reader.fieldnames):
                    raise AnnotationError(f"{path}: a durations CSV needs 'id' and 'length' columns, "
                                          f"got {reader.fieldnames}")
                for row in reader:
                    line = reader.line_num
                    try:
                        d = float(row["length"])
                    except (TypeError, ValueError) as e:
                        raise AnnotationError(f"{path}: line {line}: bad length {row['length']!r}") from e
                    vid = row["id"]
                    if not isinstance(vid, str):
                        raise AnnotationError(f"{path}: line {line}: no video id")
                    if vid in out and out[vid] != d:
                        raise AnnotationError(f"{path}: line {line}: video {vid!r} has a second duration {d} "
                                              f"(line {first_line[vid]}: {out[vid]})")
                    out[vid] = d
                    first_line.setdefault(vid, line)
        except UnicodeDecodeError as e:
            raise AnnotationError(f"{path}: not UTF-8 text ({e})") from e
        except csv.Error as e:
            raise AnnotationError(f"{path}: malformed CSV: {e}") from e
        return out
    data = load_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: durations must be a JSON object, got {type(data).__name__}")
    if split is not None:
        if not isinstance(data.get(split), dict) or "duration" in data[split]:
            raise AnnotationError(f"{path}: no {split!r} entry listing that split's videos "
                                  f"({{split: {{vid: [duration, index]}}}}; entries: {sorted(data)[:10]})")
    items = [(split, data[split])] if split is not None else list(data.items()) + data.duplicates
    out: dict[str, float] = {}

    def add(vid: str, value: Any) -> None:
        if isinstance(value, dict) and "duration" in value:
            value = value["duration"]
        elif isinstance(value, (list, tuple)) and value:
            value = value[0]
        d = _number(value)
        if d is None:
            raise AnnotationError(f"{path}: video {vid!r}: no numeric duration in {value!r:.80}")
        if vid in out and out[vid] != d:
            raise AnnotationError(f"{path}: video {vid!r} has two durations, {out[vid]} and {d}")
        out[vid] = d

    for key, value in items:
        nested = isinstance(value, dict) and "duration" not in value
        if nested:  # TVR: {split: {vid: [duration, index]}}.
            for vid, v in list(value.items()) + value.duplicates:
                add(vid, v)
        else:
            add(key, value)
    return out


# ----------------------------------------------------------------------------- readers

def _text_lines(path: str, report: Report) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each non-blank line of a line-per-record file (lines end at ``\\n``);
    a line that is not UTF-8 is counted as ``unparsable_line`` and not yielded."""
    if not os.path.isfile(path):
        raise AnnotationError(f"{path}: annotation file not found")
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                report.skip_unread("unparsable_line", f"{path}: line {line_no}: not UTF-8 text ({e.reason} at "
                                   f"byte {e.start})")
                continue
            if line.strip():  # Blank lines (the trailing newline) hold no record.
                yield line_no, line


Reader = Callable[[str, Report, "Mapping[str, float] | None"], Iterator[RawRecord]]


def read_charades_sta(path: str, report: Report, durations: Mapping[str, float] | None = None
                      ) -> Iterator[RawRecord]:
    """Charades-STA ``VID start end##sentence`` lines (seconds); qid ``{vid}_{line number}``."""
    if durations is None:
        raise AnnotationError(f"{path}: Charades-STA needs video durations (charades.json or Charades_v1_*.csv)")
    for line_no, line in _text_lines(path, report):
        head, sep, sentence = line.partition("##")
        fields = head.split()
        spans = _pair([_float_or_none(x) for x in fields[1:]]) if len(fields) == 3 else None
        if not sep or spans is None:
            report.skip_unread("unparsable_line", f"{path}: line {line_no}: expected 'VID start end##sentence', "
                               f"got {line[:80]!r}")
            continue
        vid = fields[0]
        yield RawRecord(qid=f"{vid}_{line_no}", vid=vid, duration=durations.get(vid), query=sentence.strip(),
                        spans=[spans], source=path, locator=f"line {line_no}")


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _video_records(path: str, report: Report) -> Iterator[tuple[str, dict]]:
    """The (vid, record) items of a ``{vid: {...}}`` JSON file; duplicated video ids are yielded again."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object keyed by video id, got {type(data).__name__}")
    for vid, rec in list(data.items()) + data.duplicates:
        if not isinstance(rec, dict):
            report.skip_unread("malformed_record", f"{path}: video {vid!r}: expected an object, got {rec!r:.80}")
            continue
        yield vid, rec


def _num_sentences(rec: dict) -> int:
    """How many records a video entry stands for: its longest of 'timestamps' / 'sentences', at least 1."""
    return max([len(rec[k]) for k in ("timestamps", "sentences") if isinstance(rec.get(k), list)] + [1])


def _sentence_records(path: str, vid: str, rec: dict, report: Report, duration: float | None,
                      scale: float = 1.0) -> Iterator[RawRecord]:
    """One ``RawRecord`` per (timestamp, sentence) of a video; ``scale`` converts timestamps to seconds."""
    stamps, sentences = rec.get("timestamps"), rec.get("sentences")
    if not isinstance(stamps, list) or not isinstance(sentences, list) or len(stamps) != len(sentences) \
            or getattr(rec, "duplicates", None):
        n = _num_sentences(rec)
        report.skip_unread("malformed_record", f"{path}: video {vid!r}: needs lists 'timestamps' and 'sentences' "
                           f"of equal length and no repeated keys ({n} record(s) lost)", count=n)
        return
    for i, (stamp, sentence) in enumerate(zip(stamps, sentences)):
        span = _pair(stamp)
        locator = f"video {vid!r} sentence {i}"
        if span is None or not isinstance(sentence, str):
            report.skip_unread("malformed_record", f"{path}: {locator}: bad timestamp {stamp!r} or sentence {sentence!r}")
            continue
        yield RawRecord(qid=f"{vid}_{i}", vid=vid, duration=duration, query=sentence.strip(),
                        spans=[[span[0] * scale, span[1] * scale]], source=path, locator=locator)


def read_activitynet_captions(path: str, report: Report, durations: Mapping[str, float] | None = None
                              ) -> Iterator[RawRecord]:
    """ActivityNet Captions JSON (seconds); qid ``{vid}_{i}``. ``durations`` overrides the file's."""
    for vid, rec in _video_records(path, report):
        duration = durations.get(vid) if durations is not None else _number(rec.get("duration"))
        yield from _sentence_records(path, vid, rec, report, duration)


def read_tacos(path: str, report: Report, durations: Mapping[str, float] | None = None) -> Iterator[RawRecord]:
    """TACoS 2D-TAN JSON (frames with ``fps``); qid ``{vid}_{i}``; duration ``num_frames / fps``."""
    for vid, rec in _video_records(path, report):
        fps, frames = _number(rec.get("fps")), _number(rec.get("num_frames"))
        if fps is None or fps <= 0 or frames is None:
            report.skip_unread("malformed_record", f"{path}: video {vid!r}: needs a positive 'fps' and "
                               f"'num_frames', got {rec.get('fps')!r} / {rec.get('num_frames')!r}",
                               count=_num_sentences(rec))
            continue
        duration = durations.get(vid) if durations is not None else frames / fps
        yield from _sentence_records(path, vid, rec, report, duration, scale=1.0 / fps)


def _jsonl_records(path: str, report: Report) -> Iterator[tuple[int, str, Any]]:
    """(line number, line, parsed JSON) of each non-blank line; lines that are not JSON are reported."""
    for line_no, line in _text_lines(path, report):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            report.skip_unread("unparsable_line", f"{path}: line {line_no}: not JSON ({e.msg})")
            continue
        yield line_no, line, rec


def read_tvr(path: str, report: Report, durations: Mapping[str, float] | None = None) -> Iterator[RawRecord]:
    """TVR release jsonl; qid ``str(desc_id)``; query types kept; durations from video2dur when given."""
    for line_no, line, rec in _jsonl_records(path, report):
        where = f"{path}: line {line_no}"
        if isinstance(rec, dict) and line_no == 1 and "desc_id" in rec and "ts" not in rec \
                and "vid_name" not in rec:
            raise AnnotationError(f"{path}: records have no 'vid_name' / 'ts' (a query-only file such as "
                                  f"tvr_test_public_release.jsonl): there is no ground truth to convert")
        span = _pair(rec.get("ts")) if isinstance(rec, dict) else None
        ok = (span is not None and isinstance(rec.get("vid_name"), str) and isinstance(rec.get("desc"), str)
              and rec.get("desc_id") is not None)
        if not ok:
            report.skip_unread("malformed_record", f"{where}: needs vid_name, ts [start, end], desc and "
                               f"desc_id, got {line.strip()[:100]!r}")
            continue
        vid = rec["vid_name"]
        duration = durations.get(vid) if durations is not None else None
        if duration is None:
            duration = _number(rec.get("duration"))
        yield RawRecord(qid=str(rec["desc_id"]), vid=vid, duration=duration, query=rec["desc"].strip(),
                        spans=[span], source=path, locator=f"line {line_no}",
                        query_type=str(rec.get("type", "")))


def read_tvr_queries(path: str, report: Report) -> Iterator[RawRecord]:
    """TVR query-only jsonl (``tvr_test_public_release.jsonl``: ``desc``, ``desc_id``, maybe ``type``);
    qid ``str(desc_id)``; records with no video, duration or span. Other fields are ignored."""
    for line_no, line, rec in _jsonl_records(path, report):
        desc_id = rec.get("desc_id") if isinstance(rec, dict) else None
        ok = (isinstance(rec, dict) and isinstance(rec.get("desc"), str) and isinstance(desc_id, (int, str))
              and not isinstance(desc_id, bool) and str(desc_id).strip() != "")
        if not ok:
            report.skip_unread("malformed_record", f"{path}: line {line_no}: needs desc and desc_id, "
                               f"got {line.strip()[:100]!r}")
            continue
        yield RawRecord(qid=str(rec["desc_id"]), vid="", duration=None, query=rec["desc"].strip(), spans=[],
                        source=path, locator=f"line {line_no}", query_type=str(rec.get("type", "") or ""))


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to find and read one dataset's annotation files.

    Attributes:
      name: the dataset name (``--dataset``).
      read: the reader, ``read(path, report, durations) -> Iterator[RawRecord]``.
      split_files: split -> file names looked for in an annotation folder, in split order.
      durations_file: the durations file looked for beside the annotations ('' if none).
      durations_required: whether the reader cannot work without durations.
      feature_dim: the dimension of the community's standard video features.
      feature_note: which features those are.
      feature_files: the names those feature files (or folders) are released under.
      unlabeled_splits: splits released without ground truth (leaderboard queries): never
        picked up from a folder scan; converted, when asked for, as a query set plus a
        corpus (every video of the split's entry in ``durations_file``).
      read_queries: the reader of those splits' query-only files, ``read_queries(path, report)``.
    """

    name: str
    read: Reader
    split_files: Mapping[str, tuple[str, ...]]
    durations_file: str = ""
    durations_required: bool = False
    feature_dim: int = 0
    feature_note: str = ""
    feature_files: tuple[str, ...] = ()
    unlabeled_splits: tuple[str, ...] = ()
    read_queries: Callable[[str, Report], Iterator[RawRecord]] | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.split_files)


DATASETS: dict[str, DatasetSpec] = {
    "charades_sta": DatasetSpec(
        name="charades_sta", read=read_charades_sta,
        split_files={"train": ("charades_sta_train.txt",), "test": ("charades_sta_test.txt",)},
        durations_file="charades.json", durations_required=True,
        feature_dim=1024, feature_note="I3D, one <vid>.npy per video (VSLNet; 2D-TAN used VGG 4096-d)",
        feature_files=("i3d_features",)),
    "activitynet_captions": DatasetSpec(
        name="activitynet_captions", read=read_activitynet_captions,
        split_files={"train": ("train.json",), "val_1": ("val_1.json",), "val_2": ("val_2.json",)},
        feature_dim=500, feature_note="C3D PCA-500 (group <vid>/c3d_features)",
        feature_files=("sub_activitynet_v1-3.c3d.hdf5",)),
    "tacos": DatasetSpec(
        name="tacos", read=read_tacos,
        split_files={"train": ("train.json",), "val": ("val.json",), "test": ("test.json",)},
        feature_dim=4096, feature_note="C3D fc6 (2D-TAN)", feature_files=("tall_c3d_features.hdf5",)),
    "tvr": DatasetSpec(
        name="tvr", read=read_tvr,
        split_files={"train": ("tvr_train_release.jsonl",), "val": ("tvr_val_release.jsonl",),
                     "test_public": ("tvr_test_public_release.jsonl",)},
        durations_file="tvr_video2dur_idx.json",
        feature_dim=3072, feature_note="ResNet152 + I3D per 1.5 s clip",
        feature_files=("tvr_resnet152_rgb_max_i3d_rgb600_avg_cat_cl-1.5.h5",), unlabeled_splits=("test_public",),
        read_queries=read_tvr_queries),
}


def get_spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[dataset]


def find_split_files(spec: DatasetSpec, annotations: str, splits: Iterable[str] = ()) -> dict[str, str]:
    """Maps each split to its annotation file.

    Args:
      spec: the dataset.
      annotations: a folder holding the files under their usual names, or one file.
      splits: the splits wanted (empty: every split whose file the folder holds).
        With a single file, the split is taken from ``splits`` or from the file name.

    Returns:
      split -> file path, in the dataset's split order.
    """
    splits = list(splits)
    for s in splits:
        if s not in spec.split_files:
            raise AnnotationError(f"{spec.name} has no split {s!r}; expected one of {list(spec.split_files)}")
    if os.path.isfile(annotations):
        name = os.path.basename(annotations)
        if len(splits) > 1:
            raise AnnotationError(f"{annotations}: one annotation file holds one split, got splits {splits}")
        by_name = [s for s, names in spec.split_files.items() if name in names]
        split = splits[0] if splits else (by_name[0] if by_name else "")
        if not split:
            raise AnnotationError(f"{annotations}: cannot tell the {spec.name} split from the file name; "
                                  f"pass --splits=one of {list(spec.split_files)}")
        return {split: annotations}
    if not os.path.isdir(annotations):
        raise AnnotationError(f"{annotations}: annotation file or folder not found")
    found = {}
    for split, names in spec.split_files.items():
        paths = [os.path.join(annotations, n) for n in names if os.path.isfile(os.path.join(annotations, n))]
        if paths and (split in splits or not splits and split not in spec.unlabeled_splits):
            found[split] = paths[0]
        elif split in splits:
            raise AnnotationError(f"{annotations}: no {spec.name} {split!r} file (looked for {list(names)})")
    if not found:
        expected = [n for names in spec.split_files.values() for n in names]
        raise AnnotationError(f"{annotations}: no {spec.name} annotation file found (looked for {expected})")
    return found


def folder_warnings(spec: DatasetSpec, annotations: str) -> list[str]:
    """Warnings about files of an annotation folder that are not converted by default, and why."""
    if not os.path.isdir(annotations):
        return []
    out = [f"{os.path.join(annotations, n)}: split {split!r} has no ground truth (leaderboard queries only); "
           f"not converted unless asked for: --splits=...,{split} converts it as a query set plus its corpus"
           for split in spec.unlabeled_splits for n in spec.split_files[split]
           if os.path.isfile(os.path.join(annotations, n))]
    if spec.name == "activitynet_captions":
        out += [f"{os.path.join(annotations, n)}: ActivityNet Captions has no public test annotations; 2D-TAN's "
                f"val.json / test.json are val_1 / val_2 renamed. Not converted: pass it with "
                f"--annotations=FILE --splits=val_1 (or val_2) if you mean it"
                for n in ("val.json", "test.json") if os.path.isfile(os.path.join(annotations, n))]
    return out


# ----------------------------------------------------------------------------- cleaning


def clean(records: Iterable[RawRecord], report: Report, labelled: bool = True) -> Iterator[RawRecord]:
    """Checks and repairs records (see the module docstring); yields the usable ones.

    Spans are clipped to ``[0, duration]``; a span must still have start < end in
    float32, the precision the TFRecords store. ``labelled=False`` (a query-only
    split): only duplicate ids and empty queries are checked.
    """
    seen: dict[str, str] = {}
    for rec in records:
        report.num_records += 1
        where = rec.where
        if rec.qid in seen:
            report.skip("duplicate_qid", f"{where}: duplicate qid (first at {seen[rec.qid]})")
            continue
        seen[rec.qid] = f"{rec.source}: {rec.locator}"
        if labelled and rec.duration is None:
            report.skip("missing_duration", f"{where}: no usable duration for video {rec.vid!r}")
            continue
        if labelled and not (math.isfinite(rec.duration) and 0 < rec.duration <= MAX_SECONDS):
            report.skip("bad_duration", f"{where}: duration {rec.duration!r} is not a positive number "
                        f"of at most {MAX_SECONDS:g} s")
            continue
        if not any(ch.isalnum() for ch in rec.query):
            report.skip("empty_query", f"{where}: empty query {rec.query!r}")
            continue
        if not labelled:
            yield rec
            continue
        spans = [[float(s), float(e)] for s, e in rec.spans]
        if any(s >= e for s, e in spans):
            report.skip("start_ge_end", f"{where}: span start >= end {spans}")
            continue
        clipped = [[max(s, 0.0), min(e, rec.duration)] for s, e in spans]
        if any(float(np.float32(s)) >= float(np.float32(e)) for s, e in clipped):
            report.skip("start_ge_end", f"{where}: span {spans} is empty once clipped to the video "
                        f"[0, {rec.duration}]")
            continue
        if any(s < 0 for s, _ in spans):
            report.fix("start_below_zero", f"{where}: span {spans} starts before 0; clipped")
        if any(e > rec.duration for _, e in spans):
            report.fix("end_beyond_duration", f"{where}: span {spans} ends after the video "
                       f"({rec.duration} s); clipped")
        yield dataclasses.replace(rec, spans=clipped)


def read_split(spec: DatasetSpec, path: str, report: Report,
               durations: Mapping[str, float] | None = None, labelled: bool = True) -> list[RawRecord]:
    """Reads and cleans one split's annotation file; ``labelled=False``: a query-only file
    (``spec.read_queries``; records without video or ground truth)."""
    if labelled:
        return list(clean(spec.read(path, report, durations), report))
    if spec.read_queries is None:
        raise AnnotationError(f"{path}: {spec.name} has no reader of query-only files")
    return list(clean(spec.read_queries(path, report), report, labelled=False))
