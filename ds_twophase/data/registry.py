"""Datasets by name: what each one needs from the config and the function that builds it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .cifar import build_cifar10, build_cifar100, missing_cifar_files
from .imagenet import build_imagenet, imagenet_num_classes, imagenet_root_problem
from .mnist1d import build_mnist1d
from .splits import DatasetSplits, hold_out_validation
from .svhn import build_svhn, missing_svhn_files
from .synthetic import build_synthetic

if TYPE_CHECKING:
    from .config import DatasetConfig

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "build_datasets",
    "describe_dataset",
    "register_dataset",
]


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one named dataset and which config fields it understands."""

    builder: Callable[[DatasetConfig], DatasetSplits]
    """Builds the splits from a validated config."""
    description: str
    """One line for docs and error messages."""
    default_sizes: tuple[int | None, int | None]
    """``(train_size, test_size)`` used when the config leaves them unset; ``None`` means all."""
    describe: Callable[[DatasetConfig], tuple[int, tuple[int, ...]]]
    """``(num_classes, input_shape)`` without building the data (cheap; used by validation)."""
    options: frozenset[str] = frozenset()
    """Dataset-specific config fields this dataset accepts (e.g. ``shape`` for synthetic)."""
    needs_root: bool = False
    """Whether ``root`` must point at existing data files (real datasets)."""
    check_root: Callable[[DatasetConfig], str | None] | None = None
    """Returns why ``cfg.root`` does not hold the data (one line), or ``None`` when it does."""
    default_augment: bool = False
    """Whether training-time augmentation is on when ``augment`` is unset."""


def _fixed_description(
    num_classes: int, shape: tuple[int, ...]
) -> Callable[[DatasetConfig], tuple[int, tuple[int, ...]]]:
    return lambda cfg: (num_classes, shape)


def _cifar_root_check(name: str) -> Callable[[DatasetConfig], str | None]:
    def check(cfg: DatasetConfig) -> str | None:
        missing = missing_cifar_files(name, cfg.data_root())
        if not missing:
            return None
        return (
            f"no {name} data under '{cfg.root}' ('{missing[0]}' is missing); unpack the official "
            f"python-version archive there ({missing[0].parent.name}/) - nothing is downloaded"
        )

    return check


DATASETS: dict[str, DatasetSpec] = {}
"""Available datasets by name."""


def register_dataset(name: str, spec: DatasetSpec) -> None:
    """Add a dataset under ``name`` (later registrations replace earlier ones)."""
    DATASETS[name] = spec


register_dataset(
    "mnist1d",
    DatasetSpec(
        build_mnist1d,
        "MNIST-1D (Greydanus 2020), generated locally and cached under root; inputs (1, 40)",
        default_sizes=(4000, 1000),
        describe=lambda cfg: (10, (1, int(cfg.mnist1d_args.get("final_seq_length", 40)))),
        options=frozenset({"mnist1d_args"}),
    ),
)
register_dataset(
    "synthetic",
    DatasetSpec(
        build_synthetic,
        "Gaussian noise around class-dependent means, deterministic from the seed; inputs (3, 32, 32)",
        default_sizes=(2048, 512),
        describe=lambda cfg: (cfg.resolved_num_classes(), cfg.resolved_shape()),
        options=frozenset({"shape", "num_classes"}),
    ),
)
for _name, _builder, _label, _classes in (
    ("cifar10", build_cifar10, "CIFAR-10", 10),
    ("cifar100", build_cifar100, "CIFAR-100", 100),
):
    register_dataset(
        _name,
        DatasetSpec(
            _builder,
            f"{_label} from root in the python-pickle format; inputs (3, 32, 32)",
            default_sizes=(None, None),
            describe=_fixed_description(_classes, (3, 32, 32)),
            options=frozenset({"augment"}),
            needs_root=True,
            check_root=_cifar_root_check(_name),
            default_augment=True,
        ),
    )


def _svhn_root_check(cfg: DatasetConfig) -> str | None:
    missing = missing_svhn_files(cfg.data_root(), cfg.resolved_extra())
    if not missing:
        return None
    hint = " (or set extra: false)" if missing[0].name.startswith("extra") else ""
    return f"no svhn data under '{cfg.root}': '{missing[0].name}' is missing{hint}"


register_dataset(
    "svhn",
    DatasetSpec(
        build_svhn,
        "SVHN from root (train_32x32.mat + extra_32x32.mat, test_32x32.mat); inputs (3, 32, 32)",
        default_sizes=(None, None),
        describe=lambda cfg: (10, (3, 32, 32)),
        options=frozenset({"extra"}),
        needs_root=True,
        check_root=_svhn_root_check,
    ),
)
register_dataset(
    "imagenet",
    DatasetSpec(
        build_imagenet,
        "ImageNet as ImageFolders root/train and root/val; inputs (3, 224, 224)",
        default_sizes=(None, None),
        describe=lambda cfg: (imagenet_num_classes(cfg.data_root()), (3, 224, 224)),
        options=frozenset({"augment"}),
        needs_root=True,
        check_root=lambda cfg: imagenet_root_problem(cfg.data_root()),
        default_augment=True,
    ),
)


def build_datasets(cfg: DatasetConfig) -> DatasetSplits:
    """Build the train, validation and test splits named by ``cfg``.

    With ``cfg.val_size > 0`` the validation split is that many training samples held out (the
    same for every dataset, see :func:`~ds_twophase.data.splits.hold_out_validation`) and the
    dataset's test split becomes ``test``; otherwise ``val`` is the test split.

    Raises:
        ConfigError: the data files are missing or hold fewer samples than ``train_size`` /
            ``test_size`` / ``val_size`` ask for (message starts with ``trainer.dataset.<field>``).
    """
    splits = DATASETS[cfg.name].builder(cfg)
    splits.input_shape = tuple(int(d) for d in splits.input_shape)
    try:
        return hold_out_validation(splits, cfg.val_size, cfg.seed)
    except ValueError as exc:
        raise ConfigError(f"trainer.dataset.{exc}") from None


def describe_dataset(cfg: DatasetConfig) -> tuple[int, tuple[int, ...]]:
    """``(num_classes, input_shape)`` of the dataset ``cfg`` names, without building it.

    Lets config validation check that the model fits the data before anything is generated or
    loaded; ``build_datasets(cfg)`` returns the same values.
    """
    num_classes, shape = DATASETS[cfg.name].describe(cfg)
    return int(num_classes), tuple(int(d) for d in shape)
