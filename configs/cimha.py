r"""CI-MHA (Yu et al., SIGIR 2021): the embedded benchmark by default, or a dataset preset.

Commands:
    python -m jvmr.main --config=configs/cimha.py --workdir=/tmp/cimha
    python -m jvmr.main --config=configs/cimha.py:charades_sta --workdir=/tmp/cimha_cha \
        --config.dataset.data_dir=DATA_DIR

With an argument (a name from ``configs.datasets``: charades_sta,
activitynet_captions, tacos, ...) the dataset block is that preset's and the
paper's settings (Sec. 3.2) apply: queries of at most 25 words, a 128-clip grid,
d = 512 (query Bi-LSTM to 512), 300-d GloVe word vectors (``data_prep --glove``,
loaded through ``dataset.pretrained_embeddings``), batch 100, Adam at 1e-4. The
input width is the data's (C3D 500-d, I3D 1024-d). Without one it is the
embedded synthetic benchmark with CPU-sized settings (8,000 steps; about 12 minutes on 2 cores).

Paper rows (Tables 1-2) as switches:
    (default)                              # CI-MHA: s = [v^q, q^v] + moment segmentation
    --config.model.use_segmentation=False  # CI-MHA w/o MS
    --config.model.fusion_mode=one_way --config.model.use_segmentation=False  # MHA (s = v^q, eq. 7 only)
    --config.model.eq7_reading=bidaf       # the other reading of eq. 7 (see jvmr/models/cimha.py)

model keys (jvmr.models.cimha.CIMHA):
    word_dim, d_model       word vectors; size D of q_0, v_0 and the attentions (query Bi-LSTM: D/2 per direction)
    num_heads               heads of every attention (self, eq. 3-4; cross, eq. 7-8)
    ffn_dim                 inner size of the FeedForward of eq. 5-6 (0 = one linear layer)
    lstm_hidden             units per direction of Bi-LSTM_start / Bi-LSTM_end (0 = d_model / 2)
    mlp_dim                 hidden size of the start / end / segmentation MLPs (0 = d_model)
    dropout                 on word embeddings, clip features, FeedForward inner units and s
    attention_dropout       on attention weights
    fusion_mode             'cross' (CI-MHA, eq. 7-9) or 'one_way' (the paper's "MHA" row, eq. 7 only)
    eq7_reading             'key_aligned' (each clip keeps its value, weighted by the words' attention) or
                            'bidaf' (each clip mixes the standard MHA's word rows by its attention over the words)
    use_segmentation        moment segmentation head and loss (eq. 15-16); False = "w/o MS"
    max_span_len            decoding: at most this many clips per moment (0 = no limit)
    num_candidates          decoding: top (start <= end) pairs by P_start * P_end handed to the protocol
    max_positions           rows of the learned position table (0 = the clip grid)
    freeze_embeddings       no gradient into the word table (e.g. fixed GloVe vectors)
loss keys (jvmr.models.cimha.loss_fn): start_weight, end_weight (NLL of eq. 14), segment_weight (BCE).
"""

from __future__ import annotations

import ml_collections

from configs import common, datasets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.get_base_config()

    config.model.name = "cimha"
    config.model.word_dim = 64
    config.model.d_model = 64
    config.model.num_heads = 4
    config.model.ffn_dim = 128
    config.model.lstm_hidden = 32
    config.model.mlp_dim = 64
    config.model.dropout = 0.1
    config.model.attention_dropout = 0.0
    config.model.fusion_mode = "cross"
    config.model.eq7_reading = "key_aligned"
    config.model.use_segmentation = True
    config.model.max_span_len = 0
    config.model.num_candidates = 100
    config.model.max_positions = 0
    config.model.freeze_embeddings = False

    config.loss.start_weight = 1.0
    config.loss.end_weight = 1.0
    config.loss.segment_weight = 1.0

    # CPU budget on the embedded benchmark (the paper's lr 1e-4 at batch 100 needs far more steps).
    config.optimizer.schedule = "cosine"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_init_lr = 1e-5
    config.optimizer.warmup_steps = 200
    config.optimizer.grad_clip_norm = 5.0
    config.batch_size = 64
    config.num_train_steps = 8000  # About 12 minutes on 2 CPU cores (README).
    config.eval_every_steps = 4000
    config.checkpoint_every_steps = 2000

    if arg:
        config.dataset = datasets.dataset_config(arg)
        config.dataset.max_query_len = 25
        config.dataset.max_video_len = 128
        config.dataset.pretrained_embeddings = True
        config.model.word_dim = 300
        config.model.d_model = 512
        config.model.num_heads = 8
        config.model.ffn_dim = 1024
        config.model.lstm_hidden = 256
        config.model.mlp_dim = 512
        config.batch_size = 100
        config.optimizer.schedule = "constant"
        config.optimizer.learning_rate = 1e-4
        config.optimizer.warmup_steps = 0
        config.optimizer.grad_clip_norm = 0.0
        # The paper trains "within 1 hour" on one V100 without an epoch count; 100 epochs of
        # Charades-STA (12,408 train queries) at batch 100 are about 12,400 steps.
        config.num_train_steps = 12_000
        config.eval_every_steps = 1_000
        config.checkpoint_every_steps = 1_000
    return config
