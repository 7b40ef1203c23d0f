"""Tests of benchmarks/blind_chance.py: the query-blind chance read at a run's own segmentation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmarks import blind_chance
from jvmr.data import synthetic


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("blind"))
    cfg = synthetic.SyntheticConfig(parser="gold", num_train=60, num_val=30, num_test=600, num_test_novel=30,
                                    num_test_paraphrase=30)
    synthetic.build(data_dir, cfg)
    return data_dir, synthetic.read_videos(data_dir, "test")


def _predictions(records, pick):
    """One prediction per query, its top-1 span chosen by pick(video, query) -> (start, end)."""
    return [{"qid": q["qid"], "vid": v["vid"], "pred_relevant_windows": [[*pick(v, q), 1.0]]}
            for v in records for q in v["queries"]]


def _annotated(video, indices, hull):
    spans = [(video["events"][i]["gt_start"], video["events"][i]["gt_end"]) for i in indices]
    return (min(s for s, _ in spans), max(e for _, e in spans)) if hull else spans[0]


def test_oracle_and_wrong_event(videos):
    _, records = videos
    oracle = blind_chance.split_top1(_predictions(records, lambda v, q: _annotated(v, q["targets"], q["hull"])),
                                     records)
    assert oracle["R@1"] == 100.0 and oracle["on_event"] == 100.0 and oracle["asked_given_on_event"] == 100.0

    def other(v, q):
        i = next(i for i in range(len(v["events"])) if i not in q["targets"])
        return _annotated(v, [i], False)
    wrong = blind_chance.split_top1(_predictions(records, other), records)
    assert wrong["on_event"] == 100.0 and wrong["R@1"] < 2.0

    nowhere = blind_chance.split_top1(_predictions(records, lambda v, q: (0.0, 1e-3)), records)
    assert nowhere["R@1"] == 0.0 and nowhere["on_event"] == 0.0


def test_random_event_reads_chance(videos):
    _, records = videos
    # Independent expectation: a uniform event is one of the query's targets with probability |targets| / n.
    expected = 100.0 * np.mean([len(q["targets"]) / len(v["events"]) if not q["hull"] else 0.0
                                for v in records for q in v["queries"]])
    got = blind_chance.random_event_top1(records, draws=40)
    assert got["on_event"] > 99.0
    assert abs(got["asked_given_on_event"] - expected) < 2.0, (got, expected)
    assert 10.0 < expected < 40.0


def test_cli_uses_the_last_step(videos, tmp_path, capsys):
    data_dir, records = videos
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    for step, pick in ((100, lambda v, q: (0.0, 1e-3)), (2000, lambda v, q: _annotated(v, q["targets"], q["hull"]))):
        with open(run / "predictions" / f"test_step{step}.jsonl", "w") as f:
            f.writelines(json.dumps(p) + "\n" for p in _predictions(records, pick))
    blind_chance.main(["--run", str(run), "--data_dir", data_dir, "--splits", "test"])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| test |")]
    assert row and row[0].split("|")[2].strip() == "100.0"
    os.remove(run / "predictions" / "test_step100.jsonl")
    os.remove(run / "predictions" / "test_step2000.jsonl")
    with pytest.raises(FileNotFoundError, match="test_step"):
        blind_chance.main(["--run", str(run), "--data_dir", data_dir, "--splits", "test"])
