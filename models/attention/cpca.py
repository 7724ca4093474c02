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

from models.registry import same_channels, register

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


def _adapt(ctx, args, kwargs):
    r = args[2] if len(args) > 2 else kwargs.get("channelAttention_reduce", 4)
    if ctx.c1 // r < 1:
        raise ctx.error(f"CPCA channelAttention_reduce={r} leaves no hidden units for {ctx.c1} channels")


def _flops(m: "RepBlock", shape) -> int:
    b, c, h, w = shape
    hidden = m.ca.fc1.out_channels
    taps = 25 + 2 * sum(_STRIPS)  # depthwise 5x5 and the three strip pairs
    return b * (3 * 2 * c * c * h * w + 2 * taps * c * h * w + 2 * 2 * 2 * c * hidden)


@register("CPCA", build=same_channels(channel_params=2, adapt=_adapt), attention=True, flops=_flops, min_size=1,
          doc="CPCA (RepBlock): channel prior (avg+max MLP) then multi-scale depthwise strip-conv spatial map")
@register(build=same_channels(channel_params=2, adapt=_adapt), attention=True, flops=_flops, min_size=1,
          doc="RepBlock: official name of the CPCA block")
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
