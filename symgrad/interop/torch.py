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

from symgrad.interop import check_names, is_elementwise, sum_to_shape

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
        self._parameter_names = frozenset(function.parameters)
        self._elementwise = is_elementwise(function)

    def __call__(self, **inputs: Any) -> torch.Tensor:
        torch = self._torch
        names = tuple(inputs)
        if names not in self._checked_names:       # the same call again: checked already
            check_names(self.function, inputs)
            self._checked_names.add(names)
        values = tuple(inputs.values())
        grad_enabled = torch.is_grad_enabled()
        float64 = torch.float64
        graph, dtype, narrow = False, None, False
        arrays = {}
        # one pass over the inputs: check, convert (a float64 tensor's numpy() shares its
        # memory) and find the result's dtype; this runs on every training step
        for name, value in zip(names, values, strict=True):
            if not isinstance(value, torch.Tensor):
                arrays[name] = value
                continue
            if not value.is_cpu or value.is_complex():
                self._refuse(name, value)
            if value.requires_grad:
                if grad_enabled and name not in self._parameter_names:
                    self._refuse(name, value)
                graph = True
                tensor = value.detach()
            else:
                tensor = value
            if tensor.dtype is float64:
                arrays[name] = tensor.numpy()
                dtype = float64
                continue
            narrow = True
            if tensor.is_floating_point():
                dtype = tensor.dtype if dtype is None else torch.promote_types(dtype,
                                                                              tensor.dtype)
                tensor = tensor.to(float64)
            arrays[name] = tensor.numpy()
        dtype = float64 if dtype is None else dtype
        if not (graph and grad_enabled):
            # nothing to differentiate: no autograd node, just the value
            return _to_tensor(torch, self.function.forward(**arrays), dtype)
        return self._operation.apply(self, names, arrays, dtype, narrow, *values)

    def _refuse(self, name: str, tensor: torch.Tensor) -> None:
        """Raise the error for a tensor symgrad cannot take."""
        if not tensor.is_cpu:
            raise ValueError(f"input {name!r} is a tensor on {tensor.device}; symgrad computes "
                             f"on the CPU: pass {name}=....cpu()")
        if tensor.is_complex():
            raise TypeError(f"input {name!r} is a {tensor.dtype} tensor; symgrad computes with "
                            "real numbers only")
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
        """apply(wrapper, names, arrays, dtype, narrow, *values): one compiled symgrad call
        on ``arrays`` (the values as NumPy arrays, made by the wrapper), its result in
        ``dtype``; ``narrow`` when some input is not float64."""

        @staticmethod
        def forward(ctx, wrapper: TorchFunction, names: tuple, arrays: dict, dtype,
                    narrow: bool, *values):
            function = wrapper.function
            if wrapper._scalar:
                # the gradient comes with the value for little more than the value's cost:
                # compute both now, keep the gradients for backward
                value, ctx.gradients = function.value_and_grad(**arrays)
            else:
                value = function.forward(**arrays)
            ctx.wrapper, ctx.names, ctx.arrays = wrapper, names, arrays
            ctx.dtypes = tuple(v.dtype if isinstance(v, torch.Tensor) else None
                               for v in values) if narrow else None
            # saved so that torch notices an input changed in place before a backward pass
            # that reads the inputs again
            ctx.save_for_backward(*(v for v in values if isinstance(v, torch.Tensor)))
            return _to_tensor(torch, value, dtype)

        @staticmethod
        def backward(ctx, grad_output):
            if torch.is_grad_enabled():
                # create_graph=True: outputs that raise if differentiated again (symgrad
                # has first derivatives only)
                return backward_once(ctx, grad_output)
            # the usual case: grad mode is already off, and once_differentiable's no_grad
            # block would only cost time
            return backward_pass(ctx, grad_output)

    def backward_pass(ctx, grad_output):
        """The gradients of the inputs: symgrad's gradient times the output's gradient
        (scalar outputs), or f.vjp (matrix outputs)."""
        wrapper, needs = ctx.wrapper, ctx.needs_input_grad
        scale = None
        if wrapper._scalar:
            gradients = ctx.gradients
            # the gradients are handed over (torch may keep them as .grad and add to them
            # in place); a second backward pass (retain_graph=True) computes them again
            ctx.gradients = None
            if gradients is None:
                _ = ctx.saved_tensors  # raises if an input was changed in place since
                gradients = wrapper.function.value_and_grad(**ctx.arrays)[1]
            if grad_output.dim() == 0:
                # loss.backward() seeds 1.0: scaling would only copy the gradients
                seed = grad_output.item()
                scale = None if seed == 1.0 else seed
            else:
                scale = grad_output.detach().to(torch.float64).numpy()
        else:
            _ = ctx.saved_tensors  # raises if an input was changed in place since forward
            upstream = grad_output.detach().to(torch.float64).contiguous().numpy()
            gradients = wrapper.function.vjp(upstream, **ctx.arrays)
        out = [None, None, None, None, None]
        for k, name in enumerate(ctx.names):
            if not needs[k + 5]:
                out.append(None)
                continue
            gradient = gradients[name]
            if scale is not None:
                gradient = np.multiply(gradient, scale)
            if wrapper._elementwise:     # broadcast inputs: per-element gradients
                gradient = sum_to_shape(gradient, np.shape(ctx.arrays[name]))
            tensor = (torch.from_numpy(gradient) if type(gradient) is np.ndarray
                      else torch.tensor(float(gradient), dtype=torch.float64))
            if ctx.dtypes is not None and ctx.dtypes[k] is not torch.float64:
                tensor = tensor.to(ctx.dtypes[k])
            out.append(tensor)
        return tuple(out)

    backward_once = once_differentiable(backward_pass)
    _OPERATIONS["operation"] = SymgradOperation
    return SymgradOperation
