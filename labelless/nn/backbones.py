"""Backbones: one registry, one interface.

Every backbone is a `Backbone`: a trunk cut into macro blocks (`blocks`) and a `pool` that turns the
last block's map into N×`num_features`. Methods use `forward_features` (= `forward`); probes at
conv3/conv5 and the freezing of the first blocks (DeepCluster's and RotNet's conv probes, the
RotNet-pretrained stages of LSD-C) use `forward_blocks` and `freeze_blocks`.

`build_backbone("resnet18", in_channels=3, image_size=32)` looks a name up in `BACKBONES`; each entry
lists the image sizes its layouts are designed for, and the contract test runs every entry at those.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from torch import Tensor, nn

from labelless.errors import UserError


class Backbone(nn.Module):
    """Macro blocks run in order, then `pool`: N×C×H×W → N×num_features."""

    def __init__(self, blocks: Sequence[nn.Module], pool: nn.Module, num_features: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.pool = pool
        self.num_features = num_features
        self.frozen_blocks = 0

    def forward_blocks(self, x: Tensor) -> list[Tensor]:
        """The feature map after every block; `pool(maps[-1])` is `forward_features(x)`."""
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps

    def forward_features(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.pool(x)  # N×num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    def freeze_blocks(self, n: int) -> Backbone:
        """Stop training the first `n` blocks: no gradients, and their BatchNorm statistics stay fixed
        (`train()` keeps them in eval mode), as the frozen-trunk protocols of the conv probes require.
        `freeze_blocks(0)` unfreezes everything."""
        self.frozen_blocks = n
        for index, block in enumerate(self.blocks):
            block.requires_grad_(index >= n)
        return self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for block in self.blocks[: self.frozen_blocks]:
            block.eval()
        return self


def _global_average() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _flatten_at(side: int) -> nn.Module:
    """Flatten a side×side map; other sizes are average-pooled to side×side first (a no-op at side)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(side), nn.Flatten())


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None) -> list[nn.Module]:
    """Conv (no bias: BN follows) + BN + ReLU; `padding` defaults to "same" (kernel // 2), 0 is a valid conv."""
    padding = kernel // 2 if padding is None else padding
    return [nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _resnet(arch: str, in_channels: int, image_size: int, **kw: object) -> Backbone:
    """torchvision's ResNet (He et al. 2016), untrained, without `fc`. Up to 64 px the stem is the
    CIFAR one of SimCLR/SCAN (3×3 stride-1 conv1, no max-pool): the ImageNet stem would shrink a 32-px
    image to 8 px before the first residual block. Blocks: stem, layer1…layer4 (conv1…conv5_x)."""
    import torchvision.models  # here, not at the top: importing torchvision costs every process ~3 s

    net = getattr(torchvision.models, arch)(weights=None, **kw)
    if image_size <= 64:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return Backbone([stem, net.layer1, net.layer2, net.layer3, net.layer4], _global_average(), net.fc.in_features)


def _alexnet(in_channels: int, image_size: int) -> Backbone:
    """AlexNet (Krizhevsky et al. 2012) as DeepCluster (Caron et al. 2018) trains it — five convs of
    96-256-384-384-256 channels, each with BatchNorm — scaled to 32-px images the way the CIFAR
    AlexNets of the clustering papers do: conv1 5×5 stride 1 (not 11×11 stride 4) and 3×3 stride-2
    overlapping max-pools after conv1, conv2 and conv5, so 32 → 16 → 8 → 4. Features: conv5's pooled
    map flattened, 256·4·4 = 4096 (pool5, the input of AlexNet's fc6); other sizes are average-pooled
    to 4×4. Blocks: conv1…conv5."""
    def pool() -> nn.Module:
        return nn.MaxPool2d(3, 2, 1)

    blocks = [
        nn.Sequential(*_conv_bn_relu(in_channels, 96, 5), pool()),
        nn.Sequential(*_conv_bn_relu(96, 256, 5), pool()),
        nn.Sequential(*_conv_bn_relu(256, 384, 3)),
        nn.Sequential(*_conv_bn_relu(384, 384, 3)),
        nn.Sequential(*_conv_bn_relu(384, 256, 3), pool()),
    ]
    return Backbone(blocks, _flatten_at(4), 256 * 4 * 4)


# image side → (widths of the 4 convs, conv stride, side of the last map), IIC's VGG-style nets
_VGG4_LAYOUTS = {
    28: ((64, 128, 256, 512), 1, 3),
    32: ((32, 64, 128, 256), 1, 4),
    96: ((128, 256, 512, 1024), 2, 1),
}


def _vgg4(in_channels: int, image_size: int) -> Backbone:
    """The 4-conv VGG-style trunk of IIC (Ji et al. 2019) and Zhang & Boykov: each block a 5×5 conv
    (padding 2) + BN + ReLU, a 2×2 max-pool after the first three; features = the last map flattened.
    Layouts: 28 px (MNIST) @64-128-256-512 stride 1 → 512·3·3; 32 px (CIFAR) @32-64-128-256 stride 1
    → 256·4·4; 96 px (STL) @128-256-512-1024 stride 2 → 1024·1·1. The 28-px layout serves sizes up to
    30 px, the 32-px one up to 64 px, the 96-px one above; off its size the last map is average-pooled
    to the layout's side."""
    natural = 28 if image_size <= 30 else 32 if image_size <= 64 else 96
    widths, stride, side = _VGG4_LAYOUTS[natural]
    blocks = []
    for index, (cin, cout) in enumerate(zip((in_channels, *widths[:-1]), widths)):
        layers = _conv_bn_relu(cin, cout, 5, stride)
        blocks.append(nn.Sequential(*layers, nn.MaxPool2d(2)) if index < 3 else nn.Sequential(*layers))
    return Backbone(blocks, _flatten_at(side), widths[-1] * side * side)


# torchvision's configuration "D" of `vgg16_bn`: conv widths, "M" = 2×2 max-pool
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _vgg16_bn(in_channels: int, image_size: int) -> Backbone:
    """VGG-16 with BatchNorm (Simonyan & Zisserman 2015), the convolutional part of torchvision's
    `vgg16_bn` (its layout "D" and init; the conv bias, redundant before BN, is dropped), cut after each
    of its five max-pools (32 px → 1×1×512), global-average-pooled: 512 features. Built here rather than
    from torchvision because its 120M-parameter classifier takes seconds to initialise."""
    blocks, current, cin = [], [], in_channels
    for item in _VGG16_LAYOUT:
        if item == "M":
            blocks.append(nn.Sequential(*current, nn.MaxPool2d(2)))
            current = []
        else:
            current += _conv_bn_relu(cin, item, 3)
            cin = item
    backbone = Backbone(blocks, _global_average(), 512)
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return backbone


class _WideResidual(nn.Module):
    """Pre-activation residual unit of FixMatch's WideResNet (Sohn et al. 2020, `libml/models.py`):
    BN-LeakyReLU(0.1)-conv3×3-BN-LeakyReLU-conv3×3, a 1×1 conv shortcut when the width changes;
    `activate_before_residual` feeds the shortcut the activated input (the first unit only).
    BatchNorm momentum 0.001 is TF's decay 0.999."""

    def __init__(self, cin: int, cout: int, stride: int, activate_before_residual: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.001)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.001)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if cin != cout else nn.Identity()
        self.activate_before_residual = activate_before_residual

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.bn1(x))
        if self.activate_before_residual:
            x = h
        h = self.conv2(self.act(self.bn2(self.conv1(h))))
        return self.shortcut(x) + h


def _wrn28_2(in_channels: int, image_size: int, depth: int = 28, width: int = 2) -> Backbone:
    """WideResNet-28-2 (Zagoruyko & Komodakis 2016) in FixMatch's layout: 3×3 stem @16, three groups
    of (28−4)/6 = 4 units @32·2⁰, 32·2¹, 32·2² channels (stride 1, 2, 2; 16·width = 32 for width 2),
    final BN-LeakyReLU, global average: 128 features. He-normal (fan-out) conv init as FixMatch's TF
    code. Blocks: stem, group1, group2, group3 (+ final activation)."""
    units = (depth - 4) // 6
    widths = [16 * width * 2**group for group in range(3)]
    stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
    groups = []
    cin = 16
    for group, cout in enumerate(widths):
        layers = [_WideResidual(cin, cout, 1 if group == 0 else 2, activate_before_residual=group == 0)]
        layers += [_WideResidual(cout, cout, 1) for _ in range(units - 1)]
        groups.append(nn.Sequential(*layers))
        cin = cout
    groups[-1].append(nn.BatchNorm2d(cin, momentum=0.001))
    groups[-1].append(nn.LeakyReLU(0.1, inplace=True))
    backbone = Backbone([stem, *groups], _global_average(), cin)
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
    return backbone


def _small_cnn(in_channels: int, image_size: int) -> Backbone:
    """A tiny net for 8–16 px inputs (scikit-learn's 8×8 digits), fast on a CPU: 3×3 convs @64, @64
    (then a 2×2 max-pool), @128, each with BN + ReLU, global average: 128 features."""
    blocks = [
        nn.Sequential(*_conv_bn_relu(in_channels, 64, 3)),
        nn.Sequential(*_conv_bn_relu(64, 64, 3), nn.MaxPool2d(2)),
        nn.Sequential(*_conv_bn_relu(64, 128, 3)),
    ]
    return Backbone(blocks, _global_average(), 128)


def _lenet(in_channels: int, image_size: int) -> Backbone:
    """LeNet as Caffe's MNIST example lays it out (after LeCun et al. 1998), with BN + ReLU after every
    layer (Caffe's has no BN and a ReLU after the fully connected layer only): 5×5 valid conv @20 + 2×2
    max-pool, 5×5 valid conv @50 + 2×2 max-pool, fully connected 800 → 500: 28 px → 24 → 12 → 8 → 4,
    50·4·4 = 800 → 500 features. The registry's conv trunk for 28-px digits on a CPU:
    ~2.3M multiply-adds an image against ~110M for `vgg4`'s 28-px layout, so a CPU trains it on
    MNIST's 60k images in minutes; other sizes are average-pooled to 4×4 before the fully connected
    block. Blocks: conv1, conv2, fc."""
    blocks = [
        nn.Sequential(*_conv_bn_relu(in_channels, 20, 5, padding=0), nn.MaxPool2d(2)),
        nn.Sequential(*_conv_bn_relu(20, 50, 5, padding=0), nn.MaxPool2d(2)),
        nn.Sequential(_flatten_at(4), nn.Linear(50 * 4 * 4, 500), nn.BatchNorm1d(500), nn.ReLU(inplace=True)),
    ]
    return Backbone(blocks, nn.Identity(), 500)


def _mlp(in_channels: int, image_size: int, width: int = 512) -> Backbone:
    """Two fully connected layers (BN + ReLU) over the flattened pixels: for tiny images (8×8 digits)
    a CPU trains it ~10× faster than `small_cnn`, and translations are learnt from the augmentation."""
    blocks = [
        nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, width), nn.BatchNorm1d(width),
                      nn.ReLU(inplace=True)),
        nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)),
    ]
    return Backbone(blocks, nn.Identity(), width)


@dataclass(frozen=True)
class BackboneEntry:
    """A registry entry: the builder, and the input sides its layouts are designed for (the contract
    test builds and trains the entry once at each)."""

    build: Callable[..., Backbone]
    image_sizes: tuple[int, ...]

    def __call__(self, in_channels: int = 3, image_size: int = 32, **kw: object) -> Backbone:
        return self.build(in_channels=in_channels, image_size=image_size, **kw)


BACKBONES: dict[str, BackboneEntry] = {
    "resnet18": BackboneEntry(partial(_resnet, "resnet18"), (32, 96)),
    "resnet34": BackboneEntry(partial(_resnet, "resnet34"), (32, 96)),
    "resnet50": BackboneEntry(partial(_resnet, "resnet50"), (32,)),
    "resnet101": BackboneEntry(partial(_resnet, "resnet101"), (32,)),
    "alexnet": BackboneEntry(_alexnet, (32,)),
    "vgg4": BackboneEntry(_vgg4, (28, 32, 96)),
    "vgg16_bn": BackboneEntry(_vgg16_bn, (32,)),
    "wrn28_2": BackboneEntry(_wrn28_2, (32,)),
    "small_cnn": BackboneEntry(_small_cnn, (8, 16)),
    "mlp": BackboneEntry(_mlp, (8, 16)),
    "lenet": BackboneEntry(_lenet, (28,)),
}


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def build_backbone(name: str, in_channels: int = 3, image_size: int = 32, **kw: object) -> Backbone:
    """A fresh, untrained backbone; `kw` goes to the entry's builder (e.g. `zero_init_residual=True`
    for the torchvision ResNets)."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}: choose one of {', '.join(list_backbones())}")
    return BACKBONES[name](in_channels=in_channels, image_size=image_size, **kw)

