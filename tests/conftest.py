"""The tests' own set-up (the cache folder of every run is set in the repository's
conftest.py, which also serves the docstring examples)."""

import pytest

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


@pytest.fixture
def jax():
    """JAX in 64-bit mode (symgrad computes in float64), skipped where it is not installed;
    the mode is restored after the test."""
    jax = pytest.importorskip("jax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", before)
