"""Train a YOLOv5 (attention) detector on a dataset yaml.

Usage:
    python train.py                       # embedded demo: yolov5n_TripletAttention on data/shapes.yaml, ~5 min on 2 cores
    python train.py --data coco128.yaml --cfg yolov5s_CGA.yaml --weights yolov5n.pt --img 640
    torchrun --nproc_per_node 2 train.py --device 0,1 ...      # DistributedDataParallel (gloo on CPU)
    python train.py --resume [runs/train/exp/weights/last.pt]

Phases, top to bottom: setup -> data -> model -> optimizer -> loop -> final validation. They share one
`Run` object; everything written besides checkpoints goes through callbacks (utils/callbacks.py).
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Idle OpenMP threads sleep instead of spinning: on a shared CPU, spinning threads of busy processes
# slow each other down several-fold (measured 10x on 2 cores). Only takes effect before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from models.config import resolve_cfg  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.train.autoanchor import check_anchors  # noqa: E402
from models.load import model_from_checkpoint, pretrained_model  # noqa: E402
from models.gates import gate_from_scratch  # noqa: E402
from utils.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint, strip_optimizer  # noqa: E402
from utils.callbacks import Callbacks, TrainLoggers  # noqa: E402
from utils.cpu_alloc import keep_freed_memory  # noqa: E402
from utils.train.results import RESULT_KEYS  # noqa: E402
from utils.data.dataset_yaml import check_dataset  # noqa: E402
from utils.train.early_stopping import EarlyStopping  # noqa: E402
from utils.train.ema import ModelEMA  # noqa: E402
from utils.train.image_weights import labels_to_class_weights, labels_to_image_weights  # noqa: E402
from utils.log import LOGGER, colorstr  # noqa: E402
from utils.train.loss import ComputeLoss, scale_hyp_gains  # noqa: E402
from utils.eval.metrics import fitness  # noqa: E402
from utils.train.optim import (NOMINAL_BATCH, accumulate_steps, apply_warmup, build_optimizer, build_scheduler,  # noqa: E402
                         scaled_weight_decay, warmup_iters)
from utils.run_dirs import increment_path, latest_run  # noqa: E402
from utils.torch_utils import de_parallel, out_of_place_activations, select_device  # noqa: E402
LOCAL_RANK = int(os.getenv("LOCAL_RANK", -1))
RANK = int(os.getenv("RANK", -1))
WORLD_SIZE = int(os.getenv("WORLD_SIZE", 1))

# The embedded demo (`python train.py`): sized to finish in a few minutes on 2 CPU cores.
DEMO_CFG, DEMO_CFG_FALLBACK = "yolov5n_TripletAttention.yaml", "yolov5n.yaml"
DEFAULT_HYP = ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"
DEMO_DATA = ROOT / "data" / "shapes.yaml"
DEMO_HYP = ROOT / "data" / "hyps" / "hyp.shapes-demo.yaml"  # used when --hyp is not given and --data is the demo set
DEMO_OPTIMIZER = "Adam"  # from scratch in a few hundred steps Adam converges far faster than SGD (measured)
MAX_BAD_STEPS = 5  # consecutive non-finite losses before training stops


def default_cfg() -> str:
    try:
        resolve_cfg(DEMO_CFG)
        return DEMO_CFG
    except FileNotFoundError:
        return DEMO_CFG_FALLBACK


def parse_opt(known: bool = False, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train YOLOv5 with attention blocks")
    p.add_argument("--weights", type=str, default="", help="initial weights path ('' = from scratch, the default)")
    p.add_argument("--cfg", type=str, default=None, help=f"model yaml (default {DEMO_CFG})")
    p.add_argument("--attn-init", choices=["identity", "plain"], default=None,
                   help="inserted attention layers start as the identity (default with --weights: the pretrained "
                        "model's mAP is kept) or plain (default from scratch, as papers insert blocks)")
    p.add_argument("--data", type=str, default=str(DEMO_DATA), help="dataset yaml")
    p.add_argument("--hyp", type=str, default=None,
                   help=f"hyperparameters yaml (default {DEFAULT_HYP.name}; {DEMO_HYP.name} for the demo data)")
    p.add_argument("--epochs", type=int, default=22)
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all devices")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=128, help="train, val image size (pixels)")
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume most recent training (or a last.pt)")
    p.add_argument("--nosave", action="store_true", help="only save final checkpoint")
    p.add_argument("--noval", action=argparse.BooleanOptionalAction, default=None,
                   help="only validate the final epoch (default: yes for the demo data, no otherwise)")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--cache", type=str, nargs="?", const="ram", help="--cache images in 'ram' (default) or 'disk'")
    p.add_argument("--image-weights", action="store_true", help="use weighted image selection for training")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", type=str, choices=["SGD", "Adam", "AdamW"], default=None,
                   help=f"optimizer (default SGD; {DEMO_OPTIMIZER} for the demo data)")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm, only available in DDP mode")
    p.add_argument("--workers", type=int, default=2, help="max dataloader workers (per RANK in DDP mode)")
    p.add_argument("--project", default=str(ROOT / "runs" / "train"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="EarlyStopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="save checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast on CPU (CUDA always uses fp16 AMP)")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--local_rank", type=int, default=-1, help="DDP parameter, do not modify")
    return p.parse_known_args(argv)[0] if known else p.parse_args(argv)


# ----------------------------------------------------------------------------------------- run state
@dataclass
class Run:
    """Everything the phases share. Filled in phase by phase."""
    opt: argparse.Namespace
    device: torch.device
    callbacks: Callbacks
    hyp: dict = None
    save_dir: Path = None
    data: dict = None
    model: nn.Module = None
    ema: ModelEMA = None
    optimizer: torch.optim.Optimizer = None
    scheduler: Any = None
    lf: Any = None
    scaler: Any = None
    train_loader: Any = None
    batches: Any = None  # one iterator over a continuous train loader for the whole run (None: per epoch)
    dataset: Any = None
    val_loader: Any = None
    compute_loss: ComputeLoss = None
    ckpt: dict = None
    start_epoch: int = 0
    best_fitness: float = 0.0
    gs: int = 32
    maps: np.ndarray = None
    channels_last: bool = False

    @property
    def main(self) -> bool:
        return RANK in (-1, 0)

    @property
    def wdir(self) -> Path:
        return self.save_dir / "weights"

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def _plain(opt: argparse.Namespace) -> dict:
    """Options as yaml/checkpoint-safe plain data."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opt).items()}


def epoch_seed(seed: int, epoch: int, rank: int = -1) -> int:
    """One seed per (run seed, epoch, rank): an epoch's data order and augmentation never depend on history."""
    return (seed * 1_000_003 + epoch * 7919 + max(rank, 0) * 104_729 + 1) % 2**31


def seed_epoch(run: Run, epoch: int) -> None:
    s = epoch_seed(run.opt.seed, epoch, RANK)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    gen = getattr(run.train_loader, "generator", None)
    if gen is not None:
        gen.manual_seed(s)  # the sampler's shuffle order and the workers' base seed
    sampler = getattr(run.train_loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


# ----------------------------------------------------------------------------------------- phase 1: setup
def setup(run: Run) -> None:
    """Hyperparameters, run directory, hyp.yaml/opt.yaml, loggers, dataset yaml."""
    opt = run.opt
    hyp = opt.hyp if isinstance(opt.hyp, dict) else yaml.safe_load(Path(opt.hyp).read_text())
    run.hyp = dict(hyp)
    run.save_dir = Path(opt.save_dir)
    LOGGER.info(colorstr("hyperparameters: ") + ", ".join(f"{k}={v}" for k, v in run.hyp.items()))
    if run.main:
        run.wdir.mkdir(parents=True, exist_ok=True)
        (run.save_dir / "hyp.yaml").write_text(yaml.safe_dump(run.hyp, sort_keys=False))
        (run.save_dir / "opt.yaml").write_text(yaml.safe_dump(_plain(opt), sort_keys=False))
        TrainLoggers(run.save_dir, plots=not opt.noplots).attach(run.callbacks)
    torch.manual_seed(epoch_seed(opt.seed, -1))  # model init: identical on every rank
    run.data = check_dataset(opt.data)
    if opt.single_cls:
        run.data["names"], run.data["nc"] = ["item"], 1



# ----------------------------------------------------------------------------------------- phase 2: model
def freeze_layers(model: nn.Module, freeze: list[int]) -> list[str]:
    """--freeze 10 freezes layers 0-9; --freeze 0 1 2 freezes exactly those. Returns frozen parameter names."""
    prefixes = [f"model.{x}." for x in (freeze if len(freeze) > 1 else range(freeze[0]))]
    frozen = []
    for k, v in model.named_parameters():
        v.requires_grad = not any(k.startswith(x) for x in prefixes)
        if not v.requires_grad:
            frozen.append(k)
    if frozen:
        LOGGER.info(f"freezing {len(frozen)} parameters in layers {sorted({k.split('.')[1] for k in frozen}, key=int)}")
    return frozen


def build_model(run: Run) -> None:
    opt, hyp, nc = run.opt, run.hyp, run.data["nc"]
    weights = str(opt.weights or "")
    if opt.resume:
        run.ckpt = load_checkpoint(weights)
        model = model_from_checkpoint(run.ckpt)
    elif weights.endswith(".pt"):
        exclude = ["anchor"] if opt.cfg or hyp.get("anchors") else []  # v6.1: new anchors when the yaml is given
        model, _ = pretrained_model(weights, opt.cfg, nc, hyp.get("anchors"), exclude, attn_init=opt.attn_init or "identity")
    else:
        model = Model(opt.cfg, ch=3, nc=nc, anchors=hyp.get("anchors"))
        if opt.attn_init == "identity":
            gate_from_scratch(model)
    freeze_layers(model, opt.freeze)
    det = model.model[-1]
    run.gs = max(int(model.stride.max()), 32)
    run.hyp = scale_hyp_gains(hyp, nc, det.nl, opt.imgsz)
    run.hyp["label_smoothing"] = opt.label_smoothing
    model.nc, model.hyp, model.names = nc, run.hyp, list(run.data["names"])
    out_of_place_activations(model)
    run.model = model.to(run.device)


# ----------------------------------------------------------------------------------------- phase 3: data
def check_img_size(imgsz: int, gs: int) -> int:
    new = max(math.ceil(imgsz / gs) * gs, gs * 2)
    if new != imgsz:
        LOGGER.warning(f"WARNING: --img-size {imgsz} must be a multiple of max stride {gs}, updating to {new}")
    return new


def build_data(run: Run) -> None:
    """Train loader (every rank), val loader (rank 0), label plots and AutoAnchor on a fresh run."""
    from utils.data.loader import create_dataloader
    opt, data, hyp = run.opt, run.data, run.hyp
    opt.imgsz = check_img_size(opt.imgsz, run.gs)
    bs = opt.batch_size // WORLD_SIZE
    nc_check = None if opt.single_cls else data["nc"]
    run.train_loader, run.dataset = create_dataloader(
        data["train"], opt.imgsz, bs, run.gs, opt.single_cls, hyp=hyp, augment=True, cache=opt.cache, rect=opt.rect,
        rank=LOCAL_RANK, workers=opt.workers, image_weights=opt.image_weights, prefix=colorstr("train: "),
        shuffle=True, seed=opt.seed, nc=nc_check, continuous=not opt.image_weights)
    if run.main:
        run.val_loader = create_dataloader(
            data["val"], opt.imgsz, bs * 2, run.gs, opt.single_cls, hyp=hyp, cache=None if opt.noval else opt.cache,
            rect=True, rank=-1, workers=opt.workers * 2, pad=0.5, prefix=colorstr("val: "), nc=nc_check)[0]
        if not opt.resume:
            labels = np.concatenate([lb for lb in run.dataset.labels if len(lb)] or [np.zeros((0, 5))], 0)
            run.callbacks.run("on_pretrain_routine_end", labels, data["names"])
            if not opt.noautoanchor:
                check_anchors(run.dataset, run.model, thr=hyp["anchor_t"], imgsz=opt.imgsz, seed=opt.seed)
    if not opt.resume:
        run.model.half().float()  # as v6.1: round the (new) anchors and weights to fp16 precision once
    if WORLD_SIZE > 1:  # every rank starts from rank 0's anchors
        dist.broadcast(de_parallel(run.model).model[-1].anchors, 0)
    run.model.class_weights = labels_to_class_weights(run.dataset.labels, data["nc"]).to(run.device) * data["nc"]


# ----------------------------------------------------------------------------------------- phase 4: optimizer
def nominal_batch(hyp: dict) -> int:
    """Batch size gradients are accumulated to: 64 as v6.1 unless the hyp file sets 'nbs'."""
    return int(hyp.get("nbs", NOMINAL_BATCH))


def build_optimization(run: Run) -> None:
    """Parameter groups, LR schedule, EMA, resume state, DDP wrapping, AMP scaler, loss."""
    opt, hyp = run.opt, run.hyp
    hyp["weight_decay"] = scaled_weight_decay(hyp["weight_decay"], opt.batch_size, nominal_batch(hyp))
    LOGGER.info(f"Scaled weight_decay = {hyp['weight_decay']}")
    run.optimizer = build_optimizer(run.model, opt.optimizer, hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    run.scheduler, run.lf = build_scheduler(run.optimizer, opt.epochs, hyp["lrf"], opt.cos_lr)
    run.ema = ModelEMA(run.model) if run.main else None
    run.scaler = torch.amp.GradScaler("cuda", enabled=run.cuda)
    if run.ckpt is not None:
        restore_training_state(run)
    run.scheduler.last_epoch = run.start_epoch - 1
    if opt.sync_bn and LOCAL_RANK != -1:
        if run.cuda:
            run.model = nn.SyncBatchNorm.convert_sync_batchnorm(run.model).to(run.device)
            LOGGER.info("Using SyncBatchNorm()")
        else:
            LOGGER.warning("WARNING: --sync-bn needs CUDA devices; ignored on CPU")
    run.channels_last = not run.cuda and try_channels_last(run.model, run.gs)
    if LOCAL_RANK != -1:
        ids = [LOCAL_RANK] if run.cuda else None
        run.model = nn.parallel.DistributedDataParallel(run.model, device_ids=ids, output_device=ids[0] if ids else None)
    run.compute_loss = ComputeLoss(run.model)


def try_channels_last(model: nn.Module, gs: int) -> bool:
    """NHWC activations run CPU convolutions ~25% faster; keep them only if every block accepts them."""
    model.to(memory_format=torch.channels_last)
    probe = torch.zeros(1, 3, gs * 2, gs * 2, device=next(model.parameters()).device)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(probe.contiguous(memory_format=torch.channels_last))
        return True
    except RuntimeError as e:  # e.g. a block that .view()s flattened spatial dims
        LOGGER.info(f"channels_last not used ({type(e).__name__}: {str(e)[:80]})")
        model.to(memory_format=torch.contiguous_format)
        return False
    finally:
        model.train(was_training)


def restore_training_state(run: Run) -> None:
    ckpt, opt = run.ckpt, run.opt
    if ckpt.get("optimizer") is None:
        raise ValueError(f"{opt.weights} holds no optimizer state (stripped after training finished); nothing to resume")
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.best_fitness = float(ckpt.get("best_fitness") or 0.0)
    if run.ema is not None and ckpt.get("ema") is not None:
        run.ema.ema.load_state_dict(ckpt["ema"])
        run.ema.updates = int(ckpt["updates"])
    scaler = (ckpt.get("meta") or {}).get("scaler")
    if scaler and run.scaler.is_enabled():
        run.scaler.load_state_dict(scaler)
    run.start_epoch = int(ckpt["epoch"]) + 1
    if run.start_epoch >= opt.epochs:
        raise ValueError(f"{opt.weights} has finished training to {opt.epochs} epochs, nothing to resume")
    LOGGER.info(f"Resuming training from {opt.weights} from epoch {run.start_epoch} to {opt.epochs} total epochs")
    run.ckpt = None  # free the memory


# ----------------------------------------------------------------------------------------- phase 5: loop
def autocast(run: Run):
    if run.cuda:
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(run.opt.bf16))


def optimizer_step(run: Run) -> None:
    run.scaler.step(run.optimizer)  # a plain optimizer.step() when the scaler is disabled
    run.scaler.update()
    run.optimizer.zero_grad()
    if run.ema:
        run.ema.update(run.model)


def loss_is_finite(loss: torch.Tensor) -> bool:
    """All ranks must agree, or DDP would hang on a backward that one rank skipped."""
    ok = torch.isfinite(loss.detach()).all().float()
    if WORLD_SIZE > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def resample_images(run: Run, epoch: int) -> None:
    """--image-weights: draw the epoch's images by class rarity and per-class mAP shortfall."""
    nc = run.data["nc"]
    cw = de_parallel(run.model).class_weights.cpu().numpy() * (1 - run.maps) ** 2 / nc
    iw = labels_to_image_weights(run.dataset.labels, nc, cw)
    run.dataset.indices = random.choices(range(run.dataset.n), weights=iw, k=run.dataset.n)


def multi_scale(imgs: torch.Tensor, imgsz: int, gs: int) -> torch.Tensor:
    sz = random.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + gs) // gs * gs
    sf = sz / max(imgs.shape[2:])
    if sf == 1:
        return imgs
    ns = [math.ceil(x * sf / gs) * gs for x in imgs.shape[2:]]
    return nn.functional.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)


def progress(run: Run, nb: int):
    from tqdm import tqdm
    LOGGER.info(("\n" + "%10s" * 7) % ("Epoch", "gpu_mem", "box", "obj", "cls", "labels", "img_size"))
    return tqdm(total=nb, bar_format="{l_bar}{bar:10}{r_bar}{bar:-10b}", file=sys.stderr)


def train_one_epoch(run: Run, epoch: int, nb: int, nw: int) -> tuple[torch.Tensor, list[float]]:
    """One pass over the training set; returns mean (box, obj, cls) losses and the epoch's LRs."""
    opt, model = run.opt, run.model
    model.train()
    seed_epoch(run, epoch)
    if opt.image_weights:
        resample_images(run, epoch)
    mloss, n_ok, bad_in_row, pending = torch.zeros(3, device=run.device), 0, 0, False
    last_opt_step = nb * epoch - 1  # the previous epoch ended with a step (see the flush below)
    nbs = nominal_batch(run.hyp)
    accumulate = accumulate_steps(opt.batch_size, nbs)
    pbar = progress(run, nb) if run.main else None
    run.callbacks.run("on_train_epoch_start", epoch)
    run.optimizer.zero_grad()
    batches = run.train_loader if run.batches is None else itertools.islice(run.batches, nb)
    for i, (imgs, targets, paths, _) in enumerate(batches):
        ni = i + nb * epoch  # integrated batches since the start of training
        imgs = imgs.to(run.device, non_blocking=True).float() / 255
        if run.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        if nw and ni <= nw:  # warm-up (none when warmup_epochs is 0)
            accumulate = apply_warmup(run.optimizer, ni, nw, epoch, run.lf, run.hyp, opt.batch_size, nbs)
        if opt.multi_scale:
            imgs = multi_scale(imgs, opt.imgsz, run.gs)
        with autocast(run):
            pred = model(imgs)
            loss, loss_items = run.compute_loss(pred, targets.to(run.device))
        if WORLD_SIZE > 1:
            loss *= WORLD_SIZE  # DDP averages gradients over ranks; v6.1 scales the loss back up
        if not loss_is_finite(loss):
            bad_in_row = skip_bad_step(run, epoch, i, bad_in_row + 1)
            continue
        bad_in_row = 0
        run.scaler.scale(loss).backward()
        pending = True
        if ni - last_opt_step >= accumulate:
            optimizer_step(run)
            last_opt_step, pending = ni, False
        mloss = (mloss * n_ok + loss_items) / (n_ok + 1)
        n_ok += 1
        if pbar is not None:
            mem = f"{torch.cuda.memory_reserved() / 1e9:.3g}G" if run.cuda else "0G"
            pbar.set_description(("%10s" * 2 + "%10.4g" * 5) % (
                f"{epoch}/{opt.epochs - 1}", mem, *mloss.tolist(), targets.shape[0], imgs.shape[-1]))
            pbar.update(1)
            run.callbacks.run("on_train_batch_end", ni, imgs, targets, paths)
    if pending:  # gradients never cross an epoch boundary, so last.pt holds the complete state
        optimizer_step(run)
    if pbar is not None:
        pbar.close()
    run.callbacks.run("on_train_epoch_end", epoch)
    return mloss.cpu(), [g["lr"] for g in run.optimizer.param_groups]


def skip_bad_step(run: Run, epoch: int, i: int, bad_in_row: int) -> int:
    """No backward for this batch (gradients already accumulated stay); give up after MAX_BAD_STEPS in a row."""
    LOGGER.warning(f"WARNING: non-finite loss at epoch {epoch} batch {i}; step skipped "
                   f"({bad_in_row} in a row, stopping at {MAX_BAD_STEPS})")
    if bad_in_row >= MAX_BAD_STEPS:
        raise FloatingPointError(f"training stopped: {bad_in_row} consecutive non-finite losses at epoch {epoch} "
                                 f"batch {i}; last.pt still holds the last good epoch. Try a lower --hyp lr0, "
                                 f"fp32 (no --bf16), or check the labels")
    return bad_in_row


def validate(run: Run, model: nn.Module, final: bool = False) -> tuple[tuple, np.ndarray]:
    """((P, R, mAP50, mAP50-95, box, obj, cls), per-class mAPs) from val.run on the val loader."""
    try:
        import val as validator
    except ImportError as e:
        LOGGER.warning(f"WARNING: val.py not importable ({e}); metrics reported as 0")
        return (0.0,) * 7, np.zeros(run.data["nc"])
    is_coco = str(run.data.get("val", "")).endswith("val2017.txt")
    results, maps, _ = validator.run(
        run.data, batch_size=run.opt.batch_size // WORLD_SIZE * 2, imgsz=run.opt.imgsz, model=model,
        iou_thres=(0.65 if is_coco else 0.60) if final else 0.6, single_cls=run.opt.single_cls,
        dataloader=run.val_loader, save_dir=run.save_dir, save_json=final and is_coco, verbose=final,
        plots=final and not run.opt.noplots, callbacks=run.callbacks, compute_loss=run.compute_loss,
        half=run.cuda)
    return tuple(float(x) for x in results), np.asarray(maps)


def save_checkpoints(run: Run, epoch: int, fi: float, final: bool, metrics: dict) -> None:
    opt = run.opt
    if opt.nosave and not final:
        return
    # fp32 while training, so a resumed run continues from exactly the saved state; stripped to fp16 at the end
    scaler = run.scaler.state_dict() if run.scaler.is_enabled() else None
    ckpt = make_checkpoint(run.model, epoch=epoch, best_fitness=run.best_fitness, metrics=metrics, hyp=run.hyp,
                           opt=_plain(opt), optimizer=run.optimizer, ema=run.ema, half=False, extra={"scaler": scaler})
    last, best = run.wdir / "last.pt", run.wdir / "best.pt"
    save_checkpoint(ckpt, last)
    if run.best_fitness == fi:
        save_checkpoint(ckpt, best)
    if opt.save_period > 0 and epoch % opt.save_period == 0:
        save_checkpoint(ckpt, run.wdir / f"epoch{epoch}.pt")
    run.callbacks.run("on_model_save", last, epoch, final, run.best_fitness, fi)


def end_of_epoch(run: Run, epoch: int, mloss, lrs, stopper: EarlyStopping) -> bool:
    """Rank 0: validate, log, save. Returns whether to stop early."""
    opt = run.opt
    final = epoch + 1 == opt.epochs
    run.ema.update_attr(run.model, include=["yaml", "nc", "hyp", "names", "stride", "class_weights"])
    results = (0.0,) * 7
    if not opt.noval or final:
        results, run.maps = validate(run, run.ema.ema)
    fi = float(fitness(np.array(results).reshape(1, -1))[0])
    run.best_fitness = max(run.best_fitness, fi)
    run.callbacks.run("on_fit_epoch_end", [*mloss.tolist(), *results, *lrs], epoch)
    save_checkpoints(run, epoch, fi, final, dict(zip(RESULT_KEYS[3:10], results)))
    return stopper(epoch, fi)


def broadcast_flag(flag: bool) -> bool:
    if WORLD_SIZE == 1:
        return flag
    t = torch.tensor([float(flag)])
    dist.broadcast(t, 0)
    return bool(t.item())


def train_loop(run: Run) -> None:
    opt = run.opt
    nb = len(run.train_loader)
    nw = warmup_iters(run.hyp["warmup_epochs"], nb)
    run.maps = np.zeros(run.data["nc"])
    stopper = EarlyStopping(opt.patience)
    stopper.best_fitness = run.best_fitness
    LOGGER.info(f"Image sizes {opt.imgsz} train, {opt.imgsz} val\n"
                f"Using {run.train_loader.num_workers} dataloader workers\n"
                f"Logging results to {colorstr('bold', str(run.save_dir))}\n"
                f"Starting training for {opt.epochs} epochs...")
    from utils.data.loader import EpochBatches
    run.callbacks.run("on_train_start")
    batch_sampler = run.train_loader.batch_sampler
    if isinstance(batch_sampler, EpochBatches):
        batch_sampler.start_epoch = run.start_epoch
        run.batches = iter(run.train_loader)  # starts the workers
    if run.device.type == "cpu":  # after the fork: the workers keep glibc's defaults and their small RSS
        keep_freed_memory()  # no page faults for activations after the first step (utils/cpu_alloc.py)
    for epoch in range(run.start_epoch, opt.epochs):
        mloss, lrs = train_one_epoch(run, epoch, nb, nw)
        run.scheduler.step()
        stop = end_of_epoch(run, epoch, mloss, lrs, stopper) if run.main else False
        if broadcast_flag(stop):
            break
    run.batches = None  # stops the workers (they may be prefetching an epoch that will not come)


# ----------------------------------------------------------------------------------------- phase 6: final validation
def final_validation(run: Run, t0: float) -> tuple:
    """Strip both checkpoints, validate best.pt with plots and the per-class table."""
    done = max(run.opt.epochs - run.start_epoch, 0)
    LOGGER.info(f"\n{done} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
    results = (0.0,) * 7
    last, best = run.wdir / "last.pt", run.wdir / "best.pt"
    for f in (last, best):
        if not f.exists():
            continue
        strip_optimizer(f)
        if f is best:
            LOGGER.info(f"\nValidating {f}...")
            model = model_from_checkpoint(load_checkpoint(f)).float().to(run.device).eval()
            model.nc, model.hyp = run.data["nc"], run.hyp
            results, _ = validate(run, model.half() if run.cuda else model, final=True)
    run.callbacks.run("on_train_end")
    LOGGER.info(f"Results saved to {colorstr('bold', str(run.save_dir))}")
    return results


def train(run: Run) -> tuple:
    t0 = time.time()
    setup(run)
    build_model(run)
    build_data(run)
    build_optimization(run)
    train_loop(run)
    return final_validation(run, t0) if run.main else (0.0,) * 7


# ----------------------------------------------------------------------------------------- entry points
def resume_options(opt: argparse.Namespace) -> argparse.Namespace:
    """--resume [last.pt]: the run's own opt.yaml (beside weights/), pointed at that last.pt."""
    ckpt = Path(opt.resume) if isinstance(opt.resume, (str, Path)) and str(opt.resume) not in ("True", "") \
        else latest_run(Path(opt.project).parent if opt.project else ROOT / "runs")
    if not ckpt.is_file():
        raise FileNotFoundError(f"--resume checkpoint {ckpt} does not exist")
    saved_yaml = ckpt.parent.parent / "opt.yaml"
    saved = yaml.safe_load(saved_yaml.read_text()) if saved_yaml.is_file() else load_checkpoint(ckpt)["opt"]
    new = parse_opt(True, argv=[])
    vars(new).update(saved)
    new.cfg, new.weights, new.resume = "", str(ckpt), True
    new.save_dir = str(ckpt.parent.parent)
    LOGGER.info(f"Resuming training from {ckpt}")
    return new


def setup_ddp(opt: argparse.Namespace) -> torch.device:
    if LOCAL_RANK == -1:
        return select_device(opt.device, batch_size=opt.batch_size)
    if opt.image_weights:
        raise ValueError("--image-weights is not supported with DDP training")
    if opt.batch_size % WORLD_SIZE:
        raise ValueError(f"--batch-size {opt.batch_size} must be a multiple of WORLD_SIZE {WORLD_SIZE}")
    use_cuda = torch.cuda.is_available() and str(opt.device).lower() != "cpu"
    if use_cuda:
        if torch.cuda.device_count() <= LOCAL_RANK:
            raise ValueError(f"LOCAL_RANK {LOCAL_RANK} has no CUDA device ({torch.cuda.device_count()} visible)")
        torch.cuda.set_device(LOCAL_RANK)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return torch.device(f"cuda:{LOCAL_RANK}") if use_cuda else torch.device("cpu")


def fill_defaults(opt: argparse.Namespace) -> argparse.Namespace:
    """Options left unset: the demo model without --cfg/--weights; the demo hyp, optimizer and final-only
    validation for the demo data."""
    if not opt.cfg and not str(opt.weights or "").endswith(".pt"):
        opt.cfg = default_cfg()
    demo = isinstance(opt.data, (str, Path)) and Path(opt.data).name == DEMO_DATA.name
    opt.hyp = opt.hyp or str(DEMO_HYP if demo else DEFAULT_HYP)
    opt.optimizer = opt.optimizer or (DEMO_OPTIMIZER if demo else "SGD")
    if opt.noval is None:  # per-epoch validation would cost the 5-minute demo about a fifth of its time
        opt.noval = demo
    return opt


def main(opt: argparse.Namespace, callbacks: Callbacks | None = None) -> tuple:
    if opt.resume:
        opt = resume_options(opt)
    else:
        opt = fill_defaults(opt)
        opt.save_dir = str(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok))
    device = setup_ddp(opt)
    try:
        return train(Run(opt, device, callbacks or Callbacks()))
    finally:
        if WORLD_SIZE > 1 and dist.is_initialized():
            dist.destroy_process_group()


def run(callbacks: Callbacks | None = None, **kwargs) -> tuple:
    """train.run(data='data/shapes.yaml', imgsz=64, epochs=1, ...) -> final (P, R, mAP50, mAP50-95, box, obj, cls)."""
    opt = parse_opt(True, argv=[])
    unknown = [k for k in kwargs if not hasattr(opt, k)]
    if unknown:
        raise TypeError(f"train.run() got unknown options {unknown}")
    for k, v in kwargs.items():
        setattr(opt, k, v)
    return main(opt, callbacks)


if __name__ == "__main__":
    main(parse_opt())
