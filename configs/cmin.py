r"""CMIN (Zhang et al., SIGIR 2019) on the embedded synthetic benchmark.

Command:
    python -m jvmr.main --config=configs/cmin.py --workdir=/tmp/cmin

Ablations of the paper (Tables 4-5) and released-code variants are switches:
    --config.model.use_gcn=False            # w/o GCN
    --config.model.use_self_attention=False # w/o SA
    --config.model.use_cross_gate=False     # w/o CG
    --config.model.fusion=concat            # w/o BF (also what the released code does)
    --config.model.num_gcn_layers=N         # Figures 4-5
    --config.model.attention_window=3       # released code: local self-attention
    --config.model.gcn_placement=before_rnn # released code: GCN on word embeddings
    --config.model.gcn_gate_input=transformed  # released code: vector gates from W_dir h_j
    --config.model.use_gates=False          # the seed's ungated syntactic GCN
    --config.loss.label_mode=scaled         # released code: IoU labels rescaled by the max IoU
    --config.loss.reg_mode=released         # released code: 1e-3 * SmoothL1 at the best anchor, in clips
    --config.optimizer.name=adam            # Adam with an L2 term instead of the released decoupled decay
    --config.model.query_blind=True         # sanity baseline: the model never sees the query

Real datasets (built by ``python -m data_prep.build``), with the released code's
hyperparameters (ikuinen/CMIN_moment_retrieval README commands and main.py):
    python -m jvmr.main --config=configs/cmin.py:activitynet_captions \
        --config.dataset.data_dir=DATA_DIR --workdir=/tmp/cmin_anet
    (also :tacos and :charades_sta; CMIN published no Charades-STA setting, so it
    uses the ActivityNet one on Charades' 64-clip grid.)

The released code's model and losses in one switch, alone or after a preset (what
benchmarks/train_step.py times against the official code):
    --config=configs/cmin.py:activitynet_captions,released
"""

import math

from configs import common, datasets

# Released code: 200-frame grid, anchors in grid units, lr / warm-up / weight
# decay / batch / epochs per dataset; d_model 512, 300-d GloVe words, 4 heads,
# dropout 0.2. Training sizes (queries) turn epochs into steps.
_PRESETS = {
    "activitynet_captions": dict(anchor_widths=(16, 32, 64, 96, 128, 160, 192), learning_rate=8e-4,
                                 warmup_init_lr=1e-6, weight_decay=1e-7, batch_size=128, epochs=10,
                                 num_train=37_421),
    "tacos": dict(anchor_widths=(6, 18, 32), learning_rate=4e-4, warmup_init_lr=1e-7, weight_decay=1e-8,
                  batch_size=64, epochs=40, num_train=9_790),
    "charades_sta": dict(anchor_widths=(4, 8, 12, 16, 24, 32), learning_rate=8e-4, warmup_init_lr=1e-6,
                         weight_decay=1e-7, batch_size=128, epochs=10, num_train=12_408),
}


def _apply_preset(config, name: str) -> None:
    preset = _PRESETS[name]
    config.dataset = datasets.dataset_config(name)
    if name != "charades_sta":
        config.dataset.max_video_len = 200  # released: max_num_frames 200, mean-pooled
    config.dataset.video_sampling = "resample"
    config.dataset.max_query_len = 20  # released: max_num_words 20
    config.dataset.pretrained_embeddings = True  # GloVe 300-d (data_prep --glove)
    config.model.freeze_embeddings = True  # released: fixed GloVe vectors (no word table is trained)
    config.model.word_dim = 300
    config.model.d_model = 512
    config.model.num_heads = 4
    config.model.dropout = 0.2
    # The paper's full bilinear fusion with d = 512 would hold 512^3 weights; its
    # output width stays at 64 (fusion_dim) so the [B, T, F, D] contraction fits.
    config.model.fusion_dim = 64
    # Its [B*T, F, D] intermediate (3.4 GB at batch 128) goes through the backward pass in
    # rematerialised chunks of 2048 clips (268 MB each) instead.
    config.model.fusion_chunk_rows = 2048
    config.model.anchor_widths = preset["anchor_widths"]
    config.optimizer.learning_rate = preset["learning_rate"]
    config.optimizer.warmup_init_lr = preset["warmup_init_lr"]
    config.optimizer.weight_decay = preset["weight_decay"]
    config.batch_size = preset["batch_size"]
    config.eval.batch_size = 128
    config.num_train_steps = preset["epochs"] * math.ceil(preset["num_train"] / preset["batch_size"])
    config.eval_every_steps = config.num_train_steps // preset["epochs"]  # once per epoch
    config.checkpoint_every_steps = config.eval_every_steps


# The released code's choices where it differs from the paper (each also a switch of its own).
RELEASED = {
    "model.fusion": "concat",
    "model.attention_window": 3,
    "model.gcn_placement": "before_rnn",
    "model.gcn_gate_input": "transformed",
    "loss.label_mode": "scaled",
    "loss.reg_mode": "released",
}


def _apply_released(config) -> None:
    for key, value in RELEASED.items():
        block, name = key.split(".")
        config[block][name] = value


def get_config(arg: str | None = None):
    """The embedded-benchmark config; ``arg`` is a dataset preset (``configs/cmin.py:tacos``), ``released``
    (the released code's model and losses, :data:`RELEASED`), or both (``activitynet_captions,released``)."""
    config = common.get_base_config()

    config.model.name = "cmin"
    # The paper uses 300-d GloVe words and d = 512; the benchmark needs less, and a full
    # bilinear fusion costs d^3 per clip, so the CPU default is d = 64.
    config.model.word_dim = 64
    config.model.d_model = 64
    config.model.num_heads = 4
    config.model.num_attn_layers = 2
    config.model.num_gcn_layers = 2
    config.model.dropout = 0.1
    # Widths in clips of the 64-clip grid, for moments of 6-60% of the video (the released code
    # uses [16..192] on 200 for ActivityNet and [6, 18, 32] for TACoS).
    config.model.anchor_widths = (4, 6, 9, 13, 18, 26, 36, 50)
    config.model.use_gcn = True
    config.model.use_self_attention = True
    config.model.use_cross_gate = True
    config.model.fusion = "bilinear"
    config.model.fusion_dim = 64
    config.model.fusion_chunk_rows = 0  # rows per rematerialised chunk of the bilinear fusion (0: all)
    config.model.attention_window = 0
    config.model.gcn_placement = "after_rnn"
    config.model.gcn_gate_input = "input"
    config.model.use_gates = True
    config.model.fused_rnn = True
    config.model.freeze_embeddings = False
    config.model.query_blind = False

    config.loss.label_mode = "iou"
    config.loss.reg_mode = "paper"
    config.loss.reg_weight = 1.0
    config.loss.reg_iou_threshold = 0.5

    # Adam + fairseq inverse_sqrt schedule with linear warm-up, as the released code. Its fairseq
    # Adam decays weights decoupled from the gradient, p -= lr * weight_decay * p (AdamW), not as an
    # L2 term; optax.adamw is chain(scale_by_adam, add_decayed_weights(wd), scale_by_learning_rate(lr))
    # (optax 0.2.8, optax/_src/alias.py), so it also scales the decay by the (scheduled) learning rate.
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 2e-3  # Released code: 8e-4 (ActivityNet), 4e-4 (TACoS).
    config.optimizer.warmup_init_lr = 1e-6
    config.optimizer.warmup_steps = 300
    config.optimizer.weight_decay = 1e-7

    config.batch_size = 64
    config.num_train_steps = 4000  # About 10 minutes on 2 CPU cores (README).
    config.eval_every_steps = 2000
    config.checkpoint_every_steps = 1000

    names = [name for name in (arg or "").split(",") if name]
    unknown = [name for name in names if name not in _PRESETS and name != "released"]
    if unknown or sum(name in _PRESETS for name in names) > 1:
        raise ValueError(f"configs/cmin.py takes one of the presets {sorted(_PRESETS)} and/or 'released', "
                         f"not {arg!r}")
    for name in names:
        if name in _PRESETS:
            _apply_preset(config, name)
    if "released" in names:
        _apply_released(config)
    return config
