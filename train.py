"""Train a YOLOv5 (attention) detector on a dataset yaml: the command line around the trainer (engine/trainer/).

Usage:
    python train.py                       # the built-in demo (data/demo.yaml): yolov5n_TripletAttention, shapes set
    python train.py --data coco128.yaml --cfg yolov5s_CGA.yaml --weights yolov5n.pt   # YOLOv5's defaults: 640, 300 ep.
    torchrun --nproc_per_node 2 train.py --device 0,1 ...      # DistributedDataParallel (gloo on CPU)
    python train.py --resume [runs/train/exp/weights/last.pt] [--epochs N]   # N: extend or shorten the run
    python train.py --weights yolov5n.pt --cfg yolov5n_SE.yaml --epochs 0    # score the starting model only
    python train.py --data coco128.yaml --epochs 10 --evolve [300]   # hyperparameter evolution -> runs/evolve/exp

Here: the options, their defaults (the demo's without --data, YOLOv5's with it: engine/train_defaults.py),
--resume's options and train.run(**kwargs). The phases
(setup, model, data, optimization, epoch loop, final validation) live in engine/trainer/.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.cpu_alloc import passive_omp_waits  # noqa: E402  (imports no torch)

passive_omp_waits()  # before torch loads, or it has no effect (see utils/cpu_alloc.py)

from engine.evolve import evolve  # noqa: E402
from engine.train_defaults import fill_unset, training_defaults  # noqa: E402
from engine.trainer import close_distributed, init_distributed, train  # noqa: E402
from models.config import resolve_cfg  # noqa: E402
from utils.callbacks import Callbacks  # noqa: E402
from utils.cli import InputError, run_cli  # noqa: E402
from utils.train.checks import check_batch_size  # noqa: E402
from utils.log import LOGGER  # noqa: E402
from utils.run_dirs import increment_path, latest_run  # noqa: E402
from utils.train.resume import resume_options as run_folder_options  # noqa: E402

# The model trained from scratch when neither --cfg nor --weights is given (the demo's, and any other run's).
DEMO_CFG, DEMO_CFG_FALLBACK = "yolov5n_TripletAttention.yaml", "yolov5n.yaml"
DEFAULT_PROJECT = str(ROOT / "runs" / "train")


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
    # None = not given: filled by fill_defaults from the demo's settings (no --data) or YOLOv5's (--data given)
    p.add_argument("--data", type=str, default=None, help="dataset yaml (default: the built-in demo, data/demo.yaml)")
    p.add_argument("--hyp", type=str, default=None,
                   help="hyperparameters yaml, a path or a name in data/hyps/ (default hyp.scratch-low.yaml; the "
                        "demo's own without --data)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs to train (default 300; the demo's own without --data); 0 validates the starting "
                        "model only; with --resume: extend or shorten the run to this many")
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all devices, -1 for AutoBatch")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=None,
                   help="train, val image size in pixels (default 640; the demo's own without --data)")
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume most recent training (or a last.pt)")
    p.add_argument("--nosave", action="store_true", help="only save final checkpoint")
    p.add_argument("--noval", action=argparse.BooleanOptionalAction, default=None,
                   help="only validate the final epoch (default no; yes for the demo without --data)")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--evolve", type=int, nargs="?", const=300,
                   help="evolve hyperparameters for x generations (default 300), each a training run")
    p.add_argument("--cache", type=str, nargs="?", const="ram", help="--cache images in 'ram' (default) or 'disk'")
    p.add_argument("--image-weights", action="store_true", help="use weighted image selection for training")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", type=str, choices=["SGD", "Adam", "AdamW"], default=None,
                   help="optimizer (default SGD; the demo's own without --data)")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm, only available in DDP mode")
    p.add_argument("--workers", type=int, default=2, help="max dataloader workers (per RANK in DDP mode)")
    p.add_argument("--project", default=DEFAULT_PROJECT, help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="EarlyStopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="save checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--attn-init", choices=["identity", "plain"], default=None,
                   help="inserted attention layers start as the identity (default with --weights: the pretrained "
                        "model's mAP is kept) or plain (default from scratch, as papers insert blocks)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast on CPU (CUDA always uses fp16 AMP)")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--local_rank", type=int, default=-1, help="DDP parameter, do not modify")
    return p.parse_known_args(argv)[0] if known else p.parse_args(argv)


def resume_options(opt: argparse.Namespace) -> argparse.Namespace:
    """--resume [last.pt]: the options of the run folder the checkpoint belongs to (<run>/opt.yaml and
    <run>/hyp.yaml, never those stored in the checkpoint), writing into that folder; --epochs, when given, extends
    or shortens the run (utils/train/resume.py)."""
    ckpt = Path(opt.resume) if isinstance(opt.resume, (str, Path)) and str(opt.resume) not in ("True", "") \
        else latest_run(Path(opt.project).parent if opt.project else ROOT / "runs")
    defaults = vars(parse_opt(True, argv=[]))
    given = {k: v for k, v in vars(opt).items()
             if k not in ("resume", "project", "local_rank") and k in defaults and v != defaults[k]}
    new = argparse.Namespace(**run_folder_options(ckpt, defaults, given))
    new.local_rank = opt.local_rank
    LOGGER.info(f"Resuming training from {ckpt}")
    return new


def fill_defaults(opt: argparse.Namespace) -> argparse.Namespace:
    """Options left unset: the default model without --cfg/--weights; data, image size, epochs, optimizer, hyp
    and validation from the demo's settings without --data, YOLOv5's defaults with it."""
    if not opt.cfg and not str(opt.weights or "").endswith(".pt"):
        opt.cfg = default_cfg()
    return fill_unset(opt, training_defaults(data_given=opt.data is not None))


def evolve_options(opt: argparse.Namespace) -> argparse.Namespace:
    """--evolve N: at least one generation of at least one epoch, one process; runs/evolve/ unless --project is
    given; --resume continues the evolution in an existing folder (as YOLOv5: resume becomes exist_ok)."""
    if opt.evolve < 1:
        raise InputError(f"--evolve {opt.evolve}: the number of generations must be at least 1, such as 300")
    if int(os.getenv("WORLD_SIZE", 1)) > 1:
        raise InputError("--evolve runs one training after another in a single process; start it without torchrun")
    if opt.epochs < 1:
        raise InputError(f"--evolve with --epochs {opt.epochs}: each generation must train at least 1 epoch")
    if opt.project == DEFAULT_PROJECT:
        opt.project = str(ROOT / "runs" / "evolve")
    opt.exist_ok, opt.resume = opt.exist_ok or bool(opt.resume), False
    return opt


def main(opt: argparse.Namespace, callbacks: Callbacks | None = None) -> tuple:
    if opt.resume and opt.evolve is None:
        opt = resume_options(opt)
    else:
        opt = fill_defaults(opt)
        if opt.evolve is not None:
            opt = evolve_options(opt)
        opt.save_dir = str(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok))
    check_batch_size(opt.batch_size, int(os.getenv("WORLD_SIZE", 1)))
    device = init_distributed(opt)
    try:
        return evolve(opt, device, callbacks) if opt.evolve else train(opt, device, callbacks).as_tuple()
    finally:
        close_distributed()


def run(callbacks: Callbacks | None = None, **kwargs) -> tuple:
    """train.run(data='data/shapes.yaml', imgsz=64, epochs=1, ...) -> final (P, R, mAP50, mAP50-95, box, obj, cls)
    of best.pt, as YOLOv5 returns it; engine.trainer.train(opt, device) returns the same as a named ValResult."""
    opt = parse_opt(True, argv=[])
    unknown = [k for k in kwargs if not hasattr(opt, k)]
    if unknown:
        raise TypeError(f"train.run() got unknown options {unknown}")
    for k, v in kwargs.items():
        setattr(opt, k, v)
    return main(opt, callbacks)


if __name__ == "__main__":
    run_cli(lambda: main(parse_opt()))
