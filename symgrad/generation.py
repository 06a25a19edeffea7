"""Standalone gradient modules: ``sg.generate`` and the model files it reads.

A generated module is the text :func:`symgrad.compile` runs (see
:mod:`symgrad.codegen.module`), written to a file of your choosing: it imports numpy and numba
only, and exposes ``forward``, ``value_and_grad`` and ``grad`` (``vjp`` for matrix outputs).

A *model file* is a Python file with :class:`symgrad.Model` objects at module level (every
file in ``examples/`` is one).  :func:`load_models` imports it by path, without running its
``if __name__ == "__main__":`` block; :func:`generate_file` writes one module per model.

>>> import sympy as sp, symgrad as sg, tempfile, pathlib
>>> w, x, y = sp.symbols("w x y")
>>> model = sg.Model("linear_regression", (w * x - y) ** 2, wrt=[w])
>>> path = generate(model, tempfile.mkdtemp())
>>> path.name, "import sympy" in path.read_text()
('linear_regression.py', False)
"""

from __future__ import annotations

import importlib.util
import itertools
import keyword
import os
import sys
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path

from symgrad.files import stage_beside
from symgrad.model import GENERATED_IMPORTS, Model, has_scalar_output
from symgrad.nodes import one_call
from symgrad.version import __version__

__all__ = ["generate", "generate_file", "load_models", "module_text", "plan_modules",
           "write_modules", "has_scalar_output", "ModelFileError", "OutputError"]

PathLike = str | os.PathLike


class ModelFileError(ValueError):
    """A model file that cannot be read: missing, a syntax error, an error while it runs, or
    no ``sg.Model`` in it.  The message is one line and starts with the file name."""


class OutputError(OSError):
    """A generated module that cannot be written; nothing was left half-written."""


# ------------------------------------------------------------------------------------------
# Model files
# ------------------------------------------------------------------------------------------
_loaded = itertools.count()


def load_models(path: PathLike) -> list[Model]:
    """The :class:`symgrad.Model` objects defined at module level in a Python file, in the
    order they were defined.  The file runs as an imported module, so its
    ``if __name__ == "__main__":`` block does not.

    >>> import pathlib, tempfile
    >>> file = pathlib.Path(tempfile.mkdtemp()) / "lr.py"
    >>> _ = file.write_text("import sympy as sp, symgrad as sg\\n"
    ...                     "w, x = sp.symbols('w x')\\n"
    ...                     "lr = sg.Model('lr', (w * x) ** 2, wrt=[w])\\n")
    >>> load_models(file)
    [Model('lr', wrt=[w])]
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a model file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: cannot be read: {_one_line(exc)}") from exc
    try:
        # compile first so that a syntax error in the file itself is reported as such, with
        # its line, and not confused with one in a module the file imports
        compile(text, str(path), "exec")
    except SyntaxError as exc:
        raise ModelFileError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None

    # a fresh module name per load: loading the same file twice (or two files with the same
    # stem) never hands back a stale module
    module_name = f"_symgrad_model_file_{next(_loaded)}_{_identifier(path.stem)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # as when the file runs as a script, its own folder comes first on the import path
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:      # a model file that calls exit() is broken too
        del sys.modules[module_name]
        raise ModelFileError(f"{_where(path, exc)}: {type(exc).__name__}: {_one_line(exc)}") \
            from exc
    finally:
        if sys.path and sys.path[0] == folder:
            del sys.path[0]

    models: list[Model] = []
    for value in vars(module).values():
        if isinstance(value, Model) and not any(value is m for m in models):
            models.append(value)
    if not models:
        raise ModelFileError(f"{path}: defines no sg.Model at module level (add one, e.g. "
                             "`model = sg.Model('name', loss, wrt=[w])`)")
    names = [m.name for m in models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelFileError(f"{path}: two models are named {twice[0]!r}; each model names "
                             "its generated module, so names must differ")
    return models


def _where(path: Path, exc: BaseException) -> str:
    """``file:line`` of the deepest frame of the error that is in the model file itself."""
    line = None
    target = os.path.realpath(path)
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename and os.path.realpath(frame.filename) == target:
            line = frame.lineno
    return f"{path}:{line}" if line else str(path)


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in text)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ------------------------------------------------------------------------------------------
# Module text and writing
# ------------------------------------------------------------------------------------------
def module_text(model: Model) -> str:
    """The complete text of the standalone module for ``model`` (deterministic: the same
    model gives the same bytes in every process).

    >>> import sympy as sp, symgrad as sg
    >>> w, x = sp.symbols("w x")
    >>> text = module_text(sg.Model("square", (w * x) ** 2, wrt=[w]))
    >>> text.splitlines()[0]
    '\"\"\"square: generated by symgrad.'
    """
    from symgrad.codegen.module import module_source
    from symgrad.compiled import build_spec

    appended, note = "", ""
    if getattr(model, "second_order", False):
        from symgrad.second import second_order_text

        appended = second_order_text(model)
        offered = "hessian and hvp" if has_scalar_output(model) else "jacobian"
        note = f"Second order: {offered} (see the end of the module).\n"
    return module_source(build_spec(model.output, model.wrt, model.name), __version__,
                         appended=appended, appended_note=note)


def plan_modules(models: Iterable[Model], out_dir: PathLike) -> dict[Path, str]:
    """``{path: text}`` of the module of each model in ``out_dir`` (``<model name>.py``).
    Every model is derived before anything is written, so a model that fails leaves no file.

    >>> import sympy as sp
    >>> w = sp.Symbol("w")
    >>> list(plan_modules([Model("square", w**2, wrt=[w])], "generated"))
    [PosixPath('generated/square.py')]
    """
    out_dir = Path(out_dir)
    planned: dict[Path, str] = {}
    for model in models:
        path = out_dir / f"{model.name}.py"
        if path in planned:
            raise ValueError(f"two models are named {model.name!r}; they would both write "
                             f"{path}")
        planned[path] = module_text(model)
    return planned


def write_modules(planned: dict[Path, str]) -> list[Path]:
    """Write every ``{path: text}``, all or nothing: each text goes to a temporary file beside
    its target first, and only when all are written do they replace their targets.  A file
    whose text is unchanged is left alone (its modification time, which Numba's cache keys
    on, stays).  Raises :class:`OutputError` (one line) when a file cannot be written.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> [p.name for p in write_modules({folder / "a.py": "A = 1\\n", folder / "b.py": "B = 2\\n"})]
    ['a.py', 'b.py']
    """
    staged: list[tuple[str, Path]] = []
    created: list[Path] = []
    current = None
    try:
        for path, text in planned.items():
            current = path
            if path.is_file() and path.read_bytes() == text.encode("utf-8"):
                continue
            created += _make_folder(path.parent)
            staged.append((stage_beside(path, text), path))
        for temporary, path in staged:
            os.replace(temporary, path)
    except OSError as exc:
        for temporary, _ in staged:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
        reason = exc.strerror or _one_line(exc)
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(current) else ""
        error = OutputError(f"cannot write {current}: {reason}{where}")
        error.errno = exc.errno
        raise error from exc
    return list(planned)


def _make_folder(folder: Path) -> list[Path]:
    """Create folder and its missing parents; return those created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    missing.reverse()
    for f in missing:
        f.mkdir()
    return missing


# ------------------------------------------------------------------------------------------
# The public entry points
# ------------------------------------------------------------------------------------------
@one_call
def generate(model, path: PathLike | None = None, *, wrt: Sequence | None = None,
             name: str | None = None) -> Path:
    """Write the standalone module of a model (or of ``expr`` with ``wrt``) and return its path.

    ``path`` is the module's file, or an existing folder (the file is then
    ``<model name>.py`` inside it); by default ``<model name>.py`` in the current folder.
    The module imports numpy and numba only.  If deriving fails, nothing is written.  A file
    named after a module that generated modules import (``numpy.py``, see
    :data:`symgrad.model.GENERATED_IMPORTS`) is refused, as such a model name is: it would
    stand in for that module beside it.

    >>> import sympy as sp, symgrad as sg, tempfile, os
    >>> w, x, y = sp.symbols("w x y")
    >>> folder = tempfile.mkdtemp()
    >>> generate((w * x - y) ** 2, wrt=[w], path=os.path.join(folder, "lr.py")).name
    'lr.py'
    """
    if isinstance(model, Model):
        if wrt is not None or name is not None:
            raise TypeError("generate(model, path) takes a Model alone; wrt= and name= are for "
                            "generate(expr, wrt=[...], path=..., name=...)")
    else:
        if wrt is None:
            raise TypeError("generate(expr, ...) needs wrt=[the symbols to differentiate]")
        if name is None:
            to_folder = path is not None and (Path(path).is_dir()
                                              or str(path).endswith(("/", os.sep)))
            stem = Path(path).stem if path is not None and not to_folder else ""
            name = stem if (stem.isidentifier() and not keyword.iskeyword(stem)
                            and stem not in GENERATED_IMPORTS) else "model"
        model = Model(name, model, wrt)
    if path is None:
        path = Path(f"{model.name}.py")
    folder = Path(path).is_dir() or str(path).endswith(("/", os.sep))
    path = Path(path)
    if folder:      # an existing folder, or one to make ("out/")
        path = path / f"{model.name}.py"
    elif path.suffix != ".py":
        raise ValueError(f"generate: {str(path)!r} is neither a folder nor a .py file: give a "
                         "file name ending in .py, or a folder (an existing one, or a path "
                         "ending with '/')")
    if path.stem in GENERATED_IMPORTS:
        # as a model name is (symgrad.model.Model): numpy.py would stand in for numpy for
        # every module in its folder that imports it
        raise ValueError(f"generate: the file name {path.name!r} is the name of a module that "
                         f"generated modules import ({', '.join(sorted(GENERATED_IMPORTS))}): "
                         f"it would stand in for that one beside it; choose another file name")
    planned = {path: module_text(model)}
    return write_modules(planned)[0]


def generate_file(model_file: PathLike, out_dir: PathLike) -> list[Path]:
    """Write one module per model of a model file into ``out_dir``; return their paths.

    All the file's models are derived before any module is written.

    >>> generate_file("examples/window_classifier.py", "generated")  # doctest: +SKIP
    [PosixPath('generated/window_classifier.py'), ...]
    """
    return write_modules(plan_modules(load_models(model_file), out_dir))
