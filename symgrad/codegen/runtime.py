"""What every generated module carries besides the fast math functions (fastmath.py): the
scalar-or-array load used by the loops of scalar models, and the input checks.

This file's text (below the marker line) is copied into each generated module, after the
code of fastmath.py; both import nothing but numpy, numba (with its llvmlite), math and
operator.
"""

# --- symgrad runtime: copied verbatim into generated modules ------------------------------
import math
import operator

import numba
import numpy as np
from numba.extending import overload


def _py_sigmoid(x):
    # the pure-Python twins of the fast functions, for small models called with floats
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _py_softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _py_logsigmoid(x):
    return -_py_softplus(-x)


def _py_sign(x):
    return math.copysign(1.0, x) if x != 0.0 and x == x else x + 0.0   # 0.0 and nan stay


def _py_max(a, b):
    # NaN if either is NaN, whatever the order (as np.maximum; Python's max is not)
    return a if a > b or a != a else b


def _py_min(a, b):
    return a if a < b or a != a else b


def _at(x, i):
    """x[i] for an array, x itself for a scalar (resolved when Numba compiles)."""


@overload(_at, inline="always")
def _at_overload(x, i):
    if isinstance(x, numba.types.Array):
        return lambda x, i: x[i]
    return lambda x, i: x


# -- what a matrix model's kernel takes as it is (see module.py, _fast_gate) ----------------
_ndarray = np.ndarray
_float64 = np.dtype(np.float64)


def _python_twin(kernel, name, stand_ins):
    """The pure-Python twin of a large model's point kernel: the kernel's own code (compiled
    to bytecode once, not twice), run by Python with ``stand_ins`` (a Numba function's name
    -> Python's function, ``"sg_sin"`` -> ``math.sin``; ``"np.sqrt"`` -> ``math.sqrt``)
    in place of what the kernel calls."""
    import types
    names = dict(kernel.py_func.__globals__)
    numpy_names = {k[3:]: v for k, v in stand_ins.items() if k.startswith("np.")}
    if numpy_names:
        names["np"] = types.SimpleNamespace(**{**vars(np), **numpy_names})
    names.update({k: v for k, v in stand_ins.items() if not k.startswith("np.")})
    return types.FunctionType(kernel.py_func.__code__, names, name)


class _PythonFirst:
    """A large scalar model's point kernel on floats (and, point by point, its batched loop
    on arrays), without waiting for Numba first: the pure-Python twin answers until the
    time it has taken adds up to what compiling the Numba kernel is expected to cost
    (``compile_seconds``); from then on the kernel, compiled at that call, answers.
    Whatever the number of calls, that costs at most about twice the better choice made in
    advance (the ski-rental rule).  A kernel that an earlier process compiled (a marker
    file beside the module says so) answers at once: Numba loads it from its cache.  Where
    Python's math raises (math.log(-1.0); NumPy gives nan), the kernel answers."""

    def __init__(self, python, kernel, compile_seconds, module_file):
        import os
        import time
        self._python, self._kernel = python, kernel
        self._budget = compile_seconds
        marker = None if module_file is None else f"{module_file}.{python.__name__}.compiled"
        self._marker = marker
        self._clock = time.perf_counter
        self._compiled = marker is not None and os.path.exists(marker)

    def __call__(self, *args):
        if self._compiled:
            return self._kernel(*args)
        start = self._clock()
        try:
            result = self._python(*args)
        except (ArithmeticError, ValueError):
            self._switch()
            return self._kernel(*args)
        self._budget -= self._clock() - start
        if self._budget <= 0.0:
            self._switch()
            self._kernel(*args)         # compiled now, as the budget says
        return result

    def on_arrays(self, arguments, out, loop_for):
        """Fill ``out`` (a row per output, a column per point) from the arguments (floats,
        or flat arrays of one length): by the twin, point by point, on the same budget, or
        by the compiled loop ``loop_for(points)`` once compiling has paid (the first call
        on a few points need not wait minutes for Numba)."""
        points = out.shape[1]
        if self._compiled:
            loop_for(points)(*arguments, out)
            return
        start = self._clock()
        # Python floats, not NumPy's: the twin's arithmetic then raises where float's does
        columns = [a if type(a) is float else a.tolist() for a in arguments]
        try:
            for n in range(points):
                result = self._python(*[c if type(c) is float else c[n] for c in columns])
                if type(result) is tuple:
                    out[:, n] = result
                else:
                    out[0, n] = result
        except (ArithmeticError, ValueError):
            self._switch()
            loop_for(points)(*arguments, out)
            return
        self._budget -= self._clock() - start
        if self._budget <= 0.0:
            self._switch()              # the loop compiles when it is next called

    def _switch(self):
        """From now on the compiled kernel answers (and a later process knows it)."""
        self._compiled = True
        if self._marker is not None:
            try:
                open(self._marker, "w").close()
            except OSError:              # a read-only folder: the next process waits again
                pass


class _Threads(Exception):
    """Raised by a serial kernel when its parallel twin should run instead."""


def _reader(names):
    """A function that reads the values of ``names`` from a dict in that order, one look-up
    each, in C: a keyword call's inputs for its kernel (``_in_order(inputs)``)."""
    return operator.itemgetter(*names)


def _floats_only(kernel):
    """``kernel``, which Numba has compiled for floats, told to compile for nothing else.
    Called with other arguments, Numba converts ints and bools as ``float()`` does and
    raises TypeError for anything else (an array, a string, None), without compiling a
    version for them: a keyword call can hand it the inputs unchecked and go to its
    checked path on TypeError."""
    kernel.disable_compile()
    return kernel


def _real_array(name, value):
    """value as a float64 array, or TypeError / ValueError naming the input (see
    :func:`_reals`)."""
    if type(value) is np.ndarray and value.dtype == np.float64:
        return value
    return _reals(f"input {name!r}", value)


def _reals(what, value):
    """value as a float64 array, or TypeError / ValueError that says ``what`` it is ("input
    'X'", "the tangent of 'w'").

    Real numbers of every kind are taken: NumPy's and Python's, and numbers that hold their
    own value (Fraction, Decimal, SymPy's Rational, Float and pi: a SymPy model's numbers),
    also as the entries of an object array (``np.array(sympy.Matrix(...))``).  Refused:
    complex numbers, text (which float() would parse), anything else float() does not
    take, and NumPy masked arrays, whose mask no computation here reads (as JAX refuses
    them): a masked entry would count with the value under it.

    >>> from fractions import Fraction
    >>> _reals("input 'a'", [Fraction(1, 2), 2]).tolist()
    [0.5, 2.0]
    >>> _reals("input 'a'", np.ma.masked_array([1.0, 2.0], mask=[0, 1]))
    Traceback (most recent call last):
    ...
    TypeError: input 'a' is a NumPy masked array, whose mask symgrad would not read: pass ...
    """
    if type(value) is np.ndarray and value.dtype == np.float64:
        return value        # (a solver's vector each iteration: no copy)
    if type(value) is int:
        # NumPy holds an int beyond 64 bits as an object; as a float it is a number like any
        # other (and the compiled kernel, handed one, converts it so)
        try:
            return np.asarray(float(value))
        except OverflowError:
            raise ValueError(f"{what}: an int of {value.bit_length()} bits is too "
                             "large for a float") from None
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{what} is a NumPy masked array, whose mask symgrad would not read: "
                        "pass its .filled(value) with the value masked entries should take, "
                        "or its .data for the values under the mask")
    try:
        array = np.asarray(value)
    except Exception as error:  # noqa: BLE001 - any failure means "not numeric"
        raise TypeError(f"{what}: cannot read {type(value).__name__} as numbers "
                        f"({error})") from None
    if array.dtype.kind in "biuf":
        return array.astype(np.float64)
    if array.dtype.kind == "O":
        return _object_reals(what, array)
    raise TypeError(f"{what} must hold real numbers, got dtype {array.dtype} "
                    f"({type(value).__name__})")


def _object_reals(what, array):
    """An object array's entries as float64, each a real number that float() converts (an
    entry at a time: object arrays only)."""
    out = np.empty(array.shape)
    for index, entry in np.ndenumerate(array):
        if isinstance(entry, (str, bytes, complex, np.complexfloating)):
            number = None       # (float() would parse text and drop an imaginary part)
        else:
            try:
                number = float(entry)
            except OverflowError:
                raise ValueError(f"{what} holds {entry!r}, too large for a float") from None
            except (TypeError, ValueError):
                number = None
        if number is None:
            at = f" at {index}" if array.ndim else ""
            raise TypeError(f"{what} must hold real numbers, but holds {entry!r} "
                            f"({type(entry).__name__}){at}")
        out[index] = number
    return out


def _real_scalar(name, value):
    """value as a Python float, or TypeError / ValueError naming the input."""
    if type(value) is float:
        return value
    array = _real_array(name, value)
    if array.ndim != 0 and array.size != 1:
        raise ValueError(f"input {name!r} must be a scalar, got an array of shape {array.shape}")
    return float(array.reshape(()))


def _dimension_input(name, value):
    """A dimension that no input's shape fixes, given as an argument: a nonnegative int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"input {name!r} is a matrix dimension: pass a nonnegative integer, "
                        f"got {value!r}")
    if value < 0:
        raise ValueError(f"input {name!r} is a matrix dimension: got {value}, which is negative")
    if value > 2**63 - 1:
        raise ValueError(f"input {name!r} is a matrix dimension: got {value}, above the "
                         "largest 64-bit integer")
    return int(value)


def _matrix_input(name, value, rows, cols):
    """A C-contiguous float64 2-D array for a matrix input; a 1-D array is taken as a column
    when cols == 1 (and as a row when rows == 1).  Returns (array, was_1d)."""
    array = _real_array(name, value)
    was_1d = array.ndim == 1
    if was_1d and cols == 1:
        array = array.reshape(array.shape[0], 1)
    elif was_1d and rows == 1:
        array = array.reshape(1, array.shape[0])
    if array.ndim != 2:
        raise ValueError(f"input {name!r} must be a matrix of shape ({rows}, {cols}), got an "
                         f"array of shape {np.shape(value)}")
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array, was_1d


def _dimension_error(name, axis, shape, expected):
    which = "rows" if axis == 0 else "columns"
    return ValueError(f"input {name!r} has {shape[axis]} {which} (shape {tuple(shape)}), but "
                      f"{expected}")


def _broadcast_scalars(names, values):
    """Inputs of a scalar model as floats or flat float64 arrays of one broadcast size.

    Returns (arguments, shape): shape is () when every input is a scalar."""
    arrays = [_real_array(n, v) for n, v in zip(names, values)]
    try:
        shape = np.broadcast_shapes(*[a.shape for a in arrays])
    except ValueError:
        shapes = ", ".join(f"{n}: {a.shape}" for n, a in zip(names, arrays))
        raise ValueError(f"input shapes do not broadcast together ({shapes})") from None
    arguments = []
    for a in arrays:
        if a.ndim == 0:
            arguments.append(float(a))
        elif a.shape == shape and a.flags.c_contiguous:
            arguments.append(a.reshape(-1))
        else:
            arguments.append(np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1))
    return arguments, shape
