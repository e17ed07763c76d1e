"""Parameter groups for LARS: biases and normalisation parameters are neither adapted nor decayed.

You et al. (2017) and most large-batch recipes since (Goyal et al. 2017; the LARS ImageNet
baselines) apply neither the trust ratio nor weight decay to biases and BatchNorm/LayerNorm
parameters: their norms are tiny or meaningless per layer, and decaying them hurts accuracy.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["lars_param_groups", "split_param_groups"]


def lars_param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    exclude_bias_and_norm: bool = True,
    exclude: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into an adapted group and an excluded group.

    Args:
        model: the module whose parameters (those with ``requires_grad``) are optimised.
        weight_decay: weight decay of the adapted group.
        exclude_bias_and_norm: exclude every parameter with fewer than two dimensions (biases,
            BatchNorm/LayerNorm/GroupNorm weights and biases). False puts them in the adapted
            group.
        exclude: extra ``fnmatch`` patterns matched against parameter names (as in
            ``model.named_parameters()``), e.g. ``["fc.*", "*.pos_embed"]``; matching parameters
            are excluded as well.

    Returns:
        Up to two groups for :class:`ds_twophase.optim.LARS` (empty groups are left out):
        ``{"params": [...], "weight_decay": weight_decay, "adapt": True}`` and
        ``{"params": [...], "weight_decay": 0.0, "adapt": False}`` (plain momentum SGD).
    """
    groups = split_param_groups(
        model.parameters(),
        model,
        exclude_bias_and_norm=exclude_bias_and_norm,
        exclude=exclude,
    )
    for group in groups:
        if group["adapt"]:
            group["weight_decay"] = weight_decay
    return groups


def split_param_groups(
    params: Iterable[Tensor] | Iterable[Mapping[str, Any]],
    model: nn.Module | None = None,
    *,
    exclude_bias_and_norm: bool = True,
    exclude: Sequence[str] = (),
    mark_only: bool = False,
) -> list[dict[str, Any]]:
    """Split parameters, or existing parameter groups, into adapted and excluded groups.

    This is what the JSON path uses on the parameters DeepSpeed hands to the optimizer factory,
    so that a caller's own parameter selection and groups are kept.

    Args:
        params: tensors, or group dicts with ``"params"`` (their other options are kept).
            Tensors without ``requires_grad`` are dropped.
        model: used only to name parameters for the ``exclude`` patterns.
        exclude_bias_and_norm: exclude every parameter with fewer than two dimensions.
        exclude: ``fnmatch`` patterns on parameter names; matches are excluded.
        mark_only: keep each input group whole and mark its excluded parameters in the group's
            ``excluded`` list (one bool per parameter, which LARS reads) instead of moving them
            to a group of their own. For ZeRO-1/2, where DeepSpeed flattens, clips and
            all-gathers every group separately.

    Returns:
        For each input group (one for a plain list of tensors), an adapted part (its options
        unchanged, ``adapt`` True unless the group says otherwise) and an excluded part with
        ``adapt=False`` and ``weight_decay=0.0``; empty parts are left out. With
        ``mark_only``, one group per input group holding both, with ``excluded`` set when any
        parameter is excluded.
    """
    if isinstance(exclude, str):
        # a bare string would otherwise be matched character by character
        exclude = [exclude]
    names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    items = list(params)
    if items and all(isinstance(g, Mapping) for g in items):
        groups = [dict(g) for g in items]
    else:
        groups = [{"params": items}]
    out = []
    for group in groups:
        members = group["params"]
        members = [members] if isinstance(members, Tensor) else list(members)
        adapted, excluded = [], []
        for p in members:
            if not p.requires_grad:
                continue
            name = names.get(id(p), "")
            skip = exclude_bias_and_norm and p.ndim < 2
            if skip or any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude):
                excluded.append(p)
            else:
                adapted.append(p)
        if mark_only:
            params = [p for p in members if p.requires_grad]
            if params:
                merged = {"adapt": True, **group, "params": params}
                if excluded:
                    out_ids = {id(p) for p in excluded}
                    merged["excluded"] = [id(p) in out_ids for p in params]
                out.append(merged)
            continue
        if adapted:
            out.append({"adapt": True, **group, "params": adapted})
        if excluded:
            out.append({**group, "params": excluded, "weight_decay": 0.0, "adapt": False})
    return out
