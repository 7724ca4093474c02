"""CrossConv and the C3 variants built from it (C3x, YOLOv5 v7.0) or from SPP (C3SPP, v6.1).

Yaml rules follow the official parse_model, so official yamls mean the same here:
  CrossConv [c2, k, s, g, e, shortcut]  width-scaled c2; n > 1 stacks n copies
  C3x       [c2, shortcut, ...]         like C3: the yaml n is the number of inner CrossConvs
  C3SPP     [c2, k]                     the yaml n is NOT passed in (v6.1 leaves C3SPP out of the repeat-inside
                                        set): n > 1 stacks n whole C3SPP modules and each has one SPP inside
"""
from __future__ import annotations

import torch.nn as nn

from models.common import C3, SPP, Conv
from models.registry import out_channels, register

__all__ = ["CrossConv", "C3x", "C3SPP"]


@register(build=out_channels())
class CrossConv(nn.Module):
    """A k x k conv factored into 1 x k then k x 1 (stride s along each axis in turn), optional residual."""

    def __init__(self, c1, c2, k=3, s=1, g=1, e=1.0, shortcut=False):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, (1, k), (1, s))
        self.cv2 = Conv(c_, c2, (k, 1), (s, 1), g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


@register(build=out_channels(repeats=True))
class C3x(C3):
    """C3 whose n Bottlenecks are 3x3 CrossConvs (v7.0)."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__(c1, c2, n, shortcut, g, e)  # v7.0's draw order: the Bottlenecks are built, then replaced
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(CrossConv(c_, c_, 3, 1, g, 1.0, shortcut) for _ in range(n)))


@register(build=out_channels())
class C3SPP(C3):
    """C3 with an SPP(k) in place of its Bottlenecks; `n` is accepted for v6.1's signature and only builds the
    Bottlenecks that are then replaced."""

    def __init__(self, c1, c2, k=(5, 9, 13), n=1, shortcut=True, g=1, e=0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = SPP(c_, c_, k)
