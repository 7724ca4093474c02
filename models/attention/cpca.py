"""CPCA: Channel Prior Convolutional Attention (CPCANet, 2023), official class `RepBlock(in_channels, out_channels,
channelAttention_reduce=4)` in Cuthbert-Huang/CPCANet; also registered under the yaml name 'CPCA'.

1x1 conv + GELU, a channel prior (shared MLP on avg and max pools, each sigmoided, then summed),
a depthwise 5x5 plus 1x7/7x1, 1x11/11x1, 1x21/21x1 strip pairs as the spatial map, and the same
1x1 conv reused three times (as the official code does). Keys as the official code.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import Reference, needs_units, register, same_channels

__all__ = ["RepBlock"]

_STRIPS = (7, 11, 21)


class ChannelAttention(nn.Module):
    def __init__(self, input_channels, internal_neurons):
        super().__init__()
        self.fc1 = nn.Conv2d(input_channels, internal_neurons, kernel_size=1, stride=1, bias=True)
        self.fc2 = nn.Conv2d(internal_neurons, input_channels, kernel_size=1, stride=1, bias=True)
        self.input_channels = input_channels

    def _mlp(self, v):
        return torch.sigmoid(self.fc2(F.relu(self.fc1(v))))

    def forward(self, x):
        return self._mlp(x.mean((2, 3), keepdim=True)) + self._mlp(x.amax((2, 3), keepdim=True))


def _flops(m: "RepBlock", shape) -> int:
    b, c, h, w = shape
    hidden = m.ca.fc1.out_channels
    taps = 25 + 2 * sum(_STRIPS)  # depthwise 5x5 and the three strip pairs
    return b * (3 * 2 * c * c * h * w + 2 * taps * c * h * w + 2 * 2 * 2 * c * hidden)


_RULE = same_channels(channel_params=2, adapt=needs_units("CPCA", "channelAttention_reduce", 2, 4))
_REFERENCE = Reference("Huang et al., Channel prior convolutional attention for medical image segmentation, 2023",
                       "Cuthbert-Huang/CPCANet CPCANet/nnunet/network_architecture/CPCANet.py (class RepBlock)",
                       "nothing in numerics (keys and the thrice-reused 1x1 conv as official)")


@register("CPCA", build=_RULE, attention=True, flops=_flops, reference=_REFERENCE)
@register(build=_RULE, attention=True, flops=_flops, reference=_REFERENCE)
class RepBlock(nn.Module):
    def __init__(self, in_channels, out_channels, channelAttention_reduce=4):  # noqa: N803 (official keyword)
        super().__init__()
        if in_channels != out_channels:
            raise ValueError(f"RepBlock (CPCA): in_channels {in_channels} must equal out_channels {out_channels}")
        c = in_channels
        self.C, self.O = in_channels, out_channels
        self.ca = ChannelAttention(c, c // channelAttention_reduce)
        self.dconv5_5 = nn.Conv2d(c, c, kernel_size=5, padding=2, groups=c)
        for k in _STRIPS:
            setattr(self, f"dconv1_{k}", nn.Conv2d(c, c, kernel_size=(1, k), padding=(0, k // 2), groups=c))
            setattr(self, f"dconv{k}_1", nn.Conv2d(c, c, kernel_size=(k, 1), padding=(k // 2, 0), groups=c))
        self.conv = nn.Conv2d(c, c, kernel_size=(1, 1), padding=0)
        self.act = nn.GELU()

    def forward(self, x):
        x = self.act(self.conv(x))
        x = self.ca(x) * x
        x_init = self.dconv5_5(x)
        spatial = x_init
        for k in _STRIPS:
            spatial = spatial + getattr(self, f"dconv{k}_1")(getattr(self, f"dconv1_{k}")(x_init))
        return self.conv(self.conv(spatial) * x)
