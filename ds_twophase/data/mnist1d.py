"""MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package and cached on disk."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .cache import cache_path, default_root, load_arrays, save_arrays
from .splits import DatasetSplits

if TYPE_CHECKING:
    from .config import DatasetConfig

__all__ = ["GENERATOR_ARGS", "build_mnist1d", "generation_args", "generation_count"]

# Generator arguments a config may override (``dataset.mnist1d_args``), with the package's
# defaults. ``num_samples``, ``train_split`` and ``seed`` come from the config's own fields and
# ``url`` is dropped: only ``make_dataset`` is called, which never downloads.
GENERATOR_ARGS: dict[str, Any] = {
    "template_len": 12,
    "padding": [36, 60],
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
}

NUM_CLASSES = 10
# Bumped when the cached arrays change meaning, so old cache files are never misread.
_CACHE_VERSION = 1
_generations = 0


def generation_count() -> int:
    """How many times this process has run the MNIST-1D generator (cache misses)."""
    return _generations


def generation_args(cfg: DatasetConfig) -> dict[str, Any]:
    """The full ``mnist1d`` generator arguments for ``cfg`` (also the cache key)."""
    train, test = cfg.generated_sizes()
    total = train + test
    # make_dataset draws num_samples // 10 samples per class: round up so none are missing.
    num_samples = -(-total // NUM_CLASSES) * NUM_CLASSES
    args = dict(GENERATOR_ARGS)
    args.update(cfg.mnist1d_args)
    args.update(num_samples=num_samples, train_split=1.0, seed=cfg.seed)
    return args


def _generate(args: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    global _generations
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    # make_dataset reseeds the global numpy and random generators; put them back so building a
    # dataset does not change the trainer's random stream.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(ObjectView(dict(args)))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    _generations += 1
    return data["x"].astype(np.float32), data["y"].astype(np.int64)


def load_or_generate(cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray]:
    """All generated samples ``(x, y)`` for ``cfg``, from the cache when it has them."""
    args = generation_args(cfg)
    root = default_root() if cfg.root is None else cfg.root
    path = cache_path(root, "mnist1d", {"version": _CACHE_VERSION, **args})
    arrays = load_arrays(path)
    if arrays is not None and {"x", "y"} <= arrays.keys():
        return arrays["x"], arrays["y"]
    x, y = _generate(args)
    save_arrays(path, x=x, y=y)
    return x, y


def build_mnist1d(cfg: DatasetConfig) -> DatasetSplits:
    """MNIST-1D train/test splits as tensors of shape ``(1, final_seq_length)``.

    The generator shuffles the samples; the first ``train_size`` become the training split and the
    next ``test_size`` the validation split. With the defaults (4000 + 1000, seed 42) this is the
    generator's standard dataset. When ``normalize`` is on, inputs are standardised with the
    training split's mean and standard deviation.
    """
    train, test = cfg.generated_sizes()
    x, y = load_or_generate(cfg)
    xs = torch.from_numpy(x).unsqueeze(1)  # channel dim for Conv1d
    ys = torch.from_numpy(y)
    x_train, x_test = xs[:train], xs[train : train + test]
    if cfg.normalize:
        mean, std = x_train.mean(), x_train.std()
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return DatasetSplits(
        train=TensorDataset(x_train.contiguous(), ys[:train].clone()),
        val=TensorDataset(x_test.contiguous(), ys[train : train + test].clone()),
        num_classes=NUM_CLASSES,
        input_shape=tuple(x_train.shape[1:]),
    )
