"""EfficientViT cascaded group attention (Liu et al., CVPR 2023; microsoft/Cream EfficientViT).

Class names, constructor arguments and state_dict keys follow the official
`classification/model/efficientvit.py`, so official weights load with strict=True, and by default give
the official module's numbers (tests/test_official_vectors.py: vectors made by running the official code).
Fixes (the shared spec attention.md section 5), each covered by tests/test_efficientvit.py:

* Any resolution. The (heads, r*r) bias table is gathered in forward for the map at hand: the bias
  of a query/key pair is table[|dy|*r + |dx|], and offsets beyond r-1 are **clamped** to r-1 (far
  pairs share the farthest learned bias; chosen over interpolation because it is exact for every
  offset the table holds and needs no resampling of learned values). At H = W = r the persistent
  `attention_bias_idxs` buffer is used, so official numbers are reproduced exactly.
* No `ab` cache: nothing goes stale after load_state_dict, EMA updates, .half() or .to();
  train()/eval() are nn.Module's own and return self.
* LocalWindowAttention: `pad_mask=True` (opt-in) masks window padding (padded keys get -inf logits and
  padded queries are zeroed before the depthwise conv, so valid outputs do not depend on padding in eval).
  The default `pad_mask=False` is the official behaviour: the zero padding of a map that is not a whole
  number of windows takes part in attention (on the official 20x20 vector, padded to 21, masking moves
  the output by 6% of its largest magnitude). In training, BN batch statistics include padded tokens
  either way, as in the official code.
* Maps smaller than the window run as one window of their own size (no padding).
* The cascade constraint (head output width attn_ratio*key_dim must equal dim/num_heads when
  num_heads > 1) is checked in the constructor with a clear error.

* Memory and speed at detection sizes: eager attends a block of query rows at a time with a backward that
  recomputes the probabilities (models/attention/_chunked_attention.py; SDPA where it has a fused kernel),
  so the (heads, HW, HW) bias and attention of the official formulation are never built. Same numbers to
  float rounding (tests/test_chunked_attention.py: 1e-5); `explicit_attention = True` restores the old path.

Softmax runs in fp32 and is cast back, so .half()/.bfloat16() are stable. ONNX: plain ops, opset >= 11
(the export traces the explicit formulation).
Export (torch.jit.trace and the TorchScript-based ONNX exporter): LocalWindowAttention takes one
branch-free path (always padded to whole windows with a validity mask, sizes as traced tensors) and
the bias index is built from the traced sizes, so static and dynamic graphs are right at every size;
eager keeps the branches above, so eager numbers are unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention._chunked_attention import fits_one_block, relative_bias_attention
from models.attention._op_flops import SDPA_CPU
from models.attention._sdpa import tracing
from models.registry import Reference, bind_arguments, register, same_channels

__all__ = ["Conv2d_BN", "CascadedGroupAttention", "LocalWindowAttention"]

DEFAULT_KEY_DIM = 16
DEFAULT_HEADS = 4
DEFAULT_KERNEL = 5


class Conv2d_BN(nn.Sequential):
    """Conv2d without bias (`c`) then BatchNorm2d (`bn`, weight = bn_weight_init, bias 0).

    `resolution` is accepted for signature compatibility and unused, as in the official code.
    """

    def __init__(self, a, b, ks=1, stride=1, pad=0, dilation=1, groups=1, bn_weight_init=1, resolution=-10000):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, dilation, groups, bias=False))
        bn = nn.BatchNorm2d(b)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """A Conv2d with bias equal to this conv followed by the BN in eval mode."""
        c, bn = self.c, self.bn
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        fused = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                          bias=True, device=c.weight.device, dtype=c.weight.dtype)
        fused.weight.copy_(c.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        return fused


def bias_index(h: int, w: int, r: int, device=None) -> torch.Tensor:
    """(h*w, h*w) indices into an r*r offset table: |dy|*r + |dx|, offsets clamped to r-1."""
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    dy = (ys[:, None] - ys[None, :]).abs().clamp(max=r - 1)
    dx = (xs[:, None] - xs[None, :]).abs().clamp(max=r - 1)
    idx = dy[:, None, :, None] * r + dx[None, :, None, :]  # [y_q, x_q, y_k, x_k]
    return idx.reshape(h * w, h * w)


def _head_width(attn_ratio, key_dim) -> int:
    """int(attn_ratio * key_dim) as the official code, tolerant of float error (0.999.. -> 1)."""
    prod = attn_ratio * key_dim
    return round(prod) if abs(prod - round(prod)) < 1e-6 else int(prod)


class CascadedGroupAttention(nn.Module):
    """Cascaded group attention over the whole (B, dim, H, W) map; any H, W >= 1.

    Eager forward attends a block of query rows at a time with a recomputing backward, O(block x HW)
    memory (models/attention/_chunked_attention.py), where the attention is larger than one block.
    `explicit_attention = True` on an instance (and always while tracing for export, and where the whole
    attention is one block, e.g. LocalWindowAttention's 7x7 windows) builds the whole (heads, HW, HW)
    bias and attention instead, as the official module; benchmarks/attention_sdpa.py compares the two.
    """

    explicit_attention = False

    def __init__(self, dim, key_dim, num_heads=8, attn_ratio=4, resolution=14, kernels=(5, 5, 5, 5)):
        super().__init__()
        d = _head_width(attn_ratio, key_dim)
        if dim % num_heads:
            raise ValueError(f"CascadedGroupAttention: dim={dim} is not divisible by num_heads={num_heads}")
        if num_heads > 1 and d != dim // num_heads:
            raise ValueError(f"CascadedGroupAttention: each head outputs attn_ratio*key_dim = {attn_ratio}*{key_dim} = {d} "
                             f"channels, but the cascade adds it to the next head's input of dim/num_heads = "
                             f"{dim // num_heads}; use attn_ratio = dim/(num_heads*key_dim) = {dim / (num_heads * key_dim):g}")
        if len(kernels) < num_heads:
            raise ValueError(f"CascadedGroupAttention: kernels {tuple(kernels)} has fewer entries than num_heads={num_heads}")
        self.dim, self.num_heads, self.key_dim, self.d = dim, num_heads, key_dim, d
        self.attn_ratio, self.resolution = attn_ratio, resolution
        self.scale = key_dim ** -0.5
        self.qkvs = nn.ModuleList(Conv2d_BN(dim // num_heads, 2 * key_dim + d) for _ in range(num_heads))
        self.dws = nn.ModuleList(Conv2d_BN(key_dim, key_dim, k, 1, k // 2, groups=key_dim) for k in kernels[:num_heads])
        self.proj = nn.Sequential(nn.ReLU(), Conv2d_BN(d * num_heads, dim, bn_weight_init=0))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        self.register_buffer("attention_bias_idxs", bias_index(resolution, resolution, resolution))

    def relative_bias(self, h: int, w: int) -> torch.Tensor:
        """(heads, h*w, h*w) bias gathered from the live parameter (never cached).

        When tracing (ONNX, TorchScript) h and w are traced sizes: the index is always built from
        arange arithmetic on them (equal to the buffer at H = W = resolution), never chosen by a
        Python comparison that the graph would freeze.
        """
        if not tracing() and h == w == self.resolution:
            idx = self.attention_bias_idxs
        else:
            idx = bias_index(h, w, self.resolution, self.attention_biases.device)
        return self.attention_biases[:, idx]

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """`valid` (B, 1, H, W), optional: False marks padding (keys masked, queries zeroed)."""
        b, c, h, w = x.shape
        if c != self.dim:
            raise ValueError(f"CascadedGroupAttention(dim={self.dim}) got an input with {c} channels")
        explicit = tracing() or self.explicit_attention or fits_one_block(b, h * w)
        bias = self.relative_bias(h, w) if explicit else None
        key_pad = None if valid is None else ~valid.reshape(b, 1, h * w)
        chunks = x.chunk(self.num_heads, dim=1)
        feat, outs = chunks[0], []
        for i in range(self.num_heads):
            if i:
                feat = feat + chunks[i]  # the cascade: previous head's output refines this head's input
            q, k, v = self.qkvs[i](feat).split([self.key_dim, self.key_dim, self.d], dim=1)
            if valid is not None:
                q = q * valid.to(q.dtype)  # padding then looks like the conv's own zero padding
            q, k, v = self.dws[i](q).flatten(2), k.flatten(2), v.flatten(2)
            if explicit:
                feat = self._explicit_head(q, k, v, bias[i], key_pad)
            else:
                feat = self._chunked_head(q, k, v, i, (h, w), key_pad).transpose(1, 2).contiguous()
            feat = feat.view(b, self.d, h, w)
            outs.append(feat)
        return self.proj(torch.cat(outs, dim=1))

    def _explicit_head(self, q, k, v, bias, key_pad):
        """(B, d, N) from q, k (B, key_dim, N), v (B, d, N): the whole (N, N) attention at once, as the
        official module. Traced for export (plain ops) and kept as the reference of the chunked path."""
        logits = (q.transpose(1, 2) @ k) * self.scale + bias
        if key_pad is not None:
            logits = logits.masked_fill(key_pad, float("-inf"))
        attn = logits.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
        return v @ attn.transpose(1, 2)

    def _chunked_head(self, q, k, v, i, hw, key_pad):
        """(B, N, d): the same attention a block of query rows at a time (models/attention/_chunked_attention.py)."""
        key_bias = None
        if key_pad is not None:
            key_bias = torch.zeros(key_pad.shape, dtype=q.dtype, device=q.device).masked_fill(key_pad, float("-inf"))
        return relative_bias_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       self.attention_biases[i], hw, self.resolution, self.scale, key_bias)


def to_windows(x: torch.Tensor, win: int) -> torch.Tensor:
    """(B, C, nH*win, nW*win) -> (B*nH*nW, C, win, win), windows in row-major order per image."""
    b, c, hp, wp = x.shape
    x = x.view(b, c, hp // win, win, wp // win, win).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, c, win, win)


def from_windows(x: torch.Tensor, b: int, hp: int, wp: int) -> torch.Tensor:
    """Inverse of to_windows."""
    c, win = x.shape[1], x.shape[-1]
    x = x.view(b, hp // win, wp // win, c, win, win).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, hp, wp)


class LocalWindowAttention(nn.Module):
    """CGA inside non-overlapping window_resolution windows (detection/downstream behaviour, no size assert).

    The inner CGA keeps the official table size min(window_resolution, resolution), so classification
    checkpoints load strict; for downstream checkpoints (table = window^2) pass resolution >= window.
    `pad_mask=False` (default) is the official unmasked zero padding; `pad_mask=True` opts in to the mask.
    """

    def __init__(self, dim, key_dim, num_heads=8, attn_ratio=4, resolution=14, window_resolution=7,
                 kernels=(5, 5, 5, 5), pad_mask=False):
        super().__init__()
        self.dim, self.num_heads, self.resolution = dim, num_heads, resolution
        self.window_resolution = window_resolution
        self.pad_mask = pad_mask
        self.attn = CascadedGroupAttention(dim, key_dim, num_heads, attn_ratio=attn_ratio,
                                           resolution=min(window_resolution, resolution), kernels=kernels)

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """The (H, W) the windows cover; a map that fits in one window runs unpadded at its own size."""
        win = self.window_resolution
        if h <= win and w <= win:
            return h, w
        return -(-h // win) * win, -(-w // win) * win

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tracing():
            return self._forward_traced(x)
        b, _, h, w = x.shape
        win = self.window_resolution
        if h <= win and w <= win:
            return self.attn(x)
        hp, wp = self.padded_size(h, w)
        padded = (hp, wp) != (h, w)
        if padded:
            x = F.pad(x, (0, wp - w, 0, hp - h))
        valid = None
        if padded and self.pad_mask:
            valid = torch.zeros(1, 1, hp, wp, dtype=torch.bool, device=x.device)
            valid[..., :h, :w] = True
            valid = to_windows(valid, win).repeat(b, 1, 1, 1)
        y = from_windows(self.attn(to_windows(x, win), valid), b, hp, wp)
        return y[..., :h, :w].contiguous() if padded else y

    def _forward_traced(self, x: torch.Tensor) -> torch.Tensor:
        """The eager forward without Python branches on the input size, for a graph that must be right
        at every size it is run at (the eager branches would be frozen at the traced size).

        Always pads to whole windows and passes a validity mask. A map inside one window then equals
        the eager unpadded run (padded keys masked, padded queries zeroed before the depthwise conv,
        cropped afterwards), and an unpadded map gets an all-true mask. With pad_mask=False the mask
        is all true as soon as the map exceeds one window, which is the eager unmasked padding.
        Equal to eager up to float summation order (tests: 1e-5 relative).
        """
        b, _, h, w = x.shape
        win = self.window_resolution
        hp, wp = (h + win - 1) // win * win, (w + win - 1) // win * win  # traced sizes
        x = F.pad(x, (0, wp - w, 0, hp - h))
        rows = torch.arange(hp, device=x.device)
        cols = torch.arange(wp, device=x.device)
        valid = (rows < h)[:, None] & (cols < w)[None, :]  # (hp, wp)
        if not self.pad_mask:  # eager masks only the one-window case, where it runs unpadded
            valid = valid | ((hp > win) | (wp > win))
        valid = to_windows(valid[None, None].expand(b, 1, hp, wp), win)
        y = from_windows(self.attn(to_windows(x, win), valid), b, hp, wp)
        return y[..., :h, :w]


# ----------------------------------------------------------------------------- FLOPs and yaml rule

def cga_flops(m: CascadedGroupAttention, batch: int, pixels: int, pairs: int) -> int:
    """FLOPs (2 per MAC) of CGA over `pixels` tokens with `pairs` query-key pairs in total."""
    h, kd, d, c = m.num_heads, m.key_dim, m.d, m.dim
    kernels = [dw.c.kernel_size[0] * dw.c.kernel_size[1] for dw in m.dws]
    macs = h * pixels * (c // h) * (2 * kd + d)  # qkv 1x1 convs
    macs += sum(pixels * kd * k for k in kernels)  # depthwise convs on q
    macs += h * pairs * (kd + d)  # q^T k and v attn^T
    macs += pixels * h * d * c  # proj
    return 2 * batch * macs


def _cga_flops(m: CascadedGroupAttention, shape) -> int:
    b, _, h, w = shape
    return cga_flops(m, b, h * w, (h * w) ** 2)


def _lwa_flops(m: LocalWindowAttention, shape) -> int:
    b, _, h, w = shape
    win = m.window_resolution
    if h <= win and w <= win:
        return cga_flops(m.attn, b, h * w, (h * w) ** 2)
    hp, wp = m.padded_size(h, w)
    n_windows = (hp // win) * (wp // win)
    return cga_flops(m.attn, b, hp * wp, n_windows * win ** 4)


def _cga_adapt(cls):
    """Per-scale yaml rule: key_dim 16 and 4 heads by default, attn_ratio = dim/(num_heads*key_dim)."""
    def adapt(ctx, args, kwargs):
        given = bind_arguments(ctx, cls, args, kwargs)
        dim = given.pop("dim")
        key_dim = given.get("key_dim") or DEFAULT_KEY_DIM
        heads = given.get("num_heads") or DEFAULT_HEADS
        if not (isinstance(key_dim, int) and isinstance(heads, int) and key_dim > 0 and heads > 0):
            raise ctx.error(f"{cls.__name__}: key_dim and num_heads must be positive integers, got {key_dim}, {heads}")
        if dim % heads:
            raise ctx.error(f"{cls.__name__}: the input has {dim} channels, not divisible by num_heads={heads}; "
                            f"pick num_heads dividing the channels at every scale (4 or 8 divide all YOLOv5 widths)")
        ratio = dim / (heads * key_dim)
        ratio = int(ratio) if ratio == int(ratio) else ratio
        written = given.get("attn_ratio")
        if written is not None and abs(written - ratio) > 1e-9:
            raise ctx.error(f"{cls.__name__}: attn_ratio={written} gives heads of width {written}*{key_dim}, but the "
                            f"cascade needs dim/num_heads = {dim}/{heads}; leave attn_ratio None to derive {ratio:g}")
        kernels = given.get("kernels") or (DEFAULT_KERNEL,) * max(4, heads)
        if len(kernels) < heads:
            raise ctx.error(f"{cls.__name__}: kernels {list(kernels)} needs at least num_heads={heads} entries")
        given.update(key_dim=key_dim, num_heads=heads, attn_ratio=ratio, kernels=tuple(kernels))
        args[:] = [dim]
        kwargs.clear()
        kwargs.update({k: v for k, v in given.items() if v is not None})
    return adapt


_PAPER = "Liu et al., EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention, CVPR 2023"
_CODE = "microsoft/Cream EfficientViT/classification/model/efficientvit.py"
_ANY_SIZE = "any resolution (bias offsets beyond the table clamped); no stale `ab` cache"

# Registration after the classes exist (the adapt rule reads their signatures).
register(build=same_channels(channel_params=1, adapt=_cga_adapt(CascadedGroupAttention)), attention=True,
         flops=_cga_flops, op_flops=SDPA_CPU,  # SDPA's CPU flash kernel, which torch's counter does not count
         reference=Reference(_PAPER, _CODE, _ANY_SIZE))(CascadedGroupAttention)
register(build=same_channels(channel_params=1, adapt=_cga_adapt(LocalWindowAttention)), attention=True,
         flops=_lwa_flops, op_flops=SDPA_CPU,
         reference=Reference(_PAPER, _CODE, f"{_ANY_SIZE}; no size assert; opt-in pad_mask=True"),
         )(LocalWindowAttention)
