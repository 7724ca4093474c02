"""The chunked relative-bias attention (models/attention/_chunked_attention.py) against the explicit formulation.

The reference is plain autograd over the whole (N, N) matrix with the bias gathered by `bias_index` (the
closed form that test_efficientvit checks against the official index buffer); blocks are forced small so
every case runs several of them. Official numbers themselves are test_official_vectors' job.
"""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import both_formulations
from torch.utils._python_dispatch import TorchDispatchMode

import models.attention._chunked_attention as chunked
from models.attention._chunked_attention import relative_bias_attention
from models.attention.efficientvit import CascadedGroupAttention, LocalWindowAttention, bias_index
from models.registry import REGISTRY, op_flop_rules
from tests.test_efficientvit import build, randomize
from utils.flops import count_flops

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(chunked, "BLOCK_ELEMENTS", 200)  # one query row per block at these sizes


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp(min=1e-12)).item()


def explicit(q, k, v, table, hw, r, scale, key_bias=None):
    logits = q @ k.transpose(1, 2) * scale + table[bias_index(*hw, r)]
    if key_bias is not None:
        logits = logits + key_bias
    return logits.softmax(-1) @ v


@pytest.mark.parametrize("b,dk,dv,hw,r", [(1, 16, 32, (5, 6), 4), (2, 16, 16, (7, 3), 7), (3, 8, 24, (1, 9), 3),
                                          (2, 4, 4, (1, 1), 2)])
def test_kernel_output_and_every_gradient(small_blocks, b, dk, dv, hw, r):
    g = torch.Generator().manual_seed(0)
    n = hw[0] * hw[1]
    q, k = (torch.randn(b, n, dk, generator=g).requires_grad_() for _ in range(2))
    v = torch.randn(b, n, dv, generator=g).requires_grad_()
    table = torch.randn(r * r, generator=g).requires_grad_()
    upstream = torch.randn(b, n, dv, generator=g)
    got = relative_bias_attention(q, k, v, table, hw, r, 0.3)
    want = explicit(q, k, v, table, hw, r, 0.3)
    assert rel(got, want) < 1e-5
    for a, w in zip(torch.autograd.grad(got, (q, k, v, table), upstream),
                    torch.autograd.grad(want, (q, k, v, table), upstream)):
        assert rel(a, w) < 1e-5


def test_kernel_masked_keys(small_blocks):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 20, 8, generator=g).requires_grad_() for _ in range(3))
    table = torch.randn(9, generator=g).requires_grad_()
    key_bias = torch.zeros(2, 1, 20).masked_fill(torch.rand(2, 1, 20, generator=g) < 0.4, float("-inf"))
    key_bias[..., 0] = 0.0  # every query keeps a key
    got = relative_bias_attention(q, k, v, table, (4, 5), 3, 0.5, key_bias)
    want = explicit(q, k, v, table, (4, 5), 3, 0.5, key_bias)
    assert rel(got, want) < 1e-5
    for a, w in zip(torch.autograd.grad(got.square().sum(), (q, k, v, table)),
                    torch.autograd.grad(want.square().sum(), (q, k, v, table))):
        assert rel(a, w) < 1e-5


@pytest.mark.parametrize("args,shape", [((64, 16, 4, 1, 7), (2, 64, 9, 13)),  # head width = key_dim: SDPA flash
                                        ((128, 16, 4, 2, 14), (1, 128, 20, 17)),  # 16 vs 32: by hand
                                        ((96, 16, 2, 3, 5), (2, 96, 6, 4))])
def test_cga_chunked_equals_explicit(small_blocks, args, shape):
    m = randomize(CascadedGroupAttention(*args)).eval()  # eval: train-mode BN would amplify rounding
    (y0, dx0, grads0), (y1, dx1, grads1) = both_formulations(m, torch.randn(shape))
    assert y1.is_contiguous() and rel(y1, y0) < 1e-5 and rel(dx1, dx0) < 1e-5
    for name, want in grads0.items():
        assert rel(grads1[name], want) < 1e-5, name


@pytest.mark.parametrize("pad_mask", [False, True])
def test_lwa_chunked_equals_explicit(small_blocks, pad_mask):
    m = randomize(LocalWindowAttention(64, 16, 4, 1, 14, 7, pad_mask=pad_mask)).eval()
    (y0, dx0, grads0), (y1, dx1, grads1) = both_formulations(m, torch.randn(2, 64, 10, 12))
    assert rel(y1, y0) < 1e-5 and rel(dx1, dx0) < 1e-5
    for name, want in grads0.items():
        assert rel(grads1[name], want) < 1e-5, name


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_cga_low_precision_matches_explicit(small_blocks, dtype, tol):
    m = randomize(CascadedGroupAttention(128, 16, 4, 2, 7)).eval()
    x = torch.randn(2, 128, 8, 9)
    with torch.no_grad():
        m.explicit_attention = True
        want = m(x)
        low = copy.deepcopy(m).to(dtype)
        low.explicit_attention = False
        got = low(x.to(dtype))
    assert got.dtype == dtype and (got.float() - want).norm() <= tol * want.norm()


def test_cga_autocast_forward_and_backward(small_blocks):
    m = randomize(CascadedGroupAttention(64, 16, 4, 1, 7)).train()
    x = torch.randn(2, 64, 9, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    y.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert torch.isfinite(x.grad).all()


class LargestTensor(TorchDispatchMode):
    """Largest number of elements of any tensor an op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_of_the_whole_attention_matrix(small_blocks):
    """At 16x16 (N = 256) the explicit path builds (N, N) tensors; the chunked path only one query row's
    block (16 x 256 logits) plus the map-sized tensors, in forward and backward."""
    x = torch.randn(1, 64, 16, 16, requires_grad=True)
    m = randomize(CascadedGroupAttention(64, 16, 4, 1, 7)).train()
    sizes = {}
    for explicit_attention in (True, False):
        m.explicit_attention = explicit_attention
        with LargestTensor() as mode:
            m(x).sum().backward()
        sizes[explicit_attention] = mode.largest
    assert sizes[True] >= 256 * 256
    assert sizes[False] <= 64 * 256


@pytest.mark.parametrize("c", [64, 128])  # 64: head width = key_dim, CPU SDPA's flash kernel; 128: by hand
def test_flop_count_of_the_blocked_path_equals_the_formula(small_blocks, c):
    m = build("CascadedGroupAttention", c)
    shape = (2, c, 9, 7)
    assert REGISTRY["CascadedGroupAttention"].flops(m, shape) == count_flops(m, torch.randn(shape), op_flop_rules(m))


def test_one_block_attention_takes_the_explicit_path(monkeypatch):
    """Where the whole attention is one block (LocalWindowAttention's windows) the kernel is not called."""
    monkeypatch.setattr(chunked, "relative_bias_attention", None)  # would fail if the blocked path ran
    import models.attention.efficientvit as efficientvit
    monkeypatch.setattr(efficientvit, "relative_bias_attention", None)
    m = LocalWindowAttention(64, 16, 4, 1, 14, 7).train()
    m(torch.randn(2, 64, 20, 20)).sum().backward()
