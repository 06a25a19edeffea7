"""Checking symgrad's gradients against autodiff frameworks and finite differences.

``check(model)`` compares symgrad's compiled value and gradients with JAX, PyTorch, autograd
and central differences on random inputs and returns a :class:`CheckReport`
(``report.ok``, ``print(report)``, ``report.to_dict()``).  The pieces:

* :mod:`symgrad.checking.translate`: the model as NumPy / JAX / PyTorch / autograd code, one
  printer per framework over one dispatch;
* :mod:`symgrad.checking.backends`: value and gradients by each means;
* :mod:`symgrad.checking.sampling`: sizes and random inputs in the domain;
* :mod:`symgrad.checking.report`: errors, tolerances and the printed table.

>>> import sympy as sp
>>> w, x, y = sp.symbols("w x y")
>>> check((w * x - y) ** 2, [w], reference="symbolic").ok
True
"""

from symgrad.checking.report import CheckReport
from symgrad.checking.runner import check

__all__ = ["check", "CheckReport"]
