"""Entry point: ``python -m jvmr.main --config=configs/cmin.py --workdir=/tmp/cmin``.

This file is intentionally kept short; the logic lives in ``jvmr.train`` where it
can be tested and imported. Config values are overridden on the command line,
e.g. ``--config.batch_size=16 --config.model.use_gcn=False``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, predictions and TensorBoard logs.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
    import tensorflow as tf

    from jvmr import sharding

    # tf.data only feeds the host; keep TF off any accelerator JAX uses.
    tf.config.set_visible_devices([], "GPU")
    sharding.initialize_distributed(FLAGS.config)  # several processes (pods, clusters): before any computation
    logging.info("JAX process %d/%d, local devices: %s", jax.process_index(), jax.process_count(),
                 jax.local_devices())
    from jvmr import train

    _, final = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if jax.process_index() == 0:
        for split, result in final.items():
            print(f"== {split} ==")
            print(train.metrics_lib.format_metrics_table(result))


if __name__ == "__main__":
    app.run(main)
