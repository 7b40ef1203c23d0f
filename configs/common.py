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
    # An update with a non-finite gradient is skipped on device; this many in a row stop the run.
    config.max_nonfinite_updates = 10
    # 'jit': one jitted step over a (data x model) device mesh (jvmr.sharding); 'pmap': jax.pmap over the
    # local devices with replicated state.
    config.parallelism = "jit"
    config.sharding = ml_collections.ConfigDict()
    config.sharding.data = -1  # mesh shape: data * model = jax.device_count(); -1 takes the rest
    config.sharding.model = 1  # > 1: attention heads, inner layers, fusion kernels split over devices
    # (logical axis, mesh axis or None) pairs; empty = jvmr.sharding.DEFAULT_RULES.
    config.sharding.rules = ()
    # Several processes (jvmr.sharding.initialize_distributed): coordinator 'host:port' of process 0 with
    # num_processes and process_id, or auto=True on a TPU pod / SLURM cluster. Every process runs the same
    # command; each reads its share of the training data; only process 0 writes logs and metric files.
    config.distributed = ml_collections.ConfigDict()
    config.distributed.coordinator_address = ""
    config.distributed.num_processes = 0
    config.distributed.process_id = -1
    config.distributed.auto = False
    # 'bfloat16': forward and backward in bfloat16 (parameters, optimizer state and losses stay float32).
    config.compute_dtype = "float32"
    # k > 1: each step runs k micro-batches of batch_size / k and averages their gradients.
    config.accumulation_steps = 1

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
    # Examples of the first evaluation split drawn into TensorBoard (timelines/...) at each evaluation.
    config.eval.num_timelines = 3
    return config
