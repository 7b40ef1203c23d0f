"""Readers for the clip-feature files users download, behind one lookup interface.

Formats (``open_features(path, fmt)``):

* ``npy_dir``: a folder of ``<vid>.npy``, each [T, D] (VSLNet / 2D-TAN I3D, TACoS C3D).
* ``hdf5``: one HDF5 file keyed by video id, the array at ``f[vid]`` or, inside a
  group, at ``f[vid][key]`` (ActivityNet ``sub_activitynet_v1-3.c3d.hdf5`` with
  ``c3d_features``; with ``key=None`` a group holding exactly one dataset is read
  through that dataset). TVR's video [T, 3072], subtitle [S, 768] and query-token
  [L, 768] files (keyed by ``vid_name`` or ``str(desc_id)``) are this format too.
* ``hdf5_per_video``: a folder of ``<vid>.h5`` / ``<vid>.hdf5``, the array under
  ``key`` (default ``feature``, CMIN's ActivityNet files).
* ``auto``: a file -> ``hdf5``; a folder -> ``npy_dir`` or ``hdf5_per_video`` by
  the files it holds.

A video id is looked up as given, then without a file extension, so Charades
annotations that name ``s30-d52.avi`` find ``s30-d52.npy``. Every array comes back
as float32 [T, D]; anything else (missing id, wrong rank, no clips, NaN or Inf)
raises ``FeatureError`` naming the file and the video id. Resample with
``jvmr.data.pipeline.resample_features_np`` and normalise with ``l2_normalize``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

FORMATS = ("npy_dir", "hdf5", "hdf5_per_video")
HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf")


class FeatureError(ValueError):
    """A feature file or record that cannot be used; the message names the path and video id.

    ``reason`` classifies it for reports: ``'missing'`` (no features for the id),
    ``'nonfinite'`` (NaN or Inf values) or ``'bad'`` (anything else).
    """

    def __init__(self, message: str, reason: str = "bad"):
        super().__init__(message)
        self.reason = reason


def l2_normalize(feats: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation of [..., D] features (as ``tf.math.l2_normalize``).

    Each row is divided by ``sqrt(max(sum(x**2), eps))``, so all-zero rows stay zero.
    """
    x = np.asarray(feats, np.float32)
    sq = np.sum(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    return (x / np.sqrt(np.maximum(sq, eps))).astype(np.float32)


def _require_h5py():
    try:
        import h5py
    except ImportError as e:  # Optional dependency (the ``data`` extra).
        raise ImportError("reading HDF5 features needs h5py: pip install 'jvmr[data]' (h5py==3.14.0)") from e
    return h5py


def _index_dir(path: str, extensions: tuple[str, ...]) -> dict[str, str]:
    """Maps file stems to file names for the files of ``path`` with one of ``extensions``."""
    index: dict[str, str] = {}
    with os.scandir(path) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in extensions and entry.is_file():
                if stem in index:
                    raise FeatureError(f"{path}: video {stem!r} has two feature files: "
                                       f"{index[stem]!r} and {entry.name!r}")
                index[stem] = entry.name
    return index


def _detect_format(path: str) -> str:
    if not os.path.exists(path):
        raise FeatureError(f"{path}: feature path does not exist")
    if os.path.isfile(path):
        if os.path.splitext(path)[1].lower() in HDF5_EXTENSIONS:
            return "hdf5"
        raise FeatureError(f"{path}: cannot tell the feature format of this file (expected "
                           f"{'/'.join(HDF5_EXTENSIONS)}); pass fmt= one of {FORMATS}")
    has_npy = bool(_index_dir(path, (".npy",)))
    has_h5 = bool(_index_dir(path, HDF5_EXTENSIONS))
    if has_npy == has_h5:
        what = "both .npy and HDF5 files" if has_npy else "no .npy or HDF5 files"
        raise FeatureError(f"{path}: folder holds {what}; pass fmt= one of {FORMATS}")
    return "npy_dir" if has_npy else "hdf5_per_video"


class FeatureStore:
    """Read access to the per-video features of one path; a context manager.

    Attributes:
      path: the file or folder.
      fmt: one of ``FORMATS``.
      key: the dataset name inside a group (``hdf5``) or file (``hdf5_per_video``).
    """

    def __init__(self, path: str, fmt: str, key: str | None = None):
        self.path = path
        self.fmt = fmt
        self.key = key
        self._file: Any = None  # The open h5py.File of the 'hdf5' format.
        self._index: dict[str, str] = {}  # Stem -> file name for the folder formats.
        if fmt == "hdf5":
            h5py = _require_h5py()
            if not os.path.isfile(path):
                raise FeatureError(f"{path}: HDF5 feature file not found")
            try:
                self._file = h5py.File(path, "r")
            except OSError as e:
                raise FeatureError(f"{path}: cannot open as HDF5: {e}") from e
        elif fmt in ("npy_dir", "hdf5_per_video"):
            if not os.path.isdir(path):
                raise FeatureError(f"{path}: feature folder not found (format {fmt!r})")
            if fmt == "hdf5_per_video":
                _require_h5py()
                self.key = key or "feature"
            self._index = _index_dir(path, (".npy",) if fmt == "npy_dir" else HDF5_EXTENSIONS)
        else:
            raise FeatureError(f"{path}: unknown feature format {fmt!r}; expected 'auto' or one of {FORMATS}")

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore(path={self.path!r}, fmt={self.fmt!r}, key={self.key!r})"

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open_file(self):
        if self._file is None:
            raise FeatureError(f"{self.path}: feature store is closed")
        return self._file

    def _has(self, name: str) -> bool:
        if self.fmt == "hdf5":
            return "/" not in name and name.strip(".") != "" and name in self._open_file()
        return name in self._index

    def _resolve(self, vid: str) -> str | None:
        """The stored name of ``vid``: the id itself or the id without its extension."""
        for name in (vid, os.path.splitext(vid)[0]):
            if name and self._has(name):
                return name
        return None

    def __contains__(self, vid: str) -> bool:
        return self._resolve(vid) is not None

    def keys(self) -> list[str]:
        """The stored video ids, sorted."""
        if self.fmt == "hdf5":
            return sorted(self._open_file().keys())
        return sorted(self._index)

    def __len__(self) -> int:
        return len(self._open_file()) if self.fmt == "hdf5" else len(self._index)

    def get(self, vid: str) -> np.ndarray:
        """Returns the features of ``vid``: float32 [T, D], T >= 1, all finite."""
        name = self._resolve(vid)
        if name is None:
            examples = ", ".join(repr(k) for k in self.keys()[:3])
            raise FeatureError(f"{self.path}: no features for video {vid!r} ({self.fmt} with {len(self)} "
                               f"videos, e.g. {examples})", reason="missing")
        if self.fmt == "npy_dir":
            where = os.path.join(self.path, self._index[name])
            try:
                raw = np.load(where, allow_pickle=False)
            except Exception as e:  # noqa: BLE001 - any failure to parse the file (EOFError, SyntaxError, ...)
                raise FeatureError(f"{where}: video {vid!r}: cannot read .npy: {type(e).__name__}: {e}") from e
        elif self.fmt == "hdf5":
            where = self.path
            raw = self._read_hdf5(self._open_file()[name], where, vid, self.key)
        else:
            where = os.path.join(self.path, self._index[name])
            h5py = _require_h5py()
            try:
                with h5py.File(where, "r") as f:
                    if self.key not in f:
                        raise FeatureError(f"{where}: video {vid!r}: no dataset {self.key!r} "
                                           f"(has {sorted(f.keys())}); pass key=")
                    raw = self._read_hdf5(f[self.key], where, vid, None)
            except OSError as e:
                raise FeatureError(f"{where}: video {vid!r}: cannot open as HDF5: {e}") from e
        return check_features(raw, where, vid)

    @staticmethod
    def _read_hdf5(node, where: str, vid: str, key: str | None) -> np.ndarray:
        """Reads a dataset, or the ``key`` (or only) dataset of a group."""
        h5py = _require_h5py()
        if isinstance(node, h5py.Group):
            members = sorted(node.keys())
            if key is None:
                datasets = [m for m in members if isinstance(node[m], h5py.Dataset)]
                if len(datasets) != 1:
                    raise FeatureError(f"{where}: video {vid!r} is a group with members {members}; "
                                       f"pass key= to pick the features")
                key = datasets[0]
            if key not in node or not isinstance(node[key], h5py.Dataset):
                raise FeatureError(f"{where}: video {vid!r}: group has no dataset {key!r} (has {members})")
            node = node[key]
        elif key is not None:
            raise FeatureError(f"{where}: video {vid!r} is a dataset, not a group with {key!r}; drop key=")
        try:
            return node[()]
        except (OSError, TypeError, ValueError, KeyError) as e:  # damaged data, or a type numpy cannot hold
            raise FeatureError(f"{where}: video {vid!r}: cannot read the HDF5 dataset: {type(e).__name__}: {e}") from e


def check_features(raw: Any, where: str, vid: str) -> np.ndarray:
    """Validates one video's array and converts it to float32 [T, D]; ``FeatureError`` names ``where`` and ``vid``."""
    arr = np.asarray(raw)
    if arr.dtype.kind not in "fiu":
        raise FeatureError(f"{where}: video {vid!r}: features must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise FeatureError(f"{where}: video {vid!r}: features must be [T, D], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise FeatureError(f"{where}: video {vid!r}: empty features, shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        rows = np.flatnonzero(~np.all(np.isfinite(arr), axis=1))
        raise FeatureError(f"{where}: video {vid!r}: NaN or Inf in {rows.size} of {arr.shape[0]} clips "
                           f"(first at clip {rows[0]})", reason="nonfinite")
    return arr


def open_features(path: str, fmt: str = "auto", key: str | None = None) -> FeatureStore:
    """Opens the features at ``path`` (see the module docstring for ``fmt`` and ``key``)."""
    path = os.fspath(path)
    if fmt == "auto":
        fmt = _detect_format(path)
    return FeatureStore(path, fmt, key)
