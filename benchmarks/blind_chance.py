r"""Is a query-blind run at chance? Split its R@1 into "on an event" x "the asked one".

    python -m benchmarks.blind_chance --run=/tmp/cmin_blind --data_dir=/tmp/cmin_blind/data \
        [--splits=test,test_novel] [--step=N] [--threshold=0.5]

``random_event`` bounds a query-blind model that segments perfectly. A trained
query-blind model segments imperfectly, so its R@1 sits below ``random_event``
even when it has found no way to guess the target. This splits, per split of
the embedded benchmark, each top-1 prediction of the run (its
``predictions/{split}_step{N}.jsonl``, the last step by default) into

* ``on_event``: the share of queries whose top-1 span has IoU >= threshold with
  *some* annotated event of the video (the segmentation); and
* ``asked_given_on_event``: among those, the share whose matched events include
  a ground-truth span of the query.

Without a leak the second number is the chance of naming the asked event among
the video's events, which is what ``random_event`` measures with perfect
segmentation (``random_event``'s R@1 / its own ``on_event``, also printed).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
from typing import Sequence

import numpy as np

from jvmr import metrics
from jvmr.data import synthetic


def split_top1(predictions: Sequence[dict], videos: Sequence[dict], threshold: float = 0.5) -> dict[str, float]:
    """``on_event``, ``asked_given_on_event`` and ``R@1`` (percent) of top-1 predictions.

    Args:
      predictions: prediction records ``{"qid", "vid", "pred_relevant_windows": [[s, e, score], ...]}``
        (best first).
      videos: ``synthetic.read_videos`` records (annotated spans ``gt_start`` / ``gt_end``).
      threshold: IoU threshold.

    Returns:
      dict with ``on_event``, ``asked_given_on_event``, ``R@1`` and ``num_queries``.
    """
    by_vid = {v["vid"]: v for v in videos}
    on_event = hits = 0
    for p in predictions:
        video = by_vid.get(p["vid"])
        if video is None:
            raise ValueError(f"prediction {p['qid']!r}: video {p['vid']!r} is not in the benchmark's records")
        query = next((q for q in video["queries"] if q["qid"] == p["qid"]), None)
        if query is None:
            raise ValueError(f"prediction {p['qid']!r}: no such query in video {p['vid']!r}")
        if not p["pred_relevant_windows"]:
            continue
        top = np.asarray(p["pred_relevant_windows"][0][:2], np.float64)
        events = np.asarray([(e["gt_start"], e["gt_end"]) for e in video["events"]], np.float64)
        matched = metrics.temporal_iou(top[None], events) >= threshold
        if query.get("hull"):  # One span over several events: only that hull is an answer.
            gt = events[query["targets"]]
            asked = metrics.temporal_iou(top, np.array([gt[:, 0].min(), gt[:, 1].max()])) >= threshold
        else:
            asked = bool(matched[query["targets"]].any())
        on_event += bool(matched.any() or asked)
        hits += bool(asked)
    n = len(predictions)
    if not n:
        raise ValueError("no predictions")
    return {"on_event": 100.0 * on_event / n, "asked_given_on_event": 100.0 * hits / max(on_event, 1),
            "R@1": 100.0 * hits / n, "num_queries": n}


def last_step(run: str, split: str) -> int:
    steps = [int(m.group(1)) for path in glob.glob(os.path.join(run, "predictions", f"{split}_step*.jsonl"))
             if (m := re.fullmatch(rf"{re.escape(split)}_step(\d+)\.jsonl", os.path.basename(path)))]
    if not steps:
        raise FileNotFoundError(f"{run}/predictions has no {split}_step*.jsonl (was eval.write_predictions on?)")
    return max(steps)


def random_event_top1(videos: Sequence[dict], threshold: float = 0.5, draws: int = 20, seed: int = 0):
    """The same split for ``random_event`` (a random true event as the top-1), averaged over draws."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(draws):
        predictions = []
        for video in videos:
            for q in video["queries"]:
                e = video["events"][rng.integers(len(video["events"]))]
                predictions.append({"qid": q["qid"], "vid": video["vid"],
                                    "pred_relevant_windows": [[e["start"], e["end"], 1.0]]})
        rows.append(split_top1(predictions, videos, threshold))
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="workdir of a query-blind run (with predictions/)")
    parser.add_argument("--data_dir", required=True, help="its embedded-benchmark data directory")
    parser.add_argument("--splits", default="test,test_novel")
    parser.add_argument("--step", type=int, default=0, help="evaluation step (default: the last)")
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args(argv)
    print(f"| split | run R@1 | run on_event | run asked_given_on_event | random_event R@1 | "
          f"random_event asked_given_on_event |\n|---|---|---|---|---|---|")
    for split in args.splits.split(","):
        videos = synthetic.read_videos(args.data_dir, split)
        step = args.step or last_step(args.run, split)
        with open(os.path.join(args.run, "predictions", f"{split}_step{step}.jsonl"), encoding="utf-8") as f:
            run = split_top1([json.loads(line) for line in f if line.strip()], videos, args.threshold)
        ref = random_event_top1(videos, args.threshold)
        print(f"| {split} | {run['R@1']:.1f} | {run['on_event']:.1f} | {run['asked_given_on_event']:.1f} | "
              f"{ref['R@1']:.1f} | {ref['asked_given_on_event']:.1f} |")


if __name__ == "__main__":
    main()
