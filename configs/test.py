r"""A tiny CMIN config for tests and smoke runs on CPU (seconds, not minutes).

Command:
  python -m jvmr.main --config=configs/test.py --workdir=/tmp/jvmr_test
"""

from configs import cmin


def get_config():
    config = cmin.get_config()
    config.batch_size = 8
    config.num_train_steps = 6
    config.log_every_steps = 2
    config.eval_every_steps = 3
    config.checkpoint_every_steps = 3
    config.max_checkpoints_to_keep = 2
    config.optimizer.warmup_steps = 2

    config.model.word_dim = 16
    config.model.d_model = 16
    config.model.num_heads = 2
    config.model.num_attn_layers = 1
    config.model.num_gcn_layers = 1
    config.model.anchor_widths = (2, 4, 8)

    config.dataset.synthetic.feature_dim = 16
    config.dataset.max_video_len = 32
    config.dataset.max_query_len = 16
    synth = config.dataset.synthetic
    synth.num_train, synth.num_val, synth.num_test, synth.num_test_novel, synth.num_test_paraphrase = (
        120, 24, 24, 16, 16)
    synth.min_clips, synth.max_clips = 20, 60  # Longer than the grid too: exercises resampling.
    synth.parser = "gold"  # The grammar's own trees: no spaCy load in the smoke tests.
    config.eval.batch_size = 16
    return config
