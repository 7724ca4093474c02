"""Squeeze-and-Excitation (Hu et al., CVPR 2018).

The official SENet code is Caffe only, so the state_dict follows torchvision's `SqueezeExcitation`
(`fc1`, `fc2`: 1x1 Conv2d with bias). timm's `SEModule` uses the same keys and shapes when its
`rd_channels` equals ours, so weights from either port load with strict=True.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import same_channels, register

__all__ = ["SE"]


def _adapt(ctx, args, kwargs):
    reduction = args[1] if len(args) > 1 else kwargs.get("reduction", 16)
    if not kwargs.get("squeeze_channels") and ctx.c1 // reduction < 1:
        raise ctx.error(f"SE reduction={reduction} leaves no squeeze channels for {ctx.c1} input channels")


def _flops(m: "SE", shape) -> int:
    b = shape[0]
    return 2 * b * 2 * m.fc1.in_channels * m.fc1.out_channels  # two FCs on the pooled vector


@register(build=same_channels(channel_params=1, adapt=_adapt), attention=True, flops=_flops, min_size=1,
          doc="SE: global average pool, FC C->C/r, ReLU, FC C/r->C, sigmoid channel gate (r=16)")
class SE(nn.Module):
    """SE(channels, reduction=16, squeeze_channels=None); squeeze = channels // reduction as in the paper."""

    def __init__(self, channels, reduction=16, squeeze_channels=None):
        super().__init__()
        squeeze = squeeze_channels or channels // reduction
        if squeeze < 1:
            raise ValueError(f"SE: reduction {reduction} leaves no squeeze channels for {channels} channels")
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.activation = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # a mean, not a pool with a runtime kernel: exports with dynamic H/W
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(s))))
