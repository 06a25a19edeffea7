"""``sg.grad`` and ``sg.compile``: from a SymPy model to gradients and compiled functions.

A compiled function is a generated module (the same text ``sg.generate`` writes) saved in a
cache folder and imported, so Numba caches its machine code on disk and a second process does
not compile again.  The folder is ``$SYMGRAD_CACHE_DIR`` or ``~/.cache/symgrad``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

from symgrad.codegen.docstring import Gradients, describe_symbol, module_docstring
from symgrad.codegen.module import ModuleSpec, check_names, module_name_for, module_source
from symgrad.derive.graph import dag_atoms, dag_free_symbols, dag_nodes, dag_xreplace
from symgrad.derive.reverse import derive, inline_all
from symgrad.files import cache_dir, drop_damaged_numba_cache, load_module, write_atomically
from symgrad.nodes import one_call, one_pass, replaced
from symgrad.optimize import fuse, lower, restricted
from symgrad.version import __version__

__all__ = ["grad", "compile", "CompiledFunction", "Gradients", "build_spec"]


def _check_wrt(expr, wrt) -> list:
    """``wrt`` as a list of distinct symbols of the model, or an error naming the entry:
    not a symbol, listed twice, a matrix dimension (checked first: a dimension is in the
    model, though not among its free symbols), not in the model, or a symbol that only shares
    its name with one of the model's (other assumptions make it another symbol, whose
    gradient would be 0).
    """
    if isinstance(wrt, (sp.Symbol, sp.MatrixSymbol)):
        wrt = [wrt]
    if not isinstance(wrt, Sequence) or isinstance(wrt, str):
        raise TypeError(f"wrt must be a list of SymPy symbols or matrix symbols, got {wrt!r}")
    present = dag_free_symbols(expr)
    dimensions = None
    out = []
    listed: set = set()     # (a set: a model with 1,000 parameters checks in O(n))
    for w in wrt:
        if not isinstance(w, (sp.Symbol, sp.MatrixSymbol)):
            raise TypeError(f"wrt entry {w!r} is a {type(w).__name__}, not a sympy.Symbol or "
                            "MatrixSymbol: differentiate with respect to symbols only")
        if w in listed:
            raise ValueError(f"wrt lists {w} twice")
        listed.add(w)
        if isinstance(w, sp.Symbol):
            if dimensions is None:      # (found once, and only when a scalar is listed)
                dimensions = shape_symbols(expr)
            if w in dimensions:
                _refuse_dimension(w)
        if w not in present:
            namesakes = [s for s in present if getattr(s, "name", None) == w.name]
            if namesakes:
                other = namesakes[0]
                raise ValueError(
                    f"wrt entry {w.name!r} is not the model's {w.name!r}: one is "
                    f"{describe_symbol(w)}, the other {describe_symbol(other)}; SymPy takes "
                    "them for two different symbols: pass the model's own symbol")
            raise ValueError(f"wrt entry {w.name!r} does not appear in the model")
        out.append(w)
    return out


def dimensions_of(expr) -> set:
    """The symbols that appear in the shapes of the expression's matrix symbols."""
    dims = set()
    for m in dag_atoms(expr, sp.MatrixSymbol):
        for d in m.shape:
            dims |= sp.sympify(d).free_symbols
    return dims


def shape_symbols(expr) -> set:
    """The symbols in the shape of any matrix in the expression (inputs, OneMatrix(n, m),
    the shape of a broadcast ...): the model's dimensions, never inputs to differentiate.

    >>> n = sp.Symbol("n")
    >>> sorted(shape_symbols(sp.MatrixSymbol("X", n, 2) @ sp.OneMatrix(2, sp.Symbol("m"))), key=str)
    [m, n]
    """
    found: set = set()
    for node in dag_nodes(sp.sympify(expr)):
        if isinstance(node, MatrixExpr):
            for extent in node.shape:
                found |= sp.sympify(extent).free_symbols
    return found


def free_dimensions(expr) -> set:
    """Dimensions that no matrix symbol's shape fixes (m in ``u.T @ OneMatrix(n, m)``): the
    compiled function takes them as integer arguments."""
    return shape_symbols(expr) - dimensions_of(expr)


def inputs_of(expr, wrt: list) -> list:
    """Parameters (wrt, in order), then every other free symbol, sorted by name."""
    expr = sp.sympify(expr)
    dims = dimensions_of(expr) | {d for w in wrt if isinstance(w, MatrixExpr)
                                  for e in w.shape for d in sp.sympify(e).free_symbols}
    symbols = dag_atoms(expr, sp.MatrixSymbol) | {s for s in dag_free_symbols(expr)
                                                 if isinstance(s, sp.Symbol)}
    parameters = set(wrt)       # (a set: a model may have thousands of inputs)
    data = sorted((s for s in symbols if s not in parameters and s not in dims),
                  key=lambda s: s.name)
    dims |= shape_symbols(expr)      # dimensions no input fixes stay inputs (integers)
    clash = [w for w in wrt if w in dims]
    if clash:
        _refuse_dimension(clash[0])
    return list(wrt) + data


def least_extents(expr, inputs: list) -> dict:
    """``(matrix input, axis) -> (least extent, entry)`` for each symbolic extent of an input
    whose entries the model reads at fixed positions (``A[5, 0]`` needs 6 rows).  No shape
    check catches these: an n x 1 array of 3 rows has the shape the model says, and its
    kernel would read past the array's end, so the compiled code checks them too.

    >>> n = sp.Symbol("n", integer=True, positive=True)
    >>> A = sp.MatrixSymbol("A", n, 1)
    >>> least_extents(2 * A[5, 0] + A[1, 0], [A])
    {(A, 0): (6, A[5, 0])}
    """
    symbolic = {s for s in inputs if isinstance(s, MatrixExpr)
                and not all(sp.sympify(e).is_number for e in s.shape)}
    least: dict = {}
    if not symbolic:
        return least
    for node in dag_nodes(expr):
        if not (isinstance(node, MatrixElement) and node.parent in symbolic):
            continue
        for axis, index in enumerate((node.i, node.j)):
            key = (node.parent, axis)
            if (index.is_Integer and not sp.sympify(node.parent.shape[axis]).is_number
                    and (key not in least or index + 1 > least[key][0])):
                least[key] = (int(index) + 1, node)
    order = {s: k for k, s in enumerate(inputs)}
    return dict(sorted(least.items(), key=lambda item: (order[item[0][0]], item[0][1])))


def _refuse_dimension(w) -> None:
    raise ValueError(f"{w} is a matrix dimension and cannot be differentiated")


@one_pass
def grad(expr, wrt) -> Gradients:
    """The gradient of a scalar expression with respect to each symbol of ``wrt``.

    Gradients are SymPy expressions in the shape convention: the gradient with respect to a
    matrix W has W's shape.

    >>> import sympy as sp
    >>> w, x, y = sp.symbols("w x y")
    >>> grad((w * x - y) ** 2, [w])[w]
    2*x*(w*x - y)
    """
    from symgrad.forms import normalize

    given = list(wrt) if isinstance(wrt, Sequence) and not isinstance(wrt, str) else [wrt]
    expr, wrt = normalize(expr, wrt)
    wrt = _check_wrt(expr, wrt)
    if isinstance(expr, MatrixExpr):
        if tuple(expr.shape) != (1, 1):
            if isinstance(expr, sp.MatrixBase):     # an explicit sympy.Matrix: no vjp
                raise ValueError(f"grad needs a scalar expression; this one is an explicit "
                                 f"sympy.Matrix of shape {expr.shape}. Use sg.jacobian, or "
                                 "sg.compile(...).jacobian, for its derivatives.")
            raise ValueError(f"grad needs a scalar expression; this one has shape "
                             f"{expr.shape}. Use sg.compile(...).vjp for vector-Jacobian "
                             "products.")
        from symgrad.ops import Entry
        expr = Entry(expr, 0, 0)     # a 1 x 1 result is the scalar it holds
    derivation = derive(expr, wrt)
    result = Gradients()
    result.symbol_of = {}
    # a value of the model that canonicalisation left as the user wrote it is that
    # expression itself: inlining its name need not build it again (Rosenbrock with 1,000
    # variables: a quarter of sg.grad's time)
    as_written = set(dag_nodes(expr))
    walk = derivation.walk
    known = {name: node for node, name, rebuilt in zip(walk.nodes, walk.names, walk.rebuilt)
             if rebuilt is not None and node in as_written}
    gradients = inline_all(derivation, [derivation.gradients[w] for w in wrt], known=known)
    for key, w, gradient in zip(given, wrt, gradients):   # keyed by what the user passed
        result[key] = gradient                             # (q1(t), not q1)
        if key is not w:
            result.symbol_of[key] = w
    result.derivation = derivation
    return result


def internal_symbols(inputs: list, dimensions: set) -> dict:
    """The user's symbol -> symgrad's own: dimensions become ``dim_0, dim_1, ...`` (with their
    assumptions) and inputs ``in_0, in_1, ...`` in order (matrix inputs keep their shapes, in
    the new dimensions).  Generated code names only these, so no user text reaches it and no
    user name can collide with another or with symgrad's own names; two dimensions that
    merely share a name stay two dimensions.

    >>> n = sp.Symbol("n", integer=True)
    >>> table = internal_symbols([sp.MatrixSymbol("X", n, 2), sp.Symbol("y")], {n})
    >>> [(str(k), str(v), v.shape if hasattr(v, "shape") else None) for k, v in table.items()]
    [('n', 'dim_0', None), ('X', 'in_0', (dim_0, 2)), ('y', 'in_1', None)]
    """
    table: dict = {}
    order = sorted(dimensions, key=lambda d: (d.name, sorted(d.assumptions0.items())))
    for k, d in enumerate(order):
        table[d] = sp.Symbol(f"dim_{k}", **d.assumptions0)
    for k, s in enumerate(x for x in inputs if x not in table):
        if isinstance(s, sp.MatrixSymbol):
            shape = [replaced(sp.sympify(e), table) for e in s.shape]
            table[s] = sp.MatrixSymbol(f"in_{k}", *shape)
        else:
            table[s] = sp.Symbol(f"in_{k}", **s.assumptions0)
    return table


def _in_user_names(error: Exception, public: dict) -> Exception:
    """``error`` with symgrad's own names in its message (``in_0``, ``dim_1``) written as
    the user's (see :func:`internal_symbols`), of the same type where that type takes a
    message alone.

    >>> e = _in_user_names(ValueError("no rule for atan2(in_1, in_0)"),
    ...                    {sp.Symbol("in_0"): "speed", sp.Symbol("in_1"): "angle"})
    >>> str(e)
    'no rule for atan2(angle, speed)'
    """
    by_name = {ours.name: theirs for ours, theirs in public.items()}
    text = _INTERNAL_NAME.sub(lambda m: by_name.get(m.group(), m.group()), str(error))
    if text == str(error) or len(error.args) != 1:
        return error
    try:
        return type(error)(text)
    except Exception:  # noqa: BLE001 - a type that wants more than a message: as it was
        return error


_INTERNAL_NAME = re.compile(r"\b(?:in|dim)_\d+\b")


@one_pass
def build_spec(expr, wrt, name: str = "model") -> ModuleSpec:
    """Derive, optimize and describe the module for expr (see :func:`compile`)."""
    from symgrad.forms import normalize

    expr, wrt = normalize(expr, wrt, compiled=True)
    wrt = _check_wrt(expr, wrt)
    inputs = inputs_of(expr, wrt)
    check_names(inputs)
    output_shape = tuple(expr.shape) if isinstance(expr, MatrixExpr) else ()
    free = free_dimensions(expr)
    dims = shape_symbols(expr) | {d for w in wrt if isinstance(w, MatrixExpr)
                                  for e in w.shape for d in sp.sympify(e).free_symbols}
    table = internal_symbols(inputs, dims)
    public = {ours: user.name for user, ours in table.items()}
    user_expr, user_wrt, user_inputs = expr, wrt, inputs
    # a model of scalars whose names are none of symgrad's own (check_names refuses "_t3")
    # is derived as written, its symbols renamed to symgrad's by the lowering: rebuilding
    # every node for new names first costs as much as lowering (a sum of 10,000 terms)
    as_written = (not dims and not output_shape and not any(
        isinstance(s, MatrixExpr) or _INTERNAL_NAME.fullmatch(s.name) for s in inputs)
        and not any(isinstance(n, MatrixExpr) for n in dag_nodes(expr)))
    if not as_written:
        expr = dag_xreplace(expr, table, renaming=True)
    wrt = [table[w] for w in wrt]
    inputs = [table[s] for s in inputs]
    free = {table[d] for d in free}
    output_shape = tuple(replaced(sp.sympify(e), table) for e in output_shape)
    try:
        if output_shape == (1, 1):
            from symgrad.ops import Entry
            expr, output_shape = Entry(expr, 0, 0), ()
        if output_shape:
            upstream = sp.MatrixSymbol("upstream", *output_shape)
            derivation = derive(expr, wrt, seed=upstream)
            outputs = {"value": derivation.value}
            outputs.update({w.name: derivation.gradients[w] for w in wrt})
            lowered = lower(derivation, outputs, inputs)      # once, for every program
            forward = fuse(restricted(lowered, ["value"]))
            vjp = fuse(restricted(lowered, [w.name for w in wrt]))
            spec = ModuleSpec(name=name, inputs=inputs, parameters=wrt, output_shape=output_shape,
                              free_dimensions=free, public=public, internal=table,
                              forward=forward, vjp=vjp, upstream=upstream)
            spec.op_counts = {"forward": forward.op_count(), "vjp": vjp.op_count()}
        else:
            derived = user_wrt if as_written else wrt      # (the derivation's symbols)
            derivation = derive(expr, derived)
            outputs = {"value": derivation.value}
            outputs.update({w.name: derivation.gradients[d] for w, d in zip(wrt, derived)})
            lowered = lower(derivation, outputs, inputs,      # once, for every program
                            renamed=table if as_written else None)
            forward = fuse(restricted(lowered, ["value"]))
            value_and_grad = fuse(lowered)
            spec = ModuleSpec(name=name, inputs=inputs, parameters=wrt, output_shape=(),
                              free_dimensions=free, public=public, internal=table,
                              forward=forward, value_and_grad=value_and_grad)
            spec.op_counts = {"forward": forward.op_count(),
                              "value_and_grad": value_and_grad.op_count()}
    except (NotImplementedError, ValueError, TypeError) as error:
        # derivation and lowering see symgrad's names (in_0, dim_0): say the user's
        translated = _in_user_names(error, public)
        if translated is error:
            raise
        raise translated.with_traceback(error.__traceback__) from None
    spec.least_extents = least_extents(expr, inputs)
    spec.user_expression = user_expr
    spec.docstring = module_docstring(name, user_expr, user_wrt, user_inputs, spec,
                                      derivation=derivation, lowered=lowered)
    return spec


def _batchable_inputs(spec: ModuleSpec) -> tuple:
    """The data inputs of a scalar model that have a symbolic dimension (X of shape n_x x m):
    the ones a call may pass as Dask arrays chunked along that dimension."""
    if spec.value_and_grad is None or spec.is_scalar_model:
        return ()
    parameters = set(spec.parameters)
    return tuple(spec.public_name(s) for s in spec.inputs if isinstance(s, MatrixExpr)
                 and s not in parameters and not all(sp.sympify(e).is_number
                                                     for e in s.shape))


class CompiledFunction:
    """A model compiled to Numba: ``f(**inputs)`` is the value; ``f.value_and_grad``,
    ``f.grad`` (scalar outputs) and ``f.vjp`` (matrix outputs) the derivatives.

    Inputs are passed by symbol name.  Scalars may be floats or arrays (broadcast like NumPy
    ufuncs, one fused loop); matrices are float64 arrays (other real dtypes are converted,
    complex and non-numeric inputs are refused); vectors accept (n,) or (n, 1) and gradients
    come back in the shape given.  Data given as Dask arrays chunked along a symbolic
    dimension is evaluated chunk by chunk on the active Dask scheduler when the model is a
    sum over that dimension (see :mod:`symgrad.interop.dask`).
    """

    def __init__(self, spec: ModuleSpec, source: str, module: ModuleType, path: Path,
                 expression=None):
        self.spec = spec
        self.expression = expression        # the model as given (see model_in_forms)
        self.source = source
        self.module = module
        self.path = path
        self.inputs = tuple(spec.public_name(s) for s in spec.inputs)
        self.parameters = tuple(spec.public_name(s) for s in spec.parameters)
        self.op_counts = dict(spec.op_counts)
        self.forward = module.forward
        if spec.value_and_grad is not None:
            self.value_and_grad = module.value_and_grad
            self.grad = module.grad
        if spec.vjp is not None:
            self.vjp = module.vjp
        batchable = _batchable_inputs(spec)
        if batchable and expression is not None:
            # data that may come as Dask arrays: such calls go to symgrad.interop.dask, which
            # imports Dask only when one arrives
            from symgrad.interop.dask import dask_aware
            self.forward = dask_aware(self, "forward", module.forward, batchable)
            self.value_and_grad = dask_aware(self, "value_and_grad", module.value_and_grad,
                                             batchable)
            self.grad = dask_aware(self, "grad", module.grad, batchable)

    @property
    def model_in_forms(self):
        """The model in symgrad's forms over the user's symbols (``q1(t)`` already the symbol
        ``q1``, an applyfunc an elementwise function), as its parameters are: what second
        order and the Dask split differentiate again (the expression as given would hold
        ``q1(t)``, in which the parameter ``q1`` does not appear)."""
        expression = getattr(self.spec, "user_expression", None)
        return self.expression if expression is None else expression

    @property
    def __call__(self):
        """``f(**inputs)`` is ``f.forward(**inputs)``: the call reaches the model's function
        itself, without passing the inputs on once more (a hop that, with 200 inputs by
        keyword, cost as much as the model: 22 against 14 us)."""
        return self.forward

    @property
    def __signature__(self) -> inspect.Signature:
        """The signature of ``f(...)``: the model's inputs, as ``f.forward`` takes them."""
        return inspect.signature(self.forward)

    def __getattr__(self, name):
        if name in ("value_and_grad", "grad"):
            raise AttributeError(f"{name} needs a scalar output; this model's output has shape "
                                 f"{self.spec.output_shape}: use f.vjp(upstream, **inputs)")
        if name == "vjp":
            raise AttributeError("vjp is for matrix outputs; this model's output is a scalar: "
                                 "use f.value_and_grad(**inputs)")
        raise AttributeError(name)

    def hessian(self, **inputs) -> dict:
        """The Hessian of a scalar output, ``{(p, q): array of shape p.shape + q.shape}`` for
        every pair of parameters (vectors as given), computed in matrix form (see
        :mod:`symgrad.second`); for scalar models broadcast over arrays, per point.

        >>> import sympy as sp
        >>> w, x = sp.symbols("w x")
        >>> compile(w**3 * x, [w]).hessian(w=2.0, x=1.0)
        {('w', 'w'): 12.0}
        """
        from symgrad.second import compiled_hessian
        return compiled_hessian(self, inputs)

    def hvp(self, tangents: dict, **inputs) -> dict:
        """The Hessian-vector product ``{p: sum_q H[p, q] tangents[q]}`` (forward over
        reverse; no Hessian is formed); a parameter missing from ``tangents`` does not move.

        >>> import sympy as sp
        >>> w, x = sp.symbols("w x")
        >>> compile(w**3 * x, [w]).hvp({"w": 1.0}, w=2.0, x=1.0)
        {'w': 12.0}
        """
        from symgrad.second import compiled_hvp
        return compiled_hvp(self, tangents, inputs)

    def jacobian(self, **inputs) -> dict:
        """The Jacobian of a vector or matrix output, ``{p: array of shape out.shape +
        p.shape}``."""
        from symgrad.second import compiled_jacobian
        return compiled_jacobian(self, inputs)

    def scipy(self, **data):
        """The model as a function of one flat vector for ``scipy.optimize``: a
        :class:`symgrad.second.ScipyProblem` with ``fun``, ``jac``, ``hess``, ``hessp``,
        ``pack`` and ``unpack``."""
        from symgrad.second import ScipyProblem
        return ScipyProblem(self, data)

    def to_torch(self):
        """This function on ``torch.Tensor`` inputs, its gradient in torch autograd: a
        :class:`symgrad.interop.torch.TorchFunction` (needs PyTorch).

        >>> import sympy as sp, torch
        >>> w, x = sp.symbols("w x")
        >>> tf = compile(w**2 * x, [w]).to_torch()
        >>> w0 = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
        >>> tf(w=w0, x=torch.tensor(2.0, dtype=torch.float64)).backward(); float(w0.grad)
        12.0
        """
        from symgrad.interop.torch import to_torch
        return to_torch(self)

    def to_jax(self):
        """This function on JAX arrays, differentiable by ``jax.grad`` and usable under
        ``jax.jit``: a :class:`symgrad.interop.jax.JaxFunction` (needs JAX with
        ``jax_enable_x64`` on).

        >>> import jax, sympy as sp
        >>> jax.config.update("jax_enable_x64", True)
        >>> w, x = sp.symbols("w x")
        >>> jf = compile(w**2 * x, [w]).to_jax()
        >>> float(jax.grad(lambda w: jf(w=w, x=2.0))(3.0))
        12.0
        """
        from symgrad.interop.jax import to_jax
        return to_jax(self)

    def __repr__(self) -> str:
        return (f"<symgrad compiled function of {', '.join(self.inputs)}; "
                f"parameters {', '.join(self.parameters)}; ops {self.op_counts}>")


@one_call
def compile(expr, wrt, name: str = "model") -> CompiledFunction:  # noqa: A001 - the API name
    """Derive, optimize and compile ``expr`` and its gradients to Numba.

    >>> import sympy as sp
    >>> w, x, y = sp.symbols("w x y")
    >>> f = compile((w * x - y) ** 2, [w])
    >>> f.value_and_grad(w=1.0, x=1.0, y=2.0)
    (1.0, {'w': -2.0})

    An explicit ``sympy.Matrix`` of scalar expressions compiles to
    :class:`symgrad.second.ExplicitMatrixFunction` (its entries and ``jacobian``).
    """
    if isinstance(expr, sp.MatrixBase):
        from symgrad.second import ExplicitMatrixFunction
        return ExplicitMatrixFunction(expr, wrt, name)
    spec = build_spec(expr, wrt, name)
    source = module_source(spec, __version__)
    module_name = module_name_for(source)
    path = cache_dir() / f"{module_name}.py"
    if not path.exists() or path.read_text(encoding="utf-8", errors="replace") != source:
        write_atomically(path, source)
    drop_damaged_numba_cache(path)
    module = load_module(path, module_name)
    return CompiledFunction(spec, source, module, path, expression=sp.sympify(expr))
