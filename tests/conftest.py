"""Test order: the slowest files first, so that pytest-xdist's ``--dist loadfile`` (whole files handed to the
next free worker in collection order) balances its two workers (longest-processing-time-first) instead of
ending with one worker alone on a long file. Times: seconds on 2 CPU cores (``pytest --durations``)."""

import os

# The files that take more than about a minute, slowest first; every other file follows in its usual order.
SLOW_FILES = ("test_predict.py", "test_learning.py", "test_train.py", "test_sharding.py", "test_resume.py",
              "test_multihost.py", "test_ms2d.py", "test_report.py", "test_build.py", "test_fuzz.py",
              "test_submit.py", "test_nonfinite.py", "test_search.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))  # stable: order kept
