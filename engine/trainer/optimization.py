"""The optimization phase: parameter groups, LR schedule, EMA, resumed state, DDP wrapping, AMP scaler, loss."""
from __future__ import annotations

import torch
import torch.nn as nn

from engine.trainer.distributed import LOCAL_RANK
from engine.trainer.state import TrainState
from utils.cli import InputError
from utils.log import LOGGER
from utils.torch_utils import try_channels_last
from utils.train.checks import check_optimizer_state
from utils.train.ema import ModelEMA
from utils.train.loss import ComputeLoss
from utils.train.optim import build_optimizer, build_scheduler


def build_optimization(state: TrainState) -> None:
    opt, hyp = state.opt, state.hyp
    state.optimizer = build_optimizer(state.model, opt.optimizer, hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    # --epochs 0 trains nothing; a one-epoch schedule stands in (its lf(0) = 1 leaves the LRs at lr0)
    state.scheduler, state.lf = build_scheduler(state.optimizer, max(opt.epochs, 1), hyp["lrf"], opt.cos_lr)
    state.ema = ModelEMA(state.model) if state.main else None
    state.scaler = torch.amp.GradScaler("cuda", enabled=state.cuda)
    if state.ckpt is not None:
        restore_training_state(state)
    state.scheduler.last_epoch = state.start_epoch - 1
    if opt.sync_bn and LOCAL_RANK != -1:
        if state.cuda:
            state.model = nn.SyncBatchNorm.convert_sync_batchnorm(state.model).to(state.device)
            LOGGER.info("Using SyncBatchNorm()")
        else:
            LOGGER.warning("WARNING: --sync-bn needs CUDA devices; ignored on CPU")
    if not state.cuda:  # NHWC convolutions are faster on CPU (oneDNN), when every block takes them
        probe = torch.zeros(1, 3, state.gs * 2, state.gs * 2, device=state.device)
        state.channels_last = try_channels_last(state.model, probe)
    if LOCAL_RANK != -1:
        ids = [LOCAL_RANK] if state.cuda else None
        state.model = nn.parallel.DistributedDataParallel(state.model, device_ids=ids,
                                                          output_device=ids[0] if ids else None)
    state.compute_loss = ComputeLoss(state.model, hyp)


def restore_training_state(state: TrainState) -> None:
    """--resume: optimizer, best fitness, EMA, AMP scaler and the next epoch from the checkpoint."""
    ckpt, opt = state.ckpt, state.opt
    if ckpt.get("optimizer") is None:
        raise InputError(f"{opt.weights} holds no optimizer state (stripped after training finished); nothing to resume")
    state.optimizer.load_state_dict(check_optimizer_state(state.optimizer, ckpt["optimizer"], opt.weights))
    state.best_fitness = float(ckpt.get("best_fitness") or 0.0)
    if state.ema is not None and ckpt.get("ema") is not None:
        state.ema.ema.load_state_dict(ckpt["ema"])
        state.ema.updates = int(ckpt["updates"])
    scaler = (ckpt.get("meta") or {}).get("scaler")
    if scaler and state.scaler.is_enabled():
        state.scaler.load_state_dict(scaler)
    state.start_epoch = int(ckpt["epoch"]) + 1  # setup() checked that it is at most opt.epochs
    # The resumed epoch's LR on this run's schedule: what scheduler.step() set at the end of the saved epoch (v6.1's
    # schedule lags one epoch: last_epoch = start_epoch - 1). The saved LR unless --epochs changed the schedule.
    for g, base in zip(state.optimizer.param_groups, state.scheduler.base_lrs):
        g["lr"] = base * state.lf(state.start_epoch - 1)
    if state.start_epoch == opt.epochs:  # killed after the last epoch's checkpoint: only the ending is left
        LOGGER.info(f"{opt.weights} has trained all {opt.epochs} epochs; finishing the run (final validation)")
    else:
        LOGGER.info(f"Resuming training from {opt.weights} from epoch {state.start_epoch} to {opt.epochs} total epochs")
    state.ckpt = None  # free the memory
