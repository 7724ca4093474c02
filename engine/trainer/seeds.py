"""The trainer's seeds: one for the initial weights and one per (epoch, rank), each derived by the project's one
seed helper (utils/torch_utils.derive_seed) from --seed and those alone, so an epoch draws the same whether the
run was resumed before it or not. The data loader derives its shuffle and augmentation seeds with the same
helper (utils/data/loader.py, dataset.py)."""
from __future__ import annotations

from engine.trainer.distributed import RANK
from utils.torch_utils import derive_seed, seed_rngs

INIT_SEED_TAG, EPOCH_SEED_TAG = 0x1417, 0xE90C  # derive_seed purpose tags


def model_init_seed(seed: int) -> int:
    """The same on every rank, so DDP starts from identical weights."""
    return derive_seed(INIT_SEED_TAG, seed)


def epoch_seed(seed: int, epoch: int, rank: int = -1) -> int:
    return derive_seed(EPOCH_SEED_TAG, seed, epoch, max(rank, 0))


def seed_epoch(state, epoch: int) -> None:
    """The main process's RNGs (multi-scale sizes, --image-weights draws) and the loader's epoch."""
    s = epoch_seed(state.opt.seed, epoch, RANK)
    seed_rngs(s)
    gen = getattr(state.train_loader, "generator", None)
    if gen is not None:
        gen.manual_seed(s)  # the workers' base seed when a loader is iterated epoch by epoch
    sampler = getattr(state.train_loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
