"""The models learn the embedded benchmark: grounding beats every query-blind baseline by a wide margin.

The default benchmark needs thousands of steps (README); these runs use an easier
setting of the same generator (4 x 4 compositions, one surface form each, little
noise, simple and ordinal queries, 24-32 clips on a 32-clip grid) so that
grounding is learned within a CI budget, and compare the model with the
query-blind ceiling measured on the same data (``random_event``).
"""

import json

import pytest

from configs import cimha as cimha_config
from configs import cmin as cmin_config
from jvmr import baselines, train

EASY = dict(parser="gold", num_train=3000, num_val=300, num_test=24, num_test_novel=24, num_test_paraphrase=24,
            num_actions=4, num_objects=4, heldout_blocks=1, surface_variety=False,
            clip_noise=0.1, video_noise=0.0, instance_noise=0.0, view_jitter=0.0, interaction=0.5,
            near_miss_prob=0.0, annotation_jitter=0.0, gap_prob=1.0, min_clips=24, max_clips=32, min_events=5,
            multi_weight=0.0, relation_weight=0.0, then_weight=0.0, between_weight=0.0, nested_weight=0.0,
            min_alternatives=0)


def _learns(config, tmp_path, steps):
    config.dataset.synthetic.update(EASY)
    config.dataset.max_video_len = 32
    if config.model.name == "cmin":
        config.model.anchor_widths = (2, 3, 5, 7, 9, 13, 18, 25)  # 6-60% of the 32-clip grid.
    config.dataset.eval_splits = ("val",)
    config.num_train_steps = steps
    config.eval_every_steps = steps
    config.checkpoint_every_steps = steps
    config.log_every_steps = steps // 4
    config.eval.write_predictions = False
    _, final = train.train_and_evaluate(config, str(tmp_path))
    blind = baselines.run_baselines(str(tmp_path / "data"), ["val"], num_draws=20)
    chance = max(blind[name]["val"]["R@1,IoU=0.5"] for name in ("random_span", "fixed_prior_span", "random_event"))
    with open(tmp_path / "train_metrics.jsonl") as f:
        losses = [json.loads(line)["loss"] for line in f]
    return final["val"], chance, losses


@pytest.mark.parametrize("name", ["cimha", "cmin"])
def test_model_learns_to_ground_the_query(name, tmp_path):
    config = (cimha_config if name == "cimha" else cmin_config).get_config()
    got, chance, losses = _learns(config, tmp_path, steps=600 if name == "cimha" else 800)
    assert losses[-1] < 0.7 * losses[0], losses
    assert got["R@1,IoU=0.5"] > 2.5 * chance, (got, chance)
    assert got["simple/R@1,IoU=0.5"] > 2.5 * chance  # The composition is read, not only the ordinal.
