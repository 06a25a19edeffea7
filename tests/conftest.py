"""Shared test set-up: compiled modules go to one temporary cache folder per test session, so
tests never read or write the user's cache and each model compiles once per session."""

import os
import tempfile

import pytest

_CACHE = tempfile.mkdtemp(prefix="symgrad-test-cache-")
os.environ.setdefault("SYMGRAD_CACHE_DIR", _CACHE)


@pytest.fixture(scope="session")
def cache_dir() -> str:
    return os.environ["SYMGRAD_CACHE_DIR"]
