"""SimAM: parameter-free energy attention (Yang et al., ICML 2021), official `simam_module(channels=None, e_lambda=1e-4)`.

Fix: the official variance divides by H*W-1, which is 0 on a 1x1 map (NaN output). Here the divisor is
clamped to at least 1; on a 1x1 map x - mean is 0, so the gate is sigmoid(0.5) for every channel.
The energy is computed in float32 so fp16 sums of squares cannot overflow.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import Reference, register, same_channels

__all__ = ["simam_module"]


def _flops(m, shape) -> int:
    return 0  # elementwise only


_REFERENCE = Reference("Yang et al., SimAM: A Simple, Parameter-Free Attention Module, ICML 2021",
                       "ZjjConan/SimAM networks/attentions/simam_module.py",
                       "variance divisor H*W-1 clamped to >= 1 (official: NaN on 1x1 maps); energy in fp32")


@register("SimAM", build=same_channels(channel_params=1), attention=True, flops=_flops, reference=_REFERENCE)
@register(build=same_channels(channel_params=1), attention=True, flops=_flops, reference=_REFERENCE)
class simam_module(nn.Module):  # noqa: N801 (official class name)
    def __init__(self, channels=None, e_lambda=1e-4):
        super().__init__()
        self.activaton = nn.Sigmoid()  # sic: the official attribute name
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        d = (xf - xf.mean((2, 3), keepdim=True)).pow(2)
        # H*W - 1 as a tensor counted from the map, so a traced/exported graph keeps it symbolic in H, W
        n = torch.ones_like(d[:1, :1]).sum().sub(1).clamp(min=1)
        energy = d / (4 * (d.sum((2, 3), keepdim=True) / n + self.e_lambda)) + 0.5
        return x * self.activaton(energy).to(x.dtype)
