"""Official-style Triplet Attention (WACV 2021), written from the spec attention.md, section 3.

A plain reference for equality tests: the `MODELS/` variant's structure and key names
(ChannelGateH / ChannelGateW / SpatialGate, each `.spatial.{conv,bn}`), BN eps 1e-5 / momentum 0.01,
in-place sigmoid, and the output written as 1/3 * (hw + cw + hc) in that order.
"""
import torch
import torch.nn as nn


class RefBasicConv(nn.Module):
    """7x7 conv (2 -> 1, no bias) then BatchNorm2d(1) with the official eps/momentum."""

    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x):
        return self.bn(self.conv(x))


class RefGate(nn.Module):
    """Z-pool over dim 1 (max then mean), conv+BN, sigmoid, scale the input."""

    def __init__(self):
        super().__init__()
        self.spatial = RefBasicConv()

    def forward(self, x):
        pooled = torch.cat((x.max(1, keepdim=True)[0], x.mean(1, keepdim=True)), dim=1)
        scale = self.spatial(pooled).sigmoid_()
        return x * scale


class RefTripletAttention(nn.Module):
    def __init__(self, gate_channels=None, reduction_ratio=16, pool_types=("avg", "max"), no_spatial=False):
        super().__init__()
        self.ChannelGateH = RefGate()
        self.ChannelGateW = RefGate()
        self.no_spatial = no_spatial
        if not no_spatial:
            self.SpatialGate = RefGate()

    def forward(self, x):
        x_perm1 = x.permute(0, 2, 1, 3).contiguous()
        x_out1 = self.ChannelGateH(x_perm1).permute(0, 2, 1, 3).contiguous()
        x_perm2 = x.permute(0, 3, 2, 1).contiguous()
        x_out2 = self.ChannelGateW(x_perm2).permute(0, 3, 2, 1).contiguous()
        if not self.no_spatial:
            x_out = self.SpatialGate(x)
            return 1 / 3 * (x_out + x_out1 + x_out2)
        return 1 / 2 * (x_out1 + x_out2)
