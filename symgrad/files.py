"""Files: the cache folder, atomic writes, and loading a module from its path.

Compiled models (symgrad.compiled), generated modules (symgrad.generation) and the modules
built for Dask and XLA write their files through these.
"""

from __future__ import annotations

import glob
import importlib.util
import io
import os
import pickletools
import sys
import tempfile
from pathlib import Path
from types import ModuleType


def cache_dir() -> Path:
    root = os.environ.get("SYMGRAD_CACHE_DIR") or Path.home() / ".cache" / "symgrad"
    return Path(root)


def stage_beside(path: Path, text: str) -> str:
    """Write text to a new temporary file in path's folder (which must exist) and return its
    name; ``os.replace`` of it onto path is then atomic.  The file gets the mode open() would
    give a new file (mkstemp makes it private) and Unix line ends."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            os.fchmod(handle.fileno(), _ordinary_mode())
            handle.write(text)
    except BaseException:
        _unlink(temporary)
        raise
    return temporary


def write_atomically(path: Path, text: str) -> None:
    """Write text to path so that a failure never leaves a partial file there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = stage_beside(path, text)
    try:
        os.replace(temporary, path)
    except BaseException:
        _unlink(temporary)
        raise


def _unlink(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


def _ordinary_mode() -> int:
    """The mode open() would give a new file: 0o666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def drop_damaged_numba_cache(path: Path) -> list[Path]:
    """Delete the Numba cache files of the module at ``path`` that cannot be read back (a
    crash while writing, a full disk, a damaged copy), so that Numba compiles those kernels
    again instead of failing on their first call; return what was deleted.  Numba writes an
    index (.nbi: a pickled version, then a pickled table) per kernel and a pickled .nbc file
    per compiled signature."""
    damaged = [file for file in sorted((path.parent / "__pycache__").glob(f"{path.stem}.*.nb[ic]"))
               if not _whole_pickles(file.read_bytes(), 2 if file.suffix == ".nbi" else 1)]
    for file in damaged:
        # an index without its data, or data without its index, is rebuilt as a pair
        kernel = file.name.split(".nb")[0].rsplit(".", 1)[0] if file.suffix == ".nbc" \
            else file.name[:-len(".nbi")]
        for partner in [file, *file.parent.glob(glob.escape(kernel) + "*.nb[ic]")]:
            partner.unlink(missing_ok=True)
    return damaged


def _whole_pickles(data: bytes, count: int) -> bool:
    """Whether data is ``count`` complete pickle streams, read opcode by opcode without
    running them: unpickling a kernel's data imports its module, which is not loaded yet
    when the cache is checked (a healthy entry must not look damaged)."""
    stream = io.BytesIO(data)
    try:
        for _ in range(count):
            if not any(op.name == "STOP" for op, _, _ in pickletools.genops(stream)):
                return False
    except Exception:  # noqa: BLE001 - any malformed stream is damage
        return False
    return stream.tell() == len(data)


def load_module(path: Path, name: str) -> ModuleType:
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
