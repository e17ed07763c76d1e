"""Datasets: MNIST-1D generation and cache, synthetic data, CIFAR files, config validation."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ds_twophase.config import tools as config_tools
from ds_twophase.data import (
    DATASETS,
    DatasetConfig,
    build_datasets,
    describe_dataset,
)
from ds_twophase.data.cache import cache_path
from ds_twophase.data.mnist1d import generation_args, generation_count
from ds_twophase.errors import ConfigError


def small_mnist1d(root: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="mnist1d", root=str(root), train_size=300, test_size=100, **kw)


# --- MNIST-1D -------------------------------------------------------------------------------


def test_mnist1d_defaults(tmp_path):
    splits = build_datasets(DatasetConfig(root=str(tmp_path)))
    assert splits.num_classes == 10
    assert splits.input_shape == (1, 40)
    assert describe_dataset(DatasetConfig(root=str(tmp_path))) == (10, (1, 40))
    x_train, y_train = splits.train.tensors
    x_val, y_val = splits.val.tensors
    assert x_train.shape == (4000, 1, 40) and x_val.shape == (1000, 1, 40)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert y_val.shape == (1000,)


def test_mnist1d_matches_the_package_generator(tmp_path):
    """Default arguments are the package's; the split is the package's train/test split."""
    from mnist1d.data import get_dataset_args, make_dataset
    from mnist1d.utils import ObjectView

    package = get_dataset_args(as_dict=True)
    del package["url"]  # never used: only make_dataset is called
    assert generation_args(DatasetConfig()) == {**package, "train_split": 1.0}

    state = np.random.get_state()
    ref = make_dataset(ObjectView({**package, "num_samples": 500, "train_split": 0.8}))
    np.random.set_state(state)
    splits = build_datasets(DatasetConfig(root=str(tmp_path), train_size=400, test_size=100))
    x_train, y_train = splits.train.tensors
    x_val, y_val = splits.val.tensors
    ref_x = torch.from_numpy(ref["x"]).float()
    mean, std = ref_x.mean(), ref_x.std()
    torch.testing.assert_close(x_train[:, 0], (ref_x - mean) / std, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        x_val[:, 0], (torch.from_numpy(ref["x_test"]).float() - mean) / std, atol=1e-5, rtol=1e-5
    )
    assert torch.equal(y_train, torch.from_numpy(ref["y"]))
    assert torch.equal(y_val, torch.from_numpy(ref["y_test"]))


def test_mnist1d_item_format_and_normalisation(tmp_path):
    splits = build_datasets(small_mnist1d(tmp_path))
    x, y = splits.train[0]
    assert x.shape == (1, 40) and y.dtype == torch.int64 and y.dim() == 0
    x_train = splits.train.tensors[0]
    assert abs(x_train.mean().item()) < 1e-5
    assert abs(x_train.std().item() - 1.0) < 1e-5
    assert set(splits.train.tensors[1].tolist()) == set(range(10))
    batch_x, batch_y = next(iter(DataLoader(splits.train, batch_size=32)))
    assert batch_x.shape == (32, 1, 40) and batch_y.shape == (32,)


def test_mnist1d_cache_hit_skips_generator(tmp_path):
    cfg = small_mnist1d(tmp_path)
    before = generation_count()
    first = build_datasets(cfg)
    assert generation_count() == before + 1
    files = list(tmp_path.glob("mnist1d-*.npz"))
    assert files == [cache_path(tmp_path, "mnist1d", {"version": 1, **generation_args(cfg)})]
    mtime = files[0].stat().st_mtime_ns
    assert not list(tmp_path.glob("*.tmp"))

    second = build_datasets(small_mnist1d(tmp_path))
    assert generation_count() == before + 1  # loaded, not regenerated
    assert files[0].stat().st_mtime_ns == mtime
    for a, b in zip(
        first.train.tensors + first.val.tensors,
        second.train.tensors + second.val.tensors,
        strict=True,
    ):
        assert torch.equal(a, b)

    build_datasets(small_mnist1d(tmp_path, seed=7))  # other args: other file
    assert generation_count() == before + 2
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 2


def test_mnist1d_corrupt_cache_is_regenerated(tmp_path):
    cfg = small_mnist1d(tmp_path)
    good = build_datasets(cfg)
    (path,) = tmp_path.glob("mnist1d-*.npz")
    path.write_bytes(b"not a zip file")
    before = generation_count()
    again = build_datasets(cfg)
    assert generation_count() == before + 1
    assert torch.equal(good.train.tensors[0], again.train.tensors[0])
    assert np.load(path)["x"].shape == (400, 40)


def test_mnist1d_is_deterministic_and_seeded(tmp_path):
    a = build_datasets(small_mnist1d(tmp_path / "a"))
    b = build_datasets(small_mnist1d(tmp_path / "b"))  # separate cache: generated twice
    c = build_datasets(small_mnist1d(tmp_path / "a", seed=1))
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])


def test_mnist1d_leaves_global_rngs_alone(tmp_path):
    np.random.seed(123)
    random.seed(123)
    before = generation_count()
    build_datasets(small_mnist1d(tmp_path))
    assert generation_count() == before + 1  # a cache miss: the generator reseeded numpy
    np_after, py_after = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    assert (np_after, py_after) == (np.random.rand(), random.random())


def test_mnist1d_sizes_and_generator_args(tmp_path):
    cfg = DatasetConfig(
        root=str(tmp_path), train_size=1234, test_size=56, mnist1d_args={"final_seq_length": 60}
    )
    splits = build_datasets(cfg)
    assert len(splits.train) == 1234 and len(splits.val) == 56
    assert splits.input_shape == (1, 60)
    assert describe_dataset(cfg) == (10, (1, 60))
    assert generation_args(cfg)["num_samples"] == 1290  # rounded up to whole classes


def test_mnist1d_default_root_honours_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    build_datasets(DatasetConfig(train_size=50, test_size=10))
    assert len(list((tmp_path / "ds_twophase").glob("mnist1d-*.npz"))) == 1


# --- synthetic ------------------------------------------------------------------------------


def test_synthetic_deterministic_shapes_and_learnable():
    cfg = DatasetConfig(name="synthetic", train_size=200, test_size=100, seed=3)
    a, b = build_datasets(cfg), build_datasets(cfg)
    assert a.input_shape == (3, 32, 32) and a.num_classes == 10
    assert len(a.train) == 200 and len(a.val) == 100
    for x, y in zip(a.train.tensors + a.val.tensors, b.train.tensors + b.val.tensors, strict=True):
        assert torch.equal(x, y)
    other = build_datasets(DatasetConfig(name="synthetic", train_size=200, test_size=100, seed=4))
    assert not torch.equal(a.train.tensors[0], other.train.tensors[0])
    assert torch.bincount(a.train.tensors[1]).tolist() == [20] * 10

    # Nearest class mean of 8x8-pooled inputs, estimated on 20 samples per class, classifies the
    # validation samples: the data is learnable from few samples, as quick runs need.
    x, y = a.train.tensors
    pooled = torch.nn.functional.avg_pool2d(x, 8).flatten(1)
    means = torch.stack([pooled[y == k].mean(0) for k in range(10)])
    xv, yv = a.val.tensors
    pred = torch.cdist(torch.nn.functional.avg_pool2d(xv, 8).flatten(1), means).argmin(1)
    assert (pred == yv).float().mean() > 0.9
    # ... while single pixels carry little signal.
    assert a.train.tensors[0].std() < 1.1


def test_synthetic_custom_shape_and_classes():
    cfg = DatasetConfig(name="synthetic", shape=[2, 16], num_classes=3, train_size=30, test_size=9)
    splits = build_datasets(cfg)
    assert splits.input_shape == (2, 16) and splits.num_classes == 3
    assert describe_dataset(cfg) == (3, (2, 16))
    x, y = splits.val[0]
    assert x.shape == (2, 16) and 0 <= int(y) < 3


# --- CIFAR in the real on-disk format ------------------------------------------------------


def write_cifar(root: Path, name: str, n_train_per_file: int = 4, n_test: int = 6) -> None:
    """Tiny files in the official python-pickle layout (python-2 style str keys)."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        base, train_files, test_files, key, classes = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            "labels",
            10,
        )
    else:
        base, train_files, test_files, key, classes = (
            root / "cifar-100-python",
            ["train"],
            ["test"],
            "fine_labels",
            100,
        )
    base.mkdir(parents=True)
    for fname, n in [(f, n_train_per_file) for f in train_files] + [
        (f, n_test) for f in test_files
    ]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=n).tolist()
        entry = {
            "batch_label": fname,
            "data": data,
            key: labels,
            "filenames": [f"{i}.png" for i in range(n)],
        }
        if name == "cifar100":
            entry["coarse_labels"] = [lbl // 5 for lbl in labels]
        with open(base / fname, "wb") as f:
            pickle.dump(entry, f, protocol=2)


def test_cifar10_reads_pickle_batches(tmp_path):
    write_cifar(tmp_path, "cifar10")
    cfg = DatasetConfig(name="cifar10", root=str(tmp_path), augment=False)
    splits = build_datasets(cfg)
    assert len(splits.train) == 20 and len(splits.val) == 6
    assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32)
    assert describe_dataset(cfg) == (10, (3, 32, 32))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    x, y = splits.train[0]
    assert x.shape == (3, 32, 32) and int(y) == raw["labels"][0]
    # Row layout: 1024 red values, then green, then blue, each row-major 32x32.
    img = torch.from_numpy(raw["data"][0].reshape(3, 32, 32)).float() / 255
    mean, std = splits.train.mean, splits.train.std
    torch.testing.assert_close(x, (img - mean) / std)
    stacked = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    torch.testing.assert_close(stacked.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)


def test_cifar_augmentation_only_on_train(tmp_path):
    write_cifar(tmp_path, "cifar10")
    splits = build_datasets(DatasetConfig(name="cifar10", root=str(tmp_path)))  # augment default on
    torch.manual_seed(0)
    views = torch.stack([splits.train[0][0] for _ in range(20)])
    assert not torch.equal(views.min(0).values, views.max(0).values)
    assert torch.equal(splits.val[0][0], splits.val[0][0])
    loader = DataLoader(splits.train, batch_size=8)
    assert next(iter(loader))[0].shape == (8, 3, 32, 32)


def test_cifar100_and_subsets(tmp_path):
    write_cifar(tmp_path, "cifar100", n_train_per_file=12, n_test=5)
    cfg = DatasetConfig(name="cifar100", root=str(tmp_path), train_size=10, test_size=3)
    splits = build_datasets(cfg)
    assert describe_dataset(cfg) == (100, (3, 32, 32))
    assert splits.num_classes == 100 and len(splits.train) == 10 and len(splits.val) == 3
    with pytest.raises(ValueError, match="dataset.train_size: 50 is more than the 12"):
        build_datasets(DatasetConfig(name="cifar100", root=str(tmp_path), train_size=50))


# --- SVHN in the official .mat format ---------------------------------------------------------


def write_svhn(root: Path, counts: dict[str, int]) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    for split, n in counts.items():
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 is the digit 0
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})


def test_svhn_train_plus_extra(tmp_path):
    write_svhn(tmp_path, {"train": 12, "extra": 8, "test": 5})
    cfg = DatasetConfig(name="svhn", root=str(tmp_path))
    splits = build_datasets(cfg)
    assert describe_dataset(cfg) == (10, (3, 32, 32))
    assert len(splits.train) == 20 and len(splits.val) == 5
    assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32)
    assert [int(splits.val[i][1]) for i in range(5)] == [1, 2, 3, 4, 5]
    assert int(splits.train[9][1]) == 0  # label 10 means the digit 0

    from scipy.io import loadmat

    raw = loadmat(tmp_path / "train_32x32.mat")["X"]
    x, _ = splits.train[3]
    expected = (
        torch.from_numpy(raw[:, :, :, 3]).permute(2, 0, 1).float() / 255 - splits.train.mean
    ) / splits.train.std
    torch.testing.assert_close(x, expected)
    assert torch.equal(splits.train[3][0], splits.train[3][0])  # no augmentation

    without = build_datasets(DatasetConfig(name="svhn", root=str(tmp_path), extra=False))
    assert len(without.train) == 12


def test_svhn_missing_extra_suggests_turning_it_off(tmp_path):
    write_svhn(tmp_path, {"train": 3, "test": 2})
    with pytest.raises(ValueError, match=r"'extra_32x32.mat' is missing \(or set extra: false\)"):
        DatasetConfig(name="svhn", root=str(tmp_path))
    assert DatasetConfig(name="svhn", root=str(tmp_path), extra=False).resolved_extra() is False


# --- ImageNet as image folders --------------------------------------------------------------


def write_image_folders(root: Path, per_class: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for cls in ("n01440764", "n01443537"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(40 + i, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{cls}_{i}.JPEG")


def test_imagenet_folders(tmp_path):
    write_image_folders(tmp_path)
    cfg = DatasetConfig(name="imagenet", root=str(tmp_path))
    splits = build_datasets(cfg)
    assert describe_dataset(cfg) == (2, (3, 224, 224))
    assert splits.num_classes == 2 and splits.input_shape == (3, 224, 224)
    assert len(splits.train) == 6 and len(splits.val) == 6
    x, y = splits.train[4]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y) == 1
    assert torch.equal(splits.val[0][0], splits.val[0][0])  # evaluation is deterministic
    torch.manual_seed(0)
    assert not torch.equal(splits.train[0][0], splits.train[0][0])  # training is augmented
    batch = next(iter(DataLoader(splits.val, batch_size=4)))
    assert batch[0].shape == (4, 3, 224, 224) and batch[1].tolist() == [0, 0, 0, 1]

    subset = build_datasets(DatasetConfig(name="imagenet", root=str(tmp_path), train_size=2))
    assert sorted(int(subset.train[i][1]) for i in range(2)) == [0, 1]


def test_imagenet_root_needs_train_and_val(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"root: '.*/val' is missing; expected"):
        DatasetConfig(name="imagenet", root=str(tmp_path))


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "mnist1e"},
            "name: unknown dataset 'mnist1e' (did you mean 'mnist1d'?); choose one of",
        ),
        ({"name": "svhn"}, "root: dataset 'svhn' reads local files"),
        ({"name": "svhn", "extra": 1}, "extra: must be true, false or null"),
        ({"extra": False}, "extra: does not apply to dataset 'mnist1d' (only to svhn)"),
        ({"name": "cifar10"}, "root: dataset 'cifar10' reads local files"),
        (
            {"name": "cifar10", "root": "/nonexistent/dir"},
            "root: directory '/nonexistent/dir' does not exist",
        ),
        ({"train_size": 0}, "train_size: must be an integer >= 1 or null, got 0"),
        ({"test_size": True}, "test_size: must be an integer or null, got True"),
        ({"seed": "1"}, "seed: must be an integer"),
        ({"val_size": -1}, "val_size: must be an integer >= 0, got -1"),
        ({"val_size": 2.5}, "val_size: must be an integer, got 2.5"),
        ({"train_size": 300, "val_size": 300}, "val_size: 300 must be smaller than the 300"),
        ({"shape": [3, 32, 32]}, "shape: does not apply to dataset 'mnist1d' (only to synthetic)"),
        ({"augment": True}, "augment: does not apply to dataset 'mnist1d'"),
        ({"name": "synthetic", "shape": [3]}, "shape: must be [C, L] or [C, H, W]"),
        ({"name": "synthetic", "num_classes": 1}, "num_classes: must be an integer >= 2"),
        (
            {"mnist1d_args": {"paddin": [1, 2]}},
            "mnist1d_args: unknown generator argument 'paddin' (did you mean 'padding'?)",
        ),
        ({"mnist1d_args": {"seed": 1}}, "size and seed have their own fields"),
        ({"mnist1d_args": {"padding": [5, 1]}}, "mnist1d_args: 'padding' must be like the default"),
        (
            {"mnist1d_args": {"final_seq_length": 0}},
            "mnist1d_args: 'final_seq_length' must be like",
        ),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        DatasetConfig(**kwargs)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_config_error_for_root_without_files(tmp_path):
    with pytest.raises(
        ValueError, match=r"root: no cifar100 data under .*cifar-100-python/train' is missing"
    ):
        DatasetConfig(name="cifar100", root=str(tmp_path))


def test_loader_reports_errors_under_the_trainer_key():
    with pytest.raises(ConfigError) as info:
        config_tools.build_dataclass(DatasetConfig, {"name": "mnist1e"}, "trainer.dataset.")
    assert info.value.messages == [
        "trainer.dataset.name: unknown dataset 'mnist1e' (did you mean 'mnist1d'?); "
        f"choose one of {', '.join(sorted(DATASETS))}"
    ]
    cfg = config_tools.build_dataclass(
        DatasetConfig, {"name": "synthetic", "shape": [1, 8]}, "trainer.dataset."
    )
    assert cfg.shape == [1, 8]


# --- the validation split (trainer.dataset.val_size) ----------------------------------------


def _rows(dataset) -> set[bytes]:
    """Each sample of a split as bytes (input and label), to compare splits by content."""
    return {
        dataset[i][0].numpy().tobytes() + dataset[i][1].numpy().tobytes()
        for i in range(len(dataset))
    }


@pytest.mark.parametrize("name", ["mnist1d", "synthetic"])
def test_val_split_is_held_out_of_train_and_apart_from_test(tmp_path, name):
    kw = {"root": str(tmp_path)} if name == "mnist1d" else {}
    cfg = DatasetConfig(name=name, train_size=300, test_size=100, val_size=60, **kw)
    whole = build_datasets(DatasetConfig(name=name, train_size=300, test_size=100, **kw))
    assert whole.test is None and whole.val_indices is None  # val_size 0: val is the test split
    splits = build_datasets(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (240, 60, 100)
    train, val, test = _rows(splits.train), _rows(splits.val), _rows(splits.test)
    assert len(val) == 60 and not val & train and not val & test and not train & test
    # nothing is lost or invented: train + val is the training split as built without a hold-out
    assert train | val == _rows(whole.train) and test == _rows(whole.val)
    # the held-out samples are the listed indices of that training split
    assert val == _rows(torch.utils.data.Subset(whole.train, splits.val_indices))
    # tensor datasets stay tensor datasets (the trainer's fast batch indexing)
    assert type(splits.train) is type(splits.val) is torch.utils.data.TensorDataset


def test_val_split_depends_only_on_the_dataset_seed(tmp_path):
    def held(seed: int) -> list[int]:
        cfg = small_mnist1d(tmp_path, val_size=50, seed=seed)
        return build_datasets(cfg).val_indices

    assert held(42) == held(42)
    assert held(42) != held(7)
    assert held(42) == sorted(held(42)) and len(set(held(42))) == 50


def test_val_split_of_augmented_images_is_not_augmented(tmp_path):
    write_cifar(tmp_path, "cifar10")  # 20 training images, augmentation on by default
    splits = build_datasets(DatasetConfig(name="cifar10", root=str(tmp_path), val_size=5))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 6)
    torch.manual_seed(0)
    assert all(torch.equal(splits.val[i][0], splits.val[i][0]) for i in range(5))
    assert not torch.equal(splits.train[0][0], splits.train[0][0])  # training stays augmented
    plain = build_datasets(DatasetConfig(name="cifar10", root=str(tmp_path), augment=False))
    for i, j in enumerate(splits.val_indices):
        assert torch.equal(splits.val[i][0], plain.train[j][0])


def test_val_split_of_image_folders(tmp_path):
    write_image_folders(tmp_path, per_class=4)
    splits = build_datasets(DatasetConfig(name="imagenet", root=str(tmp_path), val_size=3))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (5, 3, 8)
    assert torch.equal(splits.val[0][0], splits.val[0][0])  # evaluation transform


def test_val_size_larger_than_a_whole_real_dataset_is_one_config_error(tmp_path):
    write_svhn(tmp_path, {"train": 12, "extra": 8, "test": 5})
    with pytest.raises(ConfigError) as info:
        build_datasets(DatasetConfig(name="svhn", root=str(tmp_path), val_size=20))
    assert info.value.messages == [
        "trainer.dataset.val_size: 20 must be smaller than the 20 training samples; lower it"
    ]


def test_one_batch_must_fit_in_what_val_size_leaves():
    from ds_twophase.config import validate_config

    cfg = {
        "train_batch_size": 64,
        "train_micro_batch_size_per_gpu": 64,
        "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
        "trainer": {
            "epochs": 1,
            "dataset": {"name": "synthetic", "train_size": 256, "val_size": 200},
            "model": {"name": "resnet20"},
        },
    }
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, world_size=1)
    assert info.value.messages == [
        "trainer.dataset.train_size: 56 training samples left after val_size 200 are fewer than "
        "one global batch of 64 (train_batch_size), so an epoch would have no full optimizer step; "
        "set trainer.dataset.train_size to at least 264 or lower train_batch_size"
    ]
    cfg["trainer"]["dataset"]["val_size"] = 192
    assert validate_config(cfg, world_size=1).trainer.dataset.val_size == 192
