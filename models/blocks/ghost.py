"""GhostNet blocks as YOLOv5 v6.1 has them (Han et al., CVPR 2020, arXiv 1911.11907).

A Ghost conv computes half of its output channels with an ordinary conv and the other half from those
with a cheap 5x5 depthwise conv. Submodule names (cv1/cv2, conv/shortcut) and the number of nn.Modules
follow v6.1, so official state_dicts load and the summary counts the same layers.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.common import C3, Conv, DWConv
from models.registry import out_channels, register

__all__ = ["GhostConv", "GhostBottleneck", "C3Ghost"]


@register(build=out_channels())
class GhostConv(nn.Module):
    """Conv to c2/2 channels, then a depthwise 5x5 conv of those; output is both halves concatenated."""

    def __init__(self, c1, c2, k=1, s=1, g=1, act=True):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, k, s, None, g, act)
        self.cv2 = Conv(c_, c_, 5, 1, None, c_, act)

    def forward(self, x):
        y = self.cv1(x)
        return torch.cat((y, self.cv2(y)), 1)


@register(build=out_channels())
class GhostBottleneck(nn.Module):
    """Ghost pointwise -> (depthwise k x k when s == 2) -> linear Ghost pointwise, plus a shortcut that is the
    identity at stride 1 and a depthwise + pointwise projection at stride 2."""

    def __init__(self, c1, c2, k=3, s=1):
        super().__init__()
        c_ = c2 // 2
        down = s == 2
        self.conv = nn.Sequential(GhostConv(c1, c_, 1, 1),
                                  DWConv(c_, c_, k, s, act=False) if down else nn.Identity(),
                                  GhostConv(c_, c2, 1, 1, act=False))
        self.shortcut = (nn.Sequential(DWConv(c1, c1, k, s, act=False), Conv(c1, c2, 1, 1, act=False))
                         if down else nn.Identity())

    def forward(self, x):
        return self.conv(x) + self.shortcut(x)


@register(build=out_channels(repeats=True))
class C3Ghost(C3):
    """C3 whose n Bottlenecks are GhostBottlenecks (`shortcut`, `g` are accepted and unused, as in v6.1)."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__(c1, c2, n, shortcut, g, e)  # v6.1's draw order: the Bottlenecks are built, then replaced
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(GhostBottleneck(c_, c_) for _ in range(n)))
