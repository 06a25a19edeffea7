"""Shared test set-up: compiled modules go to one temporary cache folder per test session, so
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


# Every module that sg.compile or sg.generate builds during the session must parse: the source
# is checked here, once per module text, before anything imports or writes it.
PARSED_MODULES: set = set()


@pytest.fixture(autouse=True, scope="session")
def _every_generated_module_parses():
    import ast
    import sys

    import symgrad  # noqa: F401 - loads the modules patched below

    # sg.compile uses compiled.py's import of module_source; sg.generate imports it from
    # codegen/module.py when it runs
    modules = [sys.modules["symgrad.compiled"], sys.modules["symgrad.codegen.module"]]
    originals = {m: m.module_source for m in modules}

    def checked(original):
        def module_source(*args, **kwargs):
            source = original(*args, **kwargs)
            ast.parse(source)           # a SyntaxError fails the test that built it
            PARSED_MODULES.add(hash(source))
            return source
        return module_source

    for module, original in originals.items():
        module.module_source = checked(original)
    yield
    for module, original in originals.items():
        module.module_source = original
