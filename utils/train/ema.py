"""ModelEMA: exponential moving average of a model's floating-point state (YOLOv5's ModelEMA).

The decay ramps up as decay * (1 - exp(-updates / 2000)), so early averages follow the model
closely. The EMA copy is kept in eval mode without gradients and is what gets validated and saved.
"""
from __future__ import annotations

import math
from copy import deepcopy

import torch
import torch.nn as nn

from utils.torch_utils import de_parallel


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay_max, self.tau = decay, tau
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self, updates: int | None = None) -> float:
        u = self.updates if updates is None else updates
        return self.decay_max * (1 - math.exp(-u / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema = d * ema + (1 - d) * model for every float tensor of the state (buffers included)."""
        self.updates += 1
        d = self.decay()
        msd = de_parallel(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach().to(v.dtype), alpha=1 - d)

    def update_attr(self, model: nn.Module, include=(), exclude=("process_group", "reducer")) -> None:
        """Copy plain attributes (nc, hyp, names, stride ...) from the model to the EMA copy."""
        for k, v in de_parallel(model).__dict__.items():
            if (include and k not in include) or k.startswith("_") or k in exclude:
                continue
            setattr(self.ema, k, v)
