"""``DatasetConfig``: the validated ``trainer.dataset`` section of a run config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, check_number, did_you_mean, is_int, is_number
from .mnist1d import GENERATOR_ARGS
from .registry import DATASETS, DatasetSpec

__all__ = ["DatasetConfig"]

_DEFAULT_SHAPE = (3, 32, 32)
_DEFAULT_NUM_CLASSES = 10
# Dataset-specific fields and the value that means "not set".
_OPTION_UNSET: dict[str, Any] = {
    "shape": None,
    "num_classes": None,
    "augment": None,
    "extra": None,
    "mnist1d_args": {},
}


@dataclass
class DatasetConfig:
    """Which dataset to train on and how to build it.

    Errors are :class:`ConfigError` (a ``ValueError``) keyed by the field name, which the config
    loader reports under the section's key (``trainer.dataset.<field>: ...``).
    """

    name: str = "mnist1d"
    """Dataset name: ``mnist1d`` (default), ``synthetic``, ``cifar10``, ``cifar100``, ``svhn`` or
    ``imagenet``."""
    root: str | None = None
    """For real datasets, the directory holding the files (required; nothing is downloaded).
    For ``mnist1d``, the cache directory (default ``$XDG_CACHE_HOME/ds_twophase`` or
    ``~/.cache/ds_twophase``). Unused by ``synthetic``."""
    train_size: int | None = None
    """Training samples. ``None``: the dataset's default (mnist1d 4000, synthetic 2048, real
    datasets all). For real datasets a number keeps the first N samples."""
    test_size: int | None = None
    """Validation (test) samples. ``None``: mnist1d 1000, synthetic 512, real datasets all."""
    val_size: int = 0
    """Training samples held out as the validation split (never trained on): a permutation seeded
    by ``seed`` picks them, so the split is the same for every trainer seed, rank count and
    resume. With ``val_size > 0`` every epoch's ``val_loss``/``val_accuracy`` are measured on them
    and the test split is evaluated once, after the last epoch (``test_loss``/``test_accuracy``).
    ``0`` (default): nothing is held out and ``val_*`` are measured on the test split."""
    seed: int = 42
    """Seed of generated data (mnist1d, synthetic); 42 gives the standard MNIST-1D dataset. It is
    independent of the trainer's seed so that runs with different seeds share one dataset."""
    normalize: bool = True
    """Standardise inputs with training-split statistics (mnist1d: one mean/std; images: per
    channel)."""
    augment: bool | None = None
    """Training augmentation. CIFAR: random 32x32 crop of the 4-pixel zero-padded image and a
    horizontal flip. ImageNet: the paper's scale, crop, flip and colour augmentation. ``None``:
    on for both. Other datasets have none."""
    extra: bool | None = None
    """``svhn`` only: add the 531,131 ``extra`` images to the training split (``None``: yes, as
    in the paper)."""
    shape: list[int] | None = None
    """``synthetic`` only: input shape without the batch dimension, ``[C, L]`` or ``[C, H, W]``
    (default ``[3, 32, 32]``)."""
    num_classes: int | None = None
    """``synthetic`` only: number of classes (default 10)."""
    mnist1d_args: dict[str, Any] = field(default_factory=dict)
    """``mnist1d`` only: overrides of the generator arguments (``template_len``, ``padding``,
    ``scale_coeff``, ``max_translation``, ``corr_noise_scale``, ``iid_noise_scale``,
    ``shear_scale``, ``shuffle_seq``, ``final_seq_length``)."""

    def __post_init__(self) -> None:
        spec = self._check_name()
        self._check_options(spec)
        for key in ("train_size", "test_size"):
            check_number(key, getattr(self, key), low=1, integer=True, optional=True)
        check_number("val_size", self.val_size, low=0, integer=True)
        train = self.resolved_sizes()[0]
        if train is not None and self.val_size >= train:
            raise ConfigError(
                key="val_size",
                problem=f"{self.val_size} must be smaller than the {train} training samples "
                "(train_size); lower it",
            )
        check_number("seed", self.seed, integer=True)
        if not isinstance(self.normalize, bool):
            raise ConfigError(
                key="normalize", problem=f"must be true or false, got {self.normalize!r}"
            )
        for key in ("augment", "extra"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(key=key, problem=f"must be true, false or null, got {value!r}")
        self._check_root(spec)
        if self.shape is not None:
            shape = self.shape
            if (
                not isinstance(shape, (list, tuple))
                or len(shape) not in (2, 3)
                or not all(is_int(d) and d >= 1 for d in shape)
            ):
                raise ConfigError(
                    key="shape",
                    problem=f"must be [C, L] or [C, H, W] with positive integers, got {shape!r}",
                )
            self.shape = list(shape)
        check_number("num_classes", self.num_classes, low=2, integer=True, optional=True)
        self._check_mnist1d_args()

    def _check_name(self) -> DatasetSpec:
        if not isinstance(self.name, str):
            raise ConfigError(key="name", problem=f"must be a string, got {self.name!r}")
        if self.name in DATASETS:
            return DATASETS[self.name]
        available = ", ".join(sorted(DATASETS))
        hint = did_you_mean(self.name, list(DATASETS))
        raise ConfigError(
            key="name", problem=f"unknown dataset '{self.name}'{hint}; choose one of {available}"
        )

    def _check_options(self, spec: DatasetSpec) -> None:
        for key, unset in _OPTION_UNSET.items():
            if key not in spec.options and getattr(self, key) != unset:
                users = sorted(n for n, s in DATASETS.items() if key in s.options)
                raise ConfigError(
                    key=key,
                    problem=f"does not apply to dataset '{self.name}' (only to {', '.join(users)}); "
                    f"remove it",
                )

    def _check_root(self, spec: DatasetSpec) -> None:
        if self.root is not None and not isinstance(self.root, str):
            raise ConfigError(
                key="root", problem=f"must be a path string or null, got {self.root!r}"
            )
        if not spec.needs_root:
            return
        if self.root is None:
            raise ConfigError(
                key="root",
                problem=f"dataset '{self.name}' reads local files; set root to the directory that "
                f"holds them (nothing is downloaded)",
            )
        if not Path(self.root).expanduser().is_dir():
            raise ConfigError(key="root", problem=f"directory '{self.root}' does not exist")
        problem = spec.check_root(self) if spec.check_root else None
        if problem:
            raise ConfigError(key="root", problem=f"{problem}")

    def _check_mnist1d_args(self) -> None:
        if not isinstance(self.mnist1d_args, dict):
            raise ConfigError(
                key="mnist1d_args", problem=f"must be an object, got {self.mnist1d_args!r}"
            )
        for key, value in self.mnist1d_args.items():
            if key not in GENERATOR_ARGS:
                hint = did_you_mean(key, GENERATOR_ARGS)
                raise ConfigError(
                    key="mnist1d_args",
                    problem=f"unknown generator argument '{key}'{hint}; allowed: "
                    f"{', '.join(GENERATOR_ARGS)} (size and seed have their own fields)",
                )
            default = GENERATOR_ARGS[key]
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = is_int(value) and value >= 1
            elif isinstance(default, float):
                ok = is_number(value) and value >= 0
            else:  # padding: [low, high]
                ok = (
                    isinstance(value, (list, tuple))
                    and len(value) == 2
                    and all(is_int(v) and v >= 0 for v in value)
                    and value[0] <= value[1]
                )
            if not ok:
                raise ConfigError(
                    key="mnist1d_args",
                    problem=f"'{key}' must be like the default {default!r}, got {value!r}",
                )

    @property
    def spec(self) -> DatasetSpec:
        """The registry entry of this dataset."""
        return DATASETS[self.name]

    def resolved_sizes(self) -> tuple[int | None, int | None]:
        """``(train_size, test_size)`` with the dataset's defaults filled in (``None``: all)."""
        default_train, default_test = self.spec.default_sizes
        train = default_train if self.train_size is None else self.train_size
        test = default_test if self.test_size is None else self.test_size
        return train, test

    def generated_sizes(self) -> tuple[int, int]:
        """:meth:`resolved_sizes` of a generated data set (mnist1d, synthetic), whose defaults
        are numbers."""
        train, test = self.resolved_sizes()
        if train is None or test is None:
            raise ValueError(f"dataset '{self.name}' has no fixed sizes")
        return train, test

    def data_root(self) -> Path:
        """``root``, user-expanded, of a data set that reads local files (set for those:
        ``__post_init__`` refuses them without it)."""
        if self.root is None:
            raise ConfigError(key="root", problem=f"dataset '{self.name}' needs a root directory")
        return Path(self.root).expanduser()

    def resolved_shape(self) -> tuple[int, ...]:
        """The synthetic input shape (default ``(3, 32, 32)``)."""
        return _DEFAULT_SHAPE if self.shape is None else tuple(self.shape)

    def resolved_num_classes(self) -> int:
        """The synthetic number of classes (default 10)."""
        return _DEFAULT_NUM_CLASSES if self.num_classes is None else self.num_classes

    def resolved_extra(self) -> bool:
        """Whether SVHN's extra images are part of the training split."""
        return True if self.extra is None else self.extra

    def resolved_augment(self) -> bool:
        """Whether the training split is augmented."""
        return self.spec.default_augment if self.augment is None else self.augment
