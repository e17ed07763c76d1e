"""Which layer the probe measures, and the model state it must leave as it found it.

The probed Hessian block is that of one output-side layer's parameters: ``resolve_layer`` turns
``"auto"``, a module name or a list of names into module names. ``preserve_rng_state`` and
``probe_modes`` restore what the probe touches (RNG streams, train/eval flags) on every exit.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ds_twophase.errors import did_you_mean
from ds_twophase.probe.config import layer_names
from ds_twophase.probe.functional import cast_tree, to_device

log = logging.getLogger("ds_twophase.probe")

# ----------------------------------------------------------------------------------------------
# Layer choice


def parametric_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that own parameters directly (not through children), by qualified name."""
    return {
        name: m
        for name, m in model.named_modules()
        if name and next(m.parameters(recurse=False), None) is not None
    }


class UnknownLayer(ValueError):
    """A probe layer name that names no module with parameters of the model."""

    def __init__(self, name: str, candidates: list[str]) -> None:
        self.name = name
        """The first name not found."""
        self.candidates = candidates
        """Names of the modules that own parameters, in model order."""
        super().__init__(
            f"unknown probe layer {name!r}{did_you_mean(name, candidates)}; "
            f"modules with parameters: {', '.join(candidates)}"
        )


def resolve_layer(
    model: nn.Module, layer: str | Sequence[str], example_inputs: Any = None
) -> list[str]:
    """Module names whose parameters form the probed block: the one check of a probe layer
    against a model (config validation calls it on the model built on the meta device).

    ``"auto"`` runs one no-grad forward on ``example_inputs`` (one or two samples are enough) to
    find the forward execution order, then picks the largest (most parameters; the later one on
    ties) of the last three parametric leaf modules, and logs it. A name or a list of names of
    modules with parameters overrides it; a malformed ``layer`` raises
    :class:`~ds_twophase.errors.ConfigError`, an unknown name :class:`UnknownLayer` (both
    ``ValueError``) listing the candidates. The model and the RNG states are left as they were.
    """
    candidates = parametric_modules(model)
    if isinstance(layer, str) and layer == "auto":
        if example_inputs is None:
            raise ValueError("layer='auto' needs example_inputs to find the forward order")
        return [_auto_layer(model, candidates, example_inputs)]
    names = layer_names(layer)
    modules = dict(model.named_modules())
    for n in names:
        if n not in modules or next(modules[n].parameters(), None) is None:
            raise UnknownLayer(n, list(candidates))
    return list(dict.fromkeys(names))


def _auto_layer(model: nn.Module, candidates: dict[str, nn.Module], example_inputs: Any) -> str:
    leaves = {n: m for n, m in candidates.items() if next(m.children(), None) is None}
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_, _n=n: None if _n in order else order.append(_n))
        for n, m in leaves.items()
    ]
    try:
        with probe_modes(model, "eval"), preserve_rng_state(), torch.no_grad():
            # The model runs as it is here: feed floating inputs in its own dtype, on its device
            # (the probe keeps its batch on the host).
            dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
            device = next((p.device for p in model.parameters()), None)
            inputs = _shrink(example_inputs)
            if device is not None and device.type != "meta":
                inputs = to_device(inputs, device)
            model(inputs if dtype is None else cast_tree(inputs, dtype))
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ValueError("layer='auto': no module with parameters ran in the forward pass")
    last = order[-3:]
    counts = {n: _numel(leaves[n]) for n in last}
    # max() keeps the first maximum; scan from the output side so ties go to the later module.
    best = max(reversed(last), key=lambda n: counts[n])
    log.info(
        "Hessian probe layer (auto): %s, %d parameters (largest of the last three: %s)",
        best,
        counts[best],
        ", ".join(f"{n}={counts[n]}" for n in last),
    )
    return best


def _shrink(inputs: Any) -> Any:
    # Two samples suffice to find the execution order (two, not one, keeps BatchNorm-in-train
    # style code paths happy) and keep the extra forward negligible.
    return inputs[:2] if isinstance(inputs, torch.Tensor) and inputs.dim() > 0 else inputs


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------
# State that must survive the probe unchanged


@contextlib.contextmanager
def preserve_rng_state() -> Iterator[None]:
    """Restore torch (CPU and every CUDA device), ``random`` and numpy RNG states on exit."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    py = random.getstate()
    np_random: Any = None
    try:
        import numpy

        np_random = numpy.random
    except ImportError:  # numpy is optional for this module
        pass
    np_state = None if np_random is None else np_random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        if np_random is not None:
            np_random.set_state(np_state)


@contextlib.contextmanager
def probe_modes(model: nn.Module, bn_mode: str) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        if bn_mode == "train":
            for m in model.modules():
                if isinstance(m, _BatchNorm):
                    m.train()
        yield
    finally:
        for m, training in modes:
            m.training = training
