"""ACmix: self-attention and convolution sharing one 1x1 projection (Pan et al., CVPR 2022).

Keys, shapes and init follow the official `ResNet/test_bottleneck.py` (see the shared spec attention.md
section 4), so official state_dicts load with strict=True. Differences from the official forward, each
a fix of an official failure (outputs are equal, to float rounding, wherever the official code runs):

* any H, W >= 1: borders are reflected as ReflectionPad2d does; when the padding is not smaller than
  the side (maps <= 3 for kernel_att 7) the reflection repeats (numpy 'reflect'), and a side of 1
  repeats its only pixel;
* stride 2 on odd sizes gives ceil(H/2) x ceil(W/2) in both branches;
* kernel_conv != 3 (dep_conv padding kernel_conv // 2) and dilation > 1 (the window is dilated);
* `.half()` / `.bfloat16()` / other devices: the position grid is built in x's dtype and device;
* the attention never materialises the unfolded k/v/pe (see models/attention/_local_attention.py):
  the pe term q.(pe_q - pe_n) becomes q.(k - pe)_n because q.pe_q is the same for every neighbour n
  and cancels in the softmax; the three 1x1 projections run as one conv.

Export: under torch.jit.trace and the TorchScript-based ONNX exporter the attention branch takes
`_attention_traceable` (the unfold formulation with traced sizes; equal to the fast path to float
rounding, 1e-5 tested), so static and dynamic ONNX and TorchScript graphs are right at every input
size, also maps not larger than the padding (the reflection indices are gathered, not F.pad). Eager
training and inference keep the fast path. Opset 11 and up (12 and 17 checked); no float64
constants, no grid_sample.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention._local_attention import local_attention, local_attention_traceable
from models.registry import Reference, register, same_channels

__all__ = ["ACmix"]


def position_grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 2, h, w): channel 0 = x from -1 to 1 along W, channel 1 = y along H, in like's dtype/device.

    Built from arange arithmetic in float32 (no float64 constant for ONNX), then cast; it matches the
    official linspace to a few ULP.
    """
    def axis(n):  # no Python branch on n (a traced size when exporting); n = 1 gives -1 whatever the step
        i = torch.arange(n, device=like.device, dtype=torch.float32)
        return i * (2.0 / (torch.ones_like(i).sum() - 1.0).clamp(min=1.0)) - 1.0

    xs = axis(w).view(1, w).expand(h, w)
    ys = axis(h).view(h, 1).expand(h, w)
    return torch.stack((xs, ys), 0).unsqueeze(0).to(like.dtype)


def acmix_flops(m: "ACmix", shape) -> int:
    """Analytic FLOPs (2 per multiply-add) of one forward, spec section 4 formulas."""
    b, c_in, h, w = shape
    ho, wo = math.ceil(h / m.stride), math.ceil(w / m.stride)
    c, kc, ka = m.out_planes, m.kernel_conv, m.kernel_att
    macs = (3 * b * c_in * c * h * w  # conv1..3
            + b * kc * kc * 3 * m.head * m.head_dim * h * w  # fc
            + 2 * m.head_dim * h * w  # conv_p on the (1, 2, h, w) grid
            + b * c * ho * wo * kc ** 4  # dep_conv
            + 2 * b * c * ka * ka * ho * wo)  # attention logits and weighted sum
    return 2 * macs


def _yaml_args(ctx, args, kwargs):
    """Check head divides the channels (default head 4 divides every YOLOv5 width)."""
    head = kwargs.get("head", args[3] if len(args) > 3 else 4)
    if not isinstance(head, int) or head < 1 or ctx.c1 % head:
        raise ctx.error(f"ACmix head={head!r} must be a positive integer dividing the {ctx.c1} input channels")


@register(build=same_channels(channel_params=2, adapt=_yaml_args), attention=True, flops=acmix_flops,
          reference=Reference("Pan et al., On the Integration of Self-Attention and Convolution, CVPR 2022",
                              "LeapLabTHU/ACmix ResNet/test_bottleneck.py",
                              "fixes where the official code fails (any size, odd sizes at stride 2, kernel_conv "
                              "!= 3, dilation, fp16/bf16); equal to it wherever it runs"))
class ACmix(nn.Module):
    """rate1 * (k_att x k_att local self-attention) + rate2 * (shift convolution), sharing q, k, v.

    Args follow the official constructor. out_planes must be divisible by head; kernel_att and
    kernel_conv must be odd. Output is (B, out_planes, ceil(H/stride), ceil(W/stride)).
    """

    def __init__(self, in_planes, out_planes, kernel_att=7, head=4, kernel_conv=3, stride=1, dilation=1):
        super().__init__()
        if out_planes % head:
            raise ValueError(f"ACmix: out_planes={out_planes} is not divisible by head={head}")
        if kernel_att % 2 == 0 or kernel_conv % 2 == 0:
            raise ValueError(f"ACmix: kernel_att={kernel_att} and kernel_conv={kernel_conv} must be odd")
        if stride < 1 or dilation < 1:
            raise ValueError(f"ACmix: stride={stride} and dilation={dilation} must be >= 1")
        self.in_planes, self.out_planes, self.head = in_planes, out_planes, head
        self.kernel_att, self.kernel_conv, self.stride, self.dilation = kernel_att, kernel_conv, stride, dilation
        self.head_dim = out_planes // head
        self.rate1 = nn.Parameter(torch.empty(1))
        self.rate2 = nn.Parameter(torch.empty(1))
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv3 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv_p = nn.Conv2d(2, self.head_dim, 1)
        self.fc = nn.Conv2d(3 * head, kernel_conv ** 2, 1, bias=False)
        # The official conv is built with a bias that reset_parameters then sets to None: no bias key.
        self.dep_conv = nn.Conv2d(kernel_conv ** 2 * self.head_dim, out_planes, kernel_conv, stride=stride,
                                  padding=kernel_conv // 2, groups=self.head_dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        """rate1 = rate2 = 0.5; dep_conv starts as k_c^2 one-hot shift kernels (the official init)."""
        nn.init.constant_(self.rate1, 0.5)
        nn.init.constant_(self.rate2, 0.5)
        kc = self.kernel_conv
        shift = torch.zeros(kc * kc, kc, kc)
        for i in range(kc * kc):
            shift[i, i // kc, i % kc] = 1.0
        with torch.no_grad():
            self.dep_conv.weight.copy_(shift.expand_as(self.dep_conv.weight))

    def forward(self, x):
        b, _, h, w = x.shape
        weight = torch.cat((self.conv1.weight, self.conv2.weight, self.conv3.weight))
        bias = torch.cat((self.conv1.bias, self.conv2.bias, self.conv3.bias))
        qkv = F.conv2d(x, weight, bias)  # channels [q | k | v], each head-major
        out_att = self._attention(qkv, b, h, w)
        out_conv = self._convolution(qkv, b, h, w)
        return self.rate1 * out_att + self.rate2 * out_conv

    def _attention(self, qkv, b, h, w):
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self._attention_traceable(qkv, b, h, w)
        head, d, s = self.head, self.head_dim, self.stride
        # (3, H, W, B*head, d): per position the (batch, head) rows contiguous, as local_attention wants
        q, k, v = qkv.reshape(b, 3, head, d, h, w).permute(1, 4, 5, 0, 2, 3).reshape(3, h, w, b * head, d).unbind(0)
        pe = self.conv_p(position_grid(h, w, qkv))  # (1, d, H, W), batch independent
        k = k - pe[0].permute(1, 2, 0).unsqueeze(2)  # q.(k_n + pe_q - pe_n) = q.(k - pe)_n + const(n)
        q = q[::s, ::s] * d ** -0.5
        out = local_attention(q, k, v, self.kernel_att, s, self.dilation)  # (Ho, Wo, B*head, d)
        ho, wo = out.shape[:2]
        return out.view(ho, wo, b, head, d).permute(2, 3, 4, 0, 1).reshape(b, self.out_planes, ho, wo)

    def _attention_traceable(self, qkv, b, h, w):
        """`_attention` for tracing/export: same math in NCHW with traced sizes (see local_attention_traceable)."""
        head, d, s = self.head, self.head_dim, self.stride
        q, k, v = qkv.reshape(b, 3, head * d, h, w).unbind(1)  # channels head-major, as in _attention
        k = (k.reshape(b, head, d, h, w) - self.conv_p(position_grid(h, w, qkv)).unsqueeze(1)).reshape(b * head, d, h, w)
        q = q[..., ::s, ::s] * d ** -0.5
        ho, wo = q.shape[-2:]
        out = local_attention_traceable(q.reshape(b * head, d, ho, wo), k, v.reshape(b * head, d, h, w),
                                        self.kernel_att, s, self.dilation)
        return out.reshape(b, self.out_planes, ho, wo)

    def _convolution(self, qkv, b, h, w):
        kc2 = self.kernel_conv ** 2
        f_all = self.fc(qkv.reshape(b, 3 * self.head, self.head_dim, h * w))  # (B, kc^2, d, HW)
        f_conv = f_all.permute(0, 2, 1, 3).reshape(b, self.head_dim * kc2, h, w)
        return self.dep_conv(f_conv)
