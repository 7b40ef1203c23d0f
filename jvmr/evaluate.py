"""Standalone moment-retrieval evaluator for JSONL predictions.

Usage::

  python -m jvmr.evaluate --protocol=2dtan|moment_detr|jvmr \\
      --predictions=preds.jsonl --ground_truth=gt.jsonl [--output=metrics.json]
  python -m jvmr.evaluate --protocol=tvr \\
      --predictions=submission.json --ground_truth=tvr_val_release.jsonl [--output=metrics.json]

Predictions are JSON lines ``{"qid", "vid", "pred_relevant_windows":
[[start, end, score], ...]}``; ground truth is JSON lines ``{"qid", "vid",
"duration", "relevant_windows": [[start, end], ...]}`` (the moment_detr /
lighthouse format written by ``jvmr.metrics.write_predictions_jsonl`` and
``write_ground_truth_jsonl``).

Protocols (``jvmr.metrics.PROTOCOLS``):

* ``2dtan``: microsoft/2D-TAN ``lib/core/eval.py`` (NMS 0.5, R@{1,5} with a
  strict ``>``, mIoU). The JSON output is flat (``"R@1,IoU=0.5"``, ``"mIoU"``).
* ``jvmr``: the library default (the embedded benchmark's tables): as
  ``2dtan`` but counting IoU ``>=`` t and breaking score ties earlier-first.
* ``moment_detr``: jayleicn/moment_detr ``standalone_eval/eval.py`` (R1 of the
  first row, ActivityNet-style mAP, short / middle / long GT length ranges).
  The JSON output is nested (``{"brief": {"MR-full-R1@0.5", ...}, "full":
  {...}, "long": .., "middle": .., "short": ..}``).
* ``tvr``: jayleicn/TVRetrieval ``standalone_eval/eval.py`` on a TVR
  submission JSON (``{"video2idx", "VCMR", "SVMR", "VR"}``) and a TVR release
  JSONL (``run_tvr``). Output
  ``{"VCMR": {"0.5-r1", ...}, "SVMR": ..., "VR": {"r1", ...},
  "VCMR_by_type": {"v-0.5-r1", ..., "desc_type_ratio"}, ...}`` with
  ``"num_missing_predictions"`` per block.

A ground-truth query without a prediction counts as a miss; their number is
printed and stored as ``"num_missing_predictions"``. Malformed input (bad JSON,
text that is not UTF-8, missing keys, duplicate qids, a prediction for an unknown
qid, ``start > end``, non-finite numbers, times beyond ``MAX_SECONDS``, an empty
ground truth) is an ``InputError`` naming the file, the line and the qid.

The absl flags are only defined when run as a script, so importing this module
registers nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Sequence

import numpy as np

from jvmr import metrics as metrics_lib
from jvmr.metrics.spans import MAX_SECONDS


class InputError(ValueError):
    """Malformed predictions or ground-truth file."""


def _where(path: str, line_no: int, qid: Any = None) -> str:
    return f"{path}:{line_no}" + ("" if qid is None else f" (qid {qid!r})")


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
    rows = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}") from None
    with f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{_where(path, line_no)}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{_where(path, line_no)}: invalid JSON: {e}") from None
            if not isinstance(row, dict):
                raise InputError(f"{_where(path, line_no)}: expected a JSON object, got {type(row).__name__}")
            rows.append((line_no, row))
    return rows


def _float(x: int | float) -> float:
    """A JSON number as a float; integers beyond float range become +-inf (reported as non-finite)."""
    try:
        return float(x)
    except OverflowError:
        return math.copysign(math.inf, x)


def _parse_windows(value: Any, cols: int, key: str, where: str) -> list[list[float]]:
    if not isinstance(value, list):
        raise InputError(f"{where}: {key!r} must be a list of windows, got {type(value).__name__}")
    out = []
    for j, w in enumerate(value):
        if (not isinstance(w, (list, tuple)) or len(w) < cols
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in w[:cols])):
            raise InputError(f"{where}: {key}[{j}] must be [start, end{', score' if cols == 3 else ''}], got {w!r}")
        w = [_float(x) for x in w[:cols]]
        if cols == 3 and math.isnan(w[2]):
            raise InputError(f"{where}: {key}[{j}] has a NaN score")
        if not all(math.isfinite(x) for x in w):
            raise InputError(f"{where}: {key}[{j}] has a non-finite value {w!r}")
        if not all(abs(x) <= MAX_SECONDS for x in w[:2]):
            raise InputError(f"{where}: {key}[{j}] has a time beyond {MAX_SECONDS:g} s: {w!r}")
        if w[0] > w[1]:
            raise InputError(f"{where}: {key}[{j}] has start > end ({w[0]} > {w[1]})")
        out.append(w)
    return out


def _index(path: str, rows: list[tuple[int, dict]], key: str, cols: int) -> dict[Any, list[list[float]]]:
    out: dict[Any, list[list[float]]] = {}
    first_line: dict[Any, int] = {}
    for line_no, row in rows:
        if "qid" not in row:
            raise InputError(f"{_where(path, line_no)}: missing key 'qid'")
        qid = row["qid"]
        if not isinstance(qid, (str, int)) or isinstance(qid, bool):
            raise InputError(f"{_where(path, line_no)}: qid must be a string or an integer, got {qid!r}")
        where = _where(path, line_no, qid)
        if qid in out:
            raise InputError(f"{where}: duplicate qid (first on line {first_line[qid]})")
        if key not in row:
            raise InputError(f"{where}: missing key {key!r}")
        out[qid] = _parse_windows(row[key], cols, key, where)
        first_line[qid] = line_no
        if cols == 2 and not out[qid]:
            raise InputError(f"{where}: no ground-truth window")
    return out


def load_inputs(predictions_path: str, ground_truth_path: str) -> tuple[list[Any], list[Any], list[Any]]:
    """Reads and validates the two JSONL files.

    Args:
      predictions_path: Predictions JSONL.
      ground_truth_path: Ground-truth JSONL.

    Returns:
      ``(qids, pred_windows, gt_windows)`` in ground-truth order; the
      prediction entry of a query without a prediction is ``None``.

    Raises:
      InputError: On malformed input (the message names file, line and qid).
    """
    gt = _index(ground_truth_path, _read_jsonl(ground_truth_path), "relevant_windows", 2)
    if not gt:
        raise InputError(f"{ground_truth_path}: no ground-truth rows")
    pred_rows = _read_jsonl(predictions_path)
    preds = _index(predictions_path, pred_rows, "pred_relevant_windows", 3)
    for line_no, row in pred_rows:
        if row["qid"] not in gt:
            raise InputError(f"{_where(predictions_path, line_no, row['qid'])}: "
                             f"qid not in ground truth {ground_truth_path}")
    qids = list(gt)
    return qids, [preds.get(q) for q in qids], [gt[q] for q in qids]


#: The protocol whose files are a TVR submission JSON and a TVR release JSONL.
TVR_PROTOCOL = "tvr"
#: Every ``--protocol`` value (``jvmr.metrics.PROTOCOLS``).
ALL_PROTOCOLS = tuple(sorted(metrics_lib.PROTOCOLS))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _tvr_desc(path: str, desc_id: Any, where: str = "") -> str:
    return f"{path}{where} (desc_id {desc_id!r})"


def _parse_tvr_ts(ts: Any, where: str) -> list[list[float]]:
    """A GT ``ts``: ``[st, ed]`` or a list of ``[st, ed]`` windows (DiDeMo)."""
    if isinstance(ts, list) and len(ts) == 2 and all(_is_number(x) for x in ts):
        windows = [ts]
    elif isinstance(ts, list) and ts and all(isinstance(w, list) for w in ts):
        windows = ts
    else:
        raise InputError(f"{where}: 'ts' must be [st, ed] or a list of [st, ed] windows, got {ts!r}")
    out = []
    for w in windows:
        if len(w) != 2 or not all(_is_number(x) for x in w):
            raise InputError(f"{where}: bad 'ts' window {w!r}")
        w = [_float(x) for x in w]
        if not all(math.isfinite(x) for x in w):
            raise InputError(f"{where}: non-finite 'ts' window {w!r}")
        if not all(abs(x) <= MAX_SECONDS for x in w):
            raise InputError(f"{where}: 'ts' window {w!r} has a time beyond {MAX_SECONDS:g} s")
        if w[0] > w[1]:
            raise InputError(f"{where}: 'ts' window has st > ed ({w[0]} > {w[1]})")
        out.append(w)
    return out


def load_tvr_ground_truth(path: str) -> dict[str, Any]:
    """Reads a TVR release JSONL (``desc_id``, ``vid_name``, ``ts``, ``type``, ...).

    Returns:
      ``{"desc_ids": [Q], "vid_names": [Q], "windows": [Q] lists of [st, ed],
      "types": [Q] or None}`` (``types`` is None unless every row has a
      ``type``).

    Raises:
      InputError: On malformed rows or duplicate desc_ids.
    """
    desc_ids, vid_names, windows, types = [], [], [], []
    first_line: dict[Any, int] = {}
    for line_no, row in _read_jsonl(path):
        for key in ("desc_id", "vid_name", "ts"):
            if key not in row:
                raise InputError(f"{_where(path, line_no)}: missing key {key!r}")
        desc_id = row["desc_id"]
        where = _tvr_desc(path, desc_id, f":{line_no}")
        if not isinstance(desc_id, (str, int)) or isinstance(desc_id, bool):
            raise InputError(f"{where}: desc_id must be a string or an integer")
        if desc_id in first_line:
            raise InputError(f"{where}: duplicate desc_id (first on line {first_line[desc_id]})")
        first_line[desc_id] = line_no
        if not isinstance(row["vid_name"], str):
            raise InputError(f"{where}: vid_name must be a string, got {row['vid_name']!r}")
        if "type" in row and row["type"] not in metrics_lib.TVR_DESC_TYPES:
            raise InputError(f"{where}: type must be one of {metrics_lib.TVR_DESC_TYPES}, got {row['type']!r}")
        desc_ids.append(desc_id)
        vid_names.append(row["vid_name"])
        windows.append(_parse_tvr_ts(row["ts"], where))
        types.append(row.get("type"))
    if not desc_ids:
        raise InputError(f"{path}: no ground-truth rows")
    return {"desc_ids": desc_ids, "vid_names": vid_names, "windows": windows,
            "types": None if any(t is None for t in types) else types}


def _tvr_block(path: str, task: str, block: Any, gt_index: dict[Any, int], valid_vids: np.ndarray,
               max_pred: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One submission block -> (pred_vid, pred_spans, pred_valid, num_missing)."""
    if not isinstance(block, list):
        raise InputError(f"{path}: {task!r} must be a list of query entries, got {type(block).__name__}")
    num_q = len(gt_index)
    rows: dict[int, np.ndarray] = {}
    for entry in block:
        if not isinstance(entry, dict) or "desc_id" not in entry:
            raise InputError(f"{path}: {task} entries must be objects with a 'desc_id', got {str(entry)[:80]!r}")
        desc_id = entry["desc_id"]
        where = f"{path} ({task}, desc_id {desc_id!r})"
        if isinstance(desc_id, bool) or not isinstance(desc_id, (str, int)) or desc_id not in gt_index:
            raise InputError(f"{where}: desc_id not in ground truth")
        q = gt_index[desc_id]
        if q in rows:
            raise InputError(f"{where}: duplicate desc_id in {task}")
        preds = entry.get("predictions")
        if not isinstance(preds, list):
            raise InputError(f"{where}: 'predictions' must be a list of [vid_idx, st, ed, score] rows")
        preds = preds[:max_pred]
        for j, p in enumerate(preds):
            if not isinstance(p, (list, tuple)) or len(p) < 3 or not all(_is_number(x) for x in p[:3]):
                raise InputError(f"{where}: predictions[{j}] must be [vid_idx, st, ed, score], got {p!r}")
        arr = np.array([[_float(x) for x in p[:3]] for p in preds], np.float64).reshape(-1, 3)
        scores = np.array([_float(p[3]) if len(p) > 3 and _is_number(p[3]) else 0.0 for p in preds], np.float64)
        bad = np.isnan(arr).any(axis=1) | np.isnan(scores)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise InputError(f"{where}: predictions[{j}] has a NaN: {preds[j]!r}")
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise InputError(f"{where}: predictions[{j}] has a non-finite value: {preds[j]!r}")
        bad = np.abs(arr[:, 1:]).max(axis=1, initial=0.0) > MAX_SECONDS
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise InputError(f"{where}: predictions[{j}] has a time beyond {MAX_SECONDS:g} s: {preds[j]!r}")
        bad = arr[:, 1] > arr[:, 2]
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise InputError(f"{where}: predictions[{j}] has st > ed ({arr[j, 1]} > {arr[j, 2]})")
        bad = (arr[:, 0] != np.round(arr[:, 0])) | ~np.isin(arr[:, 0], valid_vids)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise InputError(f"{where}: predictions[{j}] video index {preds[j][0]!r} is not in video2idx")
        rows[q] = arr
    num_p = max([1] + [a.shape[0] for a in rows.values()])
    pred_vid = np.full((num_q, num_p), -1, np.int64)
    pred_spans = np.zeros((num_q, num_p, 2))
    pred_valid = np.zeros((num_q, num_p), bool)
    for q, a in rows.items():
        n = a.shape[0]
        pred_vid[q, :n] = a[:, 0].astype(np.int64)
        pred_spans[q, :n] = a[:, 1:3]
        pred_valid[q, :n] = True
    return pred_vid, pred_spans, pred_valid, num_q - len(rows)


def run_tvr(predictions_path: str, ground_truth_path: str, output_path: str | None = None,
            max_pred_per_query: int = metrics_lib.TVR_MAX_PRED_PER_QUERY) -> dict[str, Any]:
    """Evaluates a TVR submission JSON against a TVR release JSONL.

    Reproduces jayleicn/TVRetrieval ``standalone_eval/eval.py``
    (``eval_retrieval``): VCMR / SVMR / VR R@{1,5,10,100} (IoU 0.5 / 0.7 for
    the moment tasks), by query type, ``round(100 * x, 2)``. Blocks absent from
    the submission are skipped. Unlike the reference (which asserts that every
    block covers exactly the GT desc_ids) a GT query missing from a block is a
    miss and counted.

    Returns:
      ``metrics_lib.evaluate_tvr``'s dict plus ``"num_queries"`` and
      ``"num_missing_predictions": {task: n}`` (one entry per block present).

    Raises:
      InputError: On malformed input (naming the file and the desc_id).
    """
    gt = load_tvr_ground_truth(ground_truth_path)
    try:
        with open(predictions_path, encoding="utf-8") as f:
            sub = json.load(f)
    except OSError as e:
        raise InputError(f"cannot read {predictions_path}: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{predictions_path}: invalid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{predictions_path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(sub, dict):
        raise InputError(f"{predictions_path}: expected a JSON object, got {type(sub).__name__}")
    video2idx = sub.get("video2idx")
    if not isinstance(video2idx, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in video2idx.values()):
        raise InputError(f"{predictions_path}: 'video2idx' must be an object {{vid_name: integer index}}")
    tasks = [t for t in metrics_lib.TVR_TASK_TYPES if t in sub]
    if not tasks:
        raise InputError(f"{predictions_path}: no task block (one of {metrics_lib.TVR_TASK_TYPES})")
    gt_vid = np.empty(len(gt["desc_ids"]), np.int64)
    for q, (desc_id, vid_name) in enumerate(zip(gt["desc_ids"], gt["vid_names"])):
        if vid_name not in video2idx:
            raise InputError(f"{predictions_path}: 'video2idx' lacks {vid_name!r}, the ground-truth video of "
                             f"desc_id {desc_id!r} ({ground_truth_path})")
        gt_vid[q] = video2idx[vid_name]
    gt_spans, gt_valid = metrics_lib.pad_spans(gt["windows"])
    gt_index = {d: q for q, d in enumerate(gt["desc_ids"])}
    valid_vids = np.array(sorted(set(video2idx.values())), np.float64)
    blocks, missing = {}, {}
    for task in tasks:
        *arrays, missing[task] = _tvr_block(predictions_path, task, sub[task], gt_index, valid_vids,
                                            max_pred_per_query)
        blocks[task] = tuple(arrays)
    types = None if gt["types"] is None else np.array(gt["types"])
    result = metrics_lib.evaluate_tvr(blocks, gt_vid, gt_spans, gt_valid, types,
                                      max_pred_per_query=max_pred_per_query)
    result["num_queries"] = len(gt["desc_ids"])
    result["num_missing_predictions"] = missing
    _write_json(result, output_path)
    return result


def format_tvr_result(result: dict[str, Any]) -> str:
    """The printed table of a ``run_tvr`` result (one row per task)."""
    lines = [f"protocol: {TVR_PROTOCOL}"]
    for task in metrics_lib.TVR_TASK_TYPES:
        if task not in result:
            continue
        keys = list(result[task])
        width = max(len(k) for k in keys + ["999.99"])
        lines.append(f"{task:<5}" + "".join(f"  {k:>{width}}" for k in keys))
        lines.append(" " * 5 + "".join(f"  {result[task][k]:>{width}.2f}" for k in keys))
    for task, n in result.get("num_missing_predictions", {}).items():
        if n:
            lines.append(f"{task}: {n} of {result['num_queries']} queries without predictions (misses)")
    lines.append(f"num_queries  {result.get('num_queries')}")
    return "\n".join(lines)


def _write_json(result: dict[str, Any], output_path: str | None) -> None:
    if output_path:
        directory = os.path.dirname(os.path.abspath(output_path))
        os.makedirs(directory, exist_ok=True)
        with open(output_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


def run(protocol: str, predictions_path: str, ground_truth_path: str,
        output_path: str | None = None) -> dict[str, Any]:
    """Evaluates prediction / ground-truth files and optionally writes JSON.

    Args:
      protocol: A ``jvmr.metrics.PROTOCOLS`` name.
      predictions_path: Predictions JSONL.
      ground_truth_path: Ground-truth JSONL.
      output_path: If given, the result is written there as JSON.

    Returns:
      The protocol's metrics dict (``metrics_lib.evaluate_windows``) with
      ``"num_queries"`` and ``"num_missing_predictions"`` added at the top level.

    Raises:
      InputError: On malformed input.
      ValueError: On an unknown protocol.
    """
    if protocol == TVR_PROTOCOL:
        return run_tvr(predictions_path, ground_truth_path, output_path)
    proto = metrics_lib.get_protocol(protocol)
    qids, preds, gts = load_inputs(predictions_path, ground_truth_path)
    result = dict(metrics_lib.evaluate_windows(proto, preds, gts))
    result["num_queries"] = len(qids)
    result["num_missing_predictions"] = sum(p is None for p in preds)
    _write_json(result, output_path)
    return result


def format_result(protocol: str, result: dict[str, Any]) -> str:
    """The printed table of a ``run`` result."""
    if protocol == TVR_PROTOCOL:
        return format_tvr_result(result)
    counts = {k: result[k] for k in ("num_queries", "num_missing_predictions") if k in result}
    if "brief" in result:
        table = metrics_lib.format_metrics_table({**result["brief"], **counts})
    else:
        table = metrics_lib.format_metrics_table(
            {k: v for k, v in result.items() if k not in counts} | counts)
    return f"protocol: {protocol}\n{table}"


def main(argv: Sequence[str]) -> int:
    """CLI entry point (flags must have been defined by ``define_flags``)."""
    from absl import flags  # pylint: disable=g-import-not-at-top
    del argv
    cfg = flags.FLAGS
    try:
        result = run(cfg.protocol, cfg.predictions, cfg.ground_truth, cfg.output)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_result(cfg.protocol, result))
    if cfg.protocol == TVR_PROTOCOL:
        for task, n in result["num_missing_predictions"].items():
            if n:
                print(f"warning: {task}: {n} of {result['num_queries']} ground-truth queries have no prediction "
                      "(counted as misses)", file=sys.stderr)
    elif result["num_missing_predictions"]:
        print(f"warning: {result['num_missing_predictions']} of {result['num_queries']} ground-truth queries "
              "have no prediction (counted as misses)", file=sys.stderr)
    return 0


def define_flags() -> None:
    """Defines the CLI flags (called only when run as a script)."""
    from absl import flags  # pylint: disable=g-import-not-at-top
    flags.DEFINE_enum("protocol", None, list(ALL_PROTOCOLS), "Evaluation protocol.")
    flags.DEFINE_string("predictions", None, "Predictions JSONL file.")
    flags.DEFINE_string("ground_truth", None, "Ground-truth JSONL file.")
    flags.DEFINE_string("output", None, "Optional JSON output file.")
    flags.mark_flags_as_required(["protocol", "predictions", "ground_truth"])


if __name__ == "__main__":
    from absl import app  # pylint: disable=g-import-not-at-top
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
