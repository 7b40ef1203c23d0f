"""Standalone moment-retrieval evaluator for JSONL predictions.

Usage::

  python -m jvmr.evaluate --protocol=2dtan|moment_detr \\
      --predictions=preds.jsonl --ground_truth=gt.jsonl [--output=metrics.json]

Predictions are JSON lines ``{"qid", "vid", "pred_relevant_windows":
[[start, end, score], ...]}``; ground truth is JSON lines ``{"qid", "vid",
"duration", "relevant_windows": [[start, end], ...]}`` (the moment_detr /
lighthouse format written by ``jvmr.metrics.write_predictions_jsonl`` and
``write_ground_truth_jsonl``).

Protocols (``jvmr.metrics.PROTOCOLS``):

* ``2dtan``: microsoft/2D-TAN ``lib/core/eval.py`` (NMS 0.5, R@{1,5} with a
  strict ``>``, mIoU). The JSON output is flat (``"R@1,IoU=0.5"``, ``"mIoU"``).
* ``moment_detr``: jayleicn/moment_detr ``standalone_eval/eval.py`` (R1 of the
  first row, ActivityNet-style mAP). The JSON output is nested
  (``{"brief": {"MR-full-R1@0.5", ...}, "full": {...}}``).

A ground-truth query without a prediction counts as a miss; their number is
printed and stored as ``"num_missing_predictions"``. Malformed input (bad JSON,
missing keys, duplicate qids, a prediction for an unknown qid, ``start > end``,
non-finite numbers) is an error naming the file, the line and the qid.

The absl flags are only defined when run as a script, so importing this module
registers nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Sequence

from jvmr import metrics as metrics_lib


class InputError(ValueError):
    """Malformed predictions or ground-truth file."""


def _where(path: str, line_no: int, qid: Any = None) -> str:
    return f"{path}:{line_no}" + ("" if qid is None else f" (qid {qid!r})")


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
    rows = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}") from None
    with f:
        for line_no, line in enumerate(f, 1):
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


def _parse_windows(value: Any, cols: int, key: str, where: str) -> list[list[float]]:
    if not isinstance(value, list):
        raise InputError(f"{where}: {key!r} must be a list of windows, got {type(value).__name__}")
    out = []
    for j, w in enumerate(value):
        if (not isinstance(w, (list, tuple)) or len(w) < cols
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in w[:cols])):
            raise InputError(f"{where}: {key}[{j}] must be [start, end{', score' if cols == 3 else ''}], got {w!r}")
        w = [float(x) for x in w[:cols]]
        if cols == 3 and math.isnan(w[2]):
            raise InputError(f"{where}: {key}[{j}] has a NaN score")
        if not all(math.isfinite(x) for x in w):
            raise InputError(f"{where}: {key}[{j}] has a non-finite value {w!r}")
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
    pred_rows = _read_jsonl(predictions_path)
    preds = _index(predictions_path, pred_rows, "pred_relevant_windows", 3)
    for line_no, row in pred_rows:
        if row["qid"] not in gt:
            raise InputError(f"{_where(predictions_path, line_no, row['qid'])}: "
                             f"qid not in ground truth {ground_truth_path}")
    qids = list(gt)
    return qids, [preds.get(q) for q in qids], [gt[q] for q in qids]


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
    proto = metrics_lib.get_protocol(protocol)
    qids, preds, gts = load_inputs(predictions_path, ground_truth_path)
    result = dict(metrics_lib.evaluate_windows(proto, preds, gts))
    result["num_queries"] = len(qids)
    result["num_missing_predictions"] = sum(p is None for p in preds)
    if output_path:
        directory = os.path.dirname(os.path.abspath(output_path))
        os.makedirs(directory, exist_ok=True)
        with open(output_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return result


def format_result(protocol: str, result: dict[str, Any]) -> str:
    """The printed table of a ``run`` result."""
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
    if result["num_missing_predictions"]:
        print(f"warning: {result['num_missing_predictions']} of {result['num_queries']} ground-truth queries "
              "have no prediction (counted as misses)", file=sys.stderr)
    return 0


def define_flags() -> None:
    """Defines the CLI flags (called only when run as a script)."""
    from absl import flags  # pylint: disable=g-import-not-at-top
    flags.DEFINE_enum("protocol", None, sorted(metrics_lib.PROTOCOLS), "Evaluation protocol.")
    flags.DEFINE_string("predictions", None, "Predictions JSONL file.")
    flags.DEFINE_string("ground_truth", None, "Ground-truth JSONL file.")
    flags.DEFINE_string("output", None, "Optional JSON output file.")
    flags.mark_flags_as_required(["protocol", "predictions", "ground_truth"])


if __name__ == "__main__":
    from absl import app  # pylint: disable=g-import-not-at-top
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
