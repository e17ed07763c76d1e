"""The functional view of the model that both HVP engines differentiate.

Design choices (the why):

* **No side effects by construction.** The forward runs through ``torch.func.functional_call``
  with detached aliases of the parameters (fresh leaves for the probed layer) and clones of the
  buffers, so the model's parameters, buffers (BatchNorm running stats, ``num_batches_tracked``),
  ``.grad`` tensors and ``requires_grad`` flags are never written, whatever the BatchNorm mode.
  HVPs come from ``torch.autograd.grad``, which does not accumulate into ``.grad``. Module
  train/eval flags and the RNG states (torch CPU and CUDA, ``random``, numpy) are saved and
  restored in ``finally``, so an exception mid-probe leaves the model as it was too.
* **Deterministic Hessian.** The whole model is put in eval mode (dropout, stochastic depth and
  gradient checkpointing off). ``bn_mode="eval"`` uses BatchNorm running statistics, so the
  micro-batch split does not change the answer; ``bn_mode="train"`` switches only the BatchNorm
  modules to batch statistics (their running-stat updates land in the throw-away clones).
* **Mixed precision.** When any floating parameter or buffer is narrower than float32 (bf16 or
  fp16 models), the probe runs on temporary float32 copies of all parameters and buffers, with
  float32 inputs (the model's own tensors stay untouched); float64 models are probed in float64.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

LossFn = Callable[[Any, Any], torch.Tensor]
"""``loss_fn(outputs, targets)``: the mean loss of one micro-batch, as a scalar tensor."""


class InferenceBatchNormAsAffine(TorchFunctionMode):
    """Evaluates inference-mode ``F.batch_norm`` as the per-channel affine map it is.

    With running statistics, batch norm is ``x * s + t`` (``s = weight / sqrt(var + eps)``,
    ``t = bias - mean * s``): the same function of the input, weight and bias, so the same
    Hessian. Autograd's double backward of ``batch_norm`` uses the general (batch-statistics)
    formula instead, about a sixth of each HVP's time on the MNIST-1D CNN (docs/benchmarks.md);
    through ``x * s + t`` the second pass is one multiplication. Calls with batch statistics
    (``bn_mode="train"``) pass through unchanged.
    """

    _SIGNATURE = inspect.signature(F.batch_norm)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is not F.batch_norm:
            return func(*args, **kwargs)
        a = self._SIGNATURE.bind(*args, **kwargs)
        a.apply_defaults()
        x, mean, var = a.arguments["input"], a.arguments["running_mean"], a.arguments["running_var"]
        if a.arguments["training"] or mean is None or var is None:
            return func(*args, **kwargs)
        scale = torch.rsqrt(var + a.arguments["eps"])
        if a.arguments["weight"] is not None:
            scale = scale * a.arguments["weight"]
        shift = -mean * scale
        if a.arguments["bias"] is not None:
            shift = shift + a.arguments["bias"]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(shape) + shift.view(shape)


# ----------------------------------------------------------------------------------------------
# The functional view of the model used by both HVP methods


class Functional:
    """Runs the model on substitute tensors: detached parameters (fresh leaves for the layer),
    cloned buffers, all in the compute dtype; nothing of the model is written."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        layer: list[str],
        buffers: dict[str, torch.Tensor] | None = None,
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.dtype = _compute_dtype(model)
        modules = dict(model.named_modules())
        wanted = {id(p) for n in layer for p in modules[n].parameters()}
        self.base: dict[str, torch.Tensor] = {}
        self.layer_names: list[str] = []
        self.layer_values: list[torch.Tensor] = []
        for name, p in model.named_parameters():  # deduplicates tied parameters
            t = _cast(p.detach(), self.dtype)
            if id(p) in wanted:
                self.layer_names.append(name)
                self.layer_values.append(t)
            else:
                self.base[name] = t
        for name, b in model.named_buffers():
            if buffers is not None and name in buffers:
                b = buffers[name].to(b.device)
            # Clones, so running-stat updates in bn_mode="train" never reach the model.
            self.base[name] = _cast(b.detach(), self.dtype).clone()
        self.numels = [t.numel() for t in self.layer_values]
        self.num_params = sum(self.numels)
        self.device = self.layer_values[0].device
        self.exclude_ptrs = {storage_ptr(t) for t in [*self.base.values(), *self.layer_values]}

    def loss(
        self, inputs: Any, targets: Any, layer_tensors: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Mean loss of one micro-batch with ``layer_tensors`` in place of the layer's params."""
        tensors = dict(self.base)
        tensors.update(zip(self.layer_names, layer_tensors, strict=True))
        # The probe batch stays where the caller keeps it (the host): only this micro-batch is
        # on the device, and only while its forward and graph need it.
        inputs = cast_tree(to_device(inputs, self.device), self.dtype)
        out = functional_call(self.model, tensors, (inputs,))
        loss = self.loss_fn(out, to_device(targets, self.device))
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor (the mean loss of the batch)")
        return loss.reshape(()).to(self.dtype)

    def sample_losses(
        self, inputs: Any, targets: Any, layer_tensors: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """The loss of each sample of one micro-batch (a vector), from the same forward as
        :meth:`loss`: ``loss_fn`` applied to each sample's output row (under ``vmap``), so the
        vector's mean is the micro-batch's mean loss for any per-sample-mean ``loss_fn``."""
        tensors = dict(self.base)
        tensors.update(zip(self.layer_names, layer_tensors, strict=True))
        inputs = cast_tree(to_device(inputs, self.device), self.dtype)
        out = functional_call(self.model, tensors, (inputs,))
        targets = to_device(targets, self.device)
        if not isinstance(out, torch.Tensor) or not isinstance(targets, torch.Tensor):
            raise ValueError("per-sample losses need tensor outputs and targets")

        def one(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.loss_fn(o.unsqueeze(0), t.unsqueeze(0)).reshape(()).to(self.dtype)

        return vmap(one)(out, targets)  # type: ignore[no-any-return]

    def leaves(self, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Fresh leaf tensors (requiring grad) holding ``values``, without copying them."""
        return [v.detach().requires_grad_(True) for v in values]

    def flat(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Concatenate per-parameter tensors into one vector (``None`` = zeros)."""
        parts = [
            torch.zeros(n, dtype=self.dtype, device=self.device) if t is None else t.reshape(-1)
            for t, n in zip(tensors, self.numels, strict=True)
        ]
        return torch.cat(parts)

    def unflat(self, vec: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat vector into tensors shaped like the layer's parameters."""
        return [
            c.view_as(t) for c, t in zip(vec.split(self.numels), self.layer_values, strict=True)
        ]


def _compute_dtype(model: nn.Module) -> torch.dtype:
    dtypes = [t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    widest = max(dtypes, key=lambda d: torch.finfo(d).bits, default=torch.float32)
    return widest if torch.finfo(widest).bits >= 32 else torch.float32


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t


def cast_tree(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return _cast(x, dtype)
    if isinstance(x, (list, tuple)):
        return type(x)(cast_tree(v, dtype) for v in x)
    if isinstance(x, dict):
        return {k: cast_tree(v, dtype) for k, v in x.items()}
    return x


def to_device(x: Any, device: torch.device) -> Any:
    """``x`` (a tensor or a list/tuple/dict of them) on ``device``; other values as they are."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def storage_ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def samples_in(inputs: Any, targets: Any) -> int:
    for x in (targets, inputs):
        while isinstance(x, (list, tuple)) and x:
            x = x[0]
        if isinstance(x, dict) and x:
            x = next(iter(x.values()))
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return int(x.shape[0])
    raise ValueError("cannot tell the micro-batch size: inputs or targets must be batched tensors")


class SavedBytes:
    """Counts the unique storages autograd saves while active (the memory a graph holds)."""

    def __init__(self, exclude: set[int]):
        self.exclude = exclude
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse or nested: not countable
            return t
        ptr = storage.data_ptr()
        if ptr not in self.exclude and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += storage.nbytes()
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t
