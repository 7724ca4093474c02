"""Optimizer parameter groups, LR schedules and warm-up (YOLOv5 v6.1 behaviour, v7.0 grouping).

Groups: 0 = weights of normalisation layers (no decay), 1 = other weights (decay), 2 = biases
(no decay; warm-up starts them at warmup_bias_lr). Parameters of a module marked `no_weight_decay = True`
(the identity-insertion gates, models/gates.py) join group 0: decay would pull them back to 'block off'. Grouping walks every module's *own* parameters,
so raw nn.Parameters inside attention blocks (ACmix rate1/rate2, attention_biases, rpe_table, ...)
are optimised too, which v6.1's attribute-based grouping silently missed.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from utils.cli import InputError
from utils.log import LOGGER, colorstr

NOMINAL_BATCH = 64  # gradients are accumulated to this batch size (v6.1's nbs; a hyp 'nbs' key overrides it)


def _is_norm(module: nn.Module) -> bool:
    return "Norm" in type(module).__name__  # BatchNorm*, SyncBatchNorm, LayerNorm, GroupNorm, LayerNorm2d...


def parameter_groups(model: nn.Module) -> tuple[list, list, list]:
    """(norm weights, other weights/raw parameters, biases); trainable parameters only, each once."""
    norm_w, decay_w, biases = [], [], []
    seen = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if name == "bias":
                biases.append(p)
            elif _is_norm(module) or getattr(module, "no_weight_decay", False):  # e.g. identity-insertion gates
                norm_w.append(p)
            else:
                decay_w.append(p)
    return norm_w, decay_w, biases


def accumulate_steps(batch_size: int, nbs: int = NOMINAL_BATCH) -> int:
    return max(round(nbs / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int, nbs: int = NOMINAL_BATCH) -> float:
    """v6.1 rescales decay by batch*accumulate/64 (the effective batch over the nominal one)."""
    return weight_decay * batch_size * accumulate_steps(batch_size, nbs) / nbs


def build_optimizer(model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937,
                    weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """SGD (Nesterov), Adam or AdamW with the three groups; momentum is Adam's beta1."""
    norm_w, decay_w, biases = parameter_groups(model)
    if name == "Adam":
        opt = torch.optim.Adam(norm_w, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        opt = torch.optim.AdamW(norm_w, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif name == "SGD":
        opt = torch.optim.SGD(norm_w, lr=lr, momentum=momentum, nesterov=True)
    else:
        raise InputError(f"--optimizer {name!r} is not one of SGD, Adam, AdamW")
    opt.add_param_group({"params": decay_w, "weight_decay": weight_decay})
    opt.add_param_group({"params": biases, "weight_decay": 0.0})
    LOGGER.info(f"{colorstr('optimizer:')} {name} with parameter groups {len(norm_w)} weight (no decay), "
                f"{len(decay_w)} weight, {len(biases)} bias")
    return opt


def lr_lambda(epochs: int, lrf: float, cos: bool):
    """LR multiplier per epoch: linear 1 -> lrf, or v6.1's one_cycle cosine 1 -> lrf."""
    if cos:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def build_scheduler(optimizer, epochs: int, lrf: float, cos: bool, last_epoch: int = -1):
    lf = lr_lambda(epochs, lrf, cos)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf, last_epoch=last_epoch), lf


def warmup_iters(warmup_epochs: float, batches_per_epoch: int) -> int:
    """Number of warm-up iterations; at least 100 as v6.1 (unless there are no warm-up epochs)."""
    if warmup_epochs <= 0:
        return 0
    return max(round(warmup_epochs * batches_per_epoch), 100)


def apply_warmup(optimizer, ni: int, nw: int, epoch: int, lf, hyp: dict, batch_size: int,
                 nbs: int = NOMINAL_BATCH) -> int:
    """Interpolate LR (bias from warmup_bias_lr down, others from 0 up) and momentum; returns accumulate."""
    xi = [0, nw]
    accumulate = max(1, np.interp(ni, xi, [1, nbs / batch_size]).round())
    for j, group in enumerate(optimizer.param_groups):
        start = hyp["warmup_bias_lr"] if j == 2 else 0.0
        group["lr"] = np.interp(ni, xi, [start, group["initial_lr"] * lf(epoch)])
        if "momentum" in group:
            group["momentum"] = np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]])
    return int(accumulate)
