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
