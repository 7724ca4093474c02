"""Coordinate Attention (Hou et al., CVPR 2021), official `CoordAtt(inp, oup, reduction=32)` (houqb/CoordAttention).

Keys `conv1`, `bn1`, `conv_h`, `conv_w` as the official code. Fix: the official directional pools are
AdaptiveAvgPool2d((None, 1)) / ((1, None)), which break dynamic-shape ONNX export; here they are means
over W and over H (same values). oup must equal inp, since the gates multiply the input.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import Reference, register, same_channels

__all__ = ["CoordAtt"]


class h_sigmoid(nn.Module):  # noqa: N801
    def __init__(self, inplace=True):
        super().__init__()
        self.relu = nn.ReLU6(inplace=inplace)

    def forward(self, x):
        return self.relu(x + 3) / 6


class h_swish(nn.Module):  # noqa: N801
    def __init__(self, inplace=True):
        super().__init__()
        self.sigmoid = h_sigmoid(inplace=inplace)

    def forward(self, x):
        return x * self.sigmoid(x)


def _flops(m: "CoordAtt", shape) -> int:
    b, c, h, w = shape
    mip, oup = m.conv1.out_channels, m.conv_h.out_channels
    return b * (2 * c * mip * (h + w) + 2 * mip * oup * (h + w))


@register(build=same_channels(channel_params=2), attention=True, flops=_flops,
          reference=Reference("Hou et al., Coordinate Attention for Efficient Mobile Network Design, CVPR 2021",
                              "houqb/CoordAttention coordatt.py",
                              "directional pools are means over W and H (same values, dynamic-shape ONNX)"))
class CoordAtt(nn.Module):
    def __init__(self, inp, oup, reduction=32):
        super().__init__()
        if inp != oup:
            raise ValueError(f"CoordAtt: oup ({oup}) must equal inp ({inp}) because the gates multiply the input")
        mip = max(8, inp // reduction)
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = h_swish()
        self.conv_h = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.conv_w = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        h = x.shape[2]
        x_h = x.mean(3, keepdim=True)  # (B, C, H, 1)
        x_w = x.mean(2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        a_h = self.conv_h(y[:, :, :h]).sigmoid()
        a_w = self.conv_w(y[:, :, h:].transpose(2, 3)).sigmoid()
        return x * a_w * a_h
