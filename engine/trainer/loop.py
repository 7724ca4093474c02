"""The epoch loop and what follows each epoch on rank 0 (validate, log, save, early stop), then the final
validation of best.pt; for --epochs 0 the starting model scored in place of the loop.

What a kill at any moment leaves (a resumed run repairs it, utils/train/resume.py): each epoch writes its
results.csv row first, then best.pt / epochN.pt, and last.pt LAST, so last.pt is the commit point. A kill
before last.pt is replaced leaves last.pt at the previous epoch; the resumed run drops the rows past it,
removes the temp files of interrupted writes, and trains that epoch again (best.pt, if written, is rewritten
with the same weights)."""
from __future__ import annotations

import time

import numpy as np

from engine.trainer.distributed import broadcast_flag
from engine.trainer.epoch import train_one_epoch
from engine.trainer.state import TrainState, plain_options
from engine.validator import ValOutputs, ValResult, ValSettings, validate_model
from utils.kill_points import kill_point
from models.load import model_from_checkpoint
from utils.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint, strip_optimizer
from utils.cpu_alloc import keep_freed_memory
from utils.data.loader import EpochBatches
from utils.log import LOGGER, colorstr
from utils.train.early_stopping import EarlyStopping
from utils.train.optim import warmup_iters
from utils.train.results import LR_KEYS, RESULT_KEYS, STEP0_EPOCH, TRAIN_LOSS_KEYS, row_values


def validate(state: TrainState, model, final: bool = False) -> ValResult:
    """The val split with the training loss; the final call adds plots, per-class rows and COCO's json."""
    is_coco = str(state.data.get("val", "")).endswith("val2017.txt")
    settings = ValSettings(iou_thres=0.65 if final and is_coco else 0.6, single_cls=state.opt.single_cls)
    outputs = ValOutputs(state.save_dir, plots=final and not state.opt.noplots, save_json=final and is_coco,
                         verbose=final)
    return validate_model(model, state.val_loader, state.data, outputs, settings=settings,
                          compute_loss=state.compute_loss, half=state.cuda, callbacks=state.callbacks)


def save_checkpoints(state: TrainState, epoch: int, fi: float, final: bool, metrics: dict) -> None:
    opt = state.opt
    if opt.nosave and not final:
        return
    # fp32 while training, so a resumed run continues from exactly the saved state; stripped to fp16 at the end
    scaler = state.scaler.state_dict() if state.scaler.is_enabled() else None
    ckpt = make_checkpoint(state.model, epoch=epoch, best_fitness=state.best_fitness, metrics=metrics,
                           hyp=state.hyp, opt=plain_options(opt), optimizer=state.optimizer, ema=state.ema,
                           half=False, extra={"scaler": scaler})
    last, best = state.wdir / "last.pt", state.wdir / "best.pt"
    if state.best_fitness == fi:
        save_checkpoint(ckpt, best)
    if opt.save_period > 0 and epoch % opt.save_period == 0:
        save_checkpoint(ckpt, state.wdir / f"epoch{epoch}.pt")
    save_checkpoint(ckpt, last)  # last: the commit point of the epoch (see the module doc)
    kill_point("epoch-saved")  # test hook (utils/kill_points.py)
    state.callbacks.run("on_model_save", last, epoch, final, state.best_fitness, fi)


def end_of_epoch(state: TrainState, epoch: int, mloss, lrs, stopper: EarlyStopping) -> bool:
    """Rank 0: validate, log, save. Returns whether to stop early."""
    opt = state.opt
    final = epoch + 1 == opt.epochs
    state.ema.update_attr(state.model, include=["yaml", "nc", "names", "stride"])
    result = ValResult.zeros(state.data["nc"])
    if not opt.noval or final:
        result = validate(state, state.ema.ema)
        state.maps = result.maps
    fi = result.fitness
    state.best_fitness = max(state.best_fitness, fi)
    row = {**dict(zip(TRAIN_LOSS_KEYS, mloss.tolist())), **result.columns(), **dict(zip(LR_KEYS, lrs))}
    state.callbacks.run("on_fit_epoch_end", row_values(row, RESULT_KEYS), epoch)
    kill_point("results-row")  # test hook (utils/kill_points.py)
    save_checkpoints(state, epoch, fi, final, result.columns())
    return stopper(epoch, fi)


def score_starting_model(state: TrainState) -> None:
    """--epochs 0, rank 0: validate the model training would start from (built, transferred, AutoAnchor'd and
    fp16-rounded as for training), write it as results.csv's one row, numbered STEP0_EPOCH, and save it as
    last.pt and best.pt (final_validation strips and validates them as after any run)."""
    state.callbacks.run("on_train_start")
    state.ema.update_attr(state.model, include=["yaml", "nc", "names", "stride"])
    result = validate(state, state.ema.ema)
    state.maps, state.best_fitness = result.maps, result.fitness
    lrs = [g["lr"] for g in state.optimizer.param_groups]
    row = {**dict.fromkeys(TRAIN_LOSS_KEYS, float("nan")), **result.columns(), **dict(zip(LR_KEYS, lrs))}
    state.callbacks.run("on_fit_epoch_end", row_values(row, RESULT_KEYS), STEP0_EPOCH)
    save_checkpoints(state, STEP0_EPOCH, result.fitness, True, result.columns())


def train_loop(state: TrainState) -> None:
    opt = state.opt
    nb = len(state.train_loader)
    nw = warmup_iters(state.hyp["warmup_epochs"], nb)
    state.maps = np.zeros(state.data["nc"])
    stopper = EarlyStopping(opt.patience)
    stopper.best_fitness = state.best_fitness
    LOGGER.info(f"Image sizes {opt.imgsz} train, {opt.imgsz} val\n"
                f"Using {state.train_loader.num_workers} dataloader workers\n"
                f"Logging results to {colorstr('bold', str(state.save_dir))}\n"
                f"Starting training for {opt.epochs} epochs...")
    state.callbacks.run("on_train_start")
    batch_sampler = state.train_loader.batch_sampler
    if isinstance(batch_sampler, EpochBatches):
        batch_sampler.start_epoch = state.start_epoch
        state.batches = iter(state.train_loader)  # starts the workers
    if state.device.type == "cpu":  # after the fork: the workers keep glibc's defaults and their small RSS
        keep_freed_memory()  # no page faults for activations after the first step (utils/cpu_alloc.py)
    for epoch in range(state.start_epoch, opt.epochs):
        mloss, lrs = train_one_epoch(state, epoch, nb, nw)
        state.scheduler.step()
        stop = end_of_epoch(state, epoch, mloss, lrs, stopper) if state.main else False
        if broadcast_flag(stop):
            break
    state.batches = None  # stops the workers (they may be prefetching an epoch that will not come)


def final_validation(state: TrainState, t0: float) -> ValResult:
    """Strip both checkpoints, validate best.pt with plots and the per-class table."""
    done = max(state.opt.epochs - state.start_epoch, 0)
    LOGGER.info(f"\n{done} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
    result = ValResult.zeros(state.data["nc"])
    last, best = state.wdir / "last.pt", state.wdir / "best.pt"
    for f in (last, best):
        if not f.exists():
            continue
        strip_optimizer(f)
        if f is best:
            LOGGER.info(f"\nValidating {f}...")
            model = model_from_checkpoint(load_checkpoint(f)).float().to(state.device).eval()
            model.nc = state.data["nc"]
            result = validate(state, model.half() if state.cuda else model, final=True)
    state.callbacks.run("on_train_end")
    LOGGER.info(f"Results saved to {colorstr('bold', str(state.save_dir))}")
    return result
