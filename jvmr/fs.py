"""File access for workdirs and data that may live on a cloud bucket (``gs://...``) or on local disk.

Local paths use Python's own file functions; a path with a scheme (``gs://``, ``s3://``, ``hdfs://``)
goes through ``tf.io.gfile`` (imported only then). Everything that reads a data directory or writes
a workdir goes through these functions, so ``--workdir=gs://bucket/run`` works on a TPU pod.
"""

from __future__ import annotations

import builtins
import glob as _glob
import os
from typing import IO, Any


def is_remote(path: str) -> bool:
    return "://" in str(path)


def _gfile():
    import tensorflow as tf
    return tf.io.gfile


def open(path: str, mode: str = "r", encoding: str = "utf-8") -> IO[Any]:  # noqa: A001
    """Opens a file; text modes are UTF-8."""
    if is_remote(path):
        return _gfile().GFile(path, mode)
    if "b" in mode:
        return builtins.open(path, mode)
    return builtins.open(path, mode, encoding=encoding)


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def glob(pattern: str) -> list[str]:
    return sorted(_gfile().glob(pattern) if is_remote(pattern) else _glob.glob(pattern))


def remove(path: str) -> None:
    if is_remote(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def replace(src: str, dst: str) -> None:
    """Moves ``src`` over ``dst`` (atomic on local disk)."""
    if is_remote(src) or is_remote(dst):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)


def abspath(path: str) -> str:
    return path if is_remote(path) else os.path.abspath(path)


def write_text_atomic(path: str, content: str) -> None:
    """Writes ``content`` to ``path`` through a temporary file, so a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(content)
    replace(tmp, path)


def append_line(path: str, line: str) -> None:
    """Appends one line (``line`` without its newline) to a text file."""
    with open(path, "a") as f:
        f.write(line + "\n")


def read_versioned_json(path: str, version_key: str, version: int, what: str) -> dict[str, Any]:
    """The JSON object at ``path``, whose ``version_key`` must be ``version``; ``what`` names the folder it
    describes in the errors (FileNotFoundError when absent, ValueError for another version)."""
    import json
    if not exists(path):
        raise FileNotFoundError(f"{path} does not exist: {os.path.dirname(path)!r} is not {what}")
    with open(path) as f:
        meta = json.load(f)
    if meta.get(version_key) != version:
        raise ValueError(f"{path}: {what} of version {meta.get(version_key)}, this jvmr reads {version}: "
                         f"write it again")
    return meta
