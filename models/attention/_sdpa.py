"""When the attention blocks call torch's scaled_dot_product_attention (SDPA) and when their explicit ops.

SDPA pays where it runs a fused kernel: on CUDA (flash / memory-efficient / cuDNN pick themselves), and on
CPU its flash kernel, which needs equal q and v head widths and unit stride in the last axis. Elsewhere CPU
SDPA runs its unfused math path, measured slower than the blocks' own explicit ops (it copies the scaled q
and k per call). Export always traces the explicit ops: they need no opset above the block's own (SDPA's
exporter needs opset 14) and they are what the official modules compute.
"""
from __future__ import annotations

import torch


def tracing() -> bool:
    """True while torch.jit.trace or the TorchScript-based ONNX exporter records the forward."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def fused_sdpa(q: torch.Tensor, v: torch.Tensor) -> bool:
    """True where SDPA has a fused kernel for these operands (callers pass contiguous tensors on CPU)."""
    return q.device.type == "cuda" or q.shape[-1] == v.shape[-1]
