"""symgrad: symbolic gradients of SymPy models, compiled to fast Numba code.

>>> import sympy as sp
>>> import symgrad as sg
>>> w, x, y = sp.symbols("w x y")
>>> loss = (w * x - y) ** 2
>>> sg.grad(loss, [w])[w]
x*(2*w*x - 2*y)
"""

from symgrad import ops as _ops
from symgrad.check import CheckReport, check
from symgrad.compiled import CompiledFunction, Gradients, compile, grad
from symgrad.derive.rules import RULES, register_rule
from symgrad.derive.split import NotSplittable
from symgrad.generate import generate
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
from symgrad.present.graph import graph
from symgrad.second import NoMatrixForm, hessian, hvp, jacobian
from symgrad.show import latex, show

__version__ = "0.1.0"

# Elementwise functions: each takes a scalar or a matrix.
sigmoid = _ops.ELEMENTWISE["sigmoid"]
softplus = _ops.ELEMENTWISE["softplus"]
logsigmoid = _ops.ELEMENTWISE["logsigmoid"]
relu = _ops.ELEMENTWISE["relu"]
exp = _ops.ELEMENTWISE["exp"]
log = _ops.ELEMENTWISE["log"]
log1p = _ops.ELEMENTWISE["log1p"]
tanh = _ops.ELEMENTWISE["tanh"]
sin = _ops.ELEMENTWISE["sin"]
cos = _ops.ELEMENTWISE["cos"]
sqrt = _ops.ELEMENTWISE["sqrt"]
square = _ops.ELEMENTWISE["square"]
abs = _ops.ELEMENTWISE["abs"]  # noqa: A001 - mirrors numpy.abs

__all__ = [
    "grad", "compile", "generate", "check", "CheckReport", "Model", "CompiledFunction",
    "Gradients", "RULES", "register_rule", "show", "latex", "graph", "explain",
    "NotSplittable", "hessian", "hvp", "jacobian", "NoMatrixForm",
    "matrix", "vector", "dot", "hadamard", "sum", "mean", "broadcast", "trace", "det", "logdet",
    "inv", "logsumexp", "softmax", "softmax_cross_entropy", "binary_cross_entropy_with_logits",
    "name", "Map",
    "sigmoid", "softplus", "logsigmoid", "relu", "exp", "log", "log1p", "tanh", "sin", "cos",
    "sqrt", "square", "abs", "__version__",
]
