"""``f.to_torch()``: a compiled symgrad function as a PyTorch autograd operation.

The forward pass runs symgrad's compiled kernel on the tensors' memory; the backward pass is
symgrad's gradient (scalar outputs: computed together with the value, by
``f.value_and_grad``, when some input requires grad) or ``f.vjp`` (matrix outputs), so a
symgrad loss or layer trains in a ``torch.optim`` loop like any other.

>>> import sympy as sp, torch, symgrad as sg
>>> w, x = sp.symbols("w x")
>>> tf = sg.compile((w * x - 1) ** 2, wrt=[w]).to_torch()
>>> w0 = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
>>> loss = tf(w=w0, x=torch.tensor(2.0, dtype=torch.float64))
>>> loss.backward()
>>> loss.item(), w0.grad.item()
(25.0, 20.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from symgrad.interop import check_names, sum_to_shape

if TYPE_CHECKING:
    import torch

    from symgrad.compiled import CompiledFunction

__all__ = ["TorchFunction", "to_torch"]


def _import_torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("f.to_torch() needs PyTorch: pip install torch") from exc
    return torch


class TorchFunction:
    """A compiled symgrad function that takes and returns ``torch.Tensor`` objects, with its
    gradient in torch autograd.  Made by ``f.to_torch()``.

    Inputs are passed by symbol name, as to ``f``.  Gradients reach every differentiated
    input (``f.parameters``) that requires grad; a data input that requires grad is an error,
    since symgrad has no gradient for it (compile with it in ``wrt``).

    - float64 tensors are used in place: a contiguous one goes into the kernel without a
      copy;
    - float32 (and other floating) tensors are computed in float64 and the value and the
      gradients come back in the tensors' own dtype;
    - CPU tensors only: a tensor on another device raises ``ValueError`` naming it;
    - first derivatives only (a backward pass through the backward pass raises).

    >>> import sympy as sp, torch, symgrad as sg
    >>> W, x = sg.matrix("W", 2, 3), sg.vector("x", 3)
    >>> layer = sg.compile(sg.tanh(W @ x), wrt=[W]).to_torch()     # a 2 x 1 output
    >>> W0 = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    >>> layer(W=W0, x=torch.ones(3, dtype=torch.float64)).sum().backward()
    >>> W0.grad.tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """

    def __init__(self, function: CompiledFunction):
        torch = _import_torch()
        self.function = function
        self.inputs = function.inputs
        self.parameters = function.parameters
        self._scalar = function.spec.value_and_grad is not None
        self._torch = torch
        self._operation = _operation_class(torch)
        self._checked_names: set = set()

    def __call__(self, **inputs: Any) -> torch.Tensor:
        torch = self._torch
        names = tuple(inputs)
        if names not in self._checked_names:       # the same call again: checked already
            check_names(self.function, inputs)
            self._checked_names.add(names)
        values = tuple(inputs.values())
        grad_enabled = torch.is_grad_enabled()
        graph = False
        for name, value in zip(names, values, strict=True):
            if isinstance(value, torch.Tensor):
                self._check_tensor(name, value, grad_enabled)
                graph = graph or value.requires_grad
        if not (graph and grad_enabled):
            # nothing to differentiate: no autograd node, just the value
            arrays = {name: _as_array(v) if isinstance(v, torch.Tensor) else v
                      for name, v in zip(names, values, strict=True)}
            return _to_tensor(torch, self.function.forward(**arrays),
                              _result_dtype(torch, values))
        return self._operation.apply(self, names, *values)

    def _check_tensor(self, name: str, tensor: torch.Tensor, grad_enabled: bool) -> None:
        if tensor.device.type != "cpu":
            raise ValueError(f"input {name!r} is a tensor on {tensor.device}; symgrad computes "
                             f"on the CPU: pass {name}=....cpu()")
        if tensor.is_complex():
            raise TypeError(f"input {name!r} is a {tensor.dtype} tensor; symgrad computes with "
                            "real numbers only")
        if grad_enabled and tensor.requires_grad and name not in self.parameters:
            raise ValueError(
                f"input {name!r} requires grad, but symgrad does not differentiate with respect "
                f"to it (the parameters are {', '.join(self.parameters)}): compile with "
                f"{name} in wrt, or pass {name}=....detach()")

    def __repr__(self) -> str:
        return f"<symgrad torch function of {', '.join(self.inputs)}; parameters " \
               f"{', '.join(self.parameters)}>"


def to_torch(function: CompiledFunction) -> TorchFunction:
    """``function`` as a callable on tensors whose gradient is in torch autograd (see
    :class:`TorchFunction`); the same as ``function.to_torch()``."""
    return TorchFunction(function)


def _as_array(tensor) -> np.ndarray:
    """The tensor's values as a NumPy array: its own memory for float64 (``numpy()`` shares
    it), a float64 copy for other floating dtypes; integers and booleans as they are (the
    compiled function converts them)."""
    import torch

    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.dtype == torch.float64:
        return tensor.numpy()
    if tensor.is_floating_point():
        return tensor.to(torch.float64).numpy()
    return tensor.numpy()


def _result_dtype(torch, values):
    """float64 unless every floating tensor input is of a narrower type (float32 in, float32
    out); mixed inputs promote as torch does."""
    dtype = None
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            dtype = value.dtype if dtype is None else torch.promote_types(dtype, value.dtype)
    return torch.float64 if dtype is None else dtype


def _to_tensor(torch, array, dtype):
    tensor = torch.from_numpy(np.asarray(array, dtype=np.float64))
    return tensor if dtype == torch.float64 else tensor.to(dtype)


_OPERATIONS: dict = {}


def _operation_class(torch):
    """The ``torch.autograd.Function`` subclass (made once; torch is imported lazily)."""
    if "operation" in _OPERATIONS:
        return _OPERATIONS["operation"]

    from torch.autograd.function import once_differentiable

    class SymgradOperation(torch.autograd.Function):
        """apply(wrapper, names, *values): one compiled symgrad function call."""

        @staticmethod
        def forward(ctx, wrapper: TorchFunction, names: tuple, *values):
            function = wrapper.function
            arrays = {name: _as_array(v) if isinstance(v, torch.Tensor) else v
                      for name, v in zip(names, values, strict=True)}
            needed = ctx.needs_input_grad[2:]
            ctx.names = names
            ctx.scalar = wrapper._scalar
            ctx.shapes = [tuple(v.shape) if isinstance(v, torch.Tensor) else np.shape(v)
                          for v in values]
            ctx.dtypes = [v.dtype if isinstance(v, torch.Tensor) else torch.float64
                          for v in values]
            dtype = _result_dtype(torch, values)
            if not any(needed):
                return _to_tensor(torch, function.forward(**arrays), dtype)
            if wrapper._scalar:
                # the gradient comes with the value for little more than the value's cost:
                # compute both now, keep the gradients for backward
                value, ctx.gradients = function.value_and_grad(**arrays)
            else:
                value = function.forward(**arrays)
            ctx.function = function
            ctx.arrays = arrays
            # saved so that torch notices an input changed in place before a backward pass
            # that reads the inputs again
            ctx.save_for_backward(*(v for v in values if isinstance(v, torch.Tensor)))
            return _to_tensor(torch, value, dtype)

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_output):
            upstream = grad_output.detach()
            if upstream.dtype != torch.float64:
                upstream = upstream.to(torch.float64)
            upstream = upstream.numpy()
            if ctx.scalar:
                gradients = ctx.gradients
                # the gradients are handed over (torch may keep them as .grad and add to them
                # in place); a second backward pass (retain_graph=True) computes them again
                ctx.gradients = None
                if gradients is None:
                    _ = ctx.saved_tensors  # raises if an input was modified in place since forward
                    gradients = ctx.function.value_and_grad(**ctx.arrays)[1]
                # loss.backward() seeds 1.0: the scaling would only copy the gradients
                scale = None if upstream.size == 1 and upstream.item() == 1.0 else upstream
            else:
                _ = ctx.saved_tensors  # raises if an input was modified in place since forward
                gradients = ctx.function.vjp(np.ascontiguousarray(upstream), **ctx.arrays)
                scale = None
            out = [None, None]
            for k, name in enumerate(ctx.names):
                if not ctx.needs_input_grad[k + 2]:
                    out.append(None)
                    continue
                gradient = gradients[name]
                if scale is not None:
                    gradient = np.multiply(gradient, scale)
                gradient = sum_to_shape(gradient, ctx.shapes[k])
                out.append(_to_tensor(torch, gradient, ctx.dtypes[k]))
            return tuple(out)

    _OPERATIONS["operation"] = SymgradOperation
    return SymgradOperation
