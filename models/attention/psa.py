"""Polarized Self-Attention (Liu et al., 2021), after DeLightCMU/PSA `semantic-segmentation/network/PSA.py`.

`PSA_p(inplanes, planes, kernel_size=1, stride=1)` (parallel: channel-gated x + spatially gated x) and
`PSA_s(...)` (sequential). Keys as the official code. Both need planes == inplanes and stride 1, since
the gates multiply the input.

Fix (PSA_p, keyword `gate`): the official parallel block softmaxes the HW spatial map and then applies a
sigmoid, so its spatial gate is stuck in (0.5, 0.73) and near 0.5 for any real map (softmax values are
about 1/HW). The default `gate='paper'` follows the paper's equation instead: softmax over the C/2
channels of the pooled query, matmul with the key map, then the sigmoid. `gate='official'` keeps the
official numerics (for loading official weights and comparing). PSA_s is kept as the official code.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import Reference, register, same_channels

__all__ = ["PSA_p", "PSA_s"]

_PAPER = "Liu et al., Polarized Self-Attention: Towards High-quality Pixel-wise Regression, 2021"
_CODE = "DeLightCMU/PSA semantic-segmentation/network/PSA.py"


def _softmax32(v: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(v.float(), dim=dim).to(v.dtype)


class _PolarizedBase(nn.Module):
    """The official layers shared by PSA_p and PSA_s; `conv_up` is built by the subclass."""

    def __init__(self, inplanes, planes, kernel_size=1, stride=1):
        super().__init__()
        if planes != inplanes or stride != 1:
            raise ValueError(f"{type(self).__name__}: needs planes == inplanes and stride 1 to gate its input "
                             f"(got inplanes={inplanes}, planes={planes}, stride={stride})")
        self.inplanes, self.planes, self.inter_planes = inplanes, planes, planes // 2
        self.kernel_size, self.stride, self.padding = kernel_size, stride, (kernel_size - 1) // 2
        ip = self.inter_planes
        self.conv_q_right = nn.Conv2d(inplanes, 1, kernel_size=1, stride=stride, padding=0, bias=False)
        self.conv_v_right = nn.Conv2d(inplanes, ip, kernel_size=1, stride=stride, padding=0, bias=False)
        self.conv_up = self._make_conv_up()
        self.softmax_right = nn.Softmax(dim=2)
        self.sigmoid = nn.Sigmoid()
        self.conv_q_left = nn.Conv2d(inplanes, ip, kernel_size=1, stride=stride, padding=0, bias=False)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)  # parity; forward uses a mean
        self.conv_v_left = nn.Conv2d(inplanes, ip, kernel_size=1, stride=stride, padding=0, bias=False)
        self.softmax_left = nn.Softmax(dim=2)
        for conv in (self.conv_q_right, self.conv_v_right, self.conv_q_left, self.conv_v_left):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")  # official init

    def spatial_pool(self, x):
        """Channel-only branch: softmax-pool the value map with a 1-channel query, up-project, sigmoid."""
        v = self.conv_v_right(x).flatten(2)  # (N, IC, HW)
        q = _softmax32(self.conv_q_right(x).flatten(2), dim=2)  # (N, 1, HW)
        context = torch.matmul(v, q.transpose(1, 2)).unsqueeze(-1)  # (N, IC, 1, 1)
        return x * self.sigmoid(self.conv_up(context))

    def _spatial_gate_logits(self, x):
        raise NotImplementedError

    def channel_pool(self, x):
        """Spatial-only branch: global query times the key map gives an HW map, then a sigmoid gate."""
        n, _, h, w = x.shape
        return x * self.sigmoid(self._spatial_gate_logits(x).reshape(n, 1, h, w))


def _flops(m, shape) -> int:
    b, c, h, w = shape
    ip, hw = m.inter_planes, h * w
    convs = 2 * hw * c * (1 + 3 * ip)  # q_right, v_right, q_left, v_left
    matmuls = 2 * 2 * ip * hw  # (IC x HW)@(HW x 1) and (1 x IC)@(IC x HW)
    up = sum(2 * mod.in_channels * mod.out_channels for mod in m.conv_up.modules() if isinstance(mod, nn.Conv2d))
    return b * (convs + matmuls + up)


@register(build=same_channels(channel_params=2), attention=True, flops=_flops,
          reference=Reference(_PAPER, _CODE, "default gate='paper' (softmax over channels, the paper's equation); "
                                             "gate='official' keeps the official softmax-then-sigmoid"))
class PSA_p(_PolarizedBase):  # noqa: N801
    def __init__(self, inplanes, planes, kernel_size=1, stride=1, gate="paper"):
        if gate not in ("paper", "official"):
            raise ValueError(f"PSA_p: gate must be 'paper' or 'official', got {gate!r}")
        self.gate = gate
        super().__init__(inplanes, planes, kernel_size, stride)

    def _make_conv_up(self):
        return nn.Conv2d(self.inter_planes, self.planes, kernel_size=1, stride=1, padding=0, bias=False)

    def _spatial_gate_logits(self, x):
        q = self.conv_q_left(x).mean((2, 3)).unsqueeze(1)  # (N, 1, IC)
        k = self.conv_v_left(x).flatten(2)  # (N, IC, HW)
        if self.gate == "paper":
            return torch.matmul(_softmax32(q, dim=2), k)
        return _softmax32(torch.matmul(q, k), dim=2)  # official: softmax over HW before the sigmoid

    def forward(self, x):
        return self.spatial_pool(x) + self.channel_pool(x)


@register(build=same_channels(channel_params=2), attention=True, flops=_flops, reference=Reference(_PAPER, _CODE))
class PSA_s(_PolarizedBase):  # noqa: N801
    ratio = 4

    def _make_conv_up(self):
        ip, r = self.inter_planes, self.ratio
        if ip // r < 1:
            raise ValueError(f"PSA_s: planes {self.planes} too small for the 1/{2 * r} bottleneck")
        return nn.Sequential(nn.Conv2d(ip, ip // r, kernel_size=1), nn.LayerNorm([ip // r, 1, 1]),
                             nn.ReLU(inplace=True), nn.Conv2d(ip // r, self.planes, kernel_size=1))

    def _spatial_gate_logits(self, x):
        q = self.conv_q_left(x).mean((2, 3)).unsqueeze(1)  # (N, 1, IC)
        k = _softmax32(self.conv_v_left(x).flatten(2), dim=2)  # official: softmax of the keys over HW
        return torch.matmul(q, k)

    def forward(self, x):
        return self.channel_pool(self.spatial_pool(x))
