"""TrainState: everything the trainer's phases share, filled in phase by phase."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from engine.trainer.distributed import is_main_process
from utils.callbacks import Callbacks
from utils.train.ema import ModelEMA
from utils.train.loss import ComputeLoss


@dataclass
class TrainState:
    """One training run's state. `hyp_source` is the hyp file as loaded (what hyp.yaml holds); `hyp` is what
    training uses, settled once from it (utils/train/hyp.py) and only read afterwards."""
    opt: argparse.Namespace
    device: torch.device
    callbacks: Callbacks
    hyp_source: dict = None
    hyp: dict = None
    save_dir: Path = None
    data: dict = None
    model: nn.Module = None  # DDP-wrapped after build_optimization on several ranks
    gs: int = 32  # grid size: the model's largest stride, at least 32
    ema: ModelEMA = None  # rank 0 only
    optimizer: torch.optim.Optimizer = None
    scheduler: Any = None
    lf: Any = None  # the LR lambda (epoch -> factor), also used by warm-up
    scaler: Any = None
    train_loader: Any = None
    batches: Any = None  # one iterator over a continuous train loader for the whole run (None: per epoch)
    dataset: Any = None
    val_loader: Any = None  # rank 0 only
    class_weights: torch.Tensor = None  # inverse class frequencies * nc, for --image-weights
    compute_loss: ComputeLoss = None
    ckpt: dict = None  # the checkpoint being resumed, until its training state is restored
    start_epoch: int = 0
    best_fitness: float = 0.0
    maps: np.ndarray = None  # per-class mAP50-95 of the last validation
    channels_last: bool = False

    @property
    def main(self) -> bool:
        return is_main_process()

    @property
    def wdir(self) -> Path:
        return self.save_dir / "weights"

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def plain_options(opt: argparse.Namespace) -> dict:
    """Options as yaml/checkpoint-safe plain data."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opt).items()}
