"""Shared set-up of the tests and of the examples in symgrad's docstrings (both run by
`pytest`): compiled modules go to one temporary cache folder per test session, so
tests never read or write the user's cache and each model compiles once per session.

Each pytest-xdist worker is a session of its own, with a folder of its own: a test that
inspects a kernel's machine code needs the kernel compiled in its process, and Numba
refuses to inspect one that another worker compiled and cached."""

import os
import tempfile

import pytest

_CACHE = os.environ.get("SYMGRAD_CACHE_DIR") or tempfile.mkdtemp(prefix="symgrad-test-cache-")
if os.environ.get("PYTEST_XDIST_WORKER"):
    _CACHE = os.path.join(_CACHE, os.environ["PYTEST_XDIST_WORKER"])
    os.makedirs(_CACHE, exist_ok=True)
os.environ["SYMGRAD_CACHE_DIR"] = _CACHE


@pytest.fixture(scope="session")
def cache_dir() -> str:
    return os.environ["SYMGRAD_CACHE_DIR"]


# Scheduling (pytest-xdist): the order in which the workers are handed the tests, never what
# a test does.  The modules that hold the longest single tests run first and the modules of
# many short tests (and the docstring examples) last, and xdist hands out a few tests at a
# time instead of a quarter of what is left, so that both workers finish together: with
# large batches one worker still held a minute or two of slow tests while the other sat
# idle.  A module's tests stay together and in order; every module not named keeps its
# place, between the two groups.
LONGEST_TESTS_FIRST = (
    "tests/test_properties.py", "tests/test_trust.py", "tests/test_generate.py",
    "tests/test_second_properties.py", "tests/test_operations.py", "tests/test_scaling.py",
    "tests/test_second_generated.py", "tests/test_real_models.py",
    "tests/test_interop_second.py", "tests/test_linalg.py", "tests/test_tour.py",
    "symgrad/interop/jax.py", "tests/test_interop.py", "tests/test_dask.py",
)
SHORT_TESTS_LAST = (
    "tests/test_seeds.py", "tests/test_elementwise.py", "tests/test_errors.py",
    "tests/test_fastmath.py", "tests/test_architecture.py", "tests/test_schedule.py",
    "tests/test_op_counts.py", "tests/test_random_scalar.py", "tests/test_translators.py",
)
TESTS_PER_HANDOUT = 4


def pytest_configure(config):
    # only where xdist runs and no --maxschedchunk was given
    if getattr(config.option, "maxschedchunk", 0) is None:
        config.option.maxschedchunk = TESTS_PER_HANDOUT


def _rank(path: str) -> int:
    if path in LONGEST_TESTS_FIRST:
        return LONGEST_TESTS_FIRST.index(path)
    if path in SHORT_TESTS_LAST:
        return 2 * len(LONGEST_TESTS_FIRST) + SHORT_TESTS_LAST.index(path)
    if path.startswith("symgrad/"):                 # docstring examples: short, last of all
        return 3 * len(LONGEST_TESTS_FIRST) + len(SHORT_TESTS_LAST)
    return len(LONGEST_TESTS_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: _rank(item.nodeid.split("::")[0]))    # (a stable sort)
