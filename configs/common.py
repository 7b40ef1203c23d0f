"""Keys shared by every model's config (``get_base_config``) and the dataset presets."""

import ml_collections

from configs import datasets


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

    # The embedded benchmark; configs.datasets has the other datasets' blocks
    # (model configs take them as ``--config=configs/MODEL.py:DATASET``).
    config.dataset = datasets.dataset_config("synthetic", explicit=False)

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 0.0  # L2 added to the gradient (torch.optim.Adam style).
    config.optimizer.decay_only_kernels = False  # adamw: no decay of biases / norms / 1-d params (BERT).
    config.optimizer.grad_clip_norm = 0.0  # 0 disables clipping.
    # 'inverse_sqrt' (fairseq: linear warm-up from warmup_init_lr, then lr * sqrt(warmup / step)),
    # 'constant' (after warm-up), 'cosine' or 'linear' (to 0 at the last step, BERT's warmup_linear).
    config.optimizer.schedule = "inverse_sqrt"
    config.optimizer.warmup_init_lr = 0.0
    config.optimizer.warmup_steps = 0

    # How candidates are scored is the protocol's (dataset.protocol, jvmr.metrics.PROTOCOLS).
    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 128
    config.eval.write_predictions = True
    # '' = the model's ('moment': each query in its own video; 'corpus': against the split's whole corpus).
    config.eval.evaluator = ""
    return config
