"""The data phase: train loader (every rank), val loader (rank 0), label plots, AutoAnchor, class weights."""
from __future__ import annotations

import numpy as np

from engine.trainer.distributed import LOCAL_RANK, WORLD_SIZE, broadcast_anchors
from engine.trainer.state import TrainState
from utils.data.loader import create_dataloader
from utils.log import colorstr
from utils.train.autoanchor import check_anchors
from utils.train.image_weights import labels_to_class_weights


def build_data(state: TrainState) -> None:
    opt, data, hyp = state.opt, state.data, state.hyp
    bs = opt.batch_size // WORLD_SIZE
    nc_check = None if opt.single_cls else data["nc"]
    state.train_loader, state.dataset = create_dataloader(
        data["train"], opt.imgsz, bs, state.gs, opt.single_cls, hyp=hyp, augment=True, cache=opt.cache,
        rect=opt.rect, rank=LOCAL_RANK, workers=opt.workers, image_weights=opt.image_weights,
        prefix=colorstr("train: "), shuffle=True, seed=opt.seed, nc=nc_check, continuous=not opt.image_weights)
    if state.main:
        state.val_loader = create_dataloader(
            data["val"], opt.imgsz, bs * 2, state.gs, opt.single_cls, hyp=hyp, cache=None if opt.noval else opt.cache,
            rect=True, rank=-1, workers=opt.workers * 2, pad=0.5, prefix=colorstr("val: "), nc=nc_check)[0]
        if not opt.resume:
            labels = np.concatenate([lb for lb in state.dataset.labels if len(lb)] or [np.zeros((0, 5))], 0)
            state.callbacks.run("on_pretrain_routine_end", labels, data["names"])
            if not opt.noautoanchor:
                check_anchors(state.dataset, state.model, thr=hyp["anchor_t"], imgsz=opt.imgsz, seed=opt.seed)
    if not opt.resume:
        state.model.half().float()  # as v6.1: round the (new) anchors and weights to fp16 precision once
    broadcast_anchors(state.model)
    state.class_weights = labels_to_class_weights(state.dataset.labels, data["nc"]).to(state.device) * data["nc"]
