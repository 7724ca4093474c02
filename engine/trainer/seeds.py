"""The trainer's seeds: one for the initial weights and one per (epoch, rank), each a function of the run's
--seed and those alone, so an epoch draws the same whether the run was resumed before it or not. The data
loader derives its shuffle and augmentation seeds the same way (utils/data/loader.py, dataset.py)."""
from __future__ import annotations

import numpy as np
import random
import torch

from engine.trainer.distributed import RANK


def model_init_seed(seed: int) -> int:
    return epoch_seed(seed, -1)


def epoch_seed(seed: int, epoch: int, rank: int = -1) -> int:
    return (seed * 1_000_003 + epoch * 7919 + max(rank, 0) * 104_729 + 1) % 2**31


def seed_epoch(state, epoch: int) -> None:
    """The main process's RNGs (multi-scale sizes, --image-weights draws) and the loader's epoch."""
    s = epoch_seed(state.opt.seed, epoch, RANK)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    gen = getattr(state.train_loader, "generator", None)
    if gen is not None:
        gen.manual_seed(s)  # the sampler's shuffle order and the workers' base seed
    sampler = getattr(state.train_loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
