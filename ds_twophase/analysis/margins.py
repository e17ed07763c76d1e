"""Normalised output margins of training samples (paper Appendix A.1, after Jiang et al. 2018).

For a sample x with logits f(x) and two classes i, j the margin is approximated by the distance
to the linearised decision boundary between them::

    d(x) = (f_i(x) - f_j(x)) / || d(f_i - f_j)/dx ||_2

which is exact for a linear model. By default i and j are the sample's top two classes (so
d >= 0); ``classes="label"`` takes i = the true label and j = the best other class, as Jiang et al.
do (negative for a misclassified sample). The paper then looks at the distribution between the
first and third quartiles; :func:`margin_summary` reports the quartiles, the interquartile range
and the mean of the margins inside it.

How the per-sample gradient norms are computed: the model runs in eval mode, where no layer
mixes samples (BatchNorm uses its running statistics, dropout is off), so sample b's margin
depends on x_b only. The gradient of the *sum* of a batch's margins with respect to the batch's
inputs therefore has ``d m_b / d x_b`` in row b: one forward and one backward per batch give
every sample's gradient, about the cost of a training step on the same samples (no
parameter gradients are accumulated; ``torch.autograd.grad`` asks for the input's only).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError

Classes = Literal["top2", "label"]


def normalised_margins(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    classes: Classes = "top2",
) -> torch.Tensor:
    """Per-sample normalised margins of one batch (float32, on the inputs' device).

    The caller puts the model in eval mode (see the module docstring for why the batched
    gradient needs it); :func:`margin_summary` does this and restores the mode.
    """
    dtype = next(model.parameters()).dtype
    x = inputs.detach().to(dtype).requires_grad_(True)
    with torch.enable_grad():
        logits = model(x).float()
        if classes == "label":
            if labels is None:
                raise ValueError("normalised_margins: classes='label' needs labels")
            first = labels.to(logits.device).long()
            others = logits.scatter(1, first[:, None], float("-inf"))
            second = others.argmax(dim=1)
        elif classes == "top2":
            top = logits.topk(2, dim=1).indices
            first, second = top[:, 0], top[:, 1]
        else:
            raise ValueError(
                f"normalised_margins: classes must be 'top2' or 'label', got {classes!r}"
            )
        rows = torch.arange(len(logits), device=logits.device)
        raw = logits[rows, first] - logits[rows, second]
        (grad,) = torch.autograd.grad(raw.sum(), x)
    norms = grad.float().flatten(1).norm(dim=1)
    # A zero gradient (a dead network) leaves the boundary undefined: inf or nan, not a crash;
    # summarise() leaves such samples out of the quartiles.
    return (raw.detach() / norms).float()


def _restore_mode(model: nn.Module, modes: dict[nn.Module, bool]) -> None:
    for module, training in modes.items():
        module.train(training)


def all_margins(
    model: nn.Module,
    dataset: Any,
    device: torch.device | str,
    batch_size: int = 512,
    classes: Classes = "top2",
    limit: int | None = None,
) -> torch.Tensor:
    """Margins of the first ``limit`` samples of ``dataset`` (all by default), on the CPU.

    The model's train/eval mode of every submodule is restored afterwards, and no parameter
    ``.grad`` is touched.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    count = len(dataset) if limit is None else min(limit, len(dataset))
    out = []
    try:
        for start in range(0, count, batch_size):
            batch = [dataset[i] for i in range(start, min(start + batch_size, count))]
            x, y = torch.utils.data.default_collate(batch)
            out.append(normalised_margins(model, x.to(device), y.to(device), classes).cpu())
    finally:
        _restore_mode(model, modes)
    return torch.cat(out) if out else torch.empty(0)


def summarise(margins: torch.Tensor) -> dict[str, float]:
    """Quartiles, IQR and the mean inside ``[q1, q3]`` (the paper's "accumulated margin")."""
    finite = margins[torch.isfinite(margins)].double()
    if finite.numel() == 0:
        nan = float("nan")
        return dict.fromkeys(
            ("margin_q1", "margin_median", "margin_q3", "margin_iqr", "margin_iq_mean"), nan
        )
    q1, median, q3 = torch.quantile(finite, torch.tensor([0.25, 0.5, 0.75], dtype=torch.double))
    inside = finite[(finite >= q1) & (finite <= q3)]
    return {
        "margin_q1": float(q1),
        "margin_median": float(median),
        "margin_q3": float(q3),
        "margin_iqr": float(q3 - q1),
        "margin_iq_mean": float(inside.mean()),
    }


def margin_summary(
    model: nn.Module,
    dataset: Any,
    device: torch.device | str,
    batch_size: int = 512,
    classes: Classes = "top2",
    limit: int | None = None,
) -> dict[str, float]:
    """Margin distribution of ``dataset`` under ``model``: a flat dict for ``metrics.jsonl``.

    Keys: ``margin_q1``, ``margin_median``, ``margin_q3``, ``margin_iqr``, ``margin_iq_mean``
    (see :func:`summarise`), ``margin_samples`` (how many were measured, non-finite ones
    included) and ``margin_seconds`` (wall time of the computation).
    """
    t0 = time.perf_counter()
    margins = all_margins(model, dataset, device, batch_size, classes, limit)
    summary: dict[str, float] = summarise(margins)
    summary["margin_samples"] = int(margins.numel())
    summary["margin_seconds"] = time.perf_counter() - t0
    return summary


def _checkpoint_file(path: Path) -> tuple[Path, Path]:
    """``(run directory, mp_rank_00_model_states.pt)`` for a run directory or a checkpoint."""
    from ..trainer import checkpoint

    name = "mp_rank_00_model_states.pt"
    if (path / name).is_file():  # a checkpoint tag directory: run/checkpoints/epochNNNN
        return path.parent.parent, path / name
    newest = checkpoint.newest_complete(path / "checkpoints")
    if newest is None:
        raise ConfigError(
            f"{path}: no complete checkpoint under {path / 'checkpoints'}; give a run directory "
            "that saved one (trainer.checkpoint_every, or the end of the run) or a checkpoint directory"
        )
    if not (newest[1] / name).is_file():
        raise ConfigError(
            f"{newest[1]}: no {name} (a ZeRO-3 checkpoint has no whole model to read)"
        )
    return path, newest[1] / name


def load_trained(path: str | Path) -> tuple[nn.Module, Any, Any]:
    """``(model, train split, validation split)`` of a run directory or one of its checkpoints.

    The run's ``config.json`` builds the data and the model; the weights come from the DeepSpeed
    checkpoint's ``module`` entry. Only for checkpoints this project wrote: DeepSpeed's files
    are pickles (``weights_only=False``), which can run code when loaded.
    """
    from ..config import validate_config
    from ..data import build_datasets
    from ..models import build_model
    from .runs import read_json

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a run or checkpoint directory")
    run_dir, weights = _checkpoint_file(path)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(
            f"{run_dir}: no config.json; give the trainer's output_dir or a checkpoint in it"
        )
    run = validate_config(read_json(config_path))
    if run.trainer is None:
        raise ConfigError(f"{config_path}: no trainer section to build the data and model from")
    splits = build_datasets(run.trainer.dataset)
    model = build_model(run.trainer.model, splits.num_classes, splits.input_shape)
    state = torch.load(weights, map_location="cpu", weights_only=False)["module"]
    try:
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        )
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(
            f"{weights}: weights do not fit the model in config.json ({first})"
        ) from None
    return model, splits.train, splits.val
