"""YOLOv5 v6.1 building blocks, registered for the yaml parser.

Module structure (submodule names and the number of nn.Modules) follows v6.1 exactly, so official
state_dicts map one to one and the model summary counts the same layers. The attention blocks live in
models/attention/ and are re-exported at the bottom of this file.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.registry import batchnorm, concat_channels, contract, expand, out_channels, register
from utils.torch_utils import fuse_conv_and_bn


def autopad(k, p=None):
    """'same' padding for odd kernels."""
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def activation(act) -> nn.Module:
    """A Conv's activation: True -> SiLU (YOLOv5's default), a module as given, anything else -> none."""
    if act is True:
        return nn.SiLU()
    return act if isinstance(act, nn.Module) else nn.Identity()


@register(build=out_channels())
class Conv(nn.Module):
    """Conv2d without bias, BatchNorm2d, activation (keys conv.*, bn.*). `fuse_bn()` folds the BN into the conv
    for inference; the layer then has no `bn` (as a fused v6.1 model, so the summary counts the same layers)."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, kernel_size=k, stride=s, padding=autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = activation(act)

    def forward(self, x):
        x = self.conv(x)
        if hasattr(self, "bn"):  # gone after fuse_bn()
            x = self.bn(x)
        return self.act(x)

    def fuse_bn(self) -> None:
        if hasattr(self, "bn"):
            self.conv = fuse_conv_and_bn(self.conv, self.bn)
            del self.bn


@register(build=out_channels())
class DWConv(Conv):
    """Depthwise-style conv: groups = gcd(c1, c2)."""

    def __init__(self, c1, c2, k=1, s=1, act=True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), act=act)


@register(build=out_channels())
class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


@register(build=out_channels(repeats=True))
class BottleneckCSP(nn.Module):
    """CSP bottleneck (Cross Stage Partial Networks)."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1)
        self.bn = nn.BatchNorm2d(2 * c_)
        self.act = nn.SiLU()
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.cv4(self.act(self.bn(torch.cat((y1, y2), 1))))


@register(build=out_channels(repeats=True))
class C3(nn.Module):
    """CSP bottleneck with 3 convolutions."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


@register(build=out_channels())
class SPP(nn.Module):
    """Spatial pyramid pooling (YOLOv3-SPP)."""

    def __init__(self, c1, c2, k=(5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x):
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


@register(build=out_channels())
class SPPF(nn.Module):
    """SPP-Fast: three chained max-pools of size k, equivalent to SPP(k=(5, 9, 13)) for k=5."""

    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


@register(build=out_channels())
class Focus(nn.Module):
    """Space-to-depth (x(b,c,w,h) -> y(b,4c,w/2,h/2)) then Conv; used by v5.0 yamls."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act)

    def forward(self, x):
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class _SpaceChannelShuffle(nn.Module):
    """Moves g x g pixel blocks between space and channels in YOLOv5's channel order (block row, block column,
    channel), which differs from torch's pixel_(un)shuffle order, so official weights after it keep their meaning."""

    def __init__(self, gain=2):
        super().__init__()
        self.gain = gain


@register(build=contract())
class Contract(_SpaceChannelShuffle):
    """Width/height into channels: (b,c,h,w) -> (b,c*g*g,h/g,w/g)."""

    def forward(self, x):
        b, c, h, w = x.shape
        g = self.gain
        blocks = x.view(b, c, h // g, g, w // g, g).permute(0, 3, 5, 1, 2, 4)
        return blocks.reshape(b, c * g * g, h // g, w // g)


@register(build=expand())
class Expand(_SpaceChannelShuffle):
    """Channels into width/height: (b,c,h,w) -> (b,c/g/g,h*g,w*g)."""

    def forward(self, x):
        b, c, h, w = x.shape
        g = self.gain
        pixels = x.view(b, g, g, c // g ** 2, h, w).permute(0, 3, 4, 1, 5, 2)
        return pixels.reshape(b, c // g ** 2, h * g, w * g)


@register(build=concat_channels())
class Concat(nn.Module):
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


register("nn.BatchNorm2d", build=batchnorm())(nn.BatchNorm2d)

# YOLOv5's further blocks (models/blocks/) and the attention blocks register themselves on import and are
# importable from here, as users expect. Named imports of the submodules: safe whichever module loads first.
from models.blocks.c3_variants import C3SPP, C3x, CrossConv  # noqa: E402,F401
from models.blocks.ghost import C3Ghost, GhostBottleneck, GhostConv  # noqa: E402,F401
from models.blocks.transformer import C3TR, TransformerBlock, TransformerLayer  # noqa: E402,F401
from models.attention import *  # noqa: E402,F401,F403
