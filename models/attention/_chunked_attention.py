"""softmax(scale * q k^T + bias) v over a whole feature map, chunked over queries, backward by recomputation.

Global attention over an H x W map attends over N = H*W positions: at 80x80 the (N, N) logits of one
head are 164 MB in fp32, and autograd of the plain formulation keeps several of them (logits, biased
logits, probabilities) plus the gathered (heads, N, N) bias. Here only a block of query rows exists at
a time: its bias rows are gathered from the small learned table, `scaled_dot_product_attention` (or the
same math by hand where SDPA has no fused kernel, see `_attend_block`) gives its output, and the backward
recomputes each block's probabilities instead of storing them (as flash attention does). Memory is
O(block x N) instead of O(N^2), and the elementwise passes over a block stay in cache.

The bias is EfficientViT's relative-position table T (r, r) indexed by clamped offsets:
bias[(yq, xq), (yk, xk)] = T[min(|yq - yk|, r-1), min(|xq - xk|, r-1)]. It is gathered in two steps that
keep the index tensors small: A = T[:, dx] (r, W, W) once per call, then for every (query pixel, key row)
one contiguous row of A (W values) with index_select. The gradient goes back the same way (index_add_).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from models.attention._sdpa import fused_sdpa

# Logits per query block (B x rows x N): 4 MB in fp32. Smaller blocks stay in L2 but run more, shorter
# parallel regions, which stall when the cores are shared (measured: 2^18 vs 2^20 equal on one thread,
# 2^20 1.6x faster on two threads of a loaded machine).
BLOCK_ELEMENTS = 1 << 20


def fits_one_block(batch: int, n: int) -> bool:
    """True when the whole (batch, n, n) attention is one block: blocking then saves nothing, and the explicit
    formulation (no index building, autograd's own backward) was measured 5-10% faster there."""
    return batch * n * n <= BLOCK_ELEMENTS


def _without_autocast(device_type: str):
    """Autocast off where the device has it (meta tensors, used for shape checks, have none)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class OffsetIndex:
    """Where the bias rows of a block of query rows come from in the (r, r) table, for an h x w map."""

    def __init__(self, h: int, w: int, r: int, device):
        ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
        self.h, self.w, self.r = h, w, r
        self.dy = (ys[:, None] - ys[None, :]).abs().clamp(max=r - 1)  # (h query rows, h key rows)
        self.dx = (xs[:, None] - xs[None, :]).abs().clamp(max=r - 1)  # (w query cols, w key cols)
        self.xs = xs

    def block_rows(self, batch: int) -> int:
        """Query rows per block, so that a block's logits hold about BLOCK_ELEMENTS values."""
        return max(1, min(self.h, BLOCK_ELEMENTS // max(1, batch * self.w * self.h * self.w)))

    def expand_columns(self, table: torch.Tensor) -> torch.Tensor:
        """A = T[:, dx] as (r*w, w): row a*w + xq holds T[a, dx(xq, xk)] for every key column xk."""
        return table.view(self.r, self.r)[:, self.dx].reshape(self.r * self.w, self.w)

    def rows(self, y0: int, y1: int) -> torch.Tensor:
        """Flat row indices into `expand_columns`, ordered (query row, query col, key row)."""
        return (self.dy[y0:y1, None, :] * self.w + self.xs[None, :, None]).reshape(-1)

    def bias(self, cols: torch.Tensor, y0: int, y1: int) -> torch.Tensor:
        """(queries of rows y0..y1, N) bias rows."""
        return cols.index_select(0, self.rows(y0, y1)).view((y1 - y0) * self.w, self.h * self.w)

    def table_grad(self, cols_grad: torch.Tensor) -> torch.Tensor:
        """Adjoint of `expand_columns`: (r*w, w) -> (r*r,)."""
        grad = cols_grad.new_zeros(self.r, self.r)
        grad.index_add_(1, self.dx.reshape(-1), cols_grad.view(self.r, self.w * self.w))
        return grad.view(-1)


def _attend_block(qb, k, kt, v, bias, scale):
    """(B, c, dv) = softmax(scale qb k^T + bias) v for a block qb (B, c, dk); bias (B or 1, c, N), may hold -inf."""
    if fused_sdpa(qb, v):
        out = F.scaled_dot_product_attention(qb.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1),
                                             attn_mask=bias.unsqueeze(1), scale=scale)
        return out.squeeze(1)
    attn = _logits(bias, qb, kt, scale).softmax(-1, dtype=_wide(qb.dtype)).to(v.dtype)
    return torch.bmm(attn, v)


def _logits(bias, qb, kt, scale):
    """scale qb k^T + bias, into the freshly gathered bias where its batch is already the full one (no copy).
    out= rather than baddbmm_: torch's FLOP counter has a formula for baddbmm (out included), not for baddbmm_."""
    if bias.shape[0] == qb.shape[0]:
        return torch.baddbmm(bias, qb, kt, alpha=scale, out=bias)
    return torch.baddbmm(bias, qb, kt, alpha=scale)


def _block_bias(index, cols, key_bias, y0, y1):
    """(1 or B, c, N) additive bias of a block: table rows plus the key mask (0 / -inf) if any."""
    bias = index.bias(cols, y0, y1).unsqueeze(0)
    return bias if key_bias is None else bias + key_bias


def _forward(q, k, v, table, key_bias, index: OffsetIndex, scale):
    cols = index.expand_columns(table.to(q.dtype))
    kt = k.transpose(1, 2).contiguous()  # once, not per block (a strided operand slows the matmul 2-3x)
    out = q.new_empty(*q.shape[:2], v.shape[-1])
    step, w = index.block_rows(q.shape[0]), index.w
    for y0 in range(0, index.h, step):
        y1 = min(index.h, y0 + step)
        rows = slice(y0 * w, y1 * w)
        out[:, rows] = _attend_block(q[:, rows], k, kt, v, _block_bias(index, cols, key_bias, y0, y1), scale)
    return out


def _accumulate(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> None:
    """total += alpha a @ b, with total kept in the wide dtype across blocks (16-bit sums would drift)."""
    if a.dtype == total.dtype:
        torch.baddbmm(total, a, b, alpha=alpha, out=total)
    else:
        total.add_(torch.bmm(a, b).to(total.dtype), alpha=alpha)


def _backward(d_out, q, k, v, table, key_bias, out, index: OffsetIndex, scale):
    """Per block: recompute P, then dS = P (dP - rowsum(dO * O)), the gradients of q, k, v and of the bias rows."""
    dtype, acc = q.dtype, _wide(q.dtype)
    cols = index.expand_columns(table.to(dtype))
    kt, vt = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    d_out = d_out.contiguous().to(dtype)
    rowdot = (d_out.to(acc) * out.to(acc)).sum(-1, keepdim=True)  # (B, N, 1)
    dq = torch.empty_like(q)
    dk, dv = torch.zeros(k.shape, dtype=acc, device=k.device), torch.zeros(v.shape, dtype=acc, device=v.device)
    dcols = torch.zeros(cols.shape, dtype=acc, device=q.device)
    step, w = index.block_rows(q.shape[0]), index.w
    for y0 in range(0, index.h, step):
        y1 = min(index.h, y0 + step)
        s = slice(y0 * w, y1 * w)
        qb, gb = q[:, s], d_out[:, s]
        logits = _logits(_block_bias(index, cols, key_bias, y0, y1), qb, kt, scale)
        p = logits.softmax(-1, dtype=acc)
        ds = torch.bmm(gb, vt).to(acc).sub_(rowdot[:, s]).mul_(p)  # gradient of the block's logits
        _accumulate(dv, p.to(dtype).transpose(1, 2), gb)
        ds_low = ds.to(dtype)
        dq[:, s] = torch.bmm(ds_low, k)
        _accumulate(dk, ds_low.transpose(1, 2), qb)
        dcols.index_add_(0, index.rows(y0, y1), (ds[0] if ds.shape[0] == 1 else ds.sum(0)).view(-1, w))
    dq.mul_(scale)
    dk.mul_(scale)
    dtable = index.table_grad(dcols).to(table.dtype)
    return dq, dk.to(k.dtype), dv.to(v.dtype), dtable


class _RelativeBiasAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, table, key_bias, index, scale):
        out = _forward(q, k, v, table, key_bias, index, scale)
        ctx.save_for_backward(q, k, v, table, key_bias, out)
        ctx.index, ctx.scale = index, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        q, k, v, table, key_bias, out = ctx.saved_tensors
        dq, dk, dv, dtable = _backward(d_out, q, k, v, table, key_bias, out, ctx.index, ctx.scale)
        return dq, dk, dv, dtable, None, None, None


def relative_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                            hw: tuple[int, int], resolution: int, scale: float,
                            key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(scale q k^T + bias + key_bias) v with EfficientViT's clamped relative-position bias.

    q, k (B, N, dk), v (B, N, dv), positions row-major over hw = (h, w); table (r*r,) with r = resolution;
    key_bias (B, 1, N) additive (0 or -inf for masked keys) or None. Returns (B, N, dv) in q's dtype.
    Runs without autocast: q, k, v share a dtype, the table and key_bias are cast to it.
    """
    index = OffsetIndex(hw[0], hw[1], resolution, q.device)
    if key_bias is not None:
        key_bias = key_bias.to(q.dtype)
    with _without_autocast(q.device.type):
        q, k, v = q.contiguous(), k.contiguous(), v.to(q.dtype).contiguous()
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, table)):
            return _RelativeBiasAttention.apply(q, k, v, table, key_bias, index, scale)
        return _forward(q, k, v, table, key_bias, index, scale)
