"""symgrad: symbolic gradients of SymPy models, compiled to fast Numba code.

>>> import sympy as sp
>>> import symgrad as sg
>>> w, x, y = sp.symbols("w x y")
>>> loss = (w * x - y) ** 2
>>> sg.grad(loss, [w])[w]
2*x*(w*x - y)
"""

from symgrad import functions as _functions
from symgrad.checking import CheckReport, check
from symgrad.compiled import CompiledFunction, Gradients, compile, grad
from symgrad.derive.rules import RULES, register_rule
from symgrad.derive.split import NotSplittable
from symgrad.functions import elementwise
from symgrad.generation import generate
from symgrad.model import Model
from symgrad.ops import (
    Map,
    binary_cross_entropy_with_logits,
    broadcast,
    det,
    dot,
    hadamard,
    inv,
    logdet,
    logsumexp,
    matrix,
    mean,
    name,
    softmax,
    softmax_cross_entropy,
    sum,
    trace,
    vector,
)
from symgrad.present.explain import explain
from symgrad.present.formulas import latex, show
from symgrad.present.graph import graph
from symgrad.second import NoMatrixForm, hessian, hvp, jacobian
from symgrad.version import __version__

# Elementwise functions (sg.sigmoid, sg.exp, ...): one per row of symgrad/functions.py's
# table, each taking a scalar or a matrix.
globals().update(_functions.FUNCTIONS)

__all__ = [
    "grad", "compile", "generate", "check", "CheckReport", "Model", "CompiledFunction",
    "Gradients", "RULES", "register_rule", "show", "latex", "graph", "explain",
    "NotSplittable", "hessian", "hvp", "jacobian", "NoMatrixForm",
    "matrix", "vector", "dot", "hadamard", "sum", "mean", "broadcast", "trace", "det", "logdet",
    "inv", "logsumexp", "softmax", "softmax_cross_entropy", "binary_cross_entropy_with_logits",
    "name", "Map", "elementwise", *_functions.FUNCTIONS, "__version__",
]
