"""Keys shared by every model's config (``get_base_config``) and the dataset presets."""

import dataclasses

import ml_collections

from jvmr.data import synthetic


def get_base_config() -> ml_collections.ConfigDict:
    """The keys every model config has; model configs fill in ``model`` and override the rest."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Training loop.
    config.batch_size = 32  # Global batch size: divisible by the number of devices.
    config.num_train_steps = 1000
    config.log_every_steps = 100
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.max_checkpoints_to_keep = 3
    # 'jit': one jitted step with the batch sharded over a ('data',) mesh; 'pmap': jax.pmap.
    config.parallelism = "jit"

    config.model = ml_collections.ConfigDict()
    config.model.name = ""

    config.loss = ml_collections.ConfigDict()

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "synthetic"
    config.dataset.data_dir = ""  # Empty: WORKDIR/data (the synthetic benchmark is built there).
    config.dataset.feature_dim = 128
    config.dataset.max_video_len = 64  # T, the model's clip grid.
    config.dataset.max_query_len = 20  # L.
    config.dataset.max_gt_spans = 4
    config.dataset.video_sampling = "pad"  # 'pad' (mask) or 'resample' (mean-pool to T clips).
    config.dataset.normalize_features = False
    config.dataset.shuffle_buffer = 10_000
    config.dataset.train_split = "train"
    config.dataset.eval_splits = ("val", "test", "test_novel")
    # jvmr.data.synthetic.SyntheticConfig (seed, sizes, difficulty) of the embedded benchmark;
    # its feature_dim is dataset.feature_dim.
    config.dataset.synthetic = ml_collections.ConfigDict(
        {k: v for k, v in dataclasses.asdict(synthetic.SyntheticConfig()).items() if k != "feature_dim"})

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 0.0  # L2 added to the gradient (torch.optim.Adam style).
    config.optimizer.grad_clip_norm = 0.0  # 0 disables clipping.
    # 'inverse_sqrt' (fairseq: linear warm-up from warmup_init_lr, then lr * sqrt(warmup / step)),
    # 'constant' (after warm-up) or 'cosine'.
    config.optimizer.schedule = "inverse_sqrt"
    config.optimizer.warmup_init_lr = 0.0
    config.optimizer.warmup_steps = 0

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 128
    config.eval.ks = (1, 5)
    config.eval.iou_thresholds = (0.1, 0.3, 0.5, 0.7)
    config.eval.nms_threshold = 0.5  # NMS over candidate moments before R@k (<= 0: plain top-k).
    config.eval.iou_comparison = ">="
    config.eval.write_predictions = True
    return config
