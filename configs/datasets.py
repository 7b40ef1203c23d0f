"""The ``dataset`` config block of each dataset jvmr knows.

``dataset_config(name)`` returns a complete ``dataset`` block; model configs take
it through ``get_config(arg)``, e.g. ``--config=configs/cmin.py:activitynet_captions``,
and then set the grid sizes and hyperparameters their paper used there.

Facts of the data are not repeated here: ``feature_dim = 0`` means "as written
in ``DATA_DIR/manifest.json``" (set it to fail fast when the files differ), and
an empty ``eval_splits`` means every split in the manifest except the training
split. ``protocol`` is the evaluation protocol the dataset's published tables
use (``jvmr.metrics.PROTOCOLS``). The base config of every model
(``configs.common``) holds the synthetic block with ``protocol = ''`` and
``eval_splits = ()``, resolved at run time from ``dataset.name`` and the
manifest, so ``--config.dataset.name=tacos --config.dataset.data_dir=DIR``
alone also evaluates the right splits with the right protocol.

Real datasets are built by ``python -m data_prep.build --dataset=NAME ...`` into
``data_dir``; see README.md.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from jvmr import metrics
from jvmr.data import corpus, synthetic

# Per dataset: the split trained on, the splits evaluated by default, and the grid /
# query lengths a first run should use (model presets override them).
_DATASETS = {
    # The embedded benchmark, generated in WORKDIR/data (no files needed).
    "synthetic": dict(max_video_len=64, max_query_len=20, video_sampling="pad",
                      train_split="train", eval_splits=("val", "test", "test_novel", "test_paraphrase")),
    # The embedded corpus benchmark (jvmr.data.corpus): VCMR over generated videos with a subtitle stream.
    "synthetic_corpus": dict(max_video_len=64, max_query_len=20, video_sampling="pad",
                             train_split="train", eval_splits=("val", "test")),
    # I3D 1024-d per-video .npy (VSLNet; 2D-TAN used VGG 4096-d: --feature_dim=4096); papers evaluate on test.
    "charades_sta": dict(max_video_len=64, max_query_len=20, video_sampling="resample",
                         train_split="train", eval_splits=("test",)),
    # C3D PCA-500 (official HDF5). 2D-TAN / CMIN report val_2 as "test" and val_1 as "val";
    # VSLNet the opposite: we keep the file names, val_1 and val_2, and evaluate both.
    "activitynet_captions": dict(max_video_len=200, max_query_len=20, video_sampling="resample",
                                 train_split="train", eval_splits=("val_1", "val_2")),
    # C3D (4096-d in 2D-TAN's HDF5, 500-d in CMIN's .npy); 2D-TAN split.
    "tacos": dict(max_video_len=200, max_query_len=20, video_sampling="resample",
                  train_split="train", eval_splits=("val", "test")),
    # ResNet152+I3D 3072-d per 1.5 s clip; test_public has no labels, so val is the report split.
    "tvr": dict(max_video_len=100, max_query_len=30, video_sampling="pad",
                train_split="train", eval_splits=("val",)),
}

DATASET_NAMES = tuple(_DATASETS)


def dataset_config(name: str = "synthetic", *, explicit: bool = True) -> ml_collections.ConfigDict:
    """The ``dataset`` block of ``name`` (one of ``DATASET_NAMES``).

    With ``explicit=False`` the protocol and evaluation splits are left empty
    (resolved from the name and the manifest when training starts).
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {list(_DATASETS)}")
    preset = _DATASETS[name]
    block = ml_collections.ConfigDict()
    block.name = name
    block.data_dir = ""  # synthetic: empty = WORKDIR/data (built there); others: data_prep's output_dir.
    block.feature_dim = 0  # 0 = from the manifest; a value is checked against it.
    block.subtitle_dim = 0  # Width of the subtitle stream (models that read it); 0 = from the manifest.
    block.query_feature_dim = 0  # Width of pre-extracted query token features; 0 = from the manifest.
    block.max_video_len = preset["max_video_len"]  # T, the model's clip grid.
    block.max_query_len = preset["max_query_len"]  # L, words kept per query.
    block.max_gt_spans = 4
    block.video_sampling = preset["video_sampling"]  # 'pad' (mask) or 'resample' (mean-pool to T clips).
    block.normalize_features = False  # L2-normalise each clip (2D-TAN does).
    block.shuffle_buffer = 10_000
    block.train_split = preset["train_split"]
    block.eval_splits = preset["eval_splits"] if explicit else ()  # () = every other split in the manifest.
    block.protocol = metrics.DATASET_PROTOCOLS[name] if explicit else ""  # '' = DATASET_PROTOCOLS[name].
    # Load DATA_DIR/embeddings.npy (GloVe rows aligned with vocab.txt, written by
    # data_prep --glove) into the model's word table; its width must equal the model's word_dim.
    block.pretrained_embeddings = False
    # jvmr.data.synthetic.SyntheticConfig of the embedded benchmark (used only by 'synthetic' and
    # 'synthetic_corpus').
    block.synthetic = ml_collections.ConfigDict(dataclasses.asdict(synthetic.SyntheticConfig()))
    if name == "synthetic_corpus":  # The world (``synthetic``) and the corpus knobs (jvmr.data.corpus.CorpusConfig).
        defaults = dataclasses.asdict(corpus.CorpusConfig())
        block.synthetic = ml_collections.ConfigDict(defaults.pop("synthetic"))
        block.corpus = ml_collections.ConfigDict(defaults)
    return block
