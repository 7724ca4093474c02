"""CBAM (Woo et al., ECCV 2018), after Jongchan/attention-module `MODELS/cbam.py`.

`CBAM(gate_channels, reduction_ratio=16, pool_types=['avg', 'max'], no_spatial=False)`; state_dict keys
`ChannelGate.mlp.1/.3` (Linear) and `SpatialGate.spatial.conv/bn` as the official code.
Fix: the official pools use a kernel equal to the runtime H, W, which freezes the size into a
dynamic-shape ONNX graph; here every pool is a reduction over (H, W) (same values).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import Reference, needs_units, register, same_channels

__all__ = ["CBAM"]

_POOLS = {
    "avg": lambda x: x.mean((2, 3)),
    "max": lambda x: x.amax((2, 3)),
    "lp": lambda x: x.pow(2).sum((2, 3)).sqrt(),  # lp_pool2d with p=2 over the whole map
    "lse": lambda x: torch.logsumexp(x.flatten(2), dim=2),
}


class BasicConv(nn.Module):
    """Conv (no bias) + BN (official momentum 0.01) + optional ReLU."""

    def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 relu=True, bn=True, bias=False):
        super().__init__()
        self.out_channels = out_planes
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, dilation, groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, affine=True) if bn else None
        self.relu = nn.ReLU() if relu else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.relu(x) if self.relu is not None else x


class ChannelGate(nn.Module):
    """Shared MLP on each pooled vector; the raw outputs are summed, then one sigmoid."""

    def __init__(self, gate_channels, reduction_ratio=16, pool_types=("avg", "max")):
        super().__init__()
        hidden = gate_channels // reduction_ratio
        if hidden < 1:
            raise ValueError(f"CBAM: reduction_ratio {reduction_ratio} leaves no hidden units for {gate_channels} channels")
        unknown = [p for p in pool_types if p not in _POOLS]
        if unknown or not pool_types:
            raise ValueError(f"CBAM: pool_types must be a non-empty subset of {sorted(_POOLS)}, got {list(pool_types)}")
        self.gate_channels = gate_channels
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(gate_channels, hidden), nn.ReLU(),
                                 nn.Linear(hidden, gate_channels))
        self.pool_types = list(pool_types)

    def forward(self, x):
        att = sum(self.mlp(_POOLS[p](x)) for p in self.pool_types)
        return x * torch.sigmoid(att)[:, :, None, None]


class ChannelPool(nn.Module):
    def forward(self, x):
        return torch.cat((x.amax(1, keepdim=True), x.mean(1, keepdim=True)), dim=1)


class SpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.compress = ChannelPool()
        self.spatial = BasicConv(2, 1, 7, stride=1, padding=3, relu=False)

    def forward(self, x):
        return x * torch.sigmoid(self.spatial(self.compress(x)))


def _flops(m: "CBAM", shape) -> int:
    b, c, h, w = shape
    hidden = m.ChannelGate.mlp[1].out_features
    total = len(m.ChannelGate.pool_types) * 2 * 2 * c * hidden  # shared MLP per pooled vector
    if not m.no_spatial:
        total += 2 * 2 * 49 * h * w  # 7x7 conv, 2 -> 1 channels
    return b * total


@register(build=same_channels(channel_params=1, adapt=needs_units("CBAM", "reduction_ratio", 1, 16)),
          attention=True, flops=_flops,
          reference=Reference("Woo et al., CBAM: Convolutional Block Attention Module, ECCV 2018",
                              "Jongchan/attention-module MODELS/cbam.py",
                              "pools are reductions over H, W, not runtime-sized kernels (same values, dynamic ONNX)"))
class CBAM(nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16, pool_types=("avg", "max"), no_spatial=False):
        super().__init__()
        self.ChannelGate = ChannelGate(gate_channels, reduction_ratio, pool_types)
        self.no_spatial = no_spatial
        if not no_spatial:
            self.SpatialGate = SpatialGate()

    def forward(self, x):
        x = self.ChannelGate(x)
        return x if self.no_spatial else self.SpatialGate(x)
