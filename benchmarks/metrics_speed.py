r"""Metric time of each evaluation protocol on Q queries x N scored candidates (numpy, CPU).

    python benchmarks/metrics_speed.py [--queries=20000] [--candidates=200] [--repeats=3]

Prints, per protocol, the best wall time of ``jvmr.metrics.evaluate_candidates``
(ranking, NMS / top-k, IoU, recall or mAP) over the repeats.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from jvmr import metrics


def make_inputs(num_q: int, num_c: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    duration = rng.uniform(20, 150, size=(num_q, 1))
    a = rng.uniform(0, 1, size=(num_q, num_c, 2)) * duration[..., None]
    spans = np.sort(a, axis=-1)
    scores = rng.normal(size=(num_q, num_c)).round(2)  # many ties
    g = np.sort(rng.uniform(0, 1, size=(num_q, 1, 2)), axis=-1) * duration[..., None]
    return spans, scores, g


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spans, scores, gt = make_inputs(args.queries, args.candidates)
    print(f"{args.queries} queries x {args.candidates} candidates")
    for name in metrics.PROTOCOLS:
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result, _ = metrics.evaluate_candidates(name, spans, scores, gt)
            best = min(best, time.perf_counter() - t0)
        headline = metrics.flat_metrics(result)[metrics.primary_metric_key(name)]
        print(f"{name:<12} {best:7.3f} s   ({metrics.primary_metric_key(name)} = {headline:.2f})")


if __name__ == "__main__":
    main()
