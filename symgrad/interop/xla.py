"""symgrad's compiled kernels as XLA custom calls (JAX's FFI), for :mod:`symgrad.interop.jax`.

A ``jax.pure_callback`` goes from XLA back into Python for every call, which costs more than
a whole small model (W2a: about 75 us before any work, against 60-70 us for JAX's own jitted
value and gradient).  Here the host call is a C function instead: a Numba ``cfunc`` that
reads XLA's call frame (the typed FFI of ``xla/ffi/api/c_api.h``: buffers as data pointer,
rank and dimensions), calls the generated module's Numba kernel on those buffers and copies
its results into XLA's output buffers.  Python is not entered.

One handler per model and pass (forward, value_and_grad, vjp), written as a small module
beside the generated one in symgrad's cache folder so that Numba caches its machine code
too; the dimensions are read at run time, so one handler serves every batch size.  Used for
models whose inputs are all matrices or vectors (an elementwise model of scalars, a scalar
input or a free dimension keeps ``pure_callback``).  Shapes are checked in Python when JAX
traces the call, so the kernel's own checks cannot fail inside XLA.
"""

from __future__ import annotations

import ctypes
import inspect
from pathlib import Path

import sympy as sp

__all__ = ["supports", "handler_name"]

# XLA_FFI_CallFrame, XLA_FFI_Args / _Rets and XLA_FFI_Buffer read as arrays of 8-byte words
# (c_api.h, 64-bit layout): frame[1] extension_start, frame[4] stage, frame[9] args.args,
# frame[14] rets.rets; buffer[3] data, buffer[4] rank, buffer[5] dims.  XLA_FFI_API 0.3.
HELPERS = '''
import numba
import numpy as np
from llvmlite import ir
from numba import carray, types
from numba.extending import intrinsic


@intrinsic
def _ptr(typingctx, address):
    """An integer address as a void pointer."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))
    return types.voidptr(types.int64), codegen


@intrinsic
def _call(typingctx, function, argument):
    """Call the C function at an address with one pointer argument; its pointer result."""
    def codegen(context, builder, signature, args):
        pointer = ir.IntType(8).as_pointer()
        callee = builder.inttoptr(args[0], ir.FunctionType(pointer, [pointer]).as_pointer())
        return builder.call(callee, [args[1]])
    return types.voidptr(types.int64, types.voidptr), codegen


@numba.njit(cache=True, inline="always")
def _words(address, n):
    return carray(_ptr(address), (n,), dtype=np.int64)


@numba.njit(cache=True, inline="always")
def _skip(frame):
    """True when the call is not an execution: a metadata query (answered here: API 0.3, no
    traits, no state) or another stage."""
    if frame[1] != 0:
        extension = _words(frame[1], 4)
        if (extension[1] & 0xFFFFFFFF) == 1:
            metadata = _words(extension[3], 6)
            metadata[1] = 24            # XLA_FFI_Api_Version_STRUCT_SIZE
            metadata[2] = 0
            metadata[3] = 3 << 32       # major 0, minor 3
            metadata[4] = 0             # traits
            metadata[5] = 0             # state type id: none
        return True
    return (frame[4] & 0xFFFFFFFF) != 3


@numba.njit(cache=True, inline="always")
def _buffer(buffers, k):
    return _words(_words(buffers, k + 1)[k], 6)


@numba.njit(cache=True, inline="always")
def _matrix(buffers, k):
    buffer = _buffer(buffers, k)
    dims = _words(buffer[5], 2)
    return carray(_ptr(buffer[3]), (dims[0], dims[1]), dtype=np.float64)


@numba.njit(cache=True, inline="always")
def _vector(buffers, k):
    buffer = _buffer(buffers, k)
    return carray(_ptr(buffer[3]), (_words(buffer[5], 1)[0],), dtype=np.float64)


@numba.njit(cache=True, inline="always")
def _store(buffers, k, array):
    out = carray(_ptr(_buffer(buffers, k)[3]), (array.size,), dtype=np.float64)
    out[:] = np.ascontiguousarray(array).reshape(array.size)


@numba.njit(cache=True, inline="always")
def _store_scalar(buffers, k, value):
    carray(_ptr(_buffer(buffers, k)[3]), (1,), dtype=np.float64)[0] = value


@numba.njit(cache=True)
def _error(frame, message):
    """An XLA_FFI_Error (code INTERNAL) with the NUL-terminated message, made by the API's
    XLA_FFI_Error_Create (word 6 of XLA_FFI_Api), which copies the message."""
    arguments = np.zeros(4, dtype=np.int64)
    arguments[0] = 28                   # XLA_FFI_Error_Create_Args_STRUCT_SIZE
    arguments[2] = message.ctypes.data
    arguments[3] = 13                   # XLA_FFI_Error_Code_INTERNAL
    return _call(_words(frame[2], 7)[6], _ptr(arguments.ctypes.data))
'''

HANDLER = '''

@numba.cfunc(types.voidptr(types.voidptr), cache=True)
def {name}(frame_address):
    frame = carray(frame_address, (15,), dtype=np.int64)
    if _skip(frame):
        return _ptr(0)
    args, rets = frame[9], frame[14]
    try:
        result = {kernel}({arguments})
    except Exception:  # noqa: BLE001 - XLA reports it; the message says where to look
        return _error(frame, MESSAGE)
{stores}
    return _ptr(0)
'''


def supports(function) -> bool:
    """Whether the model's kernels can be XLA handlers: every input a matrix or a vector, no
    free dimension, and kernels that take exactly the inputs."""
    spec = function.spec
    if spec.free_dimensions or not all(isinstance(s, sp.MatrixSymbol) for s in spec.inputs):
        return False
    import jax

    ffi = getattr(jax, "ffi", None)     # JAX's FFI module (jax >= 0.4.31); else the callback
    if ffi is None or not all(hasattr(ffi, n) for n in ("ffi_call", "register_ffi_target",
                                                        "pycapsule")):
        return False
    expected = [f"_in_{s.name}" for s in spec.inputs]     # symgrad's own names (in_0, ...)
    for kernel, extra in (("_forward_kernel", []), ("_value_and_grad_kernel", []),
                          ("_vjp_kernel", ["_in_upstream"])):
        dispatcher = getattr(function.module, kernel, None)
        if dispatcher is None:
            continue
        if list(inspect.signature(dispatcher.py_func).parameters) != extra + expected:
            return False
    return True


def is_vector(symbol) -> bool:
    """A column vector: passed to the kernel as a 1-D array."""
    return symbol.shape[1] == 1


def _source(function, pass_: str) -> str:
    spec = function.spec
    inputs = [_argument(s, k + (pass_ == "vjp")) for k, s in enumerate(spec.inputs)]
    if pass_ == "vjp":
        inputs.insert(0, "_matrix(args, 0)")
    arguments = ", ".join(inputs)
    if pass_ == "forward":
        stores = ["    _store(rets, 0, result)" if spec.output_shape
                  else "    _store_scalar(rets, 0, result)"]
    elif pass_ == "value_and_grad":
        stores = ["    _store_scalar(rets, 0, result[0])"]
        stores += [f"    _store(rets, {k + 1}, result[{k + 1}])"
                   for k in range(len(spec.parameters))]
    else:
        stores = [f"    _store(rets, {k}, result[{k}])" for k in range(len(spec.parameters))]
    message = (f"symgrad's {pass_} kernel of {function.spec.name} raised an error (a singular "
               "matrix, say): call the compiled function on the same inputs outside JAX to "
               "see it")
    constant = f"\nMESSAGE = np.frombuffer({(message.encode() + bytes(1))!r}, dtype=np.uint8)\n"
    return constant + HANDLER.format(name=f"{pass_}_handler", kernel=f"_{pass_}_kernel",
                                     arguments=arguments, stores="\n".join(stores))


def _argument(symbol, k: int) -> str:
    return f"_vector(args, {k})" if is_vector(symbol) else f"_matrix(args, {k})"


_REGISTERED: dict = {}


def handler_name(function, pass_: str) -> str:
    """Register (once per process) the XLA target for one pass of the function's module and
    return its name."""
    module = function.module
    name = f"symgrad_{module.__name__}_{pass_}"
    if name in _REGISTERED:
        return name
    import jax

    from symgrad.files import load_module, write_atomically

    path = Path(function.path).with_name(f"{module.__name__}_xla_{pass_}.py")
    source = (f'"""XLA handler of {module.__name__}.{pass_} (written by symgrad)."""\n'
              + HELPERS + f"\nfrom {module.__name__} import _{pass_}_kernel  # noqa: E402\n"
              + _source(function, pass_))
    if not path.exists() or path.read_text(encoding="utf-8") != source:
        write_atomically(path, source)
    handlers = load_module(path, path.stem)
    handler = getattr(handlers, f"{pass_}_handler")
    pointer = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(handler.address)
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(pointer), platform="cpu")
    _REGISTERED[name] = (handler, pointer)     # keeps the compiled handler alive
    return name
