"""MSDA: multi-scale dilated attention (DilateFormer, IEEE TMM 2023), after JIAOJIAYUASD/dilateformer
`models/dilateformer.py`: `MultiDilatelocalAttention(dim, num_heads=8, qkv_bias=False, qk_scale=None,
attn_drop=0., proj_drop=0., kernel_size=3, dilation=[1, 2, 3])`, channels-last (B, H, W, C) input.

Heads are split into len(dilation) groups; each group attends over a k x k neighbourhood sampled with
its own dilation (zero-padded neighbours take part unmasked, as officially), then a Linear projection.
Keys `qkv` (1x1 Conv2d) and `proj` (Linear) as the official code.

Fix: the official forward writes each group's output in place into a view of its own input, so the
caller's tensor is overwritten. Here the group outputs are concatenated into a new tensor; the input is
never written. The neighbourhoods are gathered with pad + shifted slices (same order as nn.Unfold), which
exports to ONNX with dynamic H, W.

`MSDA` (the yaml name) is the same module taking NCHW: it permutes to channels-last, runs the official
forward and permutes back. From a yaml without them: num_heads 8 and the first valid dilation set of
[1, 2, 3] (official), [1, 2, 3, 4], [1, 2], [1] (heads must split evenly over the dilations and C over heads;
for YOLOv5 widths this gives [1, 2, 3, 4]).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention._op_flops import SDPA_CPU
from models.attention._sdpa import tracing
from models.registry import Reference, register, same_channels

__all__ = ["MultiDilatelocalAttention", "MSDA"]

_DILATION_CHOICES = ([1, 2, 3], [1, 2, 3, 4], [1, 2], [1])


def neighbourhoods(x: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """(B, d, H, W) -> (B, d, k*k, H, W): the zero-padded dilated k x k neighbours of every pixel."""
    h, w = x.shape[-2:]
    pad = dilation * (kernel_size - 1) // 2
    xp = F.pad(x, (pad, pad, pad, pad))
    taps = [xp[:, :, i * dilation:i * dilation + h, j * dilation:j * dilation + w]
            for i in range(kernel_size) for j in range(kernel_size)]
    return torch.stack(taps, dim=2)


class DilateAttention(nn.Module):
    """k x k sliding-window attention at one dilation; q, k, v: (B, d, H, W) -> (B, H, W, d).

    By scaled_dot_product_attention (each position one query against its k*k neighbours; CPU's flash kernel
    measured 1.1-1.2x faster than the matmuls at 40x40 and 80x80). `explicit_attention = True` on an instance
    (and always while tracing for export, and in training with attn_drop > 0) runs the official matmuls.
    """

    explicit_attention = False

    def __init__(self, head_dim, qk_scale=None, attn_drop=0, kernel_size=3, dilation=1):
        super().__init__()
        self.head_dim, self.kernel_size, self.dilation = head_dim, kernel_size, dilation
        self.scale = qk_scale or head_dim ** -0.5
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, q, k, v):
        b, d, h, w = q.shape
        heads, kk = d // self.head_dim, self.kernel_size ** 2
        q = q.reshape(b, heads, self.head_dim, 1, h * w).permute(0, 1, 4, 3, 2)  # (B, h, N, 1, hd)
        k = neighbourhoods(k, self.kernel_size, self.dilation).reshape(b, heads, self.head_dim, kk, h * w)
        v = neighbourhoods(v, self.kernel_size, self.dilation).reshape(b, heads, self.head_dim, kk, h * w)
        k, v = k.permute(0, 1, 4, 3, 2), v.permute(0, 1, 4, 3, 2)  # (B, h, N, k*k, hd)
        if self.explicit_attention or tracing() or (self.training and self.attn_drop.p > 0):
            attn = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, h, N, 1, k*k)
            attn = self.attn_drop(torch.softmax(attn.float(), dim=-1).to(q.dtype))
            out = torch.matmul(attn, v)  # (B, h, N, 1, hd)
        else:  # one query per position against its k*k neighbours: SDPA with N as its head axis
            flat = (b * heads, h * w)  # contiguous: SDPA's fused CPU kernel needs unit stride in the last axis
            q, k, v = (t.contiguous().view(*flat, -1, self.head_dim) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return out.reshape(b, heads, h * w, self.head_dim).transpose(1, 2).reshape(b, h, w, d)


def _check(dim, num_heads, kernel_size, dilation):
    nd = len(dilation)
    if nd < 1 or num_heads % nd:
        raise ValueError(f"MultiDilatelocalAttention: num_heads {num_heads} must be a multiple of len(dilation) {nd}")
    if dim % num_heads:
        raise ValueError(f"MultiDilatelocalAttention: dim {dim} must be divisible by num_heads {num_heads}")
    if kernel_size % 2 == 0:
        raise ValueError(f"MultiDilatelocalAttention: kernel_size must be odd, got {kernel_size}")


class MultiDilatelocalAttention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0., proj_drop=0.,
                 kernel_size=3, dilation=(1, 2, 3)):
        super().__init__()
        dilation = list(dilation)
        _check(dim, num_heads, kernel_size, dilation)
        self.dim, self.num_heads, self.dilation, self.kernel_size = dim, num_heads, dilation, kernel_size
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.num_dilation = len(dilation)
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=qkv_bias)
        self.dilate_attention = nn.ModuleList(
            DilateAttention(head_dim, qk_scale, attn_drop, kernel_size, d) for d in dilation)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):  # (B, H, W, C), channels-last as the official block
        b, h, w, c = x.shape
        nd = self.num_dilation
        qkv = self.qkv(x.permute(0, 3, 1, 2)).reshape(b, 3, nd, c // nd, h, w)
        outs = [att(qkv[:, 0, i], qkv[:, 1, i], qkv[:, 2, i]) for i, att in enumerate(self.dilate_attention)]
        y = torch.stack(outs, dim=3).reshape(b, h, w, c)  # a new tensor: the input is never written
        return self.proj_drop(self.proj(y))


def _adapt(ctx, args, kwargs):
    heads_given = len(args) > 1 or "num_heads" in kwargs
    if not heads_given:
        args.append(8)
    heads = args[1] if len(args) > 1 else kwargs["num_heads"]
    if len(args) < 8 and "dilation" not in kwargs:
        valid = [d for d in _DILATION_CHOICES if heads % len(d) == 0]
        if not valid:
            raise ctx.error(f"MSDA num_heads={heads} fits no dilation set of {_DILATION_CHOICES}")
        kwargs["dilation"] = valid[0]
    dilation = args[7] if len(args) > 7 else kwargs["dilation"]
    try:
        _check(ctx.c1, heads, args[6] if len(args) > 6 else kwargs.get("kernel_size", 3), list(dilation))
    except ValueError as e:
        raise ctx.error(f"{e} (input channels {ctx.c1})") from None


def _flops(m: MultiDilatelocalAttention, shape) -> int:
    b, c, h, w = shape  # NCHW, as the yaml block sees it
    kk = m.kernel_size ** 2
    return b * h * w * (2 * 3 * c * c + 2 * 2 * c * kk + 2 * c * c)  # qkv, q.k and attn.v, proj


@register(build=same_channels(channel_params=1, adapt=_adapt), attention=True, flops=_flops, op_flops=SDPA_CPU,
          reference=Reference("Jiao et al., DilateFormer: Multi-Scale Dilated Transformer, IEEE TMM 2023",
                              "JIAOJIAYUASD/dilateformer models/dilateformer.py (MultiDilatelocalAttention)",
                              "never writes into its input (official: in place into a view); NCHW wrapper; a yaml "
                              "without them gets num_heads 8 and the first dilation set the heads split over"))
class MSDA(MultiDilatelocalAttention):
    """MultiDilatelocalAttention on NCHW input (same constructor and state_dict)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
