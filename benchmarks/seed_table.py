r"""Mean ± sd over seeds of finished runs (and baseline reports), as the README's Markdown tables.

    python -m benchmarks.seed_table --split=test \
        --run "CMIN=/tmp/bench/cmin_full_s*" --run "CMIN w/o GCN=/tmp/bench/cmin_nogcn_s*" \
        --baselines "/tmp/bench/baselines_s*.json" [--per_type] [--column=R@1,IoU=0.5 ...]

A run is a workdir of ``python -m jvmr.main``; its numbers are the last row of
its ``eval_metrics.jsonl`` for the split. A baselines report is the JSON of
``python -m jvmr.baselines --output``; each of its baselines becomes a row. The
sd is the sample standard deviation (n - 1) over the matched runs; a row says
how many seeds it holds when that is not 3.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
from typing import Iterable, Sequence

import numpy as np

DEFAULT_COLUMNS = ("R@1,IoU=0.3", "R@1,IoU=0.5", "R@1,IoU=0.7", "R@5,IoU=0.5", "mIoU")


def last_eval(workdir: str, split: str) -> dict[str, float]:
    """The last ``eval_metrics.jsonl`` row of ``split`` in a workdir."""
    path = os.path.join(workdir, "eval_metrics.jsonl")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("split") == split:
                rows.append(row)
    if not rows:
        raise ValueError(f"{path} has no evaluation of split {split!r}")
    return max(rows, key=lambda r: r["step"])


def mean_sd(values: Sequence[float], decimals: int = 1) -> str:
    a = np.asarray(values, np.float64)
    if a.size == 1:
        return f"{a[0]:.{decimals}f}"
    return f"{a.mean():.{decimals}f} ± {a.std(ddof=1):.{decimals}f}"


def rows_from_runs(specs: Iterable[str], split: str) -> dict[str, list[dict[str, float]]]:
    rows = {}
    for spec in specs:
        label, pattern = spec.split("=", 1)
        dirs = sorted(glob.glob(pattern))
        if not dirs:
            raise ValueError(f"--run {spec!r} matches no workdir")
        rows[label] = [last_eval(d, split) for d in dirs]
    return rows


def rows_from_baselines(patterns: Iterable[str], split: str) -> dict[str, list[dict[str, float]]]:
    rows: dict[str, list] = collections.defaultdict(list)
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            with open(path, encoding="utf-8") as f:
                report = json.load(f)
            for name, by_split in report.items():
                if split in by_split:
                    rows[name].append(by_split[split])
    return dict(rows)


def table(rows: dict[str, list[dict[str, float]]], columns: Sequence[str], decimals: int = 1) -> str:
    """A Markdown table: one row per label, mean ± sd of each column over its runs."""
    header = [c.replace("/R@1,IoU=0.5", "") for c in columns]
    lines = ["| method | " + " | ".join(header) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, runs in rows.items():
        note = f" ({len(runs)} seed{'s' if len(runs) > 1 else ''})" if len(runs) != 3 else ""
        cells = [mean_sd([r[c] for r in runs], decimals) if all(c in r for r in runs) else "–" for c in columns]
        lines.append(f"| {label}{note} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test")
    parser.add_argument("--run", action="append", default=[], help="LABEL=GLOB of workdirs (repeatable)")
    parser.add_argument("--baselines", action="append", default=[], help="GLOB of jvmr.baselines JSON reports")
    parser.add_argument("--column", action="append", default=[],
                        help=f"metric key of a column (repeatable; default {', '.join(DEFAULT_COLUMNS)})")
    parser.add_argument("--per_type", action="store_true", help="columns: R@1,IoU=0.5 of every query type")
    parser.add_argument("--by_split", default="",
                        help="comma-separated splits as the columns, of one metric (--column, default R@1,IoU=0.5)")
    parser.add_argument("--decimals", type=int, default=1, help="digits after the point")
    args = parser.parse_args(argv)
    if args.by_split:
        metric = args.column[0] if args.column else "R@1,IoU=0.5"
        splits = args.by_split.split(",")
        merged: dict[str, list[dict[str, float]]] = {}
        for split in splits:
            rows = {**rows_from_baselines(args.baselines, split), **rows_from_runs(args.run, split)}
            for label, runs in rows.items():
                merged.setdefault(label, [{} for _ in runs])
                for row, run in zip(merged[label], runs):
                    row[split] = run[metric]
        print(table(merged, splits, args.decimals))
        return
    rows = {**rows_from_baselines(args.baselines, args.split), **rows_from_runs(args.run, args.split)}
    if args.per_type:
        types = sorted({k.split("/")[0] for runs in rows.values() for r in runs for k in r if "/" in k})
        columns = [f"{t}/R@1,IoU=0.5" for t in types]
    else:
        columns = args.column or list(DEFAULT_COLUMNS)
    print(table(rows, columns, args.decimals))


if __name__ == "__main__":
    main()
