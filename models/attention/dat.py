"""DAT deformable attention (Xia et al., CVPR 2022; the 2023 DAT++ code at LeapLabTHU/DAT HEAD).

`DAttentionBaseline` keeps the official constructor (positional order, keywords) and state_dict keys
(`conv_offset.{0,1.norm,3}`, `proj_{q,k,v,out}`, `rpe_table`), so HEAD checkpoints load with
strict=True. Defaults were added so a yaml may give no arguments (see `_adapt`). Fixes (the shared
spec attention.md section 6), each covered by tests/test_dat.py:

* Returns only the feature map, as a YOLO layer must; `return_tuple=True` gives the official
  (y, pos, reference) tuple, pos/reference shaped (B, n_groups, Hk, Wk, 2) in (y, x) order.
* Any size, also H or W <= 2 (Hk = 1): a single key row/column sits at the centre (0) and its offset
  range is 1 instead of the official 1/(Hk-1) division by zero; a 1-pixel query axis sits at 0.
* attn_drop > 0 trains: dropout is not in place on the softmax output.
* .half()/.bfloat16()/autocast: sampling positions, offset ranges and grids are computed in fp32 and
  16-bit maps are grid-sampled in fp32 (results cast back to the input's dtype); softmax runs in fp32.
  bf16 output error 0.4% (2% when sampling in bf16); pos/reference of the tuple return are fp32.
* ONNX: grid helpers are out of place and built from arange with an explicit float32 dtype (no
  float64, no in-place ops on views). Needs opset >= 16 (GridSample; the registration's min_opset).
  Key-grid sizes enter as tensors (no Python branch on them), so one traced graph (dynamic ONNX,
  TorchScript) is right at every input size, also across the 1-cell-wide key grid of H or W <= 2.
* Reference points: `ref_align='official'` (default) keeps the official (i + 0.5)/(Hk - 1)*2 - 1,
  which is half a cell off (the last row/column lies outside the map), so official weights give
  official numbers. `ref_align='centered'` uses i/(Hk - 1)*2 - 1: the key grid spans the map corner
  to corner (align_corners=True), symmetric like the query grid.
* no_off works at odd sizes (adaptive average pooling to the offset grid's size instead of the
  official avg_pool2d + assert); its unused conv_offset is frozen as in the official code.
* fixed_pe ties the block to q_size; other sizes raise a clear error. The default rpe table is
  sampled with normalised coordinates and works at any size.
* Attention by scaled_dot_product_attention a block of queries at a time, so only a block of the
  (B*heads, HW, Ns) position bias exists (checkpointed blocks in training); same numbers to float
  rounding (tests/test_dat.py). Export, `explicit_attention = True` and training with attn_drop > 0
  keep the explicit ops (benchmarks/attention_sdpa.py compares the two).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from models.attention._op_flops import GRID_SAMPLE, SDPA_CPU
from models.attention._sdpa import tracing
from models.registry import Reference, bind_arguments, register, same_channels

__all__ = ["LayerNormProxy", "DAttentionBaseline"]

REF_ALIGNS = ("official", "centered")
# Bias values (B x heads x queries x keys) per SDPA call: 16 MB in fp32. Up to twice that runs as one call
# (no blocks, nothing recomputed: at 40x40 recomputing cost 25% of a training step and saved ~20 MB).
QUERY_BLOCK_ELEMENTS = 1 << 22


class LayerNormProxy(nn.Module):
    """LayerNorm over channels of an NCHW map (key `norm.*`)."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def axis_coords(n: int, dtype, device, mode: str) -> torch.Tensor:
    """Normalised [-1, 1] (align_corners=True) coordinates of n points along one axis, out of place.

    mode 'pixel': j/(n-1)*2-1 (query grid); 'official': (i+0.5)/(n-1)*2-1 (DAT's half-cell-shifted
    key grid); 'centered': i/(n-1)*2-1. A single point sits at 0 in every mode.
    """
    i = torch.arange(n, dtype=torch.float32, device=device)
    # n - 1 as a tensor from arange's length, never a Python branch on n: a traced graph (ONNX,
    # TorchScript; n is then a traced size) must take the right path at every size it is run at
    span = torch.ones_like(i).sum() - 1.0
    c = (i + 0.5 if mode == "official" else i) / span.clamp(min=1.0) * 2.0 - 1.0
    return torch.where(span > 0, c, torch.zeros_like(c)).to(dtype)


def grid_2d(h: int, w: int, dtype, device, mode: str) -> torch.Tensor:
    """(h, w, 2) grid of (y, x) coordinates."""
    ys = axis_coords(h, dtype, device, mode)
    xs = axis_coords(w, dtype, device, mode)
    return torch.stack((ys[:, None].expand(h, w), xs[None, :].expand(h, w)), dim=-1)


def yx_to_xy(p: torch.Tensor) -> torch.Tensor:
    """grid_sample wants (x, y) in the last dimension."""
    return torch.cat((p[..., 1:2], p[..., 0:1]), dim=-1)


def sample(inp: torch.Tensor, grid_yx: torch.Tensor) -> torch.Tensor:
    """Bilinear grid_sample (align_corners=True) of `inp` at (y, x) points, result in inp's dtype.

    16-bit inputs are sampled in fp32: bf16 coordinates near +-1 are only ~0.004 apart, which moves
    sample points by a visible fraction of a pixel (bf16 output error 2% vs 0.3% from rounding alone).
    """
    work = inp if inp.dtype in (torch.float32, torch.float64) else inp.float()
    out = F.grid_sample(work, yx_to_xy(grid_yx).to(work.dtype), mode="bilinear", align_corners=True)
    return out.to(inp.dtype)


class DAttentionBaseline(nn.Module):
    """Deformable multi-head attention; input and output (B, n_heads*n_head_channels, H, W).

    Attention runs through scaled_dot_product_attention a block of queries at a time (`_sdpa_attention`).
    `explicit_attention = True` on an instance (and always while tracing for export, and in training with
    attn_drop > 0, where nn.Dropout keeps the official masking) computes the whole matrix by explicit ops.
    """

    explicit_attention = False

    def __init__(self, q_size=(20, 20), kv_size=(20, 20), n_heads=8, n_head_channels=32, n_groups=4, attn_drop=0.0,
                 proj_drop=0.0, stride=2, offset_range_factor=2, use_pe=True, dwc_pe=False, no_off=False,
                 fixed_pe=False, ksize=3, log_cpb=False, *, ref_align="official", return_tuple=False):
        super().__init__()
        nc = n_heads * n_head_channels
        if n_heads % n_groups or nc % n_groups:
            raise ValueError(f"DAttentionBaseline: n_groups={n_groups} must divide n_heads={n_heads} "
                             f"(and the channels n_heads*n_head_channels={nc})")
        if ref_align not in REF_ALIGNS:
            raise ValueError(f"DAttentionBaseline: ref_align must be one of {REF_ALIGNS}, got {ref_align!r}")
        self.q_h, self.q_w = (q_size, q_size) if isinstance(q_size, int) else tuple(q_size)
        self.kv_h, self.kv_w = self.q_h // stride, self.q_w // stride  # kv_size is unused, as at HEAD
        self.n_heads, self.n_head_channels, self.n_groups, self.nc = n_heads, n_head_channels, n_groups, nc
        self.n_group_channels, self.n_group_heads = nc // n_groups, n_heads // n_groups
        self.scale = n_head_channels ** -0.5
        self.stride, self.ksize, self.offset_range_factor = stride, ksize, offset_range_factor
        self.use_pe, self.dwc_pe, self.no_off, self.fixed_pe, self.log_cpb = use_pe, dwc_pe, no_off, fixed_pe, log_cpb
        self.ref_align, self.return_tuple = ref_align, return_tuple
        self.pad_size = ksize // 2 if ksize != stride else 0

        cg = self.n_group_channels
        self.conv_offset = nn.Sequential(
            nn.Conv2d(cg, cg, ksize, stride, self.pad_size, groups=cg),
            LayerNormProxy(cg),
            nn.GELU(),
            nn.Conv2d(cg, 2, 1, 1, 0, bias=False))
        if no_off:
            self.conv_offset.requires_grad_(False)  # unused: keeps DDP's every-parameter-gets-a-gradient rule
        self.proj_q, self.proj_k, self.proj_v, self.proj_out = (nn.Conv2d(nc, nc, 1) for _ in range(4))
        self.attn_drop = nn.Dropout(attn_drop)  # not in place: softmax's backward needs its output
        self.proj_drop = nn.Dropout(proj_drop)
        self.rpe_table = self._make_rpe()

    def _make_rpe(self):
        if not self.use_pe or self.no_off:
            return None
        if self.dwc_pe:
            return nn.Conv2d(self.nc, self.nc, 3, 1, 1, groups=self.nc)
        if self.fixed_pe:
            table = nn.Parameter(torch.zeros(self.n_heads, self.q_h * self.q_w, self.kv_h * self.kv_w))
        elif self.log_cpb:
            return nn.Sequential(nn.Linear(2, 32, bias=True), nn.ReLU(inplace=True),
                                 nn.Linear(32, self.n_group_heads, bias=False))
        else:
            table = nn.Parameter(torch.zeros(self.n_heads, self.q_h * 2 - 1, self.q_w * 2 - 1))
        nn.init.trunc_normal_(table, std=0.01)
        return table

    def key_size(self, h: int, w: int) -> tuple[int, int]:
        """Size of the offset/key grid (the offset conv's output size)."""
        k, s, p = self.ksize, self.stride, self.pad_size
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    # ------------------------------------------------------------------ forward pieces
    @staticmethod
    def _cell_size(off: torch.Tensor) -> torch.Tensor:
        """(1, 2, 1, 1) normalised key-cell size 1/max(Hk-1, 1), 1/max(Wk-1, 1) of the offset map.

        Counted from the map (not a Python max on its size), so a traced graph stays right where the
        key grid is 1 cell wide at one size and wider at another.
        """
        sizes = torch.stack((torch.ones_like(off[0, 0, :, 0]).sum(), torch.ones_like(off[0, 0, 0, :]).sum()))
        return (1.0 / (sizes - 1.0).clamp(min=1.0)).view(1, 2, 1, 1)

    def _sample_points(self, q: torch.Tensor, b: int, h: int, w: int):
        """pos and reference, (B*g, Hk, Wk, 2) in (y, x) order, float32 whatever q's dtype."""
        g, cg = self.n_groups, self.n_group_channels
        if self.no_off:
            hk, wk = self.key_size(h, w)
            offset = None
        else:
            off = self.conv_offset(q.reshape(b * g, cg, h, w)).float()  # positions in fp32 (see _sample)
            hk, wk = off.shape[2:]
            if self.offset_range_factor >= 0:  # bound offsets to `factor` key cells
                # contiguous NCHW as before: a channels-last pos changes the bf16 log_cpb Linear's rounding
                off = (off.tanh() * self._cell_size(off) * self.offset_range_factor).contiguous()
            offset = off.permute(0, 2, 3, 1)
        ref = grid_2d(hk, wk, torch.float32, q.device, self.ref_align).unsqueeze(0).expand(b * g, hk, wk, 2)
        pos = ref if offset is None else offset + ref
        if self.offset_range_factor < 0:
            pos = pos.clamp(-1.0, 1.0)
        return pos, ref, hk, wk

    def _sample_keys(self, x: torch.Tensor, pos: torch.Tensor, b: int, hk: int, wk: int) -> torch.Tensor:
        """(B, C, 1, Hk*Wk) features at the sampling points."""
        _, c, h, w = x.shape
        if self.no_off:
            sampled = F.adaptive_avg_pool2d(x, (hk, wk))
        else:
            sampled = sample(x.reshape(b * self.n_groups, self.n_group_channels, h, w), pos)
        return sampled.reshape(b, c, 1, hk * wk)

    def _check_fixed_pe(self, h: int, w: int, hk: int, wk: int) -> None:
        if (h * w, hk * wk) != (self.q_h * self.q_w, self.kv_h * self.kv_w):
            raise ValueError(f"DAttentionBaseline(fixed_pe=True) has a fixed rpe_table "
                             f"{tuple(self.rpe_table.shape)} for q_size ({self.q_h}, {self.q_w}) and keys "
                             f"({self.kv_h}, {self.kv_w}); it cannot run on a {h}x{w} input (keys {hk}x{wk}). "
                             f"Use the default rpe table (fixed_pe=False), which is size-free")

    def _position_bias(self, pos, b, h, w, hk, wk, rows: slice = slice(None)):
        """(B*heads, queries in `rows`, Ns) attention bias, or None (dwc_pe adds its term after attention)."""
        if not self.use_pe or self.no_off or self.dwc_pe:
            return None
        ns, g = hk * wk, self.n_groups
        if self.fixed_pe:
            self._check_fixed_pe(h, w, hk, wk)
            table = self.rpe_table[:, rows]
            return table.unsqueeze(0).expand(b, -1, -1, -1).reshape(b * self.n_heads, -1, ns)
        q_grid = grid_2d(h, w, pos.dtype, pos.device, "pixel").reshape(1, h * w, 1, 2)[:, rows]
        disp = q_grid - pos.reshape(b * g, 1, ns, 2)  # (B*g, HW, Ns, 2)
        if self.log_cpb:
            disp = disp * 4.0
            disp = torch.sign(disp) * torch.log2(disp.abs() + 1.0) / 3.0  # / log2(8)
            bias = self.rpe_table(disp.to(self.rpe_table[0].weight.dtype))  # (B*g, HW, Ns, heads/g)
            return bias.permute(0, 3, 1, 2).reshape(b * self.n_heads, -1, ns)
        table = self.rpe_table.reshape(g, self.n_group_heads, *self.rpe_table.shape[1:])
        table = table.unsqueeze(0).expand(b, -1, -1, -1, -1).reshape(b * g, self.n_group_heads, *table.shape[2:])
        bias = sample(table, disp * 0.5)  # (B*g, heads/g, HW, Ns)
        return bias.reshape(b * self.n_heads, -1, ns)

    def _explicit_attention(self, q, k, v, pos, b, h, w, hk, wk):
        """(B*heads, hc, HW) from q (B*heads, hc, HW), k and v (B*heads, hc, Ns): the whole attention at once."""
        # matmuls rather than the official einsums: same numbers, and FlopCounterMode sees them at 1x1 too
        attn = (q.transpose(1, 2) @ k) * self.scale
        bias = self._position_bias(pos, b, h, w, hk, wk)
        if bias is not None:
            attn = attn + bias
        attn = self.attn_drop(attn.softmax(dim=2, dtype=torch.float32).to(v.dtype))
        return v @ attn.transpose(1, 2)

    def _sdpa_attention(self, q, k, v, pos, b, h, w, hk, wk):
        """The same by scaled_dot_product_attention, a block of queries at a time so that only a block of the
        (B*heads, HW, Ns) bias exists; in training each block is checkpointed (recomputed in backward), so the
        bias, logits and probabilities of the whole map are never held for autograd either."""
        heads, hc = self.n_heads, self.n_head_channels
        hw, ns = h * w, hk * wk
        qt = q.transpose(2, 3).contiguous()  # (B, heads, HW, hc): SDPA's layout, unit stride last
        kt, vt = (t.reshape(b, heads, hc, ns).transpose(2, 3).contiguous() for t in (k, v))
        step = max(1, QUERY_BLOCK_ELEMENTS // (b * heads * ns))
        step = hw if hw <= 2 * step else step
        recompute = step < hw and torch.is_grad_enabled()
        outs = []
        for start in range(0, hw, step):
            rows = slice(start, min(hw, start + step))
            args = (qt[:, :, rows], kt, vt, pos, b, h, w, hk, wk, rows)
            outs.append(checkpoint(self._attend_rows, *args, use_reentrant=False) if recompute
                        else self._attend_rows(*args))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        return out.transpose(2, 3).reshape(b * heads, hc, hw)

    def _attend_rows(self, qt, kt, vt, pos, b, h, w, hk, wk, rows):
        """(B, heads, queries in rows, hc) by SDPA, with the position bias of those query rows."""
        bias = self._position_bias(pos, b, h, w, hk, wk, rows)
        if bias is not None:
            bias = bias.view(b, self.n_heads, -1, hk * wk).to(qt.dtype)
        return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias, scale=self.scale)

    def forward(self, x: torch.Tensor):
        b, c, h, w = x.shape
        if c != self.nc:
            raise ValueError(f"DAttentionBaseline expects n_heads*n_head_channels = {self.n_heads}*"
                             f"{self.n_head_channels} = {self.nc} input channels, got {c}")
        q = self.proj_q(x)
        pos, ref, hk, wk = self._sample_points(q, b, h, w)
        sampled = self._sample_keys(x, pos, b, hk, wk)
        ns, heads, hc = hk * wk, self.n_heads, self.n_head_channels
        k = self.proj_k(sampled).reshape(b * heads, hc, ns)
        v = self.proj_v(sampled).reshape(b * heads, hc, ns)
        if self.explicit_attention or tracing() or (self.training and self.attn_drop.p > 0):
            out = self._explicit_attention(q.reshape(b * heads, hc, h * w), k, v, pos, b, h, w, hk, wk)
        else:
            out = self._sdpa_attention(q.reshape(b, heads, hc, h * w), k, v, pos, b, h, w, hk, wk)
        if self.use_pe and self.dwc_pe and not self.no_off:
            out = out + self.rpe_table(q).reshape(b * heads, hc, h * w)  # depthwise-conv position encoding
        y = self.proj_drop(self.proj_out(out.reshape(b, c, h, w)))
        if self.return_tuple:
            return y, pos.reshape(b, self.n_groups, hk, wk, 2), ref.reshape(b, self.n_groups, hk, wk, 2)
        return y


# ----------------------------------------------------------------------------- FLOPs and yaml rule

def dat_flops(m: DAttentionBaseline, shape) -> int:
    """FLOPs (2 per MAC) incl. both einsums and grid_sample's 4 bilinear taps (utils.flops convention)."""
    b, _, h, w = shape
    hk, wk = m.key_size(h, w)
    hw, ns, nc, heads = h * w, hk * wk, m.nc, m.n_heads
    macs = 2 * hw * nc * nc + 2 * ns * nc * nc  # proj_q/out on HW, proj_k/v on Ns
    macs += 2 * hw * ns * nc  # q^T k and attn v
    if not m.no_off:
        macs += nc * ns * m.ksize ** 2 + ns * nc * 2  # offset dw conv + 1x1 conv Cg -> 2 per group
        macs += 4 * nc * ns  # grid_sample of the keys
    if m.use_pe and not m.no_off:
        if m.dwc_pe:
            macs += hw * nc * 9
        elif m.log_cpb:
            macs += m.n_groups * hw * ns * (2 * 32 + 32 * m.n_group_heads)
        elif not m.fixed_pe:
            macs += 4 * heads * hw * ns  # grid_sample of the rpe table
    return 2 * b * macs


DEFAULT_HEADS = 8
DEFAULT_GROUPS = 4


def _adapt(ctx, args, kwargs):
    """Per scale: n_head_channels = c1 // n_heads (8 heads by default), n_groups = 4 or the largest divisor."""
    c1 = ctx.c1
    given = bind_arguments(ctx, DAttentionBaseline, args, kwargs)
    heads = given.get("n_heads") or DEFAULT_HEADS
    if not isinstance(heads, int) or heads < 1 or c1 % heads:
        raise ctx.error(f"DAttentionBaseline: n_heads={heads} must divide the input channels {c1} "
                        f"(channels = n_heads*n_head_channels); 8 divides every YOLOv5 width")
    hc = c1 // heads
    if given.get("n_head_channels") not in (None, hc):
        raise ctx.error(f"DAttentionBaseline: n_head_channels={given['n_head_channels']} but the input has {c1} "
                        f"channels = {heads} heads x {hc}; leave n_head_channels None to derive it per scale")
    groups = given.get("n_groups") or next(gr for gr in range(min(DEFAULT_GROUPS, heads), 0, -1) if heads % gr == 0)
    if heads % groups:
        raise ctx.error(f"DAttentionBaseline: n_groups={groups} must divide n_heads={heads} (input {c1} channels)")
    given.update(n_heads=heads, n_head_channels=hc, n_groups=groups)
    args.clear()
    kwargs.clear()
    kwargs.update({k: v for k, v in given.items() if v is not None})
    kwargs["return_tuple"] = False  # a YOLO layer must return a tensor


register(build=same_channels(channel_params=0, adapt=_adapt), attention=True, min_opset=16,  # ONNX GridSample
         flops=dat_flops, op_flops={**GRID_SAMPLE, **SDPA_CPU},
         reference=Reference("Xia et al., Vision Transformer with Deformable Attention, CVPR 2022 (DAT++ 2023)",
                             "LeapLabTHU/DAT models/dat_blocks.py (HEAD 32173fc)",
                             "returns the map only (return_tuple=True: official tuple); any size incl. <= 2; "
                             "fp16/bf16; opt-in ref_align='centered'"))(DAttentionBaseline)
