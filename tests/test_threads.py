"""The parallel twin of each loop kernel computes what the serial kernel computes, on two
threads (on one, a parallel loop runs serially and the comparison would prove nothing)."""

import numba
import numpy as np
import pytest
import sympy as sp

import symgrad as sg

from .test_seeds import load_example


@pytest.fixture(autouse=True)
def two_threads():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here (NUMBA_NUM_THREADS); the parallel twins would "
                    "run serially")
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def test_scalar_model_parallel_loop_matches_serial_loop():
    q, r = sp.symbols("q r")
    f = sg.compile(sp.sin(q) * sp.exp(-r**2) + sg.softplus(q * r), [q, r])
    rng = np.random.default_rng(0)
    qs, rs = rng.normal(size=5000), rng.normal(size=5000)
    serial, parallel = np.empty((3, 5000)), np.empty((3, 5000))
    f.module._value_and_grad_loop(qs, rs, serial)
    f.module._value_and_grad_loop_parallel(qs, rs, parallel)
    np.testing.assert_array_equal(serial, parallel)          # elementwise: same bits


def test_matrix_model_parallel_kernel_matches_serial_kernel():
    n, m = sp.symbols("n m", integer=True, positive=True)
    A, B, c = sg.matrix("A", n, m), sg.matrix("B", n, m), sg.vector("c", n)
    f = sg.compile(sg.logsumexp(sg.hadamard(sg.tanh(A), B) + sg.broadcast(c, (n, m)))
                   + sg.sum(sg.softplus(A - B)), [A, B, c])
    rng = np.random.default_rng(1)
    arguments = (rng.normal(size=(40, 300)), rng.normal(size=(40, 300)), rng.normal(size=40))
    serial = f.module._value_and_grad_kernel(*arguments, 1)   # one thread: no signal
    parallel = f.module._value_and_grad_kernel_parallel(*arguments)
    assert len(serial) == len(parallel) == 4
    for a, b in zip(serial, parallel):
        # sums may be added in another order on several threads: equal to rounding
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_matrix_vector_loops_in_the_parallel_kernel_match_the_serial_kernel():
    """A w splits its rows between threads (dot products per row); A^T u, an update of
    the whole result per row, stays on one thread in both kernels."""
    n, k = sp.symbols("n k", integer=True, positive=True)
    A, w, u = sg.matrix("A", n, k), sg.vector("w", k), sg.vector("u", n)
    f = sg.compile(sg.sum(sg.tanh(A @ w)) + sg.sum(sg.sin(A.T @ u)), [A, w, u])
    assert "numba.prange(dim_1 // 4)" in f.source     # dim_1 is n
    rng = np.random.default_rng(2)
    arguments = (rng.normal(size=(1031, 1030)), rng.normal(size=1030), rng.normal(size=1031))
    serial = f.module._value_and_grad_kernel(*arguments, 1)
    parallel = f.module._value_and_grad_kernel_parallel(*arguments)
    for a, b in zip(serial, parallel):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_a_kernel_that_calls_blas_has_no_parallel_twin():
    """BLAS takes the threads for its products; loops on Numba's threads beside its spinning
    threads ran slower than on one."""
    module = load_example("two_layer_net").two_layer_net.compiled.module
    assert not hasattr(module, "_value_and_grad_kernel_parallel")


@pytest.mark.parametrize("size, parallel", [(10, False), (1 << 23, True)])
def test_scalar_model_picks_threads_only_for_large_work(size, parallel):
    x = sp.Symbol("x")
    f = sg.compile(sp.exp(x), [x])
    loop = f.module._value_and_grad_loop_for(size)
    assert (loop is f.module._value_and_grad_loop_parallel) == parallel


def test_one_thread_keeps_the_serial_loop_for_large_work():
    x = sp.Symbol("x")
    f = sg.compile(sp.exp(x), [x])
    numba.set_num_threads(1)          # the fixture sets two again afterwards
    assert f.module._value_and_grad_loop_for(1 << 23) is f.module._value_and_grad_loop
