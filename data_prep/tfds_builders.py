"""TFDS builders of the four datasets, built offline from the user's files in ``manual_dir``.

Importing this module registers ``charades_sta``, ``activitynet_captions``,
``tacos`` and ``tvr``; then, with the files in place::

    import tensorflow_datasets as tfds
    from data_prep import tfds_builders  # noqa: F401  (registers the builders)

    ds = tfds.load("charades_sta", data_dir=DATA_DIR, download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir=MANUAL_DIR)})

The builders share ``data_prep.build``'s readers, cleaning and feature handling:
the same records are written, fixed and skipped for the same reasons, and the
report (``num_records``, ``fixed``, ``skipped`` and example messages per split)
is stored in the dataset's metadata (``builder.info.metadata["reports"]``).
Each example is a dict mirroring ``jvmr.data.schema.Example``: ``qid``, ``vid``,
``duration``, ``query``, ``query_type``, ``tokens``, ``dep_heads``,
``dep_labels``, ``gt_spans`` [G, 2] seconds, ``video_features`` [T, D] (and, for
TVR, ``subtitle_features`` [S, 768] and ``query_features`` [L, 768]).

Configs: ``spacy`` (default: dependency parses) and ``tokens`` (no parser:
lower-cased words, every word a root). Other choices (feature dimension, clip
count, file names, strict mode) are fields of ``VmrConfig``:
``tfds.builder("tacos", config=tfds_builders.VmrConfig(name="c3d500", feature_dim=500))``.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import tensorflow_datasets as tfds

from data_prep import build
from jvmr.data import annotations, parsing

_GENERIC_FEATURE_NAMES = ("features", "features.hdf5", "features.h5")
_TVR_SUBTITLE_FILES = ("tvr_sub_pretrained_w_sub_query_max_cl-1.5.h5", "subtitle_features.h5")
_TVR_QUERY_FILES = ("tvr_query_pretrained_w_sub_query.h5", "query_features.h5")


@dataclasses.dataclass(eq=False)
class VmrConfig(tfds.core.BuilderConfig):
    """Conversion options of a video moment retrieval builder.

    Attributes:
      parser: 'spacy' or 'none'.
      parser_model: the spaCy pipeline.
      feature_dim: expected video feature dimension (0: the dataset's standard).
      num_clips: mean-pool features to this many clips (0: keep all).
      l2_normalize: L2-normalise every clip first.
      features: names in ``manual_dir`` tried in order for the video features
        (empty: the dataset's released file name, then ``features[.hdf5|.h5]``).
      feature_format: 'auto' or a ``jvmr.data.features.FORMATS`` entry.
      feature_key: dataset inside each HDF5 group or per-video file.
      subtitle_features / query_features: names tried for TVR's extra streams (empty: none).
      stream_dim: dimension of the extra streams.
      strict: any fixed or skipped record is an error.
    """

    parser: str = "spacy"
    parser_model: str = parsing.DEFAULT_MODEL
    feature_dim: int = 0
    num_clips: int = 0
    l2_normalize: bool = False
    features: tuple[str, ...] = ()
    feature_format: str = "auto"
    feature_key: str | None = None
    subtitle_features: tuple[str, ...] = ()
    query_features: tuple[str, ...] = ()
    stream_dim: int = 768
    strict: bool = False


def _configs(**streams) -> list[VmrConfig]:
    return [VmrConfig(name="spacy", description="spaCy dependency parses of the queries", **streams),
            VmrConfig(name="tokens", parser="none", description="lower-cased words, no parse", **streams)]


def _find(manual_dir: str, names: tuple[str, ...], what: str) -> str:
    for name in names:
        path = os.path.join(manual_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{manual_dir}: no {what} (looked for {list(names)}); see the manual download "
                            f"instructions")


class _VmrBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared body of the per-dataset builders (``DATASET`` names the ``annotations.DATASETS`` entry)."""

    DATASET = ""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = _configs()

    @property
    def spec(self) -> annotations.DatasetSpec:
        return annotations.get_spec(self.DATASET)

    @property
    def _feature_dim(self) -> int:
        return self.builder_config.feature_dim or self.spec.feature_dim

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        text = tfds.features.Text()
        features = {
            "qid": text, "vid": text, "duration": tfds.features.Scalar(np.float32), "query": text,
            "query_type": text, "tokens": tfds.features.Sequence(text),
            "dep_heads": tfds.features.Sequence(np.int32), "dep_labels": tfds.features.Sequence(text),
            "gt_spans": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
            "video_features": tfds.features.Tensor(shape=(None, self._feature_dim), dtype=np.float32),
        }
        for name in ("subtitle_features", "query_features"):
            if getattr(cfg, name):
                features[name] = tfds.features.Tensor(shape=(None, cfg.stream_dim), dtype=np.float32)
        return tfds.core.DatasetInfo(
            builder=self, description=f"{self.spec.name} for video moment retrieval (jvmr schema); "
            f"video features: {self.spec.feature_note}.",
            features=tfds.features.FeaturesDict(features), metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        files = annotations.find_split_files(self.spec, manual_dir)
        for warning in annotations.folder_warnings(self.spec, manual_dir):
            print(f"warning: {warning}", file=sys.stderr)
        return {split: self._generate_examples(split, path, manual_dir) for split, path in files.items()}

    def _generate_examples(self, split: str, path: str, manual_dir: str):
        cfg = self.builder_config
        durations, _ = build.resolve_durations(self.spec, manual_dir)
        report = annotations.Report(split, cfg.strict)
        records = annotations.read_split(self.spec, path, report, durations)
        items = build.parse_queries(records, build.make_parser(cfg.parser, cfg.parser_model), report)
        names = cfg.features or self.spec.feature_files + _GENERIC_FEATURE_NAMES
        streams = build.open_streams(
            _find(manual_dir, names, "video features"), cfg.feature_format, cfg.feature_key,
            _find(manual_dir, cfg.subtitle_features, "subtitle features") if cfg.subtitle_features else "",
            _find(manual_dir, cfg.query_features, "query features") if cfg.query_features else "")
        dims = {"video": self._feature_dim}
        if cfg.subtitle_features:
            dims["subtitle"] = cfg.stream_dim
        if cfg.query_features:
            dims["query"] = cfg.stream_dim
        try:
            for ex in build.iter_examples(items, streams, report, dims, cfg.num_clips, cfg.l2_normalize):
                out = {"qid": ex.qid, "vid": ex.vid, "duration": np.float32(ex.duration), "query": ex.query,
                       "query_type": ex.query_type, "tokens": ex.tokens,
                       "dep_heads": np.asarray(ex.dep_heads, np.int32), "dep_labels": ex.dep_labels,
                       "gt_spans": ex.gt_spans, "video_features": ex.video_features}
                if cfg.subtitle_features:
                    out["subtitle_features"] = ex.subtitle_features
                if cfg.query_features:
                    out["query_features"] = ex.query_features
                yield ex.qid, out
        finally:
            streams.close()
        self.info.metadata.setdefault("reports", {})[split] = report.to_json()
        print(annotations.format_reports([report]), file=sys.stderr)


_LAYOUT = """
Put in `manual_dir` (the files keep their released names):
{files}
- the video features: `{features}`, or a file or folder named `features`
  (`features.hdf5`, `features.h5`): a folder of `<vid>.npy`, one HDF5 keyed by video id, or a folder of
  `<vid>.h5` (format detected; see jvmr.data.features). Expected: {note}, {dim}-d
  (another dimension: pass a VmrConfig with feature_dim).{extra}
Nothing is downloaded: the build reads only these files.
"""


def _instructions(dataset: str, files: str, extra: str = "") -> str:
    spec = annotations.DATASETS[dataset]
    return _LAYOUT.format(files=files, features=spec.feature_files[0], note=spec.feature_note,
                          dim=spec.feature_dim, extra=extra)


class CharadesSta(_VmrBuilder):
    """Charades-STA (Gao et al., 2017): 12,408 train / 3,720 test queries."""

    DATASET = "charades_sta"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        DATASET, "- `charades_sta_train.txt`, `charades_sta_test.txt` (`VID start end##sentence`)\n"
                 "- `charades.json` (video durations; VSLNet's data/dataset/charades/)")


class ActivitynetCaptions(_VmrBuilder):
    """ActivityNet Captions (Krishna et al., 2017): train / val_1 / val_2, kept distinct."""

    DATASET = "activitynet_captions"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        DATASET, "- `train.json`, `val_1.json`, `val_2.json` (the official captions; any subset)")


class Tacos(_VmrBuilder):
    """TACoS, 2D-TAN split: 9,790 train / 4,436 val / 4,001 test queries."""

    DATASET = "tacos"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        DATASET, "- `train.json`, `val.json`, `test.json` (2D-TAN's data/TACoS/, timestamps in frames)")


class Tvr(_VmrBuilder):
    """TVR (Lei et al., 2020): train / val with query types v / t / vt, video + subtitle + query streams."""

    DATASET = "tvr"
    BUILDER_CONFIGS = _configs(subtitle_features=_TVR_SUBTITLE_FILES, query_features=_TVR_QUERY_FILES)
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        DATASET, "- `tvr_train_release.jsonl`, `tvr_val_release.jsonl` (TVRetrieval data/)\n"
                 "- `tvr_video2dur_idx.json` (video durations)",
        extra=f"\n- subtitle features: one of {list(_TVR_SUBTITLE_FILES)} (HDF5 keyed by vid, [S, 768])"
              f"\n- query token features: one of {list(_TVR_QUERY_FILES)} (HDF5 keyed by desc_id, [L, 768])")
