"""One training epoch: seeded, optionally re-drawn by image weights, warm-up, multi-scale, AMP, accumulation,
non-finite losses skipped (all ranks agreeing), EMA updates, progress bar and batch callbacks."""
from __future__ import annotations

import itertools
import math
import random
import sys

import torch
import torch.nn as nn

from engine.trainer.distributed import WORLD_SIZE, all_ranks_finite
from utils.train.hyp import nominal_batch
from engine.trainer.seeds import seed_epoch
from engine.trainer.state import TrainState
from utils.log import LOGGER
from utils.train.image_weights import labels_to_image_weights
from utils.torch_utils import autocast_for
from utils.train.optim import accumulate_steps, apply_warmup

MAX_BAD_STEPS = 5  # consecutive non-finite losses before training stops


def autocast(state: TrainState):
    return autocast_for(state.device, bf16=state.opt.bf16, cuda_amp=True)


def optimizer_step(state: TrainState) -> None:
    state.scaler.step(state.optimizer)  # a plain optimizer.step() when the scaler is disabled
    state.scaler.update()
    state.optimizer.zero_grad()
    if state.ema:
        state.ema.update(state.model)


def resample_images(state: TrainState) -> None:
    """--image-weights: draw the epoch's images by class rarity and per-class mAP shortfall."""
    nc = state.data["nc"]
    cw = state.class_weights.cpu().numpy() * (1 - state.maps) ** 2 / nc
    iw = labels_to_image_weights(state.dataset.labels, nc, cw)
    state.dataset.indices = random.choices(range(state.dataset.n), weights=iw, k=state.dataset.n)


def multi_scale(imgs: torch.Tensor, imgsz: int, gs: int) -> torch.Tensor:
    sz = random.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + gs) // gs * gs
    sf = sz / max(imgs.shape[2:])
    if sf == 1:
        return imgs
    ns = [math.ceil(x * sf / gs) * gs for x in imgs.shape[2:]]
    return nn.functional.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)


def progress(nb: int):
    from tqdm import tqdm
    LOGGER.info(("\n" + "%10s" * 7) % ("Epoch", "gpu_mem", "box", "obj", "cls", "labels", "img_size"))
    return tqdm(total=nb, bar_format="{l_bar}{bar:10}{r_bar}{bar:-10b}", file=sys.stderr)


def skip_bad_step(epoch: int, i: int, bad_in_row: int) -> int:
    """No backward for this batch (gradients already accumulated stay); give up after MAX_BAD_STEPS in a row."""
    LOGGER.warning(f"WARNING: non-finite loss at epoch {epoch} batch {i}; step skipped "
                   f"({bad_in_row} in a row, stopping at {MAX_BAD_STEPS})")
    if bad_in_row >= MAX_BAD_STEPS:
        raise FloatingPointError(f"training stopped: {bad_in_row} consecutive non-finite losses at epoch {epoch} "
                                 f"batch {i}; last.pt still holds the last good epoch. Try a lower --hyp lr0, "
                                 f"fp32 (no --bf16), or check the labels")
    return bad_in_row


def forward_loss(state: TrainState, imgs: torch.Tensor, targets: torch.Tensor):
    with autocast(state):
        loss, loss_items = state.compute_loss(state.model(imgs), targets.to(state.device))
    if WORLD_SIZE > 1:
        loss *= WORLD_SIZE  # DDP averages gradients over ranks; v6.1 scales the loss back up
    return loss, loss_items


def show_batch(state: TrainState, pbar, epoch: int, mloss: torch.Tensor, batch: tuple) -> None:
    """Progress bar line, then on_train_batch_end(ni, imgs, targets, paths) (rank 0)."""
    ni, imgs, targets, paths = batch
    mem = f"{torch.cuda.memory_reserved() / 1e9:.3g}G" if state.cuda else "0G"
    pbar.set_description(("%10s" * 2 + "%10.4g" * 5) % (
        f"{epoch}/{state.opt.epochs - 1}", mem, *mloss.tolist(), targets.shape[0], imgs.shape[-1]))
    pbar.update(1)
    state.callbacks.run("on_train_batch_end", ni, imgs, targets, paths)


def train_one_epoch(state: TrainState, epoch: int, nb: int, nw: int) -> tuple[torch.Tensor, list[float]]:
    """One pass over the training set; returns mean (box, obj, cls) losses and the epoch's LRs."""
    opt = state.opt
    state.model.train()
    seed_epoch(state, epoch)
    if opt.image_weights:
        resample_images(state)
    mloss, n_ok, bad_in_row, pending = torch.zeros(3, device=state.device), 0, 0, False
    last_opt_step = nb * epoch - 1  # the previous epoch ended with a step (see the flush below)
    nbs = nominal_batch(state.hyp)
    accumulate = accumulate_steps(opt.batch_size, nbs)
    pbar = progress(nb) if state.main else None
    state.callbacks.run("on_train_epoch_start", epoch)
    state.optimizer.zero_grad()
    batches = state.train_loader if state.batches is None else itertools.islice(state.batches, nb)
    for i, (imgs, targets, paths, _) in enumerate(batches):
        ni = i + nb * epoch  # integrated batches since the start of training
        imgs = imgs.to(state.device, non_blocking=True).float() / 255
        if state.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        if nw and ni <= nw:  # warm-up (none when warmup_epochs is 0)
            accumulate = apply_warmup(state.optimizer, ni, nw, epoch, state.lf, state.hyp, opt.batch_size, nbs)
        if opt.multi_scale:
            imgs = multi_scale(imgs, opt.imgsz, state.gs)
        loss, loss_items = forward_loss(state, imgs, targets)
        if not all_ranks_finite(loss):
            bad_in_row = skip_bad_step(epoch, i, bad_in_row + 1)
            continue
        bad_in_row = 0
        state.scaler.scale(loss).backward()
        pending = True
        if ni - last_opt_step >= accumulate:
            optimizer_step(state)
            last_opt_step, pending = ni, False
        mloss = (mloss * n_ok + loss_items) / (n_ok + 1)
        n_ok += 1
        if pbar is not None:
            show_batch(state, pbar, epoch, mloss, (ni, imgs, targets, paths))
    if pending:  # gradients never cross an epoch boundary, so last.pt holds the complete state
        optimizer_step(state)
    if pbar is not None:
        pbar.close()
    state.callbacks.run("on_train_epoch_end", epoch)
    return mloss.cpu(), [g["lr"] for g in state.optimizer.param_groups]
