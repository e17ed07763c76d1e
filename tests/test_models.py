"""Models: parameter counts, forward shapes, initialisation, timm names and input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from ds_twophase.config import tools as config_tools
from ds_twophase.errors import ConfigError
from ds_twophase.models import MODELS, ModelConfig, build_model, check_model
from ds_twophase.models.cifar_resnet import BasicBlock, resnet20


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


IMAGE = (3, 32, 32)

# Reference counts: option-A CIFAR ResNets as in He et al. 2016 (ResNet-20 0.27M, ResNet-110
# 1.7M), WRN-28-10 36.5M (Zagoruyko & Komodakis 2016), torchvision ResNet-50 with a 10-way head.
PARAM_COUNTS = [
    ("mnist1d_cnn", {}, (1, 40), 25_322),
    ("resnet20", {}, IMAGE, 269_722),
    ("resnet20", {"shortcut": "B"}, IMAGE, 272_474),
    ("resnet32", {}, IMAGE, 464_154),
    ("resnet44", {}, IMAGE, 658_586),
    ("resnet56", {}, IMAGE, 853_018),
    ("resnet110", {}, IMAGE, 1_727_962),
    ("wrn_16_8", {}, IMAGE, 10_961_370),
    ("wrn_28_10", {}, IMAGE, 36_479_194),
    ("wide_resnet", {"depth": 16, "widen_factor": 8}, IMAGE, 10_961_370),
    ("resnet50", {}, IMAGE, 23_528_522),
]


@pytest.mark.parametrize(("name", "kwargs", "shape", "count"), PARAM_COUNTS)
def test_param_count_and_forward_shape(name, kwargs, shape, count):
    model = build_model(ModelConfig(name, kwargs), num_classes=10, input_shape=shape)
    assert n_params(model) == count
    assert model.training
    if count < 2_000_000:  # the big ones already ran a forward pass inside build_model
        assert model(torch.randn(4, *shape)).shape == (4, 10)


def test_every_registered_model_is_covered():
    assert {name for name, *_ in PARAM_COUNTS} == set(MODELS)


def test_resnet50_1000_classes_matches_torchvision_count():
    model = build_model(ModelConfig("resnet50"), 1000, (3, 64, 64), check_forward=False)
    assert n_params(model) == 25_557_032


def test_direct_import_used_by_benchmarks():
    model = resnet20()
    assert n_params(model) == 269_722
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet50_zero_init_last_bn_gamma():
    model = build_model(ModelConfig("resnet50"), 10, IMAGE, check_forward=False)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    for block in blocks:
        assert torch.count_nonzero(block.bn3.weight) == 0
        assert torch.all(block.bn1.weight == 1) and torch.all(block.bn2.weight == 1)
    off = build_model(
        ModelConfig("resnet50", {"zero_init_residual": False}), 10, IMAGE, check_forward=False
    )
    assert all(torch.all(m.bn3.weight == 1) for m in off.modules() if isinstance(m, Bottleneck))


def test_cifar_resnet_zero_init_option():
    model = build_model(ModelConfig("resnet20", {"zero_init_residual": True}), 10, IMAGE)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    default = build_model(ModelConfig("resnet20"), 10, IMAGE)
    assert all(torch.all(b.bn2.weight == 1) for b in default.modules() if isinstance(b, BasicBlock))


def test_wide_resnet_dropout_option():
    x = torch.randn(2, *IMAGE)
    cfg = ModelConfig("wide_resnet", {"depth": 10, "widen_factor": 1, "dropout": 0.5})
    model = build_model(cfg, 10, IMAGE)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3  # one per block
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))  # dropout is active in train mode
    model.eval()
    assert torch.equal(model(x), model(x))
    plain = build_model(ModelConfig("wide_resnet", {"depth": 10, "widen_factor": 1}), 10, IMAGE)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())


def test_input_channels_and_length_follow_the_data():
    gray = build_model(ModelConfig("resnet20"), 7, (1, 28, 28))
    assert gray.conv1.in_channels == 1 and gray(torch.zeros(3, 1, 28, 28)).shape == (3, 7)
    cnn = build_model(ModelConfig("mnist1d_cnn", {"widths": [8, 16]}), 4, (2, 60))
    assert cnn(torch.zeros(5, 2, 60)).shape == (5, 4)
    r50 = build_model(ModelConfig("resnet50"), 10, (1, 32, 32))
    assert r50.conv1.in_channels == 1


def test_build_check_leaves_model_state_alone():
    model = build_model(ModelConfig("resnet20"), 10, IMAGE)
    assert model.training
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == 0
            assert torch.all(m.running_mean == 0)
    assert all(p.grad is None for p in model.parameters())


# --- timm -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["timm:test_resnet", "timm.test_resnet"])
def test_timm_model_by_name(name):
    model = build_model(ModelConfig(name, {"pretrained": False}), 10, IMAGE)
    assert model.training
    assert model(torch.zeros(2, *IMAGE)).shape == (2, 10)
    one_channel = build_model(ModelConfig(name), 5, (1, 32, 32))
    assert one_channel(torch.zeros(2, 1, 32, 32)).shape == (2, 5)


def test_timm_pretrained_refused():
    with pytest.raises(ValueError, match="kwargs: pretrained weights cannot be used"):
        ModelConfig("timm:test_resnet", {"pretrained": True})


def test_timm_unknown_name_suggests():
    with pytest.raises(
        ValueError, match=r"name: timm has no model 'test_resnett' \(did you mean 'test_resnet'\?\)"
    ):
        ModelConfig("timm:test_resnett")


def test_timm_forward_failure_is_a_config_error():
    # This ViT is built for 224x224 inputs and rejects 32x32 ones unless told its image size.
    name = "timm:vit_tiny_patch16_224"
    with pytest.raises(ConfigError) as info:
        build_model(ModelConfig(name), 10, IMAGE, dataset_name="cifar10")
    text = str(info.value)
    assert text.startswith(f"trainer.model.name: '{name}' cannot take inputs of shape (3, 32, 32)")
    assert "trainer.dataset.name 'cifar10'" in text and "\n" not in text
    model = build_model(ModelConfig(name, {"img_size": 32}), 10, IMAGE)
    assert model(torch.zeros(1, *IMAGE)).shape == (1, 10)


# --- input rank mismatch and config errors --------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        (
            "resnet20",
            (1, 40),
            "'resnet20' takes images (C, H, W) but trainer.dataset.name 'mnist1d' gives sequences (C, L) of shape (1, 40); models for this data: mnist1d_cnn",
        ),
        (
            "timm:test_resnet",
            (1, 40),
            "'timm:test_resnet' takes images (C, H, W) but trainer.dataset.name 'mnist1d'",
        ),
        (
            "mnist1d_cnn",
            (3, 32, 32),
            "'mnist1d_cnn' takes sequences (C, L) but trainer.dataset.name 'mnist1d' gives images",
        ),
    ],
)
def test_input_rank_mismatch(name, shape, message):
    with pytest.raises(ConfigError) as info:
        build_model(ModelConfig(name), 10, shape, dataset_name="mnist1d")
    assert str(info.value) == f"trainer.model.name: {message}" or str(info.value).startswith(
        f"trainer.model.name: {message}"
    )


def test_check_model_on_meta_device():
    for name in MODELS:
        shape = (1, 40) if name == "mnist1d_cnn" else IMAGE
        check_model(ModelConfig(name), 10, shape)
    check_model(ModelConfig("resnet50"), 1000, (3, 224, 224))
    check_model(ModelConfig("timm:test_resnet"), 10, IMAGE)
    with pytest.raises(ConfigError, match=r"'resnet20' takes images \(C, H, W\) but"):
        check_model(ModelConfig("resnet20"), 10, (1, 40), dataset_name="mnist1d")
    with pytest.raises(ConfigError, match="cannot take inputs of shape"):
        check_model(ModelConfig("timm:vit_tiny_patch16_224"), 10, IMAGE)
    with pytest.raises(ConfigError, match="trainer.model.kwargs: wide_resnet: depth"):
        check_model(ModelConfig("wide_resnet", {"depth": 17}), 10, IMAGE)
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 1"):
        check_model(ModelConfig("resnet20"), 0, IMAGE)


def test_bad_kwarg_value_is_a_config_error():
    with pytest.raises(
        ConfigError,
        match=r"trainer.model.kwargs: wide_resnet: depth: a WideResNet needs depth = 6n \+ 4",
    ):
        build_model(ModelConfig("wide_resnet", {"depth": 17}), 10, IMAGE)
    with pytest.raises(
        ConfigError, match="trainer.model.kwargs: resnet20: shortcut: must be one of"
    ):
        build_model(ModelConfig("resnet20", {"shortcut": "C"}), 10, IMAGE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "resnet_20"},
            "name: unknown model 'resnet_20' (did you mean 'resnet20'?); choose one of",
        ),
        (
            {"name": "wrn_16_8", "kwargs": {"dropuot": 0.5}},
            "kwargs.dropuot: unknown key for model 'wrn_16_8' (did you mean 'dropout'?); allowed: dropout",
        ),
        (
            {"name": "resnet20", "kwargs": {"num_classes": 100}},
            "kwargs: 'num_classes' is set from the dataset",
        ),
        (
            {"name": "timm:test_resnet", "kwargs": {"in_chans": 1}},
            "kwargs: 'in_chans' is set from the dataset",
        ),
        ({"name": 3}, "name: must be a string"),
        ({"kwargs": [1]}, "kwargs: must be an object"),
    ],
)
def test_model_config_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        ModelConfig(**kwargs)
    assert str(info.value).startswith(message)


def test_loader_reports_errors_under_the_trainer_key():
    with pytest.raises(ConfigError) as info:
        config_tools.build_dataclass(ModelConfig, {"name": "resnet_20"}, "trainer.model.")
    assert info.value.messages[0].startswith(
        "trainer.model.name: unknown model 'resnet_20' (did you mean 'resnet20'?)"
    )
    cfg = config_tools.build_dataclass(
        ModelConfig, {"name": "wrn_16_8", "kwargs": {"dropout": 0.5}}, "trainer.model."
    )
    assert cfg.kwargs == {"dropout": 0.5}


def test_mnist1d_cnn_learns_mnist1d(tmp_path):
    """The default model on the default data: well above chance (10%) after about 6 epochs."""
    from ds_twophase.data import DatasetConfig, build_datasets

    torch.manual_seed(0)
    splits = build_datasets(DatasetConfig(root=str(tmp_path), train_size=1000, test_size=500))
    model = build_model(ModelConfig(), splits.num_classes, splits.input_shape)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = splits.train.tensors
    for step in range(100):
        idx = torch.arange(step * 64, step * 64 + 64) % len(y)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xv, yv = splits.val.tensors
    with torch.no_grad():
        accuracy = (model(xv).argmax(1) == yv).float().mean().item()
    assert accuracy > 0.5
