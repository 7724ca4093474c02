"""MSCA: multi-scale convolutional attention (SegNeXt, NeurIPS 2022), after Visual-Attention-Network/SegNeXt
`mmseg/models/backbones/mscan.py`.

`AttentionModule(dim)` is the MSCA proper (registered as 'MSCA'): depthwise 5x5, then three depthwise
strip pairs (7, 11, 21) summed with it, a 1x1 mix, multiplied into the input.
`SpatialAttention(d_model)` wraps it (1x1 + GELU, MSCA, 1x1, plus the residual), registered as
'MSCASpatialAttention'. mmcv's BaseModule is replaced by nn.Module (it adds no state). Keys as official.
"""
from __future__ import annotations

import torch.nn as nn

from models.registry import Reference, register, same_channels

__all__ = ["AttentionModule", "SpatialAttention"]

_STRIPS = (7, 11, 21)
_TAPS = 25 + 2 * sum(_STRIPS)


def _msca_flops(c, h, w) -> int:
    return 2 * _TAPS * c * h * w + 2 * c * c * h * w


def _flops_module(m, shape) -> int:
    b, c, h, w = shape
    return b * _msca_flops(c, h, w)


def _flops_spatial(m, shape) -> int:
    b, c, h, w = shape
    return b * (_msca_flops(c, h, w) + 2 * 2 * c * c * h * w)


_REFERENCE = Reference("Guo et al., SegNeXt: Rethinking Convolutional Attention Design, NeurIPS 2022",
                       "Visual-Attention-Network/SegNeXt mmseg/models/backbones/mscan.py",
                       "mmcv BaseModule replaced by nn.Module (no state, same numerics)")


@register("MSCA", build=same_channels(channel_params=1), attention=True, flops=_flops_module, reference=_REFERENCE)
class AttentionModule(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        for i, k in enumerate(_STRIPS):
            setattr(self, f"conv{i}_1", nn.Conv2d(dim, dim, (1, k), padding=(0, k // 2), groups=dim))
            setattr(self, f"conv{i}_2", nn.Conv2d(dim, dim, (k, 1), padding=(k // 2, 0), groups=dim))
        self.conv3 = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        attn = self.conv0(x)
        total = attn
        for i in range(len(_STRIPS)):
            total = total + getattr(self, f"conv{i}_2")(getattr(self, f"conv{i}_1")(attn))
        return self.conv3(total) * x


@register("MSCASpatialAttention", build=same_channels(channel_params=1), attention=True, flops=_flops_spatial,
          reference=_REFERENCE)
class SpatialAttention(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.d_model = d_model
        self.proj_1 = nn.Conv2d(d_model, d_model, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = AttentionModule(d_model)
        self.proj_2 = nn.Conv2d(d_model, d_model, 1)

    def forward(self, x):
        return self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x)))) + x
