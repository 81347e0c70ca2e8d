"""Built-in architectures: a small CNN with BatchNorm (the default), a CIFAR-style ResNet-18 and
a VGG-style net with BN. All take the dataset's channels, image size and class count."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import bdtool
from bdtool.core.interfaces import ModelArchitecture


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Two conv blocks (32, 64 channels; two 3×3 conv+BN+ReLU each, then 2×2 max-pool), adaptive
    average pooling to 2×2, then Linear(256,128)+ReLU and the classifier Linear(128, classes).
    ~100k parameters; works from 8×8 (digits) up to 32×32."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 32), *_conv_bn(32, 32), nn.MaxPool2d(2),
            *_conv_bn(32, 64), *_conv_bn(64, 64), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 4, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (3×3 conv, no max-pool), as in the backdoor literature."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.pool(out), 1))


class VGGSmall(nn.Module):
    """VGG-style (VGG-11 layout at half width) with BN; pooling stops at 1×1 for small inputs."""

    CFG = (32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256, "M")

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = in_channels, image_size
        for item in self.CFG:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                layers += _conv_bn(cin, int(item))
                cin = int(item)
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(cin, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallCNNArchitecture(ModelArchitecture):
    name = "small-cnn"
    description = "small CNN with BatchNorm (~100k parameters; the default)"

    def build(self, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
        return SmallCNN(in_channels, image_size, num_classes)


class ResNet18Architecture(ModelArchitecture):
    name = "resnet18"
    description = "ResNet-18 with the CIFAR stem (11M parameters; use a GPU)"

    def build(self, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
        return ResNet18(in_channels, image_size, num_classes)


class VGGArchitecture(ModelArchitecture):
    name = "vgg"
    description = "VGG-style net with BatchNorm (VGG-11 layout, half width)"

    def build(self, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
        return VGGSmall(in_channels, image_size, num_classes)


@bdtool.hookimpl
def bdtool_register_models(register: Callable[..., None]) -> None:
    for arch in (SmallCNNArchitecture, ResNet18Architecture, VGGArchitecture):
        register(arch)
