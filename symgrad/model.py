"""``sg.Model``: a named scalar (or matrix) output with the parameters to differentiate.

A *model file* is a Python file with Model objects at module level; ``symgrad show``,
``generate`` and ``check`` read them, and the file still runs as a script.
"""

from __future__ import annotations

import keyword
from functools import cached_property

from sympy.matrices.expressions.matexpr import MatrixExpr

from symgrad.compiled import CompiledFunction, Gradients, _check_wrt, compile, grad, inputs_of

__all__ = ["Model"]


# The modules that generated modules import (second-order ones look SciPy up): a module of
# one of these names in their folder would shadow it, for itself and for every module there.
GENERATED_IMPORTS = frozenset({"numpy", "numba", "math", "llvmlite", "scipy"})


class Model:
    """A model: ``Model("window_classifier", s, wrt=[W, b, u, x])``.

    Every free symbol of ``output`` that is not in ``wrt`` is a data input.  With
    ``second_order=True`` its generated module also has ``hessian`` and ``hvp`` (a scalar
    output) or ``jacobian`` (a vector or matrix output), as the compiled function does.

    >>> import sympy as sp
    >>> w, x, y = sp.symbols("w x y")
    >>> m = Model("linear_regression", (w * x - y) ** 2, wrt=[w])
    >>> [s.name for s in m.inputs]
    ['w', 'x', 'y']
    """

    def __init__(self, name: str, output, wrt, *, second_order: bool = False):
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"model name {name!r} must be a Python identifier and no keyword "
                             "(it names the generated module, which import must accept)")
        if name in GENERATED_IMPORTS:
            raise ValueError(f"model name {name!r} is the name of a module that generated "
                             f"modules import ({', '.join(sorted(GENERATED_IMPORTS))}): its "
                             f"module, {name}.py, would stand in for that one beside it")
        if not isinstance(second_order, bool):
            raise TypeError(f"second_order must be True or False, got {second_order!r}")
        self.name = name
        from symgrad.forms import normalize, refuse_explicit_matrix

        refuse_explicit_matrix(output, "sg.Model")
        self.output, wrt = normalize(output, wrt)
        self.wrt = _check_wrt(self.output, wrt)
        # the generated module also offers hessian and hvp (a scalar output) or jacobian
        self.second_order = second_order

    @cached_property
    def inputs(self) -> list:
        """Parameters first (in wrt order), then data inputs sorted by name."""
        return inputs_of(self.output, self.wrt)

    @cached_property
    def compiled(self) -> CompiledFunction:
        """The compiled function (built on first use)."""
        return compile(self.output, self.wrt, name=self.name)

    def grad(self) -> Gradients:
        """The gradients as SymPy expressions."""
        return grad(self.output, self.wrt)

    def show(self) -> str:
        """The derived formulas, shared pieces named once."""
        from symgrad.present.formulas import show
        return show(self.grad(), output=self.name)

    def __repr__(self) -> str:
        extra = ", second_order=True" if self.second_order else ""
        return f"Model({self.name!r}, wrt=[{', '.join(str(w) for w in self.wrt)}]{extra})"


def has_scalar_output(model: Model) -> bool:
    """Whether the model's output is a scalar (a 1 x 1 matrix counts): its module then has
    ``value_and_grad`` and ``grad``; otherwise ``vjp``.

    >>> import sympy as sp
    >>> w = sp.Symbol("w")
    >>> has_scalar_output(Model("square", w**2, wrt=[w]))
    True
    """
    return not isinstance(model.output, MatrixExpr) or tuple(model.output.shape) == (1, 1)
