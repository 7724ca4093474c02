"""The trainer: phases over one TrainState, top to bottom

    setup -> build_model -> settle_hyperparameters -> build_data -> build_optimization -> train_loop
    (--epochs 0: score_starting_model) -> final_validation (rank 0)

Everything written besides checkpoints goes through callbacks (utils/train/loggers.py hangs on them).
train.py is its command line: options, defaults, --resume, DDP set-up.
"""
from __future__ import annotations

import argparse
import time

from engine.trainer.data import build_data
from engine.trainer.distributed import close_distributed, init_distributed
from engine.trainer.loop import final_validation, score_starting_model, train_loop
from engine.trainer.optimization import build_optimization
from engine.trainer.setup import build_model, freeze_layers, settle_hyperparameters, setup
from engine.trainer.state import TrainState
from engine.validator import ValResult
from utils.callbacks import Callbacks

__all__ = ["TrainState", "close_distributed", "freeze_layers", "init_distributed", "train"]


def train(opt: argparse.Namespace, device, callbacks: Callbacks | None = None) -> ValResult:
    """Train with fully settled options (train.py fills defaults and resume options); on rank 0 returns the
    final validation of best.pt, on other ranks zeros."""
    t0 = time.time()
    state = TrainState(opt, device, callbacks or Callbacks())
    state.callbacks.run("on_pretrain_routine_start")
    setup(state)
    build_model(state)
    settle_hyperparameters(state)
    build_data(state)
    build_optimization(state)
    if opt.epochs > 0:
        train_loop(state)
    elif state.main:
        score_starting_model(state)
    return final_validation(state, t0) if state.main else ValResult.zeros(state.data["nc"])
