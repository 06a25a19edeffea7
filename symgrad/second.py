"""Second order and Jacobians: ``sg.hessian``, ``sg.hvp``, ``sg.jacobian`` (symbolic, at the
matrix level) and their compiled counterparts ``f.hessian``, ``f.hvp``, ``f.jacobian`` and
``f.scipy``.

Hessians are forward over reverse: the gradient (a matrix expression from reverse mode) is
differentiated again in forward mode (:mod:`symgrad.derive.second`).  For two vector
parameters p (n x 1) and q (m x 1) every direction of q is pushed through at once as the
identity matrix, so a block is a closed matrix form:

>>> import sympy as sp, symgrad as sg
>>> x, A = sg.vector("x", 3), sg.matrix("A", 3, 3)
>>> print(sg.show(sg.hessian(sg.dot(x, A @ x), [x])))
d²f/dx dx = A + A^T

Layouts (the shape convention, unit axes dropped):

* ``hessian(f, wrt)[(p, q)]`` has shape p.shape + q.shape: an n x m matrix for two vectors,
  p's (or q's) shape when the other one is a scalar, a scalar for two scalars.  A block with
  a matrix parameter has four axes and no matrix form: the symbolic API raises
  :class:`NoMatrixForm`; the compiled ``f.hessian`` computes it from Hessian-vector products.
* ``jacobian(y, wrt)[q]`` has shape y.shape + q.shape: an m x n matrix for a column output
  (m x 1) and a vector q (n x 1); y's shape for a scalar q; q's shape for a scalar output;
  for a row output (1 x m) and a vector q, the m x n matrix of rows d y_i / d q^T.
* ``hvp(f, wrt, tangents)[p]`` has p's shape: sum over q of H[p, q] v_q.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symgrad.codegen.docstring import fresh_names
from symgrad.derive.second import NoMatrixForm, jacobian_columns, jvp
from symgrad.nodes import built, dag_rebuild, derivative, new_pass, one_call, replaced, shared

__all__ = ["hessian", "hvp", "jacobian", "SecondOrder", "NoMatrixForm", "ScipyProblem"]


class SecondOrder(dict):
    """Second-order (or Jacobian) blocks as SymPy expressions; prints with ``sg.show``."""

    kind: str = "hessian"
    names: dict = {}        # a key the user gave -> its name in formulas (q(t) -> "q")

    def _show(self, output: str = "f", latex: bool = False) -> str:
        return _show(self, output, latex)

    def __str__(self) -> str:
        return _show(self, "f", False)

    def _repr_latex_(self) -> str:
        return "$\\displaystyle " + _show(self, "f", True) + "$"


def _is_vector(s) -> bool:
    return isinstance(s, MatrixExpr) and s.shape[1] == 1 and s.shape[0] != 1


def _is_scalar(s) -> bool:
    return not isinstance(s, MatrixExpr)


def _zero_like(shape_of):
    return sp.ZeroMatrix(*shape_of.shape) if isinstance(shape_of, MatrixExpr) else sp.S.Zero


def _tidy(e):
    """The canonical form (fused elementwise loops, products in the cheapest order) of a
    derivative that forward mode built: its equal pieces made one object first, which the
    canonicalizer's memo then finds without comparing copies node by node."""
    from symgrad.derive.graph import Canonicalizer
    return Canonicalizer()(shared([e])[0])


def _block(gradient, p, q):
    """d gradient / d q, where gradient = df/dp: shape p.shape + q.shape (unit axes
    dropped)."""
    if _is_scalar(q):
        d = jvp(gradient, {q: sp.S.One})
        return _zero_like(gradient) if d is None else _tidy(d)
    if not _is_vector(q):
        raise NoMatrixForm(f"the Hessian block ({_name(p)}, {_name(q)}) has four axes (the "
                           f"parameter {_name(q)} is a {q.shape[0]} x {q.shape[1]} matrix) "
                           "and no matrix form: use sg.hvp, or the compiled f.hessian, which "
                           "computes it from Hessian-vector products")
    if not (_is_scalar(p) or _is_vector(p)):
        raise NoMatrixForm(f"the Hessian block ({_name(p)}, {_name(q)}) has four axes (the "
                           f"parameter {_name(p)} is a {p.shape[0]} x {p.shape[1]} matrix) "
                           "and no matrix form: use sg.hvp, or the compiled f.hessian")
    try:
        d = jacobian_columns(gradient, q)
    except NoMatrixForm as error:
        raise NoMatrixForm(f"the Hessian block ({_name(p)}, {_name(q)}) has no matrix form "
                           f"({error}): use sg.hvp, or the compiled f.hessian") from None
    d = _tidy(d)
    return d.T if _is_scalar(p) else d       # a scalar's row of directions: q's shape


def _name(s) -> str:
    return getattr(s, "name", str(s))


def _in_symgrad_forms(expr, wrt):
    """``(expr, symbols, user)``: the model and ``wrt`` in symgrad's forms (a function of
    time ``q(t)`` becomes the symbol ``q``, its derivative ``q_dot``: see
    :func:`symgrad.forms.normalize`), and the user's entry of ``wrt`` for each symbol, so that
    results come back under the keys the user gave, as from :func:`symgrad.grad`."""
    from symgrad.forms import normalize

    entries = list(wrt) if isinstance(wrt, (list, tuple)) else [wrt]
    expr, symbols = normalize(expr, entries)
    return expr, symbols, dict(zip(symbols, entries))


def _keyed_by_user(result: SecondOrder, user: dict, pairs: bool) -> SecondOrder:
    """``result`` with its keys (or pairs of keys) the user's entries of ``wrt``, and one
    object for each value its blocks share (see :func:`symgrad.nodes.shared`)."""
    def theirs(s):
        return user.get(s, s)
    values = shared(list(result.values()))
    out = SecondOrder({((theirs(k[0]), theirs(k[1])) if pairs else theirs(k)): v
                       for k, v in zip(result, values)})
    out.kind = result.kind
    out.names = {theirs(s): s.name for s in user if theirs(s) is not s}
    return out


@one_call
def hessian(expr, wrt) -> SecondOrder:
    """The Hessian of a scalar expression, block by block: ``{(p, q): d²f/dp dq}`` for every
    pair of ``wrt`` entries, each block in the shape convention (see the module docstring).

    >>> import sympy as sp, symgrad as sg
    >>> M, x, y = sg.matrix("M", 4, 3), sg.vector("x", 3), sg.vector("y", 4)
    >>> r = M @ x - y
    >>> sg.hessian(sg.dot(r, r), [x])[(x, x)]
    2*(M^T M)
    """
    from symgrad.compiled import grad

    expr, symbols, user = _in_symgrad_forms(expr, wrt)
    gradients = grad(expr, symbols)
    wrt = list(gradients)
    result = SecondOrder()
    result.kind = "hessian"
    for i, p in enumerate(wrt):
        for q in wrt[i:]:
            block = _block(gradients[p], p, q)
            result[(p, q)] = block
            if q is not p:
                result[(q, p)] = block.T if (_is_vector(p) and _is_vector(q)) else block
    # in wrt order, pair by pair
    ordered = SecondOrder({(p, q): result[(p, q)] for p in wrt for q in wrt})
    ordered.kind = "hessian"
    return _keyed_by_user(ordered, user, pairs=True)


@one_call
def hvp(expr, wrt, tangents: Mapping) -> SecondOrder:
    """The Hessian-vector product ``{p: sum_q H[p, q] v_q}`` as expressions, forward over
    reverse (no Hessian is formed).  ``tangents`` maps parameters to directions of their shape;
    a parameter it leaves out does not move.

    >>> import sympy as sp, symgrad as sg
    >>> x, A, v = sg.vector("x", 3), sg.matrix("A", 3, 3), sg.vector("v", 3)
    >>> sg.hvp(sg.dot(x, A @ x), [x], {x: v})[x]
    A v + A^T v
    """
    from symgrad.compiled import grad

    expr, symbols, user = _in_symgrad_forms(expr, wrt)
    gradients = grad(expr, symbols)
    ours = {theirs: s for s, theirs in user.items()}
    moving = {}
    for s, v in dict(tangents).items():
        s = ours.get(s, s)
        if s not in gradients:
            raise ValueError(f"tangent given for {_name(s)}, which is not in wrt "
                             f"({', '.join(_name(w) for w in gradients)})")
        v = sp.sympify(v)
        if isinstance(s, MatrixExpr) != isinstance(v, MatrixExpr) or (
                isinstance(s, MatrixExpr) and tuple(v.shape) != tuple(s.shape)):
            shape = tuple(v.shape) if isinstance(v, MatrixExpr) else "a scalar"
            want = tuple(s.shape) if isinstance(s, MatrixExpr) else "a scalar"
            raise ValueError(f"the tangent of {_name(s)} must have its shape {want}, got {shape}")
        moving[s] = v
    result = SecondOrder()
    result.kind = "hvp"
    for p, g in gradients.items():
        d = jvp(g, moving)
        result[p] = _zero_like(g) if d is None else _tidy(d)
    return _keyed_by_user(result, user, pairs=False)


@one_call
def jacobian(expr, wrt) -> SecondOrder:
    """The Jacobian of a vector or matrix output, ``{q: d expr / d q}`` in the layout of the
    module docstring: for a column output y (m x 1) and a vector q (n x 1), an m x n matrix
    expression (d tanh(W x)/dx = (1 - y^2) ∘ W, i.e. diag(1 - y^2) W).  ``expr`` may also be
    an explicit ``sympy.Matrix`` of scalar expressions, differentiated entry by entry with
    respect to scalar symbols.

    >>> import symgrad as sg
    >>> W, x = sg.matrix("W", 2, 3), sg.vector("x", 3)
    >>> print(sg.show(sg.jacobian(sg.tanh(W @ x), [x]), output="y"))
    dy/dx = diag(1 - tanh(W x)^2) W
    """
    result = SecondOrder()
    result.kind = "jacobian"
    if isinstance(expr, sp.MatrixBase):
        from symgrad.forms import normalize_explicit
        given = list(wrt) if isinstance(wrt, (list, tuple)) else [wrt]
        explicit, symbols = normalize_explicit(expr, given)
        for q in symbols:
            if not isinstance(q, sp.Symbol):
                raise TypeError(f"the Jacobian of an explicit sympy.Matrix is taken with "
                                f"respect to scalar symbols; {q!r} is a {type(q).__name__}")
        columns = _explicit_jacobian(explicit, symbols)
        for q, theirs in zip(symbols, given):
            result[theirs] = columns[q]
        result.names = {theirs: q.name for q, theirs in zip(symbols, given) if q is not theirs}
        return result
    expr, symbols, user = _in_symgrad_forms(expr, wrt)
    if not isinstance(expr, MatrixExpr):
        from symgrad.compiled import grad
        gradients = grad(expr, symbols)
        result.update(gradients)
        return _keyed_by_user(result, user, pairs=False)
    from symgrad.compiled import _check_wrt
    for q in _check_wrt(expr, symbols):
        if _is_scalar(q):
            d = jvp(expr, {q: sp.S.One})
            result[q] = _zero_like(expr) if d is None else _tidy(d)
            continue
        if not _is_vector(q) or (expr.shape[0] != 1 and expr.shape[1] != 1):
            raise NoMatrixForm(f"d {expr} / d {_name(q)} has more than two axes (output "
                               f"{tuple(expr.shape)}, parameter {tuple(q.shape)}): use the "
                               "compiled f.jacobian, or f.vjp")
        try:
            result[q] = _tidy(jacobian_columns(expr, q))
        except NoMatrixForm as error:
            raise NoMatrixForm(f"d {expr} / d {_name(q)} has no matrix form ({error}): use "
                               "the compiled f.jacobian") from None
    return _keyed_by_user(result, user, pairs=False)


def _explicit_jacobian(matrix: sp.ImmutableMatrix, symbols: list) -> dict:
    """{q: the matrix of d entry / d q} of an explicit matrix of scalar expressions: one
    reverse pass per entry for all the symbols it holds (found each shared node once), and
    the derivatives of all the entries made one object per value (entries share pieces: the
    outputs of a model taken at several depths)."""
    derivatives = {q: [] for q in symbols}
    for entry in matrix:
        gradients = _entry_gradients(entry, symbols)
        for q in symbols:
            derivatives[q].append(gradients[q] if q in gradients else sp.S.Zero)
    flat = shared([d for q in symbols for d in derivatives[q]])
    size = len(matrix)
    return {q: sp.ImmutableMatrix(matrix.rows, matrix.cols, flat[k * size:(k + 1) * size])
            for k, q in enumerate(symbols)}


@new_pass
def _entry_gradients(entry, symbols: list) -> dict:
    """{q: d entry / d q} for the symbols the entry holds: a new pass (an earlier entry's
    derivatives left in SymPy's cache are copies of pieces this one builds again)."""
    from symgrad.compiled import grad
    from symgrad.derive.graph import dag_free_symbols

    entry = sp.sympify(entry)
    held = dag_free_symbols(entry)
    moving = [q for q in symbols if q in held]
    return grad(entry, moving) if moving else {}


# ------------------------------------------------------------------------------------------
# Printing
# ------------------------------------------------------------------------------------------
def readable(e):
    """The same matrix, written with matrix algebra where an elementwise loop is one:
    a column broadcast against a matrix is diag(column) times the matrix, a sum of maps is
    a sum of matrices (so that equal terms add up: lam/2 I + lam/2 I = lam I)."""
    from symgrad import ops

    if isinstance(e, ops.Map):
        operands = [readable(o) for o in e.operands]
        variables = e.function.variables
        body = e.body
        shape = e.shape
        variables, operands, body = _calls_as_operands(variables, operands, body, shape)
        full = [k for k, o in enumerate(operands) if isinstance(o, MatrixExpr)
                and tuple(o.shape) == tuple(shape)]
        if isinstance(body, sp.Add):
            terms = []
            for body_term in body.args:
                negative = body_term.could_extract_minus_sign()
                term = _restricted(-body_term if negative else body_term, variables,
                                   operands, shape)
                if not isinstance(term, MatrixExpr):     # a constant: broadcast
                    term = sp.MatMul(term, sp.OneMatrix(*shape))
                term = readable(term)
                terms.append(sp.MatMul(-1, term) if negative else term)
            return sp.MatAdd(*terms).doit()
        if len(full) == 1:
            k = full[0]
            rest, dependent = body.as_independent(variables[k], as_Add=False)
            if dependent == variables[k]:
                others = _restricted(rest, variables, operands, shape)
                if not isinstance(others, MatrixExpr):
                    return sp.MatMul(others, operands[k]).doit() if others != 1 \
                        else operands[k]
                if shape[1] != 1 and tuple(others.shape) == (shape[0], 1):
                    if isinstance(operands[k], sp.Identity):
                        return sp.DiagMatrix(readable(others))
                    return sp.MatMul(sp.DiagMatrix(readable(others)), operands[k])
                if shape[0] != 1 and tuple(others.shape) == (1, shape[1]):
                    return sp.MatMul(operands[k], sp.DiagMatrix(readable(others).T))
        return ops.Map(sp.Lambda(variables, body), e.shape, *operands)
    if isinstance(e, (sp.MatAdd, sp.MatMul, sp.Transpose)):
        return e.func(*[readable(a) if isinstance(a, sp.Basic) else a for a in e.args]).doit()
    return e


def _calls_as_operands(variables, operands, body, shape):
    """Each function call of an elementwise body (sigmoid(a0 a1)) as an operand of its own
    (the Map sigmoid((X w) ∘ y)), so that a piece used twice can be named once."""
    from symgrad import ops

    calls = [c for c in body.atoms(sp.Function) if c.free_symbols & set(variables)]
    # outermost calls only: a call inside another stays in it
    calls = [c for c in calls if not any(c != o and o.has(c) for o in calls)]
    if not calls or (len(calls) == 1 and body == calls[0]):
        return variables, operands, body
    variables, operands = list(variables), list(operands)
    replacements = {}
    for k, call in enumerate(sorted(calls, key=str)):
        piece = _restricted(call, variables, operands, shape)
        if not isinstance(piece, ops.Map):
            continue
        fresh = sp.Symbol(f"_call{k}", real=True)
        variables.append(fresh)
        operands.append(piece)
        replacements[call] = fresh
    return tuple(variables), operands, replaced(body, replacements)


def _restricted(body, variables, operands, shape):
    """The Map of ``body`` over only the operands it uses, narrowed to their broadcast shape;
    a scalar when it uses no matrix."""
    from symgrad import ops

    used = [k for k, v in enumerate(variables) if body.has(v)]
    matrices = [operands[k] for k in used if isinstance(operands[k], MatrixExpr)]
    if not matrices:
        return replaced(body, {variables[k]: operands[k] for k in used})
    rows = shape[0] if any(m.shape[0] != 1 for m in matrices) else 1
    cols = shape[1] if any(m.shape[1] != 1 for m in matrices) else 1
    if len(used) == 1 and body == variables[used[0]] and tuple(matrices[0].shape) == (rows, cols):
        return matrices[0]
    return ops.Map(sp.Lambda(tuple(variables[k] for k in used), body), (rows, cols),
                   *[operands[k] for k in used])


def _show(blocks: SecondOrder, output: str, latex: bool) -> str:
    from symgrad import ops
    from symgrad.codegen.docstring import (
        SHOW_MAX_NODES,
        FormulaPrinter,
        _tree_size,
        refuse_namesakes,
    )
    from symgrad.derive.graph import dag_free_symbols
    from symgrad.present.formulas import FormulaLatexPrinter

    keys = [part for key in blocks for part in (key if isinstance(key, tuple) else (key,))]
    refuse_namesakes(itertools.chain(keys, *(dag_free_symbols(e) for e in blocks.values()
                                             if isinstance(e, sp.Basic))))

    class Printer(FormulaPrinter):
        def _print_DiagMatrix(self, expr):
            return f"diag({self._print(expr.args[0])})"

    class LatexPrinter(FormulaLatexPrinter):
        aliases: dict = {}

        def _print(self, expr, **kwargs):
            if isinstance(expr, ops.Map) and expr not in self.names:
                text = self._print_Map(expr)    # not the Map's own _latex: it knows no names
            else:
                text = super()._print(expr, **kwargs)
            return self.aliases.get(text, text) if self.aliases else text

        def _print_DiagMatrix(self, expr):
            return rf"\operatorname{{diag}}\left({self._print(expr.args[0])}\right)"


    if any(_tree_size(e, SHOW_MAX_NODES) > SHOW_MAX_NODES for e in blocks.values()
           if isinstance(e, sp.Basic)):
        # written out, the blocks would repeat their shared pieces: at each use, so the
        # text of a deep model's blocks grows exponentially with its depth
        steps, forms = _as_steps(blocks)
        step_printer = LatexPrinter() if latex else Printer()
        lines = []
        for name, e in steps + [(_block_name(blocks, key, output, latex), e)
                                for key, e in forms.items()]:
            text = step_printer.doprint(e).replace("+ -", "- ")
            lines.append(f"{name} &= {text}" if latex else f"{name} = {text.replace('**', '^')}")
        if latex:
            return "\\begin{aligned}\n" + " \\\\\n".join(lines) + "\n\\end{aligned}"
        return "\n".join(lines)

    forms = {key: readable(e) for key, e in blocks.items()}
    # a function of a matrix used twice or more is named once (h, h2, ...), recognised by
    # its printed text (two blocks may build it from differently fused operands)
    plain = LatexPrinter() if latex else Printer()

    def is_call(node) -> bool:
        return isinstance(node, ops.Map) and isinstance(node.body, sp.Function)

    uses: dict = {}
    texts: dict = {}

    def count(node, times: int) -> None:
        if node not in texts:
            texts[node] = plain.doprint(node)
        uses[texts[node]] = uses.get(texts[node], 0) + times

    for form in forms.values():
        for node in sp.preorder_traversal(form):
            if not isinstance(node, sp.Basic) or isinstance(node, sp.Lambda):
                continue
            if isinstance(node, ops.Map):
                for variable, operand in zip(node.function.variables, node.operands):
                    if is_call(operand):
                        count(operand, node.body.count(variable))
            else:
                for child in node.args:
                    if is_call(child):
                        count(child, 1)
            if is_call(form) and node is form:
                count(form, 1)
    shared = sorted(t for t, n in uses.items() if n >= 2)
    taken = {str(symbol) for form in forms.values() for symbol in form.free_symbols}
    aliases = dict(zip(shared, fresh_names("h", len(shared), taken)))
    printer = (LatexPrinter if latex else Printer)()
    printer.aliases = aliases
    lines = []
    for text, name in aliases.items():
        text = text if latex else text.replace("**", "^")
        lines.append(f"{name} &= {text}" if latex else f"{name} = {text}")
    for key, e in forms.items():
        text = printer.doprint(e).replace("+ -", "- ")
        if not latex:
            text = text.replace("**", "^")
        name = _block_name(blocks, key, output, latex)
        lines.append(f"{name} &= {text}" if latex else f"{name} = {text}")
    if latex:
        return "\\begin{aligned}\n" + " \\\\\n".join(lines) + "\n\\end{aligned}"
    return "\n".join(lines)


def _block_name(blocks: SecondOrder, key, output: str, latex: bool) -> str:
    """What a block's line is called: d²f/dx dw, (H v)_x, df/dx (or their LaTeX)."""
    def _name(s) -> str:      # (the names of formulas: q for the function of time q(t))
        return blocks.names.get(s) or getattr(s, "name", str(s))

    if blocks.kind == "hessian":
        p, q = key
        return (rf"\frac{{\partial^2 {output}}}{{\partial {_name(p)}\, \partial {_name(q)}}}"
                if latex else f"d²{output}/d{_name(p)} d{_name(q)}")
    if blocks.kind == "hvp":
        return rf"\left(H v\right)_{{{_name(key)}}}" if latex else f"(H v)_{_name(key)}"
    return (rf"\frac{{\partial {output}}}{{\partial {_name(key)}}}" if latex
            else f"d{output}/d{_name(key)}")


def _as_steps(blocks: SecondOrder) -> tuple[list, dict]:
    """``(steps, forms)``: each compound value the blocks use twice or more as a step of its
    own, ``[(name, operation over earlier names)]`` in order (t, t1, ...), and each block
    over those names; one walk over the blocks' DAG, each shared node once.

    >>> x, w = sp.symbols("x w")
    >>> blocks = SecondOrder({x: sp.sin(x + w) ** 2 + sp.sin(x + w)})
    >>> _as_steps(blocks)
    ([('t', sin(w + x))], {x: t**2 + t})
    """
    from symgrad import ops
    from symgrad.derive.graph import dag_free_symbols
    from symgrad.nodes import rebuild

    keys = list(blocks)
    exprs = shared([blocks[k] for k in keys])

    def walked(node) -> tuple:
        # (a Map's body binds its variables: its operands are its values, the body is not)
        if isinstance(node, ops.Map):
            return tuple(node.operands)
        if (not isinstance(node, sp.Basic) or node.is_Atom
                or isinstance(node, (sp.Lambda, sp.MatrixSymbol))):
            return ()
        return node.args

    uses: dict = {}
    seen: set = set()
    stack = [e for e in exprs if isinstance(e, sp.Basic)]
    order: list = []        # children before parents
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            order.append(node[0])
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node,))
        for child in walked(node):
            uses[child] = uses.get(child, 0) + 1
            if child not in seen:
                stack.append(child)
    taken = {str(x) for e in exprs if isinstance(e, sp.Basic) for x in dag_free_symbols(e)}
    stepped = [n for n in order if uses.get(n, 0) >= 2 and walked(n)
               and isinstance(n, sp.Expr)]
    names = dict(zip(stepped, fresh_names("t", len(stepped), taken)))
    done: dict = {}
    steps = []
    for node in order:
        kids = walked(node)
        if not kids:
            done[node] = node
            continue
        new = [done[c] for c in kids]
        if isinstance(node, ops.Map):
            value = ops.Map(node.function, node.shape, *new)
        else:
            value = rebuild(node, new)
        if node in names:
            steps.append((names[node], value))
            value = (sp.MatrixSymbol(names[node], *node.shape) if isinstance(node, MatrixExpr)
                     else sp.Symbol(names[node]))
        done[node] = value
    forms = {k: done.get(e, e) for k, e in zip(keys, exprs)}
    return steps, forms


# ------------------------------------------------------------------------------------------
# Compiled: f.hessian, f.hvp, f.jacobian, f.scipy
# ------------------------------------------------------------------------------------------
def _user_symbols(f) -> dict:
    """The model's own symbols by name (parameters and data)."""
    return {s.name: s for s in f.spec.user_inputs}


def _dimension_values(f, inputs: dict) -> dict:
    """Each symbolic dimension of the model, read off the arrays that fix it."""
    from symgrad.codegen.second_runtime import _sg_extent

    values: dict = {}
    for s in f.spec.user_inputs:
        if not isinstance(s, MatrixExpr) or s.name not in inputs:
            continue
        for axis, extent in enumerate(s.shape):
            extent = sp.sympify(extent)
            size = _sg_extent(inputs[s.name], axis)     # (a 1-D row too)
            if extent.is_Symbol and size is not None:
                values[extent] = sp.Integer(size)
    return values


def _compiled(f, key, build):
    """A compiled piece of f, built on first use and kept on f."""
    cache = f.__dict__.setdefault("_second_order", {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _check_inputs(f, inputs: dict) -> None:
    """Every input given, no other (the compiled pieces check types and shapes, naming the
    input)."""
    if inputs.keys() == _compiled(f, "input names", lambda: set(f.inputs)):
        return
    missing = [n for n in f.inputs if n not in inputs]
    unknown = [n for n in inputs if n not in f.inputs]
    if unknown:
        raise TypeError(f"unknown input {unknown[0]!r}; this model takes "
                        f"{', '.join(f.inputs)}")
    raise TypeError(f"missing input {missing[0]!r}; this model takes {', '.join(f.inputs)}")


def least_extent_table(expression, inputs) -> tuple:
    """``((input name, axis, least extent, why), ...)``: the extents the model's entries at
    fixed positions need (see :func:`symgrad.compiled.least_extents`), for
    ``_sg_dimensions`` to check: a derivative may no longer read an entry (``2 A[5, 0]``
    has none), and its bundle's own checks would then let a too-small input through."""
    from symgrad.codegen.module import entry_reason
    from symgrad.compiled import least_extents

    return tuple((s.name, axis, least, entry_reason(s.name, entry, least))
                 for (s, axis), (least, entry) in least_extents(expression, inputs).items())


def dimension_table(symbols) -> dict:
    """{dimension name: (input name, axis)}: where each symbolic dimension of the inputs
    is read (the first input that has it)."""
    table: dict = {}
    for s in symbols:
        if not isinstance(s, MatrixExpr):
            continue
        for axis, extent in enumerate(s.shape):
            extent = sp.sympify(extent)
            if extent.is_Symbol and extent.name not in table:
                table[extent.name] = (s.name, axis)
    return table


class BundlePlan:
    """Several expressions as one: sum_k <P_k, e_k> over new probe symbols P_k (one of each
    expression's shape), whose gradient with respect to P_k is e_k.  So one call of its
    ``value_and_grad`` computes every e_k, sharing their common pieces (one CSE, one loop
    per shape), and Numba compiles one kernel instead of one per expression.  ``table``
    describes it for :mod:`symgrad.codegen.second_runtime` (its ``"inputs"`` are filled in
    once it is compiled)."""

    def __init__(self, expressions: dict, taken: set):
        from symgrad.ops import dot

        self.probes = []          # probe symbols, in order
        terms = []
        outputs: dict = {}
        shapes: dict = {}
        # (the blocks share pieces, built as copies: one object of each before SymPy
        # combines them, and compiling walks them, comparing nodes)
        values = shared(list(expressions.values()))
        for k, (key, e) in enumerate(zip(expressions, values)):
            if e == 0 or isinstance(e, sp.ZeroMatrix):
                outputs[key] = None
                continue
            label = f"second_order_{k}"
            while label in taken:
                label += "_"
            taken.add(label)
            if isinstance(e, MatrixExpr):
                probe = sp.MatrixSymbol(label, *e.shape)
                terms.append(dot(probe, e))
                shapes[label] = tuple(int(x) if sp.sympify(x).is_Integer
                                      else sp.pycode(sp.sympify(x)) for x in e.shape)
            else:
                probe = sp.Symbol(label, real=True)
                terms.append(probe * e)
                shapes[label] = ()
            self.probes.append(probe)
            outputs[key] = label
        self.expression = shared([sp.Add(*terms)])[0] if terms else None
        self.table = {"inputs": (), "probes": shapes, "outputs": outputs}


class _Bundle:
    """A :class:`BundlePlan`, compiled."""

    def __init__(self, plan: BundlePlan, name: str):
        from symgrad.compiled import compile as compile_

        self.table = dict(plan.table)
        self.compiled = None
        if plan.expression is not None:
            self.compiled = compile_(plan.expression, plan.probes, name=name)
            self.table["inputs"] = tuple(self.compiled.inputs)
        self.value_and_grad = (self.compiled.value_and_grad if self.compiled is not None
                               else None)
        # an HVP's pieces at x (see _Linearizer), a bundle of its own
        linearize = getattr(plan, "linearize", None)
        self.linearize = None if linearize is None else _Bundle(linearize, f"{name}_at_x")
        if self.linearize is not None:
            self.table["linearize"] = self.linearize.table


def _tangent_symbols(params, taken: set) -> dict:
    tangents = {}
    for p in params:
        name = f"{p.name}_tangent"
        while name in taken:
            name += "_"
        taken.add(name)
        tangents[p] = (sp.MatrixSymbol(name, *p.shape) if isinstance(p, MatrixExpr)
                       else sp.Symbol(name, real=True))
    return tangents


class _Linearizer:
    """An HVP split in two: the pieces that depend on the parameters but not on the tangents
    (the forward values and the curvature weights, sigmoid(Xw)(1 - sigmoid(Xw)) for the
    logistic loss) are computed once at x (*linearize*), and the rest, linear in the
    tangents, takes them as inputs (*apply*).  A solver that asks for many products at one
    x (Newton-CG's inner iterations) then pays for the forward pass once."""

    def __init__(self, tangents: set, params: set, taken: set):
        self.tangents, self.params, self.taken = tangents, params, taken
        self.hoisted: dict = {}          # name -> expression computed at x
        self._names: dict = {}           # expression -> its symbol
        self._split: dict = {}           # expression -> what __call__ made of it
        self._held: dict = {}            # expression -> the tangents and parameters in it

    def _symbol_for(self, e):
        symbol = self._names.get(e)
        if symbol is None:
            name = f"linearized_{len(self._names)}"
            while name in self.taken:
                name += "_"
            self.taken.add(name)
            symbol = (sp.MatrixSymbol(name, *e.shape) if isinstance(e, MatrixExpr)
                      else sp.Symbol(name, real=True))
            self._names[e] = symbol
            self.hoisted[name] = e
        return symbol

    def _moves(self, e) -> bool:
        return bool(self._holds(e) & self.tangents)

    def _holds(self, e) -> frozenset:
        """The tangents and parameters in e, each shared node's found once, children first
        (SymPy's free_symbols walks a shared DAG as a tree: exponential in its depth)."""
        held = self._held
        stack = [(e, False)]
        while stack:
            node, expanded = stack.pop()
            if node in held:
                continue
            if node in self.tangents or node in self.params:
                held[node] = frozenset([node])
                continue
            args = node.args if isinstance(node, sp.Basic) else ()
            if not args:
                held[node] = frozenset()
                continue
            if not expanded:
                stack.append((node, True))
                stack.extend((a, False) for a in args if a not in held)
                continue
            held[node] = frozenset().union(*[held[a] for a in args])
        return held[e]

    def _at_x(self, e):
        """e (free of tangents) as an input of the apply part: hoisted when it costs work.
        A condition or a Piecewise's (value, condition) pair is no value to hoist: it stays
        as it is, computed in the apply part from the inputs."""
        if not isinstance(e, (sp.Expr, MatrixExpr)):
            return e
        if isinstance(e, (sp.Symbol, sp.MatrixSymbol, sp.Number)) or e.is_number \
                or not (self._holds(e) & self.params) or e == 0 \
                or isinstance(e, (sp.Identity, sp.ZeroMatrix, sp.OneMatrix)):
            return e
        if isinstance(e, sp.Transpose) and isinstance(e.arg, sp.MatrixSymbol):
            return e
        return self._symbol_for(e)

    def __call__(self, e):
        """e split: each shared node once, children first, without recursion (the HVP of a
        deep model is a deep DAG)."""
        from symgrad import ops

        if not isinstance(e, sp.Basic):
            return e
        split = self._split

        def walked_into(node) -> bool:
            # a moving node of plain arithmetic: rebuilt over what its operands split into
            return (isinstance(node, sp.Basic) and node not in split and self._moves(node)
                    and not isinstance(node, (ops.Map, sp.MatrixSymbol, sp.Lambda))
                    and not node.is_Atom)

        def visit(node, new):
            if node not in split:
                if not self._moves(node):
                    split[node] = self._at_x(node)
                elif isinstance(node, ops.Map):
                    split[node] = self._map(node)
                elif walked_into(node):
                    split[node] = built(node.func, new)
                else:
                    split[node] = node
            return split[node]

        return dag_rebuild(e, visit, operands=lambda node: node.args if walked_into(node)
                           else ())

    def _map(self, e):
        from symgrad import ops

        variables, operands, body = e.function.variables, e.operands, e.body
        moving = [k for k, o in enumerate(operands) if self._moves(o)]
        coefficients = [derivative(body, variables[k]) for k in moving]
        linear = all(not c.has(*[variables[k] for k in moving]) for c in coefficients) and \
            sp.expand(body - sum(c * variables[k] for c, k in zip(coefficients, moving))) == 0
        if not linear:
            return ops.Map(e.function, e.shape, *[self(o) for o in operands])
        # body = sum_k c_k(other operands) t_k: each c_k a Map computed at x
        new_variables, new_operands, terms = [], [], []
        for c, k in zip(coefficients, moving):
            t = sp.Symbol(f"t{len(new_variables)}", real=True)
            new_variables.append(t)
            new_operands.append(self(operands[k]))
            weight = _restricted(c, variables, operands, e.shape)
            # a number folds into the body; a constant matrix (the identity of a trace's
            # gradient) has no free symbols either, but is no scalar: it stays an operand
            if not weight.free_symbols and not isinstance(weight, MatrixExpr):
                terms.append(weight * t)
                continue
            u = sp.Symbol(f"t{len(new_variables)}", real=True)
            new_variables.append(u)
            new_operands.append(self._at_x(weight))
            terms.append(u * t)
        return ops.Map(sp.Lambda(tuple(new_variables), sp.Add(*terms)), e.shape, *new_operands)


@new_pass
def hvp_plan(expression, params: list, names: set) -> BundlePlan:
    """The bundle of the HVPs of all parameters; ``names`` are the names taken."""
    taken = set(names)
    tangents = _tangent_symbols(params, taken)
    blocks = hvp(expression, params, tangents)
    split = _Linearizer(set(tangents.values()), set(params), taken)
    applied = {p.name: split(e) for p, e in blocks.items()}
    plan = BundlePlan(applied, taken)
    plan.tangents = [tangents[p] for p in params]
    plan.table["tangents"] = {p.name: t.name for p, t in tangents.items()}
    plan.linearize = BundlePlan(split.hoisted, taken) if split.hoisted else None
    return plan


@new_pass
def hessian_plan(expression, params: list, names: set) -> BundlePlan:
    """The bundle of every Hessian block with a matrix form (p at or before q).  A block
    A^T diag(c) A + rest is computed as rest and c in the bundle, and the product with
    symmetric BLAS afterwards (``table["symmetric"]``); blocks without a matrix form are
    listed in ``table["without"]``."""
    from symgrad.compiled import grad

    gradients = grad(expression, params)
    expressions, blocks, without, symmetric = {}, [], [], {}
    for i, p in enumerate(params):
        for q in params[i:]:
            key = (p.name, q.name)
            try:
                block = _block(gradients[p], p, q)
            except NoMatrixForm:
                without.append(key)
                continue
            blocks.append(key)
            split = symmetric_split(block)
            if split is None:
                expressions[key] = block
                continue
            rest, a, c = split
            expressions[key] = rest
            if c is None:
                symmetric[key] = (a.name, None)
            else:
                symmetric[key] = (a.name, ("symmetric", p.name, q.name))
                expressions[("symmetric", p.name, q.name)] = c
    plan = BundlePlan(expressions, set(names))
    plan.table.update(blocks=blocks, without=without, symmetric=symmetric)
    return plan


@new_pass
def jacobian_plan(expression, params: list, names: set) -> BundlePlan:
    """The bundle of the Jacobian blocks with a matrix form; the others (assembled from
    vector-Jacobian products) in ``table["without"]``."""
    blocks, without, row_output = {}, [], []
    for p in params:
        try:
            blocks[p.name] = jacobian(expression, [p])[p]
        except NoMatrixForm:
            without.append(p.name)
            continue
        if isinstance(expression, MatrixExpr) and expression.shape[0] == 1 and _is_vector(p):
            row_output.append(p.name)
    plan = BundlePlan(blocks, set(names))
    plan.table.update(without=without, row_output=row_output)
    return plan


def _symmetric_product_of(node):
    """(A, c) when node is A^T diag(c) A (c None for A^T A), for a matrix symbol A and c a
    column (or a number); else None."""
    from symgrad import ops

    if not isinstance(node, sp.MatMul) or len(node.args) != 2:
        return None
    left, right = node.args
    if not (isinstance(left, sp.Transpose) and isinstance(left.arg, sp.MatrixSymbol)):
        return None
    a = left.arg
    if right == a:
        return a, None
    if not isinstance(right, ops.Map) or tuple(right.shape) != tuple(a.shape):
        return None
    variables, operands = right.function.variables, right.operands
    positions = [k for k, o in enumerate(operands) if o == a]
    if len(positions) != 1:
        return None
    factor = sp.cancel(right.body / variables[positions[0]])
    if factor.has(variables[positions[0]]):
        return None
    for k, (v, o) in enumerate(zip(variables, operands)):
        if k != positions[0] and factor.has(v) and isinstance(o, MatrixExpr) \
                and tuple(o.shape) != (a.shape[0], 1):
            return None       # a factor that changes along A's columns: not diag(c)
    c = _restricted(factor, variables, operands, (a.shape[0], 1))
    if c == 0:
        return None
    return a, c


def symmetric_split(e):
    """(rest, A, c) with e = rest + A^T diag(c) A (c None for 1), or None when e has no
    such term at its top (a term of a sum, or an operand that an elementwise body adds with
    coefficient 1)."""
    from symgrad import ops

    found = _symmetric_product_of(e)
    if found is not None:
        return (sp.ZeroMatrix(*e.shape), *found)
    if isinstance(e, sp.MatAdd):
        for k, term in enumerate(e.args):
            found = _symmetric_product_of(term)
            if found is not None:
                others = e.args[:k] + e.args[k + 1:]
                rest = others[0] if len(others) == 1 else sp.MatAdd(*others)
                return (rest, *found)
    if isinstance(e, ops.Map):
        variables, operands = e.function.variables, e.operands
        for v, o in zip(variables, operands):
            if not isinstance(o, MatrixExpr) or tuple(o.shape) != tuple(e.shape):
                continue
            found = _symmetric_product_of(o)
            if found is None or derivative(e.body, v) != 1:
                continue
            rest = _restricted(replaced(e.body, {v: 0}), variables, operands, e.shape)
            if not isinstance(rest, MatrixExpr):
                if rest != 0:
                    continue
                rest = sp.ZeroMatrix(*e.shape)
            return (rest, *found)
    return None


def _bundle_of(f, kind: str) -> _Bundle:
    def build():
        symbols = _user_symbols(f)
        params = [symbols[n] for n in f.parameters]
        plan = {"hvp": hvp_plan, "hessian": hessian_plan,
                "jacobian": jacobian_plan}[kind](f.model_in_forms, params, set(symbols))
        return _Bundle(plan, f"{f.spec.name}_{kind}")
    return _compiled(f, kind, build)


def _sizes(f, inputs: dict) -> dict:
    from symgrad.codegen.second_runtime import _sg_dimensions
    table = _compiled(f, "dimensions", lambda: dimension_table(f.spec.user_inputs))
    least = _compiled(f, "least extents",
                      lambda: least_extent_table(f.model_in_forms, f.spec.user_inputs))
    return _sg_dimensions(inputs, table, least)


def _scalar_model(f) -> bool:
    return _compiled(f, "scalar model", lambda: f.spec.is_scalar_model)


def compiled_hvp(f, tangents: Mapping, inputs: dict) -> dict:
    """``f.hvp(tangents, **inputs)``: see :meth:`symgrad.CompiledFunction.hvp`."""
    from symgrad.codegen.second_runtime import _sg_hvp

    _check_inputs(f, inputs)
    bundle = _bundle_of(f, "hvp")
    return _sg_hvp(tangents, inputs, f.parameters, bundle.table, bundle.value_and_grad,
                   _sizes(f, inputs), _scalar_model(f),
                   None if bundle.linearize is None else bundle.linearize.value_and_grad)


def compiled_hessian(f, inputs: dict) -> dict:
    """``f.hessian(**inputs)``: see :meth:`symgrad.CompiledFunction.hessian`."""
    from symgrad.codegen.second_runtime import _sg_hessian

    _check_inputs(f, inputs)
    bundle = _bundle_of(f, "hessian")
    return _sg_hessian(inputs, f.parameters, bundle.table, bundle.value_and_grad,
                       _sizes(f, inputs), _scalar_model(f), f.hvp)


def compiled_jacobian(f, inputs: dict) -> dict:
    """``f.jacobian(**inputs)``: see :meth:`symgrad.CompiledFunction.jacobian`."""
    from symgrad.codegen.second_runtime import _sg_jacobian

    _check_inputs(f, inputs)
    if not f.spec.output_shape:
        raise AttributeError("jacobian is for vector and matrix outputs; this model's output "
                             "is a scalar: use f.grad(**inputs) (and f.hessian)")
    bundle = _bundle_of(f, "jacobian")
    return _sg_jacobian(inputs, f.parameters, bundle.table, bundle.value_and_grad,
                        _sizes(f, inputs), f.forward, f.vjp, bundle.table["row_output"])


class ScipyProblem:
    """A scalar model as a function of one flat vector, for ``scipy.optimize.minimize``:
    ``fun``, ``jac``, ``hess``, ``hessp``, with ``pack`` and ``unpack`` between the flat
    vector and the parameters by name (vectors unpack as 1-D arrays).  For a model with a
    vector (or matrix) output, ``fun`` gives the flat residuals and ``jac`` their Jacobian,
    for ``scipy.optimize.least_squares``.

    >>> import numpy as np, scipy.optimize, sympy as sp, symgrad as sg
    >>> x, c = sg.vector("x", 2), sg.vector("c", 2)
    >>> p = sg.compile(sg.dot(x - c, x - c), [x]).scipy(c=np.array([1.0, 2.0]))
    >>> r = scipy.optimize.minimize(p.fun, p.pack(x=np.zeros(2)), jac=p.jac, hess=p.hess,
    ...                             method="trust-exact")
    >>> np.round(p.unpack(r.x)["x"], 6)
    array([1., 2.])
    """

    def __init__(self, f, data: dict):
        self.residuals = bool(f.spec.output_shape)     # a vector output: least squares
        unknown = [n for n in data if n not in f.inputs]
        if unknown:
            raise TypeError(f"unknown input {unknown[0]!r}; this model takes "
                            f"{', '.join(f.inputs)}")
        given = [n for n in data if n in f.parameters]
        if given:
            raise TypeError(f"{given[0]!r} is a parameter: f.scipy takes the data inputs only; "
                            "pack the parameters with p.pack(...)")
        arrays = [n for n, v in data.items() if np.ndim(v) > 0]
        if arrays and not self.residuals and _scalar_model(f):
            # a scalar model over arrays has a value per point: no one number to minimise
            raise ValueError(f"f.scipy needs one value to minimise, but {arrays[0]!r} is an "
                             f"array (shape {np.shape(data[arrays[0]])}) of a model of "
                             "scalars, which then has a value per point: give each data "
                             "input one number, or write the model over vectors with a sum "
                             "(sg.vector and sg.sum)")
        self.f = f
        self.data = dict(data)
        symbols = _user_symbols(f)
        dims = _dimension_values(f, data)
        self.shapes = {}
        for name in f.parameters:
            s = symbols[name]
            if not isinstance(s, MatrixExpr):
                self.shapes[name] = ()
                continue
            extents = [replaced(sp.sympify(e), dims) for e in s.shape]
            if not all(e.is_number for e in extents):
                self.shapes[name] = None      # fixed by the first pack
                continue
            rows, cols = (int(e) for e in extents)
            self.shapes[name] = (rows,) if cols == 1 else (rows, cols)

    @property
    def size(self) -> int:
        return self._layout()[-1][3] if self.shapes else 0

    def _layout(self) -> list:
        """[(name, shape, start, stop)] of each parameter in the flat vector (computed once
        the shapes are known)."""
        layout = getattr(self, "_cached_layout", None)
        if layout is None:
            missing = [n for n, s in self.shapes.items() if s is None]
            if missing:
                raise ValueError(f"the shape of {missing[0]!r} is not fixed by the data: call "
                                 "p.pack(...) with the parameters first")
            layout, start = [], 0
            for name, shape in self.shapes.items():
                size = int(np.prod(shape))
                layout.append((name, shape, start, start + size))
                start += size
            self._cached_layout = layout
        return layout

    def pack(self, **params) -> np.ndarray:
        """The parameters (by name) as one flat float64 vector."""
        missing = [n for n in self.f.parameters if n not in params]
        if missing:
            raise TypeError(f"pack needs every parameter; missing {missing[0]!r}")
        unknown = [n for n in params if n not in self.f.parameters]
        if unknown:
            raise TypeError(f"{unknown[0]!r} is not a parameter ({', '.join(self.f.parameters)})")
        from symgrad.codegen.runtime import _reals
        from symgrad.codegen.second_runtime import _sg_fits

        parts = []
        for name in self.f.parameters:
            value = _reals(f"parameter {name!r}", params[name])
            expected = self.shapes[name]
            if expected is None:
                self.shapes[name] = expected = value.shape
                self._cached_layout = None
            if not _sg_fits(value.shape, expected):     # (not its size alone: W^T for W)
                raise ValueError(f"parameter {name!r} has shape {value.shape}; expected "
                                 f"{expected}")
            parts.append(value.ravel())
        return np.concatenate(parts) if parts else np.zeros(0)

    def unpack(self, x, what: str = "x") -> dict:
        """The flat vector as ``{name: array}`` (scalars as floats, vectors 1-D); ``what``
        names it in errors (``hessp`` unpacks its direction ``v``)."""
        from symgrad.codegen.runtime import _reals

        layout = self._layout()
        x = _reals(what, x)
        if x.shape != (self.size,):
            raise ValueError(f"{what} has shape {x.shape}; the parameters take ({self.size},)")
        return {name: float(x[start]) if shape == () else x[start:stop].reshape(shape)
                for name, shape, start, stop in layout}

    def _inputs(self, x) -> dict:
        """The data and the parameters held in x, by name."""
        inputs = dict(self.data)
        inputs.update(self.unpack(x))
        return inputs

    def _dimensions(self, inputs: dict) -> dict:
        # fixed by the data and the parameters' shapes, so the same at every call
        sizes = self.__dict__.get("_sizes")
        if sizes is None:
            sizes = self._sizes = _sizes(self.f, inputs)
        return sizes

    def _flat(self, parts: dict) -> np.ndarray:
        layout = self._layout()
        if len(layout) == 1:
            return np.ravel(parts[layout[0][0]])
        return np.concatenate([np.ravel(parts[name]) for name, *_ in layout])

    def fun(self, x):
        """The value (a float), or for a model with a vector or matrix output the flat
        residuals (for ``scipy.optimize.least_squares``)."""
        value = self.f.forward(**self._inputs(x))
        return np.ravel(value) if self.residuals else float(value)

    def jac(self, x) -> np.ndarray:
        """The gradient (flat), or for residuals the Jacobian (residuals x parameters)."""
        if self.residuals:
            blocks = self.f.jacobian(**self._inputs(x))
            return np.concatenate([np.reshape(blocks[name], (-1, stop - start))
                                   for name, _, start, stop in self._layout()], axis=1)
        return self._flat(self.f.value_and_grad(**self._inputs(x))[1])

    def _scalar_only(self, what: str) -> None:
        if self.residuals:
            raise AttributeError(f"{what} needs a scalar output; this model's output has "
                                 f"shape {self.f.spec.user_output_shape}: use fun and jac "
                                 "with scipy.optimize.least_squares")

    def hess(self, x) -> np.ndarray:
        """The Hessian, (size, size)."""
        from symgrad.codegen.second_runtime import _sg_hessian

        self._scalar_only("hess")
        inputs = self._inputs(x)
        bundle = _bundle_of(self.f, "hessian")
        blocks = _sg_hessian(inputs, self.f.parameters, bundle.table, bundle.value_and_grad,
                             self._dimensions(inputs), _scalar_model(self.f), self.f.hvp)
        layout = self._layout()
        if len(layout) == 1:
            name, _, start, stop = layout[0]
            return np.reshape(blocks[(name, name)], (stop - start, stop - start))
        return np.block([[np.reshape(blocks[(p, q)], (p1 - p0, q1 - q0))
                          for q, _, q0, q1 in layout] for p, _, p0, p1 in layout])

    def hessp(self, x, v) -> np.ndarray:
        """The Hessian times v (flat, like x), without forming the Hessian.  The pieces
        that depend on x alone (the forward pass, the curvature weights) are kept for the
        next call at the same x, as Newton-CG's inner iterations make."""
        from symgrad.codegen.second_runtime import _sg_at_x, _sg_bundle

        self._scalar_only("hessp")
        inputs = self._inputs(x)
        bundle = _bundle_of(self.f, "hvp")
        sizes = self._dimensions(inputs)
        kept = self.__dict__.get("_kept_at_x")
        if kept is not None and np.array_equal(kept[0], x):
            at_x = kept[1]
        else:
            at_x = _sg_at_x(bundle.table, None if bundle.linearize is None
                            else bundle.linearize.value_and_grad, inputs, sizes)
            self._kept_at_x = (np.array(x, dtype=np.float64), at_x)
        # the tangents straight into the bundle: unpack has checked their shape
        inputs.update({bundle.table["tangents"][name]: value
                       for name, value in self.unpack(v, "v").items()})
        inputs.update(at_x)
        products = _sg_bundle(bundle.value_and_grad, bundle.table, inputs, sizes)
        for name, _shape, start, stop in self._layout():
            if products[name] is None:
                products[name] = np.zeros(stop - start)
        return self._flat(products)


# ------------------------------------------------------------------------------------------
# Generated modules: hessian, hvp, jacobian beside forward and value_and_grad
# ------------------------------------------------------------------------------------------
def _namespaced(text: str, prefix: str) -> str:
    """``text`` with every name it defines at top level prefixed, so that several modules'
    bodies can live in one file; names it only uses (the shared runtime's) stay."""
    import ast
    import io
    import tokenize

    defined = set()
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    lines = text.splitlines(keepends=True)
    edits: dict = {}
    previous = None
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.NAME and token.string in defined and not (
                previous is not None and previous.type == tokenize.OP and previous.string == "."):
            edits.setdefault(token.start[0], []).append(token.start[1])
        if token.type not in (tokenize.NL, tokenize.COMMENT):
            previous = token
    for row, columns in edits.items():
        line = lines[row - 1]
        for column in sorted(columns, reverse=True):
            line = line[:column] + prefix + line[column:]
        lines[row - 1] = line
    return "".join(lines)


def _bundle_body(plan: BundlePlan, name: str, prefix: str) -> tuple[str, dict]:
    """The bundle's kernels as module text (its names prefixed), and its table."""
    from symgrad.codegen.module import model_code
    from symgrad.compiled import build_spec

    table = dict(plan.table)
    if plan.expression is None:
        return "", table
    spec = build_spec(plan.expression, plan.probes, name=name)
    table["inputs"] = tuple(spec.public_name(s) for s in spec.inputs)
    return _namespaced("\n".join(model_code(spec)), prefix), table


def second_order_text(model) -> str:
    """The part of a generated module that offers ``hessian`` and ``hvp`` (a scalar output)
    or ``jacobian`` (a vector or matrix output): of the compiled bundles of
    :mod:`symgrad.second`, what these functions call, the bundles' tables and one public
    function each, with the model's inputs as keyword arguments (as ``value_and_grad``).
    The functions of :mod:`symgrad.codegen.second_runtime` they call come with the rest of
    the module's runtime (see :func:`symgrad.codegen.module.module_source`)."""
    from symgrad.codegen.module import docstring_literal, used_part
    from symgrad.model import has_scalar_output

    names = {s.name for s in model.inputs}
    params = list(model.wrt)
    public = [s.name for s in model.inputs]
    signature = ", ".join(["*"] + public) if public else ""
    gather = "{" + ", ".join(f"{n!r}: {n}" for n in public) + "}"
    out = [f"_SG_DIMENSIONS = {dimension_table(model.inputs)!r}",
           f"_SG_LEAST_EXTENTS = {least_extent_table(model.output, model.inputs)!r}",
           f"_SG_SCALAR_MODEL = {not any(isinstance(s, MatrixExpr) for s in model.inputs)!r}",
           ""]
    if has_scalar_output(model):
        plan = hvp_plan(model.output, params, names)
        hvp_body, hvp_table = _bundle_body(plan, f"{model.name}_hvp", "_hvp__")
        at_x = "None"
        if plan.linearize is not None:
            at_x_body, hvp_table["linearize"] = _bundle_body(
                plan.linearize, f"{model.name}_hvp_at_x", "_hvp_at_x__")
            hvp_body = at_x_body.rstrip() + "\n\n" + hvp_body
            at_x = "_hvp_at_x__value_and_grad"
        hessian_body, hessian_table = _bundle_body(hessian_plan(model.output, params, names),
                                                   f"{model.name}_hessian", "_hessian__")
        bundles = [("_hvp", hvp_body, hvp_table), ("_hessian", hessian_body, hessian_table)]
        functions = [
            f"def hvp(tangents, /, {signature}):",
            "    " + docstring_literal(
                "{parameter name: (H v) in the parameter's own shape}, the Hessian-vector "
                "product\n    with ``tangents`` ({parameter name: direction}; a parameter "
                "left out does not move)."),
            f"    _inputs = {gather}",
            "    return _sg_hvp(tangents, _inputs, PARAMETERS, _HVP_TABLE, "
            "_hvp__value_and_grad if _HVP_TABLE['probes'] else None,",
            "                   _sg_dimensions(_inputs, _SG_DIMENSIONS, _SG_LEAST_EXTENTS), "
            f"_SG_SCALAR_MODEL, {at_x})",
            "",
            "",
            f"def hessian({signature}):",
            "    " + docstring_literal(
                "{(p, q): d²value/dp dq} for every pair of parameters, of shape "
                "p.shape + q.shape\n    (per point for a scalar model over arrays)."),
            f"    _inputs = {gather}",
            "    return _sg_hessian(_inputs, PARAMETERS, _HESSIAN_TABLE, "
            "_hessian__value_and_grad if _HESSIAN_TABLE['probes'] else None,",
            "                       _sg_dimensions(_inputs, _SG_DIMENSIONS, _SG_LEAST_EXTENTS), "
            "_SG_SCALAR_MODEL, hvp)",
            ""]
    else:
        body, table = _bundle_body(jacobian_plan(model.output, params, names),
                                   f"{model.name}_jacobian", "_jacobian__")
        bundles = [("_jacobian", body, table)]
        functions = [
            f"def jacobian({signature}):",
            "    " + docstring_literal(
                "{parameter name: d output / d parameter}, of shape output.shape + "
                "parameter.shape."),
            f"    _inputs = {gather}",
            "    return _sg_jacobian(_inputs, PARAMETERS, _JACOBIAN_TABLE, "
            "_jacobian__value_and_grad if _JACOBIAN_TABLE['probes'] else None,",
            "                        _sg_dimensions(_inputs, _SG_DIMENSIONS, _SG_LEAST_EXTENTS), "
            f"forward, vjp, {tuple(table['row_output'])!r})",
            ""]
    calls = "\n".join(functions)
    for prefix, body, table in bundles:
        kind = prefix.strip("_")
        header = f"# --- {kind}: its expressions, compiled as one bundle "
        # of the bundle's module, only what the public function calls (its value_and_grad)
        body = used_part(body, calls) if body else ""
        out += [header + "-" * max(3, 92 - len(header)), "", body.rstrip(), "",
                f"_{kind.upper()}_TABLE = {table!r}", "", ""]
    out += functions
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------
# An explicit sympy.Matrix of scalar expressions, compiled: values and Jacobian
# ------------------------------------------------------------------------------------------
class ExplicitMatrixFunction:
    """``sg.compile(sympy.Matrix([...]), wrt)``: an explicit matrix of scalar expressions in
    scalar symbols, compiled as two bundles (one kernel for the entries, one for their
    derivatives; see :class:`BundlePlan`).  ``f(**inputs)`` (or ``f.forward``) gives an array
    of the matrix's shape and ``f.jacobian(**inputs)`` ``{q: array of the matrix's shape}``
    (d entry / d q); inputs may be floats or arrays of points, which add their broadcast
    shape at the end.

    >>> import sympy as sp, symgrad as sg
    >>> a, b = sp.symbols("a b")
    >>> f = sg.compile(sp.Matrix([a * b, a + b**2]), [a, b])
    >>> f.jacobian(a=2.0, b=3.0)["b"].ravel().tolist()
    [2.0, 6.0]
    """

    def __init__(self, matrix, wrt, name: str = "model"):
        from symgrad.compiled import compile as compile_
        from symgrad.derive.graph import dag_free_symbols
        from symgrad.forms import normalize_explicit

        # functions of time (a mass matrix of sympy.physics.mechanics) are their symbols
        matrix, wrt = normalize_explicit(
            matrix, list(wrt) if isinstance(wrt, (list, tuple)) else [wrt])
        for q in wrt:
            if not isinstance(q, sp.Symbol):
                raise TypeError(f"an explicit sympy.Matrix is differentiated with respect to "
                                f"scalar symbols; wrt has {q!r}, a {type(q).__name__}")
        symbols = set().union(*[dag_free_symbols(e) for e in matrix]) if matrix else set()
        others = [s for s in symbols if not isinstance(s, sp.Symbol)]
        if others:
            raise TypeError(f"an explicit sympy.Matrix must hold scalar expressions of scalar "
                            f"symbols; it uses {others[0]!r}")
        self.shape = tuple(matrix.shape)
        self.parameters = [q.name for q in wrt]
        self.inputs = self.parameters + sorted(s.name for s in symbols
                                               if s.name not in self.parameters)
        self.expression = matrix
        names = set(self.inputs)
        entries = {(i, j): matrix[i, j] for i in range(matrix.rows) for j in range(matrix.cols)}
        columns = _explicit_jacobian(matrix, wrt)
        derivatives = {(q.name, i, j): columns[q][i, j] for q in wrt for (i, j) in entries}
        self._bundles = {}
        for kind, expressions in (("forward", entries), ("jacobian", derivatives)):
            plan = BundlePlan(expressions, set(names))
            compiled = (compile_(plan.expression, plan.probes, name=f"{name}_{kind}")
                        if plan.expression is not None else None)
            if compiled is not None:
                plan.table["inputs"] = tuple(compiled.inputs)
            self._bundles[kind] = (plan.table,
                                   None if compiled is None else compiled.value_and_grad)

    def _check(self, inputs: dict) -> tuple:
        missing = [n for n in self.inputs if n not in inputs]
        unknown = [n for n in inputs if n not in self.inputs]
        if unknown:
            raise TypeError(f"unknown input {unknown[0]!r}; this model takes "
                            f"{', '.join(self.inputs)}")
        if missing:
            raise TypeError(f"missing input {missing[0]!r}; this model takes "
                            f"{', '.join(self.inputs)}")
        try:
            return np.broadcast_shapes(*[np.shape(v) for v in inputs.values()])
        except ValueError:
            shapes = ", ".join(f"{n} {np.shape(v)}" for n, v in inputs.items())
            raise ValueError(f"the inputs' shapes do not broadcast: {shapes}") from None

    def _entries(self, kind: str, inputs: dict) -> dict:
        from symgrad.codegen.second_runtime import _sg_bundle
        table, value_and_grad = self._bundles[kind]
        return _sg_bundle(value_and_grad, table, inputs, {})

    def forward(self, **inputs) -> np.ndarray:
        """The matrix's entries: an array of its shape (+ the points' shape)."""
        points = self._check(inputs)
        values = self._entries("forward", inputs)
        out = np.zeros(self.shape + points)
        for (i, j), value in values.items():
            if value is not None:
                out[i, j] = value
        return out

    __call__ = forward

    def jacobian(self, **inputs) -> dict:
        """``{q: d matrix / d q}``, each an array of the matrix's shape (+ the points')."""
        points = self._check(inputs)
        values = self._entries("jacobian", inputs)
        out = {q: np.zeros(self.shape + points) for q in self.parameters}
        for (q, i, j), value in values.items():
            if value is not None:
                out[q][i, j] = value
        return out

    def __repr__(self) -> str:
        return (f"<symgrad explicit {self.shape[0]} x {self.shape[1]} matrix of "
                f"{', '.join(self.inputs)}; wrt {', '.join(self.parameters)}>")
