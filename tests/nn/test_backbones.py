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


VGG4_SPECS = {  # (in_channels, side): (conv widths, conv stride, side after each block, features)
    (1, 28): ((64, 128, 256, 512), 1, [14, 7, 3, 3], 512 * 3 * 3),
    (3, 32): ((32, 64, 128, 256), 1, [16, 8, 4, 4], 256 * 4 * 4),
    (3, 96): ((128, 256, 512, 1024), 2, [24, 6, 1, 1], 1024 * 1 * 1),
}


@pytest.mark.parametrize("in_channels, size", list(VGG4_SPECS))
def test_vgg4_layer_spec(in_channels: int, size: int) -> None:
    """IIC's VGG-style trunks layer by layer: 4 blocks of 5×5 conv (padding 2) + BN + ReLU, a 2×2
    max-pool after the first three, and the last map flattened as it is at the layout's own size."""
    widths, stride, sides, num_features = VGG4_SPECS[in_channels, size]
    torch.manual_seed(0)
    model = build_backbone("vgg4", in_channels=in_channels, image_size=size).eval()
    assert len(model.blocks) == 4 and model.num_features == num_features
    for index, (block, cin, cout) in enumerate(zip(model.blocks, (in_channels, *widths[:-1]), widths)):
        expected = [torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU] + [torch.nn.MaxPool2d] * (index < 3)
        assert [type(layer) for layer in block] == expected, f"block {index}"
        conv, bn = block[0], block[1]
        assert (conv.in_channels, conv.out_channels) == (cin, cout), f"block {index}"
        assert (conv.kernel_size, conv.padding, conv.stride) == ((5, 5), (2, 2), (stride, stride)), f"block {index}"
        assert conv.dilation == (1, 1) and conv.groups == 1 and bn.num_features == cout
        if index < 3:
            assert block[3].kernel_size == 2 and block[3].stride == 2
    x = torch.rand(1, in_channels, size, size)
    with torch.no_grad():
        maps = model.forward_blocks(x)
        assert [tuple(m.shape[1:]) for m in maps] == [(w, s, s) for w, s in zip(widths, sides)]
        assert torch.equal(model(x), maps[-1].flatten(1))  # at its own size the pool is a plain flatten
    assert model(x).shape == (1, num_features)


def test_lenet_layer_spec() -> None:
    """Caffe's MNIST LeNet with BN: valid 5×5 convs @20 and @50, each max-pooled 2×2 (28 → 24 → 12 → 8
    → 4), then fully connected 800 → 500; at other sizes the last map is average-pooled to 4×4."""
    torch.manual_seed(0)
    model = build_backbone("lenet", in_channels=1, image_size=28).eval()
    assert len(model.blocks) == 3 and model.num_features == 500
    for block, (cin, cout) in zip(model.blocks[:2], [(1, 20), (20, 50)]):
        conv = block[0]
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (cin, cout, (5, 5), (0, 0))
    fc = model.blocks[2][1]
    assert (fc.in_features, fc.out_features) == (800, 500)
    with torch.no_grad():
        maps = model.forward_blocks(torch.rand(2, 1, 28, 28))
        assert [tuple(m.shape[1:]) for m in maps] == [(20, 12, 12), (50, 4, 4), (500,)]
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, 500)


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
            "small_cnn", "mlp", "lenet"} <= set(BACKBONES)
    with pytest.raises(UserError, match="unknown backbone 'resnet9000': choose one of alexnet, lenet"):
        build_backbone("resnet9000")
