"""benchmarks.bf16_trajectory: a tiny model trained in float32 and bfloat16 from the same start."""

from benchmarks import bf16_trajectory
from configs import test as test_config


def test_bfloat16_run_tracks_float32_within_the_stated_tolerance(tmp_path):
    config = test_config.get_config("cimha")
    result = bf16_trajectory.compare(config, str(tmp_path), steps=8, log_every=2, tolerance=0.05)
    assert result["logged_steps"] == [2, 4, 6, 8]
    f32, bf16 = result["loss_float32"], result["loss_bfloat16"]
    assert f32 != bf16  # the second run really computed in bfloat16 ...
    assert result["within_tolerance"], result  # ... and followed the same course
    assert abs(result["max_rel_diff"] - max(abs(b - a) / abs(a) for a, b in zip(f32, bf16))) < 1e-4
    assert "val" in result["eval"]  # every evaluated split, both runs, the same metrics
    for runs in result["eval"].values():
        assert set(runs) == {"float32", "bfloat16"} and set(runs["float32"]) == set(runs["bfloat16"])
