"""ACmix ResNet-50: torchvision's ResNet-50 (v1.5) with each Bottleneck's 3x3 conv replaced by ACmix.

As the official `ResNet/ResNet_ImageNet.py` of LeapLabTHU/ACmix (spec section 4): the stride of a
stage's first block sits on the ACmix (v1.5 style), the shortcut is a strided 1x1 conv + BN, and the
ResNet-wide init (kaiming-normal fan_out for every Conv2d, BN weight 1 / bias 0) also re-initialises
the convs inside ACmix, including dep_conv's shift kernel, exactly as the official builder does.
rate1/rate2 stay 0.5. Small inputs work (64x64 gives 2x2 maps in the last stage).

Usage: model = acmix_resnet50(num_classes=1000); logits = model(images)  # (B, 3, H, W) -> (B, classes)
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.attention.acmix import ACmix

__all__ = ["ACmixBottleneck", "ACmixResNet", "acmix_resnet50"]


class ACmixBottleneck(nn.Module):
    """1x1 reduce -> ACmix(width, width, stride) -> 1x1 expand (x4), each with BN; ReLU; residual add."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, k_att: int, head: int, k_conv: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = ACmix(width, width, k_att, head, k_conv, stride=stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ACmixResNet(nn.Module):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages of ACmix bottlenecks, avg-pool, fc."""

    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 1000, k_att: int = 7, head: int = 4, k_conv: int = 3):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        block_args = (k_att, head, k_conv)
        self.layer1 = self._make_stage(64, layers[0], 1, block_args)
        self.layer2 = self._make_stage(128, layers[1], 2, block_args)
        self.layer3 = self._make_stage(256, layers[2], 2, block_args)
        self.layer4 = self._make_stage(512, layers[3], 2, block_args)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * ACmixBottleneck.expansion, num_classes)
        self._init_weights()

    def _make_stage(self, planes: int, blocks: int, stride: int, block_args) -> nn.Sequential:
        out = planes * ACmixBottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out))
        stage = [ACmixBottleneck(self.inplanes, planes, *block_args, stride=stride, downsample=downsample)]
        self.inplanes = out
        stage += [ACmixBottleneck(out, planes, *block_args) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # includes ACmix's convs, as the official builder
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def acmix_resnet50(num_classes: int = 1000, k_att: int = 7, head: int = 4, k_conv: int = 3) -> ACmixResNet:
    """ResNet-50 layout (3, 4, 6, 3) with ACmix in every bottleneck."""
    return ACmixResNet((3, 4, 6, 3), num_classes=num_classes, k_att=k_att, head=head, k_conv=k_conv)
