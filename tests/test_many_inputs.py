"""Scalar models with many inputs: keyword calls, 1,000 inputs, and a batched
value-and-gradient loop that stays vectorised with many parameters.

Results are checked against closed forms; the cost of a keyword call is checked through its
mechanism (one dictionary lookup per input instead of CPython's keyword binding, which scans
the parameter names for each keyword given), never through timings (bench/many_inputs.py measures
those).
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.codegen.module import CALL_STACK_ARGUMENTS, KEYWORDS_BY_DICT_FROM

from .test_fastmath import _PACKED, needs_avx2


def chain(n: int):
    """sum_i (x_i - 1)^2 x_{i+1} (cyclic): every gradient has two terms."""
    x = sp.symbols(f"x0:{n}", real=True)
    return sp.Add(*[(x[i] - 1) ** 2 * x[(i + 1) % n] for i in range(n)]), list(x)


def chain_by_hand(x0: np.ndarray):
    after = np.roll(x0, -1, axis=0)
    value = np.sum((x0 - 1) ** 2 * after, axis=0)
    grad = 2 * (x0 - 1) * after + np.roll((x0 - 1) ** 2, 1, axis=0)
    return value, grad


def test_keyword_calls_of_a_model_with_many_inputs_look_each_name_up_once():
    n = 40
    expr, x = chain(n)
    f = sg.compile(expr, x[:5])
    assert n >= KEYWORDS_BY_DICT_FROM
    # no keyword-only parameters for CPython to scan: the inputs arrive as one dictionary
    for public in (f.module.forward, f.module.value_and_grad, f.module.grad):
        assert public.__code__.co_kwonlyargcount == 0
        assert public.__code__.co_flags & 0x08      # CO_VARKEYWORDS
    # f(**inputs) calls forward itself: no hop that would receive the keywords once more
    assert f.__call__ is f.forward
    assert inspect.signature(f) == inspect.signature(f.module.forward)
    x0 = np.linspace(-0.5, 1.5, n)
    inputs = {s.name: float(v) for s, v in zip(x, x0)}
    value, grads = f.value_and_grad(**dict(reversed(list(inputs.items()))))  # any order
    expected_value, expected = chain_by_hand(x0)
    assert value == pytest.approx(expected_value, rel=1e-13)
    assert [grads[s.name] for s in x[:5]] == pytest.approx(expected[:5], rel=1e-13)
    assert f(**inputs) == pytest.approx(expected_value, rel=1e-13)
    assert f.grad(**inputs) == grads
    in_order = [inputs[name] for name in f.module.INPUTS]      # parameters, then by name
    assert f.module.value_and_grad_positional(*in_order)[0] == pytest.approx(value, rel=1e-13)


def test_a_keyword_call_missing_or_adding_an_input_names_it():
    expr, x = chain(KEYWORDS_BY_DICT_FROM + 3)
    f = sg.compile(expr, x[:2])
    inputs = {s.name: 0.5 for s in x}
    with pytest.raises(TypeError, match=r"forward\(\) missing 1 required keyword-only "
                                        r"argument: 'x7'"):
        f(**{k: v for k, v in inputs.items() if k != "x7"})
    with pytest.raises(TypeError, match=r"missing 2 required keyword-only arguments: "
                                        r"'x0', 'x3'"):
        f.value_and_grad(**{k: v for k, v in inputs.items() if k not in ("x0", "x3")})
    with pytest.raises(TypeError, match=r"grad\(\) got an unexpected keyword argument 'y'"):
        f.grad(**inputs, y=1.0)
    with pytest.raises(TypeError):
        f.module.forward(*inputs.values())


def test_a_keyword_call_on_numbers_goes_straight_to_the_compiled_kernel():
    """From the first call on floats on, a keyword call hands the inputs to the compiled
    kernel unchecked: Numba converts ints and bools as float() does, without compiling a
    version for them, and anything else falls back to the checked call, whose results and
    errors are those of a model without the shortcut."""
    n = 38      # (a model of its own: no other test has called it yet in this process)
    expr, x = chain(n)
    f = sg.compile(expr, x[:5])
    module = f.module
    x0 = np.linspace(-0.5, 1.5, n)
    floats = {s.name: float(v) for s, v in zip(x, x0)}
    assert module._forward_point_floats_only is None           # nothing compiled yet
    value, grads = f.value_and_grad(**floats)
    first = f(**floats)
    assert module._forward_point_floats_only is module._forward_point
    assert module._value_and_grad_point_floats_only is module._value_and_grad_point

    def checked_only(*_):
        raise AssertionError("the call took the checked path")

    checked = {name: getattr(module, name) for name in ("_forward", "_value_and_grad")}
    for name in checked:                    # the shortcut never reaches them
        setattr(module, name, checked_only)
    try:
        assert f(**floats) == first
        assert f.value_and_grad(**floats) == (value, grads)
        assert f.grad(**floats) == grads
        for number, as_float in [(3, 3.0), (True, 1.0), (np.float32(0.25), 0.25),
                                 (np.int64(-2), -2.0), (2**80, float(2**80))]:
            # each number where a float was: the same kernel on the same floats
            assert f(**{**floats, "x3": number}) == f(**{**floats, "x3": as_float})
            assert f.grad(**{**floats, "x1": number}) == f.grad(**{**floats, "x1": as_float})
    finally:
        for name, function in checked.items():
            setattr(module, name, function)
    # anything else takes the checked path: arrays broadcast, bad inputs are named
    values = f(**{**floats, "x2": np.array([x0[2], 0.3])})
    assert values[0] == pytest.approx(first, rel=1e-13)
    assert values[1] == f(**{**floats, "x2": 0.3})
    with pytest.raises(TypeError, match="input 'x4'"):
        f(**{**floats, "x4": "0.5"})
    with pytest.raises(TypeError, match="input 'x4' must hold real numbers"):
        f.grad(**{**floats, "x4": 1j})
    with pytest.raises(ValueError, match="input 'x4': an int of 1329 bits"):
        f(**{**floats, "x4": 10**400})
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'x7'"):
        f(**{k: v for k, v in floats.items() if k != "x7"})
    # and Numba compiled nothing for the ints, bools, arrays or strings it was handed
    assert len(module._forward_point.signatures) == 1
    assert len(module._value_and_grad_point.signatures) == 1


def test_a_keyword_call_goes_straight_to_numba_only_where_floats_would():
    """The shortcut is the by-keyword call's only: a model small enough for Python floats
    (its pure-Python twin) keeps its checked call, which prefers the twin."""
    x = sp.symbols(f"x0:{KEYWORDS_BY_DICT_FROM}", real=True)
    f = sg.compile(sp.Add(*x) * x[0], x[:2])
    assert "_python(" in f.source and "_floats_only" not in f.source
    assert f(**{s.name: 1.0 for s in x}) == KEYWORDS_BY_DICT_FROM
    small, y = chain(KEYWORDS_BY_DICT_FROM - 1)      # keyword-only parameters: no shortcut
    assert "_floats_only" not in sg.compile(small, y[:2]).source


def test_a_model_with_a_thousand_inputs_works_on_floats_and_arrays():
    # 1,000 inputs: more than thirty times CPython's stack limit for calls; with 2,000
    # operations (see PYTHON_FIRST_FROM_OPS) the first calls, on floats and on arrays, are
    # answered by the Python twin, without waiting for Numba (about 25 s here); the compiled
    # loop of a model with more inputs than a call passes on the stack is tested in
    # test_scaling.py
    n = 1000
    x = sp.symbols(f"x0:{n}", real=True)
    weights = np.arange(1, n + 1) / n
    expr = sp.Add(*[sp.Float(w) * xi for w, xi in zip(weights, x)]) * x[0]
    f = sg.compile(expr, x[:3])
    x0 = np.linspace(-1.0, 1.0, n)
    inputs = {s.name: float(v) for s, v in zip(x, x0)}
    total = float(weights @ x0)
    value, grads = f.value_and_grad(**inputs)
    assert value == pytest.approx(total * x0[0], rel=1e-12)
    assert grads["x0"] == pytest.approx(total + weights[0] * x0[0], rel=1e-12)
    assert grads["x2"] == pytest.approx(weights[2] * x0[0], rel=1e-12)
    batch = {**inputs, "x0": np.array([x0[0], 2.0]), "x5": np.array([x0[5], -3.0])}
    values, batch_grads = f.value_and_grad(**batch)
    second_total = total + weights[0] * (2.0 - x0[0]) + weights[5] * (-3.0 - x0[5])
    np.testing.assert_allclose(values, [total * x0[0], second_total * 2.0], rtol=1e-12)
    np.testing.assert_allclose(batch_grads["x1"], [weights[1] * x0[0], weights[1] * 2.0],
                               rtol=1e-12)


def _vectorised_loop(f):
    loop = f.module._value_and_grad_loop
    return len(_PACKED.findall(loop.inspect_asm(loop.signatures[0])))


@needs_avx2
@pytest.mark.parametrize("n", [12, 64])
def test_the_value_and_gradient_loop_stays_vectorised_with_many_parameters(n):
    """With 9 or more parameters LLVM needed more run-time alias checks than it allows by
    default and ran the loop one point at a time; with more inputs than CPython passes on
    its stack the point kernel was called, not inlined, and the loop could not vectorise;
    from about 60 arrays LLVM stopped hoisting the arrays' data pointers out of the loop."""
    expr, x = chain(n)
    f = sg.compile(expr, x)
    assert (n > CALL_STACK_ARGUMENTS) == ("_array_0" in f.source)
    x0 = np.linspace(-0.5, 1.5, n)[:, None] + np.linspace(0.0, 0.3, 5)[None, :]
    value, grads = f.value_and_grad(**{s.name: x0[i] for i, s in enumerate(x)})
    expected_value, expected = chain_by_hand(x0)
    np.testing.assert_allclose(value, expected_value, rtol=1e-13)
    np.testing.assert_allclose([grads[s.name] for s in x], expected, rtol=1e-12, atol=1e-14)
    assert _vectorised_loop(f) >= 10, "value-and-gradient loop not vectorised"


def test_many_alias_checks_are_allowed_only_where_needed():
    small, x = chain(4)
    assert "_allow_many_alias_checks" not in sg.compile(small, x).source
    large, x = chain(12)
    assert re.search(r"^_allow_many_alias_checks\(\)$", sg.compile(large, x).source, re.M)
