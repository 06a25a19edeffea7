"""Values and gradients over Dask arrays: computed chunk by chunk, on a local cluster of two
worker processes and on Dask's own schedulers, they equal the call on the arrays in memory."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import symgrad as sg  # noqa: E402
from symgrad.derive.split import NotSplittable, split_over_batch  # noqa: E402
from symgrad.generation import load_models  # noqa: E402
from symgrad.interop.dask import build_graph, loaded_modules  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
n, m = sp.symbols("n m", integer=True, positive=True)
CHUNKS = (400, 137, 300, 163)          # unequal on purpose
SIZE = sum(CHUNKS)


def close(got, expected, rtol=1e-12):
    got, expected = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= rtol * np.abs(expected).max(), (got, expected)


def assert_same_call(got, expected):
    close(got[0], expected[0])
    assert set(got[1]) == set(expected[1])
    for name in expected[1]:
        close(got[1][name], expected[1][name])


# -- the models -------------------------------------------------------------------------------
def least_squares():
    """Sum form, examples as rows: ||X w - t||^2."""
    X, t, w = sg.matrix("X", n, 3), sg.vector("t", n), sg.vector("w", 3)
    r = X @ w - t
    return sg.compile(sg.dot(r, r), wrt=[w], name="least_squares")


def penalized_logistic():
    """Mean form, examples as columns, with a penalty counted once:
    mean(bce(w^T X + b, y)) + lam ||w||^2."""
    X, y, w = sg.matrix("X", 4, m), sg.matrix("y", 1, m), sg.vector("w", 4)
    b, lam = sp.symbols("b lam")
    z = w.T @ X + sg.broadcast(b, (1, m))
    loss = sg.mean(sg.binary_cross_entropy_with_logits(z, y)) + lam * sg.dot(w, w)
    return sg.compile(loss, wrt=[w, b], name="penalized_logistic")


@pytest.fixture(scope="module")
def least_squares_case():
    rng = np.random.default_rng(1)
    X, t, w = rng.normal(size=(SIZE, 3)), rng.normal(size=SIZE), rng.normal(size=3)
    dask_inputs = {"w": w, "X": da.from_array(X, chunks=(CHUNKS, 3)),
                   "t": da.from_array(t, chunks=(CHUNKS,))}
    return least_squares(), {"w": w, "X": X, "t": t}, dask_inputs


@pytest.fixture(scope="module")
def logistic_case():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(4, SIZE))
    y = (rng.random((1, SIZE)) < 0.4).astype(float)
    inputs = {"w": rng.normal(size=4), "b": 0.3, "X": X, "y": y, "lam": 0.7}
    # y stays a NumPy array: it is split like the Dask input
    return penalized_logistic(), inputs, dict(inputs, X=da.from_array(X, chunks=(4, CHUNKS)))


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each, started and closed here; the workers import
    this checkout's symgrad."""
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([previous] if previous else []))
    try:
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                           dashboard_address=None)
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def _symgrad_file():
    import symgrad

    return symgrad.__file__


# -- on the cluster ---------------------------------------------------------------------------
def test_workers_import_this_symgrad(client):
    assert set(client.run(_symgrad_file).values()) == {sg.__file__}


def test_sum_form_model_over_chunked_rows_equals_the_call_in_memory(client, least_squares_case):
    f, inputs, dask_inputs = least_squares_case
    assert_same_call(f.value_and_grad(**dask_inputs), f.value_and_grad(**inputs))
    close(f(**dask_inputs), f(**inputs))
    close(f.grad(**dask_inputs)["w"], f.grad(**inputs)["w"])


def test_mean_form_model_with_a_penalty_equals_the_call_in_memory(client, logistic_case):
    f, inputs, dask_inputs = logistic_case
    expected = f.value_and_grad(**inputs)
    got = f.value_and_grad(**dask_inputs)
    assert_same_call(got, expected)
    assert isinstance(got[0], float) and isinstance(got[1]["b"], float)
    assert got[1]["w"].shape == (4,)        # given 1-D, returned 1-D as in memory


def test_a_second_call_compiles_nothing_on_the_workers(client, least_squares_case):
    f, _, dask_inputs = least_squares_case
    f.value_and_grad(**dask_inputs)
    first = client.run(loaded_modules)
    f.value_and_grad(**dask_inputs)
    second = client.run(loaded_modules)
    assert second == first
    records = [record for modules in second.values() for record in modules.values()]
    assert records, "no worker ran a chunk"
    for record in records:
        assert record["imports"] == 1
        assert record["kernels"]["_value_and_grad_kernel"] == 1


# -- Dask's own schedulers --------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_default_schedulers_give_the_call_in_memory(scheduler):
    # the two-layer network of examples/ (mean over the columns of X and Y): the same module
    # as the other tests that compile it
    f = load_models(ROOT / "examples" / "two_layer_net.py")[0].compiled
    rng = np.random.default_rng(3)
    inputs = {"W1": rng.normal(size=(4, 2)), "b1": rng.normal(size=4),
              "W2": rng.normal(size=(1, 4)), "b2": rng.normal(size=1),
              "X": rng.normal(size=(2, SIZE)), "Y": (rng.random((1, SIZE)) > 0.5) * 1.0}
    dask_inputs = dict(inputs, X=da.from_array(inputs["X"], chunks=(2, CHUNKS)),
                       Y=da.from_array(inputs["Y"], chunks=(1, (500, 500))))
    with dask.config.set(scheduler=scheduler):
        got = f.value_and_grad(**dask_inputs)
    assert_same_call(got, f.value_and_grad(**inputs))


def _split_models():
    """Models that are sums over the m columns of X in the less common ways."""
    K, D = 3, 4
    X, Y = sg.matrix("X", D, m), sg.matrix("Y", K, m)
    W, b, v = sg.matrix("W", K, D), sg.vector("b", K), sg.vector("v", D)
    lam, c = sp.symbols("lam c")
    Z = W @ X + sg.broadcast(b, (K, m))
    return {
        # logsumexp across classes, not examples; m as a number in the penalty
        "softmax regression, penalty times m": (
            sg.softmax_cross_entropy(Z, Y, axis=0) / m
            + lam * m * sg.sum(sg.hadamard(W, W)) / 1000, [W, b]),
        # a matrix sum over the examples (X X^T) inside a trace
        "trace of W X X^T W^T / m": (sg.trace(W @ (X @ X.T) @ W.T) / m, [W]),
        # a sum along the batch axis, then a dot product; a constant term
        "dot(v, row sums of tanh X) + c v.v + 3": (
            sg.dot(v, sg.sum(sg.tanh(X), axis=1)) / m + c * sg.dot(v, v) + 3, [v, c]),
        # a parameter times the sum: its gradient is the sum itself
        "c sum(log1p(Z^2)) + c^2": (c * sg.sum(sg.log1p(sg.square(Z))) + c**2, [W, b, c]),
    }


@pytest.mark.parametrize("name", list(_split_models()))
def test_models_that_split_in_other_ways_give_the_call_in_memory(name):
    expr, wrt = _split_models()[name]
    f = sg.compile(expr, wrt=wrt)
    rng = np.random.default_rng(6)
    values = {"X": rng.normal(size=(4, SIZE)), "Y": rng.normal(size=(3, SIZE)),
              "W": rng.normal(size=(3, 4)), "b": rng.normal(size=3), "v": rng.normal(size=4),
              "lam": 0.3, "c": 1.7}
    inputs = {k: values[k] for k in f.inputs}
    with dask.config.set(scheduler="sync"):
        got = f.value_and_grad(**dict(inputs, X=da.from_array(values["X"], chunks=(4, CHUNKS))))
    assert_same_call(got, f.value_and_grad(**inputs))


def _models_in_other_tools_forms():
    """Models that symgrad.forms rewrites before compiling them (what the split must read)."""
    from sympy.physics.mechanics import dynamicsymbols

    X, y, w = sg.matrix("X", n, 2), sg.vector("y", n), sg.vector("w", 2)
    a, c = sp.symbols("a c")
    time = dynamicsymbols._t
    q = dynamicsymbols("q")     # q(t): it and its derivative are the inputs q and q_dot
    i = sp.Symbol("i", integer=True)
    dynamic = (sg.sum(sg.square(q * (X @ w) + q.diff(time) * y)) + a * q**2
               + sp.cos(time) * q.diff(time))
    return {
        # q(time) and its derivative are the inputs q and q_dot: parameters of the split
        "dynamicsymbols": (dynamic, [q, q.diff(time), w]),
        "dynamicsymbols, time in wrt": (dynamic, [q, q.diff(time), w, time]),
        # an applyfunc whose body reads the parameter c: an elementwise function of X
        "applyfunc over c": (sg.mean(sg.square(X.applyfunc(lambda e: sp.tanh(c * e)) @ w - y)),
                             [c, w]),
        "Sum with integer bounds": (sg.mean(sg.square(X @ w - y))
                                    + sp.Sum(w[i, 0] ** 2 * c, (i, 0, 1)), [w, c]),
        "unevaluated Derivative": (sg.mean(sg.square(X @ w - y)) * sp.Derivative(c**3, c),
                                   [w, c]),
    }


@pytest.mark.parametrize("name", list(_models_in_other_tools_forms()))
def test_models_in_other_tools_forms_give_the_call_in_memory(name):
    # the split reads the model as compile brought it to symgrad's forms, over the symbols
    # of its parameters: split as given, q(t) held the parameter q nowhere (its gradient
    # came back 0), t in wrt met an unknown Derivative and an applyfunc was refused as not
    # splitting
    expr, wrt = _models_in_other_tools_forms()[name]
    f = sg.compile(expr, wrt=wrt)
    rng = np.random.default_rng(8)
    values = {"X": rng.normal(size=(SIZE, 2)), "y": rng.normal(size=SIZE), "w": rng.normal(size=2),
              "q": 0.7, "q_dot": -0.3, "a": 0.5, "c": 0.8, "t": 0.2}
    inputs = {k: values[k] for k in f.inputs}
    dask_inputs = dict(inputs, X=da.from_array(values["X"], chunks=(CHUNKS, 2)),
                       y=da.from_array(values["y"], chunks=(CHUNKS,)))
    with dask.config.set(scheduler="sync"):
        got = f.value_and_grad(**dask_inputs)
        grads = f.grad(**dask_inputs)
    expected = f.value_and_grad(**inputs)
    assert_same_call(got, expected)
    assert_same_call((0.0, grads), (0.0, expected[1]))


def test_parameters_travel_in_one_key_per_call(least_squares_case):
    f, _, dask_inputs = least_squares_case
    total, _ = build_graph(f, "value_and_grad", dask_inputs)
    graph = total.__dask_graph__()
    dependencies = graph.get_all_dependencies()
    names = [k for k in graph if isinstance(k, str)]
    (inputs_key,) = [k for k in names if k.startswith("symgrad-inputs-")]
    chunks = [k for k in names if k.startswith("symgrad-chunk-")]
    assert len(chunks) == len(CHUNKS)
    assert all(inputs_key in dependencies[k] for k in chunks)
    assert [k for k in names if k.startswith("symgrad-module-")] != []


# -- models that do not split, and inputs that cannot ---------------------------------------
def _explode(block):
    raise AssertionError("a chunk was computed")


@pytest.mark.parametrize("build, node", [
    (lambda X, t, w: sg.logsumexp(X @ w - t), "logsumexp over all entries"),
    (lambda X, t, w: sg.log(sg.sum(sg.exp(X @ w))), "log of a sum over the examples"),
    (lambda X, t, w: sg.sum(X @ w) * sg.sum(t), "a product of two sums"),
    (lambda X, t, w: sg.sum(sg.softmax(X @ w, axis=0)), "softmax along n"),
])
def test_a_model_that_does_not_split_is_refused_before_any_chunk_runs(build, node):
    X, t, w = sg.matrix("X", n, 3), sg.vector("t", n), sg.vector("w", 3)
    f = sg.compile(build(X, t, w), wrt=[w])
    rng = np.random.default_rng(4)
    X0 = da.from_array(rng.normal(size=(SIZE, 3)), chunks=(CHUNKS, 3))
    X0 = X0.map_blocks(_explode, dtype=float)
    inputs = {"w": np.ones(3), "X": X0, "t": np.zeros(SIZE)}
    with pytest.raises(NotSplittable, match="is not a sum over n of per-example terms") as error:
        f.value_and_grad(**{name: inputs[name] for name in f.inputs})
    assert node in str(error.value)


def test_the_refusal_names_the_offending_node():
    X, t, w = sg.matrix("X", n, 3), sg.vector("t", n), sg.vector("w", 3)
    loss = sg.sum(sg.square(X @ w - t)) + sg.logsumexp(X @ w)
    with pytest.raises(NotSplittable, match=r"in logsumexp\(X w\)"):
        split_over_batch(loss, [w], n)


def test_a_parameter_with_the_batch_dimension_is_refused():
    X, v = sg.matrix("X", n, 3), sg.vector("v", n)
    with pytest.raises(NotSplittable, match="the parameter v has the batch dimension n"):
        split_over_batch(sg.dot(v, X @ sp.OneMatrix(3, 1)), [v], n)


def test_penalty_counted_once_and_mean_scaled_by_the_total():
    X, t, w = sg.matrix("X", n, 3), sg.vector("t", n), sg.vector("w", 3)
    split = split_over_batch(sg.mean(sg.square(X @ w - t)) + 2 * sg.dot(w, w), [w], n)
    assert split.once == 2 * sg.dot(w, w)
    # the 1/n of the mean is the whole batch's size; the shapes keep n, a chunk's size
    assert split.per_chunk == sg.sum(sg.square(X @ w - t)) / split.total


def test_one_chunk_runs_the_whole_model_even_one_that_does_not_split():
    X, t, w = sg.matrix("X", n, 3), sg.vector("t", n), sg.vector("w", 3)
    f = sg.compile(sg.logsumexp(X @ w - t), wrt=[w])
    rng = np.random.default_rng(5)
    inputs = {"w": rng.normal(size=3), "X": rng.normal(size=(50, 3)), "t": rng.normal(size=50)}
    with dask.config.set(scheduler="sync"):
        got = f.value_and_grad(**dict(inputs, X=da.from_array(inputs["X"])))
    assert_same_call(got, f.value_and_grad(**inputs))


def test_inputs_chunked_along_two_dimensions_are_refused():
    X, W = sg.matrix("X", n, m), sg.matrix("W", 2, n)
    f = sg.compile(sg.sum(sg.square(W @ X)), wrt=[W])
    X0 = da.ones((10, 12), chunks=(5, 6))
    with pytest.raises(ValueError, match="X along n; X along m"):
        f(W=np.ones((2, 10)), X=X0)


def test_a_parameter_given_as_a_dask_array_is_refused(least_squares_case):
    f, _, dask_inputs = least_squares_case
    with pytest.raises(TypeError, match="parameter 'w' is a Dask array"):
        f.value_and_grad(**dict(dask_inputs, w=da.ones(3)))


def test_mismatched_batch_sizes_name_the_input(least_squares_case):
    f, _, dask_inputs = least_squares_case
    with pytest.raises(ValueError, match="input 't' has 999 entries along n"):
        f(**dict(dask_inputs, t=np.zeros(999)))


def test_import_symgrad_and_compile_do_not_import_dask():
    code = ("import sys, sympy as sp, symgrad as sg\n"
            "n = sp.Symbol('n', integer=True, positive=True)\n"
            "X, w = sg.matrix('X', n, 2), sg.vector('w', 2)\n"
            "sg.compile(sg.sum(sg.square(X @ w)), wrt=[w])\n"
            "assert 'dask' not in sys.modules, 'dask was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
