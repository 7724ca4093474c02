"""Memory-light k x k neighbourhood attention (ACmix's attention branch), forward and backward by hand.

The official ACmix materialises the unfolded neighbourhood of k, v and the position encoding
(B*C*k^2*H*W each, plus several same-size temporaries kept for autograd). Here the neighbourhood is
never stored whole: per window row `dy` the k (or v) values of the k window columns are laid out so
that, for every query position, its k neighbours form a (k, head_dim) matrix inside one contiguous
block. The logits and the weighted sum are then `bmm`s over all positions (FlopCounterMode counts them
exactly: 2*positions*k^2*head_dim each), and only q, k, v and the (positions, k^2) attention
weights are saved for backward, which is written out below instead of being recorded by autograd.

Layout: q is (Ho, Wo, N, d), k and v are (H, W, N, d) contiguous, N = batch*heads, d = head_dim.
Borders are reflected (see `reflect_index`), the window may be dilated and strided.

The fast path turns sizes into Python ints (window geometry, loops), so a traced graph of it would
only run at the traced size. `local_attention_traceable` is the same math for torch.jit.trace and
ONNX export: the unfold formulation (reflect-gathered borders, k^2 strided slices, one softmax)
with every size taken from the traced tensors, right at any H, W >= 1 (also pad >= side).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable


def reflect_index(n: int, pad: int, device=None) -> torch.Tensor:
    """Source index of each of the n + 2*pad positions of a reflection-padded axis of length n.

    Equals torch's ReflectionPad2d where that runs (pad < n). For pad >= n the reflection repeats
    (mirror at both ends again and again, numpy's 'reflect' mode), and a length-1 axis repeats its only
    element, so any size works.
    """
    i = torch.arange(-pad, n + pad, device=device)
    # no Python branch on n (a traced size when exporting): a period clamped to 1 maps every index
    # of a length-1 axis to 0
    n = torch.as_tensor(n, device=device)
    period = (2 * (n - 1)).clamp(min=1)
    m = torch.remainder(i, period)
    return torch.where(m < n, m, period - m)


@dataclass(frozen=True)
class WindowGeometry:
    """Where the k x k window of each output position reads the (reflection-padded) input."""
    kernel: int
    stride: int
    dilation: int
    h: int
    w: int

    @property
    def pad(self) -> int:
        return (self.dilation * (self.kernel - 1) + 1) // 2

    @property
    def out_hw(self) -> tuple[int, int]:
        return math.ceil(self.h / self.stride), math.ceil(self.w / self.stride)

    def phase(self, dy: int) -> tuple[int, int]:
        """Window row dy reads padded rows dy*dil + y*s: phase (dy*dil) % s, starting at (dy*dil) // s in it."""
        off = dy * self.dilation
        return off % self.stride, off // self.stride

    def phases(self) -> list[int]:
        return sorted({self.phase(dy)[0] for dy in range(self.kernel)})

    def phase_rows(self, r: int) -> int:
        return len(range(r, self.h + 2 * self.pad, self.stride))

    def gather_index(self, r: int, device) -> tuple[torch.Tensor, int, int]:
        """Flat source index (rows of phase r x all padded columns), its row and column counts."""
        rows = reflect_index(self.h, self.pad, device)[r::self.stride]
        cols = reflect_index(self.w, self.pad, device)
        return (rows[:, None] * self.w + cols[None, :]).reshape(-1), len(rows), len(cols)

    def col_slice(self, dx: int) -> slice:
        start = dx * self.dilation
        return slice(start, start + (self.out_hw[1] - 1) * self.stride + 1, self.stride)


def _windows(t: torch.Tensor, g: WindowGeometry, r: int) -> torch.Tensor:
    """(rows of phase r, Wo, N, k, d): for each padded row and output column, the k window columns."""
    _, _, n, d = t.shape
    index, rows, cols = g.gather_index(r, t.device)
    padded = t.reshape(g.h * g.w, n, d).index_select(0, index).view(rows, cols, n, d)
    span = g.dilation * (g.kernel - 1) + 1
    win = padded.unfold(1, span, g.stride)[..., ::g.dilation]  # (rows, Wo, N, d, k) view
    return win.permute(0, 1, 2, 4, 3).contiguous()  # one copy: k window columns per (row, x, n)


def _fold_add(dwin: torch.Tensor, g: WindowGeometry, r: int, out: torch.Tensor) -> None:
    """Adjoint of `_windows`: add the window gradients back onto out (H, W, N, d)."""
    rows, _, n, _, d = dwin.shape
    index, _, cols = g.gather_index(r, dwin.device)
    padded = dwin.new_zeros(rows, cols, n, d)
    for dx in range(g.kernel):
        padded[:, g.col_slice(dx)] += dwin[:, :, :, dx]
    out.view(g.h * g.w, n, d).index_add_(0, index, padded.view(-1, n, d))


def _row_block(win: dict, g: WindowGeometry, dy: int, positions: int) -> torch.Tensor:
    """(positions, k, d) view of the windows of row dy for every output position (no copy)."""
    r, start = g.phase(dy)
    ho = g.out_hw[0]
    return win[r][start:start + ho].view(positions, g.kernel, -1)


def _logits(qb: torch.Tensor, win: dict, g: WindowGeometry) -> torch.Tensor:
    """(P, k, k) logits q . k_n, one bmm per window row."""
    p = qb.shape[0]
    rows = [torch.bmm(qb, _row_block(win, g, dy, p).transpose(1, 2)) for dy in range(g.kernel)]
    return torch.cat(rows, dim=2).view(p, g.kernel, g.kernel)


def _aggregate(attn: torch.Tensor, win: dict, g: WindowGeometry) -> torch.Tensor:
    """(P, 1, d) = sum_n attn_n v_n, attn (P, k, k)."""
    p = attn.shape[0]
    out = None
    for dy in range(g.kernel):
        a, v = attn[:, dy].unsqueeze(1), _row_block(win, g, dy, p)
        out = torch.bmm(a, v) if out is None else torch.baddbmm(out, a, v)
    return out


def _scatter(weights: torch.Tensor, x: torch.Tensor, g: WindowGeometry, like: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. the windowed tensor of sum_n weights_n (x . win_n): weights (P, k, k), x (P, 1, d)."""
    p = x.shape[0]
    _, _, n, d = like.shape
    wo = g.out_hw[1]
    dwin = {r: like.new_zeros(g.phase_rows(r), wo, n, g.kernel, d) for r in g.phases()}
    for dy in range(g.kernel):
        _row_block(dwin, g, dy, p).addcmul_(weights[:, dy].unsqueeze(2), x)  # outer products, elementwise
    grad = torch.zeros_like(like)
    for r, t in dwin.items():
        _fold_add(t, g, r, grad)
    return grad


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: WindowGeometry):
    """Forward math: (out (Ho, Wo, N, d), attention weights (P, k, k))."""
    ho, wo, n, d = q.shape
    qb = q.reshape(-1, 1, d)
    logits = _logits(qb, {r: _windows(k, g, r) for r in g.phases()}, g)
    # softmax in fp32 (or wider) even for half/bf16 inputs; the weights are stored in the compute dtype
    attn = logits.reshape(qb.shape[0], -1).softmax(-1, dtype=_wide(q.dtype)).to(q.dtype)
    attn = attn.view(-1, g.kernel, g.kernel)
    out = _aggregate(attn, {r: _windows(v, g, r) for r in g.phases()}, g)
    return out.view(ho, wo, n, d), attn


class LocalAttention(torch.autograd.Function):
    """softmax_n(q . k_n) weighted sum of v_n over the k x k window of each output position."""

    @staticmethod
    def forward(ctx, q, k, v, g: WindowGeometry):
        out, attn = _attend(q, k, v, g)
        ctx.save_for_backward(q, k, v, attn)
        ctx.geometry = g
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, attn = ctx.saved_tensors
        g = ctx.geometry
        d = q.shape[-1]
        gb = grad_out.contiguous().view(-1, 1, d).to(q.dtype)
        grad_attn = _logits(gb, {r: _windows(v, g, r) for r in g.phases()}, g)  # dL/da_n = grad . v_n
        grad_v = _scatter(attn, gb, g, v)
        a32, ga32 = attn.to(_wide(q.dtype)), grad_attn.to(_wide(q.dtype))
        grad_logits = a32 * (ga32 - (a32 * ga32).sum((1, 2), keepdim=True))
        grad_logits = grad_logits.to(q.dtype)
        qb = q.reshape(-1, 1, d)
        grad_q = _aggregate(grad_logits, {r: _windows(k, g, r) for r in g.phases()}, g).view(q.shape)
        grad_k = _scatter(grad_logits, qb, g, k)
        return grad_q, grad_k, grad_v, None


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: int, stride: int = 1,
                    dilation: int = 1) -> torch.Tensor:
    """q (Ho, Wo, N, d) with Ho = ceil(H/stride); k, v (H, W, N, d). Returns (Ho, Wo, N, d)."""
    h, w = k.shape[:2]
    g = WindowGeometry(kernel, stride, dilation, h, w)
    if tuple(q.shape[:2]) != g.out_hw:
        raise ValueError(f"local_attention: q is {tuple(q.shape[:2])} but stride {stride} on {h}x{w} gives {g.out_hw}")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if torch.jit.is_tracing():  # ONNX / TorchScript tracing records the plain forward ops
        return _attend(q, k, v, g)[0]
    return LocalAttention.apply(q, k, v, g)


def local_attention_traceable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: int, stride: int = 1,
                              dilation: int = 1) -> torch.Tensor:
    """The `local_attention` math for tracing/export. q (N, d, Ho, Wo), k and v (N, d, H, W); (N, d, Ho, Wo).

    Sizes stay traced tensors: borders come from `reflect_index` gathers (numpy-'reflect' also for
    pad >= side, as the fast path), each of the kernel^2 window cells is a strided slice of the
    padded map, and the softmax runs over the stacked cells in fp32 for 16-bit inputs. Memory is
    that of the official unfold (kernel^2 copies of k and v), which only an export pays.
    """
    h, w = k.shape[-2:]
    pad = (dilation * (kernel - 1) + 1) // 2
    rows, cols = reflect_index(h, pad, k.device), reflect_index(w, pad, k.device)

    def cells(t):  # (N, d, kernel^2, Ho, Wo): the window cells of every output position
        t = t.index_select(2, rows).index_select(3, cols)
        return torch.stack([t[:, :, dy * dilation:dy * dilation + h:stride, dx * dilation:dx * dilation + w:stride]
                            for dy in range(kernel) for dx in range(kernel)], dim=2)

    logits = (q.unsqueeze(2) * cells(k)).sum(1)  # (N, kernel^2, Ho, Wo)
    attn = logits.softmax(1, dtype=_wide(q.dtype)).to(q.dtype)
    return (attn.unsqueeze(1) * cells(v)).sum(2)
