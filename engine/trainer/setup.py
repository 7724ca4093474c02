"""The first phases: the run directory and its records, the model, the hyperparameters settled once."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn
import yaml

from engine.trainer.seeds import model_init_seed
from engine.trainer.state import TrainState, plain_options
from models.gates import gate_from_scratch
from models.load import model_from_checkpoint, pretrained_model
from models.yolo import Model, check_input_channels
from utils.atomic_files import write_text_atomic
from utils.checkpoint import check_resumable, load_checkpoint
from utils.cli import InputError
from utils.data.dataset_yaml import check_dataset
from utils.log import LOGGER, colorstr
from utils.torch_utils import check_img_size, out_of_place_activations, seed_rngs
from utils.train.autobatch import AUTO, autobatch
from utils.train.hyp import load_hyp, settle_hyp
from utils.train.loggers import TrainLoggers
from utils.train.resume import check_epochs_left, stored_option_differences, tidy_run_for_resume


def setup(state: TrainState) -> None:
    """The checkpoint being resumed, hyp file, run directory, hyp.yaml/opt.yaml, loggers, model-init seed,
    dataset yaml."""
    opt = state.opt
    if isinstance(opt.epochs, bool) or not isinstance(opt.epochs, int) or opt.epochs < 0:
        raise InputError(f"--epochs {opt.epochs!r}: must be a whole number >= 0 (0 validates the starting model)")
    state.save_dir = Path(opt.save_dir)
    if opt.resume:  # checked before anything in the run folder is rewritten
        open_resumed_checkpoint(state)
    state.hyp_source = load_hyp(opt.hyp)
    LOGGER.info(colorstr("hyperparameters: ") + ", ".join(f"{k}={v}" for k, v in state.hyp_source.items()))
    if state.main:
        state.wdir.mkdir(parents=True, exist_ok=True)
        # the file's values, as YOLOv5 writes them: reusable as --hyp (the settled ones go into the checkpoints)
        write_text_atomic(state.save_dir / "hyp.yaml", yaml.safe_dump(state.hyp_source, sort_keys=False))
        write_text_atomic(state.save_dir / "opt.yaml", yaml.safe_dump(plain_options(opt), sort_keys=False))
        TrainLoggers(state.save_dir, plots=not opt.noplots).attach(state.callbacks)
    seed_rngs(model_init_seed(opt.seed))  # identical initial weights on every rank
    state.data = check_dataset(opt.data)
    if opt.single_cls:
        state.data["names"], state.data["nc"] = ["item"], 1


def open_resumed_checkpoint(state: TrainState) -> None:
    """--resume: the checkpoint (ours, unfinished, with epochs left), then the run folder tidied after a kill.
    Options come from the run folder (train.py); the checkpoint's stored copy is only compared for a warning."""
    opt = state.opt
    state.ckpt = check_resumable(load_checkpoint(opt.weights))
    check_epochs_left(state.ckpt["epoch"], opt.epochs, opt.weights)
    differ = stored_option_differences(state.ckpt.get("opt"), plain_options(opt))
    if differ:
        LOGGER.warning(f"WARNING: {opt.weights} stores other options than {state.save_dir / 'opt.yaml'} "
                       f"({', '.join(differ)}); the checkpoint's are ignored, the run folder's are used")
    if state.main:
        tidy_run_for_resume(state.save_dir, state.ckpt["epoch"])


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


def build_model(state: TrainState) -> None:
    """From the checkpoint being resumed, from pretrained --weights into --cfg, or from scratch."""
    opt, nc, anchors = state.opt, state.data["nc"], state.hyp_source.get("anchors")
    weights = str(opt.weights or "")
    if opt.resume:
        model = model_from_checkpoint(state.ckpt)  # loaded and checked by setup()
    elif weights.endswith(".pt"):
        exclude = ["anchor"] if opt.cfg or anchors else []  # v6.1: new anchors when the yaml is given
        model, _ = pretrained_model(weights, opt.cfg, nc, anchors, exclude, attn_init=opt.attn_init or "identity")
    else:
        model = Model(opt.cfg, ch=3, nc=nc, anchors=anchors)
        if opt.attn_init == "identity":  # from scratch only when asked: there is no pretrained model to keep
            gate_from_scratch(model)
    check_input_channels(model, 3, "the dataset's images (loaded as RGB)")
    freeze_layers(model, opt.freeze)
    state.gs = max(int(model.stride.max()), 32)
    model.nc, model.names = nc, list(state.data["names"])  # as YOLOv5: checkpoints and users read them
    out_of_place_activations(model)
    state.model = model.to(state.device)


def settle_hyperparameters(state: TrainState) -> None:
    """--imgsz to a multiple of the grid (at least two cells), --batch-size -1 to AutoBatch's choice, then the
    one settled hyp of the run."""
    opt = state.opt
    opt.imgsz = check_img_size(opt.imgsz, state.gs, floor=state.gs * 2)
    if opt.batch_size == AUTO:
        opt.batch_size = autobatch(state.model, opt.imgsz, state.device)
        if state.main:  # the batch actually used, so --resume and readers of opt.yaml see it
            (state.save_dir / "opt.yaml").write_text(yaml.safe_dump(plain_options(opt), sort_keys=False))
    state.hyp = settle_hyp(state.hyp_source, nc=state.data["nc"], nl=state.model.model[-1].nl, imgsz=opt.imgsz,
                           batch_size=opt.batch_size, label_smoothing=opt.label_smoothing)
    LOGGER.info(f"Scaled weight_decay = {state.hyp['weight_decay']}")
