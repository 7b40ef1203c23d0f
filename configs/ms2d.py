r"""MS-2D (Li et al., ICPR 2020): weakly supervised, the embedded benchmark by default, or a dataset preset.

Commands:
    python -m jvmr.main --config=configs/ms2d.py --workdir=/tmp/ms2d
    python -m jvmr.main --config=configs/ms2d.py:charades_sta --workdir=/tmp/ms2d_cha \
        --config.dataset.data_dir=DATA_DIR

Training reads no boundary (``jvmr.registry.ModelSpec.needs_labels``: the training
batches have no span keys) unless ``loss.supervision=full``.

Rows as switches:
    (default)                                   # MS-2D weak: reconstruction + pseudo labels + RG-BCE
    --config.loss.supervision=full              # the same network, fully supervised (2D-TAN's scaled-IoU BCE)
    --config.model.scales="(1,)"                # single scale (N_s = 1)
    --config.loss.use_pseudo_labels=False --config.model.mismatched_pairs=True   # MIL ranking instead

model keys (jvmr.models.ms2d.MS2D):
    word_dim, hidden_size        word vectors; d (text LSTM, clip projection, fused maps, 2D convolutions)
    scales                       strides r_j of the N_s scales (max_video_len must be a multiple of each)
    dense_lengths                sparse cell layout (0 = every cell; D: 2D-TAN-style dilation beyond D clips)
    map_conv_layers, map_conv_kernel, share_map_convs   the 2D convolutions over each map
    num_proposals                K cells per scale for the caption module
    proposal_nms                 the K cells are picked by greedy NMS at this IoU (1.0: the plain top K)
    caption_input                'fused' (F_cro, the seed) or 'video' (the cell without the query)
    caption_hidden, use_caption  the 2-layer LSTM decoder
    caption_word_mask            in training, the share of the decoder's read words masked (SCN; 0 = none)
    video_negative               also reconstruct from the whole video, a negative the best proposal must beat
    mismatched_pairs             also score (video i, query i + 1): the MIL ranking's negatives (with the
                                 pseudo labels on, the ranking is added to them)
    dropout, num_candidates, freeze_embeddings
loss keys (jvmr.models.ms2d.loss_fn): supervision ('weak' | 'full'), use_pseudo_labels, rec_weight,
    bce_weight, mil_weight, mil_margin, l_min, l_max (the pseudo-label rule; the uniform share is 1/K),
    min_iou, max_iou (full supervision, and pseudo_targets='iou_map'), pseudo_targets ('proposals': the seed's
    rule on the K proposals; 'iou_map': the best-reconstructed proposal as a pseudo ground truth for the
    scaled-IoU BCE on every cell), video_negative_weight, video_negative_margin (nats per word).
"""

from __future__ import annotations

import ml_collections

from configs import common, datasets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.get_base_config()
    # A 16-clip grid (the embedded videos of 40-256 clips are pooled to it, as 2D-TAN pools Charades-STA to 16
    # cells a side): maps of 16, 8 and 4 cells a side.
    config.dataset.max_video_len = 16

    config.model.name = "ms2d"
    config.model.word_dim = 64
    config.model.hidden_size = 64
    config.model.scales = (1, 2, 4)
    config.model.dense_lengths = 0
    config.model.map_conv_layers = 4
    config.model.map_conv_kernel = 3
    config.model.share_map_convs = False
    config.model.num_proposals = 8
    # Plain top-K proposals collapse onto a few cells (test R@1,IoU=0.5 7.9 on seed 0); NMS keeps them apart.
    config.model.proposal_nms = 0.5
    # The fused cell carries the query into its own reconstruction; the video cell does not.
    config.model.caption_input = "video"
    config.model.caption_hidden = 64
    config.model.caption_word_mask = 0.0
    config.model.use_caption = True
    config.model.mismatched_pairs = False
    config.model.video_negative = False
    config.model.dropout = 0.1
    config.model.num_candidates = 100
    config.model.freeze_embeddings = False

    config.loss.supervision = "weak"
    config.loss.use_pseudo_labels = True
    config.loss.rec_weight = 1.0
    config.loss.bce_weight = 1.0
    config.loss.mil_weight = 1.0
    config.loss.mil_margin = 0.5
    # The seed's thresholds are not published; with K = 8 proposals the uniform share is 0.125: a proposal that
    # reconstructs the query better than the others (share < l_min) is a positive, worse than uniform a negative.
    config.loss.l_min = 0.1
    config.loss.l_max = 0.125
    config.loss.min_iou = 0.5
    config.loss.max_iou = 1.0
    config.loss.pseudo_targets = "proposals"
    config.loss.video_negative_weight = 1.0
    config.loss.video_negative_margin = 0.2

    config.optimizer.name = "adam"
    config.optimizer.schedule = "cosine"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_init_lr = 1e-5
    config.optimizer.warmup_steps = 200
    config.optimizer.grad_clip_norm = 5.0
    config.batch_size = 64
    config.num_train_steps = 1500
    config.eval_every_steps = 1500
    config.checkpoint_every_steps = 500

    if arg:
        config.dataset = datasets.dataset_config(arg)
        config.dataset.pretrained_embeddings = True
        config.dataset.normalize_features = True
        config.model.word_dim = 300
        config.model.hidden_size = 512
        config.model.caption_hidden = 512
        config.model.map_conv_layers = 4
        config.model.map_conv_kernel = 5
        config.model.freeze_embeddings = True
        config.batch_size = 32
        config.optimizer.learning_rate = 1e-4
        if arg == "charades_sta":  # 2D-TAN: 16 cells a side at the finest scale
            config.dataset.max_video_len = 64
            config.model.scales = (4, 8, 16)
        elif arg == "activitynet_captions":  # 2D-TAN: 64 cells a side, sparse beyond 16 clips
            config.dataset.max_video_len = 256
            config.model.scales = (4, 8, 16)
            config.model.dense_lengths = 16
        config.num_train_steps = 20_000
        config.eval_every_steps = 2_000
        config.checkpoint_every_steps = 2_000
    return config
