"""Contract of every registered backbone (a new entry is covered automatically), plus freezing."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from labelless.errors import UserError
from labelless.nn.backbones import BACKBONES, build_backbone, list_backbones

ENTRY_SIZES = [(name, size) for name, entry in BACKBONES.items() for size in entry.image_sizes]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The test machines' few cores are shared: intra-op threads that wait for each other there make
    these small convolutions ~10× slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name, size", ENTRY_SIZES)
def test_forward_backward_contract(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, in_channels=3, image_size=size)
    x = torch.rand(2, 3, size, size)
    features = model(x)
    assert features.shape == (2, model.num_features) and torch.isfinite(features).all()
    features.square().mean().backward()
    for parameter in model.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()

    model.eval()
    with torch.no_grad():
        maps = model.forward_blocks(x)
        assert isinstance(maps, list) and len(maps) == len(model.blocks)
        assert all(m.ndim in (2, 4) and m.shape[0] == 2 for m in maps)  # 2-D: fully connected blocks (mlp)
        assert torch.allclose(model.pool(maps[-1]), model.forward_features(x), atol=1e-5)
        assert torch.equal(model.forward_features(x), model(x))


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.parametrize("in_channels", [1, 2])
def test_input_channels(name: str, in_channels: int) -> None:
    size = BACKBONES[name].image_sizes[0]
    model = build_backbone(name, in_channels=in_channels, image_size=size).eval()
    with torch.no_grad():
        assert model(torch.rand(2, in_channels, size, size)).shape == (2, model.num_features)


@pytest.mark.parametrize("name", ["resnet18", "vgg4", "wrn28_2"])
def test_channels_last_gives_the_same_features(name: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(name).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-4)


def test_cifar_stem_keeps_resolution() -> None:
    maps = build_backbone("resnet18", image_size=32).forward_blocks(torch.rand(2, 3, 32, 32))
    assert [m.shape[-1] for m in maps] == [32, 32, 16, 8, 4]
    maps = build_backbone("resnet18", image_size=96).forward_blocks(torch.rand(2, 3, 96, 96))
    assert [m.shape[-1] for m in maps] == [24, 24, 12, 6, 3]


def test_vgg4_layouts() -> None:
    assert build_backbone("vgg4", in_channels=1, image_size=28).num_features == 512 * 3 * 3
    assert build_backbone("vgg4", image_size=32).num_features == 256 * 4 * 4
    assert build_backbone("vgg4", image_size=96).num_features == 1024
    model = build_backbone("vgg4", image_size=48)  # off-layout size: pooled to the 32-px layout's 4×4
    assert model(torch.rand(2, 3, 48, 48)).shape == (2, 256 * 4 * 4)


def test_freeze_blocks() -> None:
    model = build_backbone("small_cnn", image_size=8).freeze_blocks(2)
    frozen_stats = model.blocks[0][1].running_mean.clone()
    model.train()
    assert not model.blocks[0].training and not model.blocks[1].training and model.blocks[2].training
    assert all(not p.requires_grad for block in model.blocks[:2] for p in block.parameters())
    assert all(p.requires_grad for p in model.blocks[2].parameters())
    model(torch.rand(4, 3, 8, 8)).sum().backward()
    assert torch.equal(model.blocks[0][1].running_mean, frozen_stats)
    assert all(p.requires_grad for p in model.freeze_blocks(0).parameters())


def test_registry() -> None:
    assert list_backbones() == sorted(BACKBONES)
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "alexnet", "vgg4", "vgg16_bn", "wrn28_2",
            "small_cnn"} <= set(BACKBONES)
    with pytest.raises(UserError):
        build_backbone("resnet9000")
