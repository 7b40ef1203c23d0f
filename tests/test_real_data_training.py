"""Training on a data_prep-built dataset: the manifest drives feature_dim, splits and the protocol."""

import json
import os

import numpy as np
import pytest

from configs import cmin
from configs import test as test_config
from data_prep import build
from jvmr import train

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.fixture(scope="module")
def tacos_dir(tmp_path_factory):
    """The first videos of the real TACoS train / test files, with fabricated 48-d C3D-like .npy features."""
    root = tmp_path_factory.mktemp("tacos")
    ann = root / "annotations"
    ann.mkdir()
    vids = []
    for split, n in (("train", 3), ("test", 1)):
        with open(os.path.join(FIXTURES, "tacos", f"{split}.json")) as f:
            data = json.load(f)
        keep = dict(list(data.items())[:n])
        vids += list(keep)
        with open(ann / f"{split}.json", "w") as f:
            json.dump(keep, f)
    feats = root / "features"
    feats.mkdir()
    rng = np.random.default_rng(0)
    for vid in vids:
        np.save(feats / f"{vid[:-4]}.npy", rng.standard_normal((40, 48), dtype=np.float32))
    out = str(root / "data")
    build.build(build.parse_args(["--dataset=tacos", f"--annotations={ann}", f"--features={feats}",
                                  f"--output_dir={out}", "--feature_dim=48", "--parser=none", "--no_progress"]))
    return out


def test_train_on_built_tacos(tacos_dir, tmp_path):
    config = test_config.get_config()
    config.dataset.name = "tacos"  # only the name and the directory: the rest comes from the manifest
    config.dataset.data_dir = tacos_dir
    config.num_train_steps = 4
    config.eval_every_steps = 100
    state, final = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 4 and list(final) == ["test"]
    row = [json.loads(line) for line in open(tmp_path / "eval_metrics.jsonl")][-1]
    assert row["protocol"] == "2dtan" and row["split"] == "test"
    assert row["R@1,IoU=0.3"] >= row["R@1,IoU=0.5"] >= row["R@1,IoU=0.7"] and row["R@5,IoU=0.5"] >= row["R@1,IoU=0.5"]
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["dataset"]["feature_dim"] == 48


def test_preset_needs_matching_vectors(tacos_dir, tmp_path):
    # The paper preset asks for GloVe vectors; a dataset built without --glove says how to get them.
    config = cmin.get_config("tacos")
    config.dataset.data_dir = tacos_dir
    with pytest.raises(ValueError, match=r"split\(s\) \['val'\] not in .* which has \['test', 'train'\]"):
        train.train_and_evaluate(config, str(tmp_path))
    config.dataset.eval_splits = ("test",)
    config.model.d_model, config.model.fusion_dim, config.batch_size = 16, 8, 8
    config.eval.batch_size = 8
    with pytest.raises(FileNotFoundError, match="--glove"):
        train.train_and_evaluate(config, str(tmp_path))
