"""Squeeze-and-Excitation (Hu et al., CVPR 2018).

The official SENet code is Caffe only, so the state_dict follows torchvision's `SqueezeExcitation`
(`fc1`, `fc2`: 1x1 Conv2d with bias). timm's `SEModule` uses the same keys and shapes when its
`rd_channels` equals ours, so weights from either port load with strict=True.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import Reference, needs_units, register, same_channels

__all__ = ["SE"]


def _flops(m: "SE", shape) -> int:
    b = shape[0]
    return 2 * b * 2 * m.fc1.in_channels * m.fc1.out_channels  # two FCs on the pooled vector


_adapt = needs_units("SE", "reduction", 1, 16, "squeeze channels", unless=("squeeze_channels", 2))


@register(build=same_channels(channel_params=1, adapt=_adapt), attention=True, flops=_flops,
          reference=Reference("Hu et al., Squeeze-and-Excitation Networks, CVPR 2018",
                              "hujie-frank/SENet is Caffe only; keys of torchvision's SqueezeExcitation",
                              "mean over H, W instead of AdaptiveAvgPool2d (same values, dynamic-shape ONNX)"))
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
