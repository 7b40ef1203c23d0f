r"""Tiny configs of every model for tests and smoke runs on CPU (seconds, not minutes).

Command:
  python -m jvmr.main --config=configs/test.py --workdir=/tmp/jvmr_test           # CMIN
  python -m jvmr.main --config=configs/test.py:cimha --workdir=/tmp/jvmr_test_cimha  # or reloclnet, ms2d
"""

from configs import cimha, cmin, ms2d, reloclnet

MODELS = ("cmin", "cimha", "reloclnet", "ms2d")


def _tiny_loop(config) -> None:
    config.batch_size = 8
    config.num_train_steps = 6
    config.log_every_steps = 2
    config.eval_every_steps = 3
    config.checkpoint_every_steps = 3
    config.max_checkpoints_to_keep = 2
    config.optimizer.warmup_steps = 2
    config.eval.batch_size = 16
    config.eval.num_timelines = 0  # pictures cost seconds; tests/test_report.py turns them on


def _tiny_world(synth, feature_dim: int = 16) -> None:
    synth.feature_dim = feature_dim
    synth.parser = "gold"  # The grammar's own trees: no spaCy load in the smoke tests.


def get_config(arg: str | None = None):
    """The tiny config of model ``arg`` (default CMIN) on a tiny embedded benchmark."""
    name = arg or "cmin"
    if name not in MODELS:
        raise ValueError(f"configs/test.py:{name}: choose one of {MODELS}")
    config = {"cmin": cmin, "cimha": cimha, "reloclnet": reloclnet, "ms2d": ms2d}[name].get_config()
    _tiny_loop(config)
    synth = config.dataset.synthetic
    _tiny_world(synth)
    if name in ("cmin", "cimha", "ms2d"):
        config.dataset.max_video_len = 32
        config.dataset.max_query_len = 16
        synth.num_train, synth.num_val, synth.num_test, synth.num_test_novel, synth.num_test_paraphrase = (
            120, 24, 24, 16, 16)
        synth.min_clips, synth.max_clips = 20, 60  # Longer than the grid too: exercises resampling.
    if name == "cmin":
        config.model.update(dict(word_dim=16, d_model=16, num_heads=2, num_attn_layers=1, num_gcn_layers=1,
                                 anchor_widths=(2, 4, 8),
                                 fusion_chunk_rows=96))  # 3 chunks of the 256 clips of a batch: exercised sharded
    elif name == "cimha":
        config.model.update(dict(word_dim=16, d_model=16, num_heads=2, ffn_dim=16, lstm_hidden=8, mlp_dim=16,
                                 num_candidates=20))
    elif name == "ms2d":
        config.dataset.max_video_len = 16
        config.model.update(dict(word_dim=8, hidden_size=8, scales=(1, 2), num_proposals=3, caption_hidden=8))
    else:  # reloclnet: a tiny corpus
        config.model.update(dict(hidden_size=16, word_dim=16, num_heads=2))
        config.batch_size = 16
        config.eval.batch_size = 32
        synth.num_train, synth.num_val, synth.num_test = 90, 30, 60
        synth.max_clips = 64
        config.dataset.corpus.subtitle_dim = 8
    return config
