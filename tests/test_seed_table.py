"""Tests of benchmarks/seed_table.py (mean ± sd over seeds for README tables)."""

import json

import pytest

from benchmarks import seed_table


def _run(tmp_path, name, rows):
    d = tmp_path / name
    d.mkdir()
    with open(d / "eval_metrics.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return d


def test_last_step_mean_and_sample_sd(tmp_path, capsys):
    for seed, value in enumerate((60.0, 70.0, 80.0)):
        _run(tmp_path, f"cmin_s{seed}", [
            {"step": 1000, "split": "test", "R@1,IoU=0.5": 1.0, "simple/R@1,IoU=0.5": 1.0},
            {"step": 2000, "split": "test", "R@1,IoU=0.5": value, "simple/R@1,IoU=0.5": value + 1},
            {"step": 2000, "split": "val", "R@1,IoU=0.5": 0.0}])
    with open(tmp_path / "baselines_s0.json", "w") as f:
        json.dump({"random_event": {"test": {"R@1,IoU=0.5": 20.0}}}, f)
    seed_table.main(["--split=test", f"--run=CMIN={tmp_path}/cmin_s*", f"--baselines={tmp_path}/baselines_s*.json",
                     "--column=R@1,IoU=0.5"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| method | R@1,IoU=0.5 |"
    assert out[2] == "| random_event (1 seed) | 20.0 |"
    assert out[3] == "| CMIN | 70.0 ± 10.0 |"  # last step of each run; sample sd (n - 1)
    seed_table.main(["--split=test", f"--run=CMIN={tmp_path}/cmin_s*", "--per_type"])
    assert capsys.readouterr().out.splitlines()[-1] == "| CMIN | 71.0 ± 10.0 |"
    seed_table.main([f"--run=CMIN={tmp_path}/cmin_s*", "--by_split=val,test"])
    assert capsys.readouterr().out.splitlines() == ["| method | val | test |", "|---|---|---|",
                                                     "| CMIN | 0.0 ± 0.0 | 70.0 ± 10.0 |"]
    seed_table.main(["--split=test", f"--run=CMIN={tmp_path}/cmin_s*", "--column=R@1,IoU=0.5", "--decimals=2"])
    assert capsys.readouterr().out.splitlines()[-1] == "| CMIN | 70.00 ± 10.00 |"


def test_missing_runs_and_splits_are_errors(tmp_path):
    with pytest.raises(ValueError, match="matches no workdir"):
        seed_table.main([f"--run=X={tmp_path}/nothing*"])
    _run(tmp_path, "r", [{"step": 1, "split": "val", "R@1,IoU=0.5": 1.0}])
    with pytest.raises(ValueError, match="no evaluation of split 'test'"):
        seed_table.main([f"--run=X={tmp_path}/r"])
