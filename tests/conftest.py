"""Test session setup: a persistent compilation cache, and the slowest files first, so that pytest-xdist's
``--dist loadfile`` (whole files handed to the next free worker in collection order) balances its two workers
(longest-processing-time-first) instead of ending with one worker alone on a long file. Times: seconds on 2 CPU
cores (``pytest --durations``)."""

import os
import tempfile

# A persistent XLA compilation cache shared by the test processes and the runs they start (subprocesses inherit
# the environment): the tiny configs' programs are compiled once instead of in every test (a tiny training run:
# 35 s cold, 19 s warm). Results do not change: a cached executable is what the compiler produced.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jvmr-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# The files that take more than about a minute, slowest first; every other file follows in its usual order.
SLOW_FILES = ("test_resume.py", "test_sharding.py", "test_train.py", "test_learning.py", "test_predict.py",
              "test_multihost.py", "test_ms2d.py", "test_report.py", "test_bf16_trajectory.py", "test_build.py",
              "test_search.py", "test_nonfinite.py", "test_fuzz.py", "test_submit.py", "test_reloclnet.py",
              "test_cimha.py", "test_real_data_training.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))  # stable: order kept
