"""``f.to_torch()``: a compiled symgrad function as a PyTorch autograd operation.

The forward pass runs symgrad's compiled kernel on the tensors' memory; the backward pass is
symgrad's gradient (scalar outputs: computed together with the value, by
``f.value_and_grad``, when some input requires grad) or ``f.vjp`` (matrix outputs), so a
symgrad loss or layer trains in a ``torch.optim`` loop like any other.

For a scalar output, a backward pass that torch records (``create_graph=True``) returns the
gradient through a second ``autograd.Function`` whose own backward pass is symgrad's
Hessian-vector product ``f.hvp`` (the Hessian is symmetric): a gradient penalty,
``torch.autograd.functional.hessian`` and ``hvp`` work.  A third derivative, and a second
derivative of a matrix output, raise ``NotImplementedError``.

>>> import sympy as sp, torch, symgrad as sg
>>> w, x = sp.symbols("w x")
>>> tf = sg.compile((w * x - 1) ** 2, wrt=[w]).to_torch()
>>> w0 = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
>>> loss = tf(w=w0, x=torch.tensor(2.0, dtype=torch.float64))
>>> loss.backward()
>>> loss.item(), w0.grad.item()
(25.0, 20.0)
>>> torch.autograd.functional.hessian(lambda w: tf(w=w, x=torch.tensor(2.0)), w0).item()
8.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from symgrad.interop import (
    check_names,
    hessian_vector_product,
    is_elementwise,
    sum_to_shape,
)

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
    - second derivatives for a scalar output (``create_graph=True``, then a backward pass
      through the gradients), from symgrad's Hessian-vector products; a third derivative,
      or a second one of a matrix output, raises ``NotImplementedError``.

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
            tensors = [v for v in values if isinstance(v, torch.Tensor)]
            ctx.save_for_backward(*tensors)
            # which values are tensors (a second backward pass links the gradients to them)
            ctx.all_tensors = len(tensors) == len(values)
            if not ctx.all_tensors:
                ctx.is_tensor = tuple(isinstance(v, torch.Tensor) for v in values)
            return _to_tensor(torch, value, dtype)

        @staticmethod
        def backward(ctx, grad_output):
            if torch.is_grad_enabled():
                # create_graph=True: gradients that can be differentiated again (a scalar
                # output: symgrad's Hessian-vector product), or that say why not
                if ctx.wrapper._scalar:
                    return backward_differentiable(ctx, grad_output)
                return refusing(ctx, backward_pass(ctx, grad_output), grad_output,
                                second_order_message(ctx.wrapper))
            # the usual case: grad mode is off, and the gradients are plain tensors
            return backward_pass(ctx, grad_output)

    def backward_pass(ctx, grad_output):
        """The gradients of the inputs: symgrad's gradient times the output's gradient
        (scalar outputs), or f.vjp (matrix outputs)."""
        wrapper, needs = ctx.wrapper, ctx.needs_input_grad
        scale = None
        if wrapper._scalar:
            gradients = take_gradients(ctx)
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

    def take_gradients(ctx) -> dict:
        """The gradients computed with the value: handed over (torch may keep them as .grad
        and add to them in place), so that a second backward pass (retain_graph=True)
        computes them again."""
        gradients = ctx.gradients
        ctx.gradients = None
        if gradients is None:
            _ = ctx.saved_tensors  # raises if an input was changed in place since
            gradients = ctx.wrapper.function.value_and_grad(**ctx.arrays)[1]
        return gradients

    def backward_differentiable(ctx, grad_output):
        """backward_pass as torch operations on a SymgradGradient node: the gradients (per
        element for an elementwise model) times the output's gradient, summed to each
        input's shape, so that torch differentiates them again (through the Hessian-vector
        product) in the parameters and in ``grad_output``."""
        wrapper, needs = ctx.wrapper, ctx.needs_input_grad
        values = inputs_of(ctx)
        wanted = tuple(name for k, name in enumerate(ctx.names) if needs[k + 5])
        gradients = SymgradGradient.apply(wrapper, ctx.names, ctx.arrays, take_gradients(ctx),
                                          wanted, *values)
        gradients = dict(zip(wanted, gradients, strict=True))
        upstream = grad_output.to(torch.float64)
        out = [None, None, None, None, None]
        for k, name in enumerate(ctx.names):
            if name not in gradients:
                out.append(None)
                continue
            gradient = gradients[name] * upstream
            shape = tuple(np.shape(ctx.arrays[name]))
            if tuple(gradient.shape) != shape:       # broadcast inputs: summed back
                gradient = gradient.sum_to_size(shape) if shape else gradient.sum()
            if ctx.dtypes is not None and ctx.dtypes[k] is not torch.float64:
                gradient = gradient.to(ctx.dtypes[k])
            out.append(gradient)
        return tuple(out)

    def inputs_of(ctx) -> tuple:
        """The call's values: its tensors as saved (linked to their graph), None for the
        others (plain numbers and NumPy arrays take no part in autograd)."""
        saved = ctx.saved_tensors
        if ctx.all_tensors:
            return saved
        tensors = iter(saved)
        return tuple(next(tensors) if is_tensor else None for is_tensor in ctx.is_tensor)

    class SymgradGradient(torch.autograd.Function):
        """apply(wrapper, names, arrays, gradients, wanted, *values): the gradients of the
        ``wanted`` parameters (computed already, in float64, per element for an elementwise
        model) as tensors that torch can differentiate: the backward pass of a gradient is
        symgrad's Hessian-vector product (the Hessian is symmetric)."""

        @staticmethod
        def forward(ctx, wrapper, names, arrays, gradients, wanted, *values):
            ctx.wrapper, ctx.names, ctx.arrays, ctx.wanted = wrapper, names, arrays, wanted
            ctx.dtypes = tuple(v.dtype if isinstance(v, torch.Tensor) else None
                               for v in values)
            ctx.save_for_backward(*(v for v in values if isinstance(v, torch.Tensor)))
            return tuple(torch.from_numpy(np.array(gradients[p], dtype=np.float64))
                         for p in wanted)

        @staticmethod
        def backward(ctx, *upstream):
            wrapper = ctx.wrapper
            saved = ctx.saved_tensors  # raises if an input was changed in place since forward
            if torch.is_grad_enabled():
                # create_graph=True once more: H u is linear in the directions u and can be
                # differentiated in them (torch.autograd.functional.hvp does); in the
                # inputs it would be a third derivative, which raises when asked for
                directions = [u.to(torch.float64) for u in upstream]
                products = SymgradHvp.apply(wrapper, ctx.arrays, ctx.wanted, True, *directions)
                inputs = [t for t in saved if t.requires_grad]
                if inputs:
                    refusal = Refusal.apply(third_order_message(wrapper), *inputs)
                    products = [p + refusal for p in products]
            else:
                directions = [u.to(torch.float64).numpy() for u in upstream]
                products = [torch.from_numpy(p) for p in hvp_products(
                    wrapper, ctx.arrays, ctx.wanted, directions, True)]
            products = dict(zip(ctx.wanted, products, strict=True))
            out = [None, None, None, None, None]
            for k, name in enumerate(ctx.names):
                if not ctx.needs_input_grad[k + 5]:
                    out.append(None)
                    continue
                tensor = products[name]
                if ctx.dtypes[k] is not torch.float64:
                    tensor = tensor.to(ctx.dtypes[k])
                out.append(tensor)
            return tuple(out)

    class SymgradHvp(torch.autograd.Function):
        """apply(wrapper, arrays, parameters, summed, *directions): symgrad's H v for the
        given parameters (the others' directions 0), float64 tensors in and out; for an
        elementwise model the directions are per element (``summed``: the products summed
        to each parameter's shape) or per parameter (not ``summed``: broadcast to the
        points, products per element).  Its backward pass is the same product with
        ``summed`` the other way round: the transpose, since H is symmetric."""

        @staticmethod
        def forward(ctx, wrapper, arrays, parameters, summed, *directions):
            ctx.wrapper, ctx.arrays, ctx.parameters, ctx.summed = (wrapper, arrays,
                                                                   parameters, summed)
            return tuple(torch.from_numpy(p) for p in hvp_products(
                wrapper, arrays, parameters, [d.detach().numpy() for d in directions],
                summed))

        @staticmethod
        def backward(ctx, *cotangents):
            return (None, None, None, None, *SymgradHvp.apply(
                ctx.wrapper, ctx.arrays, ctx.parameters, not ctx.summed,
                *(c.to(torch.float64) for c in cotangents)))

    class Refusal(torch.autograd.Function):
        """apply(message, *inputs): a zero whose backward pass raises
        ``NotImplementedError(message)``: added to a result, it says that symgrad has no
        derivative of it in ``inputs``, only when torch's engine comes to need one."""

        @staticmethod
        def forward(ctx, message, *inputs):
            ctx.message = message
            return torch.zeros((), dtype=torch.float64)

        @staticmethod
        def backward(ctx, *_):
            raise NotImplementedError(ctx.message)

    def refusing(ctx, gradients: tuple, grad_output, message: str) -> tuple:
        """``gradients`` as tensors that depend on the call's tensors and ``grad_output``,
        whose own derivative raises ``message``."""
        links = [t for t in (*ctx.saved_tensors, grad_output)
                 if isinstance(t, torch.Tensor) and t.requires_grad]
        if not links:
            return gradients
        refusal = Refusal.apply(message, *links)
        return tuple(g if g is None else g + refusal.to(g.dtype) for g in gradients)

    _OPERATIONS["operation"] = SymgradOperation
    return SymgradOperation


def hvp_products(wrapper, arrays: dict, parameters: tuple, directions: list,
                 summed: bool) -> list:
    """symgrad's H v for ``parameters`` (the others' directions 0) as float64 arrays; see
    ``SymgradHvp`` for ``summed``."""
    function = wrapper.function
    given = dict(zip(parameters, directions, strict=True))
    if wrapper._elementwise:
        shape = np.broadcast_shapes(*(np.shape(arrays[n]) for n in function.inputs))
        full = {p: np.broadcast_to(given.get(p, 0.0), shape) for p in function.parameters}
    else:
        full = {p: given[p] if p in given else np.zeros(np.shape(arrays[p]))
                for p in function.parameters}
    products = hessian_vector_product(function, arrays, full, wrapper._elementwise)
    return [np.array(sum_to_shape(products[p], np.shape(arrays[p])) if summed else products[p],
                     dtype=np.float64) for p in parameters]


def second_order_message(wrapper) -> str:
    return (f"symgrad's torch function of {wrapper.function.spec.name} has a matrix output "
            "and first derivatives only (its backward pass is f.vjp): second derivatives of a "
            "model with a vector or matrix output are not supported (a scalar loss compiled "
            "as one symgrad model has them)")


def third_order_message(wrapper) -> str:
    return (f"symgrad's torch function of {wrapper.function.spec.name} has first and second "
            "derivatives (the second from symgrad's Hessian-vector products): a third "
            "derivative is not supported")
