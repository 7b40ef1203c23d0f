"""Config files: every dataset block names a known protocol; model presets load and resolve."""

import pytest

from configs import cimha, cmin, common, datasets
from jvmr import metrics


@pytest.mark.parametrize("name", datasets.DATASET_NAMES)
def test_dataset_blocks_name_their_protocol(name):
    block = datasets.dataset_config(name)
    assert block.name == name
    assert block.protocol == metrics.DATASET_PROTOCOLS[name] and block.protocol in metrics.PROTOCOLS
    assert block.eval_splits and block.train_split not in block.eval_splits
    assert block.feature_dim == 0  # read from the manifest
    # The base block defers both to run time (so --config.dataset.name=X alone works).
    lazy = datasets.dataset_config(name, explicit=False)
    assert lazy.protocol == "" and lazy.eval_splits == ()
    assert metrics.protocol_for_dataset(name, lazy.protocol).name == block.protocol


def test_papers_protocols():
    # 2D-TAN-lineage tables (CMIN, CI-MHA) on the grounding datasets; TVRetrieval's eval on TVR.
    assert [metrics.DATASET_PROTOCOLS[n] for n in ("charades_sta", "activitynet_captions", "tacos", "tvr")] == [
        "2dtan", "2dtan", "2dtan", "tvr"]
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.dataset_config("didemo")
    with pytest.raises(ValueError, match="set dataset.protocol"):
        metrics.protocol_for_dataset("didemo")


def test_base_config_is_the_synthetic_benchmark():
    config = common.get_base_config()
    assert config.dataset.name == "synthetic" and config.dataset.synthetic.feature_dim == 128
    assert not hasattr(config.eval, "nms_threshold")  # scoring is the protocol's


@pytest.mark.parametrize("preset", ["activitynet_captions", "tacos", "charades_sta"])
def test_cmin_presets(preset):
    config = cmin.get_config(preset)
    assert config.dataset.name == preset and config.dataset.protocol == "2dtan"
    assert config.model.d_model == 512 and config.model.word_dim == 300 and config.dataset.pretrained_embeddings
    assert config.dataset.video_sampling == "resample"
    assert max(config.model.anchor_widths) <= config.dataset.max_video_len
    assert config.num_train_steps > 0 and config.eval_every_steps > 0
    with pytest.raises(ValueError, match="presets"):
        cmin.get_config("tvr_typo")


def test_cmin_released_hyperparameters():
    anet, tacos = cmin.get_config("activitynet_captions"), cmin.get_config("tacos")
    assert (anet.optimizer.learning_rate, anet.optimizer.weight_decay, anet.batch_size) == (8e-4, 1e-7, 128)
    assert (tacos.optimizer.learning_rate, tacos.optimizer.weight_decay, tacos.batch_size) == (4e-4, 1e-8, 64)
    assert anet.model.anchor_widths == (16, 32, 64, 96, 128, 160, 192) and tacos.model.anchor_widths == (6, 18, 32)
    assert anet.num_train_steps == 10 * 293 and tacos.num_train_steps == 40 * 153  # epochs x batches


@pytest.mark.parametrize("preset", ["charades_sta", "activitynet_captions", "tacos"])
def test_cimha_presets_use_the_papers_settings(preset):
    config = cimha.get_config(preset)
    assert config.dataset.name == preset and config.dataset.protocol == "2dtan"
    assert (config.dataset.max_query_len, config.dataset.max_video_len, config.batch_size) == (25, 128, 100)
    assert (config.optimizer.name, config.optimizer.learning_rate) == ("adam", 1e-4)
    assert config.model.d_model == 512 and config.model.word_dim == 300 and config.dataset.pretrained_embeddings
    default = cimha.get_config()
    assert default.dataset.name == "synthetic" and default.model.name == "cimha"
