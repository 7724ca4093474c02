"""The validator's loop: pre-process, inference (+ loss), NMS and scoring per batch, then the summary over
everything seen (P, R, mAP50, mAP50-95 by YOLOv5's current rules) and the printed table."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from utils.boxes import scale_boxes, xywh2xyxy
from utils.callbacks import Callbacks
from utils.eval.metrics import IOU_THRESHOLDS, ConfusionMatrix, ap_per_class, match_predictions
from utils.eval.nms import NMSStats, non_max_suppression
from utils.eval.val_outputs import BatchPlotter, CocoJson, save_one_txt
from utils.log import LOGGER
from utils.torch_utils import autocast_for, cpu_threads

HEADER = ("%20s" + "%11s" * 6) % ("Class", "Images", "Labels", "P", "R", "mAP@.5", "mAP@.5:.95")
ROW = "%20s" + "%11i" * 2 + "%11.3g" * 4


@dataclass(frozen=True)
class ValSettings:
    """How predictions are made and filtered before scoring (YOLOv5's val.py defaults)."""
    conf_thres: float = 0.001
    iou_thres: float = 0.6
    max_det: int = 300
    single_cls: bool = False
    augment: bool = False  # test-time augmentation
    save_hybrid: bool = False  # the labels join the predictions (a sanity ceiling, not a measurement)
    bf16: bool = False  # CPU bfloat16 autocast for the forward (utils.torch_utils.check_bf16 says where it runs)


@dataclass
class Tally:
    """What one validation accumulates over its batches."""
    nc: int
    device: torch.device
    confusion: ConfusionMatrix | None
    stats: list = field(default_factory=list)  # per image: (correct (n, 10), conf (n,), pred cls (n,), label cls (m,))
    seen: int = 0
    dt: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # seconds: pre-process, inference, NMS
    nms: NMSStats = field(default_factory=NMSStats)

    def __post_init__(self):
        self.iouv = IOU_THRESHOLDS.to(self.device)
        self.loss = torch.zeros(3, device=self.device)
        self.images_per_class = np.zeros(self.nc, dtype=np.int64)


@dataclass
class Writers:
    """Where one validation writes besides its result: label txt files, batch plots, COCO json, callbacks."""
    save_dir: Path
    names: list
    save_txt: bool = False
    save_conf: bool = False
    plots: BatchPlotter | None = None
    coco: CocoJson | None = None
    callbacks: Callbacks = field(default_factory=Callbacks)


def time_sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def class_names(model_names, data_names, nc: int) -> list[str]:
    """Names for printing: the model's (as v6.1), else the dataset's, else placeholders."""
    for names in (model_names, data_names):
        if names is not None and len(names) == nc:
            return [str(n) for n in names]
    return ["item"] if nc == 1 else [f"class{i}" for i in range(nc)]


# --------------------------------------------------------------------------------------- one batch --

def score_batch(tally: Tally, out: Writers, preds, targets, im, paths, shapes, single_cls: bool) -> None:
    """Match every image's detections against its labels in original-image pixels, at each IoU threshold."""
    for si, pred in enumerate(preds):
        labels = targets[targets[:, 0] == si, 1:]
        shape, ratio_pad = shapes[si][0], shapes[si][1]
        tally.seen += 1
        if single_cls:
            pred[:, 5] = 0
        predn = pred.clone()
        scale_boxes(im.shape[2:], predn[:, :4], shape, ratio_pad)
        tbox = scale_boxes(im.shape[2:], xywh2xyxy(labels[:, 1:5]), shape, ratio_pad)
        labelsn = torch.cat((labels[:, 0:1], tbox), 1)
        if len(labels):
            tally.images_per_class[labels[:, 0].long().unique().cpu().numpy()] += 1
        if len(pred) or len(labels):
            correct = match_predictions(predn, labelsn, tally.iouv)  # re-matched per threshold, as YOLOv5 now
            tally.stats.append((correct.cpu(), pred[:, 4].cpu(), pred[:, 5].cpu(), labels[:, 0].cpu()))
        if tally.confusion is not None:
            tally.confusion.process_batch(predn, labelsn)
        if len(pred):
            save_image_outputs(out, predn, paths[si], shape)
        out.callbacks.run("on_val_image_end", pred, predn, Path(paths[si]), out.names, im[si])


def save_image_outputs(out: Writers, predn, path, shape) -> None:
    if out.save_txt:
        save_one_txt(predn, out.save_conf, shape, out.save_dir / "labels" / f"{Path(path).stem}.txt")
    if out.coco is not None:
        out.coco.add(predn, path)


def model_input(im: torch.Tensor, device: torch.device, half: bool, channels_last: bool) -> torch.Tensor:
    """uint8 batch -> float in [0, 1] on `device`. The NHWC reorder (when the model runs channels-last) is
    done on the uint8 tensor, a quarter of the bytes of the float one, and the division in place: one
    float pass instead of three (v6.1: float copy, divided copy, then the model's NHWC copy)."""
    im = im.to(device, non_blocking=True)
    if channels_last:
        im = im.contiguous(memory_format=torch.channels_last)
    x = im.half() if half else im.float()  # keeps the memory format
    return x.div_(255) if x is not im else x / 255  # in place only on our own copy, never the loader's tensor


def run_batches(backend, dataloader, tally: Tally, out: Writers, settings: ValSettings, compute_loss=None) -> None:
    """The loop: pre-process, inference (+ loss), NMS, scoring; each timed as v6.1 times them."""
    from tqdm import tqdm

    device, half, s = tally.device, backend.fp16, settings
    out.callbacks.run("on_val_start")
    pbar = tqdm(dataloader, desc=HEADER, bar_format="{l_bar}{bar:10}{r_bar}{bar:-10b}", file=sys.stderr)
    for batch_i, (im, targets, paths, shapes) in enumerate(pbar):
        out.callbacks.run("on_val_batch_start")
        t1 = time_sync(device)
        im = model_input(im, device, half, backend.channels_last)
        targets = targets.to(device)
        nb, _, height, width = im.shape
        t2 = time_sync(device)
        tally.dt[0] += t2 - t1
        with autocast_for(device, s.bf16):  # Detect decodes bf16 maps in fp32: pred stays fp32
            pred, raw = backend(im, augment=s.augment)
        tally.dt[1] += time_sync(device) - t2
        if compute_loss is not None and raw is not None:
            tally.loss += compute_loss([x.float() for x in raw], targets)[1]  # box, obj, cls
        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)  # to pixels
        lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if s.save_hybrid else []
        with cpu_threads(1, device):
            t3 = time_sync(device)
            preds = non_max_suppression(pred, s.conf_thres, s.iou_thres, labels=lb, multi_label=True,
                                        agnostic=s.single_cls, max_det=s.max_det, stats=tally.nms)
            tally.dt[2] += time_sync(device) - t3
            score_batch(tally, out, preds, targets, im, paths, shapes, s.single_cls)
        if out.plots is not None:
            out.plots.add(batch_i, im, targets, paths, preds)
        out.callbacks.run("on_val_batch_end", batch_i, im, targets, paths, shapes, preds)


# ------------------------------------------------------------------------------------------ summary --

def summarise(tally: Tally, names: list, plots: bool, save_dir: Path, submit=None) -> dict:
    """ap_per_class over everything seen -> P, R, mAP50, mAP50-95 (class means) and per-class arrays.
    plots: the PR/F1/P/R curves, drawn through submit(fn, *args) when given."""
    nc = tally.nc
    res = dict(mp=0.0, mr=0.0, map50=0.0, map=0.0, ap_class=np.zeros(0, int), nt=np.zeros(nc, int))
    if not tally.stats:
        return res
    stats = [torch.cat(x, 0).numpy() for x in zip(*tally.stats)]
    res["nt"] = np.bincount(stats[3].astype(np.int64), minlength=nc)
    if stats[0].any():
        # P and R at the smoothed-F1 peak, as YOLOv5 now (see utils/eval/metrics.py)
        _, _, p, r, _, ap, ap_class = ap_per_class(*stats, plot=plots, save_dir=save_dir, names=names,
                                                   submit=submit)
        ap50, ap = ap[:, 0], ap.mean(1)
        res.update(mp=p.mean(), mr=r.mean(), map50=ap50.mean(), map=ap.mean(), p=p, r=r, ap50=ap50, ap=ap,
                   ap_class=ap_class)
    return res


def per_class_maps(res: dict, nc: int) -> np.ndarray:
    """mAP50-95 per class; classes that were never scored get the overall mAP (as YOLOv5)."""
    maps = np.zeros(nc) + res["map"]
    for i, c in enumerate(res["ap_class"]):
        maps[c] = res["ap"][i]
    return maps


def print_results(res: dict, tally: Tally, names: list, per_class: bool) -> None:
    nt = res["nt"]
    LOGGER.info(ROW % ("all", tally.seen, nt.sum(), res["mp"], res["mr"], res["map50"], res["map"]))
    if nt.sum() == 0:
        LOGGER.warning("WARNING: no labels found in the validation set, can not compute metrics without labels")
    if per_class and tally.nc > 1:
        for i, c in enumerate(res["ap_class"]):
            LOGGER.info(ROW % (names[c], tally.images_per_class[c], nt[c], res["p"][i], res["r"][i],
                               res["ap50"][i], res["ap"][i]))
    st = tally.nms
    if st.over_max_det or st.over_max_nms:
        LOGGER.info(f"NMS caps: {st.over_max_det}/{st.images} images had more than max_det detections "
                    f"({st.detections_cut} lowest-confidence ones not scored); {st.over_max_nms} images had more "
                    f"than max_nms candidates ({st.candidates_cut} cut). Nothing was dropped by a time limit.")
