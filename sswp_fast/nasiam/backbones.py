"""ResNet-18 and ResNet-50 backbones for NASiam (spec ``nasiam.md`` §1), without a torchvision dependency.

The modules reproduce torchvision's ``resnet18`` / ``resnet50`` (ResNet v1.5: the stride of a bottleneck sits on
its 3×3 conv) parameter for parameter: same state-dict keys (``conv1.weight``, ``bn1.*``,
``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``, ..., ``fc.weight``, ``fc.bias``), same shapes and
the same initialisation (Kaiming-normal ``fan_out`` convs, BatchNorm weight 1 and bias 0, PyTorch's default
``Linear`` init, and ``zero_init_residual`` zeroing the last BatchNorm weight of every residual block). A
torchvision checkpoint therefore loads into them and vice versa.

``cifar=True`` is the CIFAR stem of spec §1 (``conv1`` a 3×3 stride-1 conv, no max-pool); ``cifar=False`` keeps
the ImageNet stem (7×7 stride-2 conv and a 3×3 stride-2 max-pool). Unlike the reference, whose SimSiam and MoCo
builders convert only ResNet-18 and leave ResNet-50 with the ImageNet stem even on CIFAR (spec §8 quirk 16),
the flag applies to both depths here.

Heads are swapped by assigning ``net.fc``; ``net.features(x)`` is the pooled, flattened ``[B, feature_dim]``
vector that ``fc`` receives.
"""

from __future__ import annotations

import torch
from torch import nn

from sswp_fast.errors import ConfigError

ARCHS: tuple[str, ...] = ("resnet18", "resnet50")
"""Names accepted by :func:`resnet`."""


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """The two-conv residual block of ResNet-18/34 (torchvision's ``BasicBlock``)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm before the residual addition (zeroed by ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """The 1×1-3×3-1×1 residual block of ResNet-50 (torchvision's ``Bottleneck``, stride on the 3×3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm before the residual addition (zeroed by ``zero_init_residual``)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A torchvision-layout ResNet with a CIFAR or ImageNet stem; ``forward(x) = fc(features(x))``."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int, int], num_classes: int,
                 cifar: bool, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.inplanes = 64
        if cifar:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.Identity() if cifar else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = 512 * block.expansion
        self.fc: nn.Module = nn.Linear(self.feature_dim, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        stage.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*stage)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The globally average-pooled trunk output, flattened to ``[B, feature_dim]`` (what ``fc`` receives)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


_DEPTHS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


def resnet(name: str, num_classes: int, cifar: bool, zero_init_residual: bool = False) -> ResNet:
    """ResNet ``name`` (``"resnet18"`` or ``"resnet50"``) with a ``num_classes``-way ``fc`` head.

    ``cifar=True`` gives the CIFAR stem (3×3 stride-1 ``conv1``, no max-pool) for either depth; ``cifar=False``
    torchvision's ImageNet stem. ``zero_init_residual`` zeroes the weight of the last BatchNorm in every residual
    block, as torchvision's flag of the same name does (the reference sets it for SimSiam and for MoCo's
    ResNet-18). The result has ``feature_dim`` (512 or 2048), ``features(x)`` and a replaceable ``fc``.
    """
    if name not in _DEPTHS:
        raise ConfigError(f"unknown NASiam backbone {name!r}; use one of {', '.join(ARCHS)}")
    if num_classes < 1:
        raise ConfigError(f"a ResNet head needs at least one output, got num_classes={num_classes}; "
                          "pass a positive num_classes")
    block, layers = _DEPTHS[name]
    return ResNet(block, layers, num_classes, cifar, zero_init_residual)
