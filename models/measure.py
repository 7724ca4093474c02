"""What a model costs at an image size: parameters, GFLOPs (the model summary's counter) and CPU latency.

All three on the fused model (Conv+BN folded, as deployed and as v6.1's README tables count), at batch 1.
GFLOPs come from torch's FlopCounterMode with the identity gates' rule (models/gates.py); latency is the median
wall time of `repeats` forward passes after `warmup` ones, in this process with its current thread count, so a
study measures every variant the same way one after another.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from models.load import attempt_load
from models.yolo import Model
from utils.flops import model_gflops
from utils.study.summary import Cost


def load_for_cost(weights: str | Path | None = None, cfg=None, nc: int | None = None) -> torch.nn.Module:
    """A trained checkpoint (its yaml: gates included) when there is one, else the yaml; eval, fused."""
    if weights and Path(weights).is_file():
        return attempt_load(str(weights), fuse=True)
    model = Model(cfg, nc=nc).eval()
    model.requires_grad_(False)
    return model.fuse(flops=False)


@torch.no_grad()
def median_latency_ms(model: torch.nn.Module, imgsz: int, repeats: int = 20, warmup: int = 3) -> float:
    p = next(model.parameters())
    im = torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype)
    model.eval()
    for _ in range(warmup):
        model(im)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        model(im)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def model_cost(model: torch.nn.Module, imgsz: int, repeats: int = 20, warmup: int = 3) -> Cost:
    gflops, _ = model_gflops(model, imgsz, model.flop_rules())  # its blocks' op rules and the gates'
    params = sum(p.numel() for p in model.parameters())
    return Cost(params, gflops, median_latency_ms(model, imgsz, repeats, warmup))
