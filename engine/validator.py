"""The validator: one model on one dataset split -> a ValResult (P, R, mAP50, mAP50-95, losses, per-class
mAP, speed), by YOLOv5's current val rules (per-threshold matching, P/R at the smoothed-F1 peak;
utils/eval/metrics.py also has v6.1's variants).

Two entry points over one loop (engine/val_loop.py):
    validate_model(model, dataloader, data, ...)   an in-memory model, e.g. the trainer's EMA each epoch
    validate_weights(weights, data, outputs, ...)  a weights file (.pt, list of .pt, .onnx, .torchscript): val.py
val.run keeps YOLOv5's keywords and its tuple return on top of these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.val_loop import (Tally, ValSettings, Writers, class_names, per_class_maps, print_results, run_batches,
                             summarise)
from models.backends import load_backend, wrap_model
from utils.cli import InputError
from utils.callbacks import Callbacks
from utils.eval.metrics import ConfusionMatrix, fitness
from utils.eval.val_outputs import BatchPlotter, CocoJson
from utils.log import LOGGER, colorstr
from utils.plot_workers import PlotWorkers
from utils.torch_utils import check_bf16, check_img_size, select_device
from utils.train.results import METRIC_KEYS, VAL_LOSS_KEYS

SPLITS = ("train", "val", "test")
__all__ = ["SPLITS", "ValOutputs", "ValResult", "ValSettings", "validate_model", "validate_weights"]


@dataclass(frozen=True, eq=False)  # eq would compare the maps arrays ambiguously
class ValResult:
    """One validation's figures by name. Losses are per batch (0 without a compute_loss); speed_ms per image."""
    precision: float
    recall: float
    map50: float  # mAP at IoU 0.5
    map: float  # mAP over IoU 0.5:0.95
    box_loss: float = 0.0
    obj_loss: float = 0.0
    cls_loss: float = 0.0
    maps: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per-class mAP50-95 (unscored: the mean)
    speed_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)  # pre-process, inference, NMS

    @classmethod
    def zeros(cls, nc: int) -> ValResult:
        """What an epoch without validation reports (as YOLOv5's zero row)."""
        return cls(0.0, 0.0, 0.0, 0.0, maps=np.zeros(nc))

    @property
    def fitness(self) -> float:
        """v6.1's model selection score: 0.1 * mAP50 + 0.9 * mAP50-95."""
        return float(fitness(np.array([self.precision, self.recall, self.map50, self.map]))[0])

    def columns(self) -> dict[str, float]:
        """The figures under their results.csv column names (also the checkpoint's `metrics`)."""
        metrics = dict(zip(METRIC_KEYS, (self.precision, self.recall, self.map50, self.map)))
        return {**metrics, **dict(zip(VAL_LOSS_KEYS, (self.box_loss, self.obj_loss, self.cls_loss)))}

    def as_tuple(self) -> tuple[float, ...]:
        """YOLOv5's order: (P, R, mAP50, mAP50-95, box, obj, cls)."""
        return self.precision, self.recall, self.map50, self.map, self.box_loss, self.obj_loss, self.cls_loss

    def legacy(self) -> tuple[tuple[float, ...], np.ndarray, tuple[float, float, float]]:
        """What YOLOv5's val.run returns: (as_tuple(), maps, speed_ms)."""
        return self.as_tuple(), self.maps, self.speed_ms


@dataclass(frozen=True)
class ValOutputs:
    """What a validation writes or prints besides its result; files go under save_dir."""
    save_dir: Path = Path("")
    plots: bool = False  # confusion matrix, PR/F1 curves, val_batch*.jpg
    save_txt: bool = False  # labels/<image>.txt with the detections
    save_conf: bool = False  # ... with their confidences
    save_json: bool = False  # <weights>_predictions.json, scored with pycocotools beside our mAP
    verbose: bool = False  # one table row per class


# ------------------------------------------------------------------------------------- entry points --

@torch.no_grad()
def validate_model(model: torch.nn.Module, dataloader, data: dict, outputs: ValOutputs = ValOutputs(), *,
                   settings: ValSettings = ValSettings(), compute_loss=None, half: bool | None = None,
                   callbacks: Callbacks | None = None) -> ValResult:
    """Validate an in-memory model on a ready dataloader; the model is left in its mode, in fp32.

    half: None -> fp16 on CUDA only (as v6.1's training); True/False to force. compute_loss (the trainer's)
    adds the val losses.
    """
    was_training = model.training
    half = next(model.parameters()).device.type == "cuda" if half is None else half
    if settings.bf16:
        check_bf16(next(model.parameters()).device, True, half)
    backend = wrap_model(model.eval(), half=half)
    try:
        return _evaluate(backend, dataloader, data, outputs, settings, callbacks, compute_loss,
                         per_class=outputs.verbose)
    finally:
        model.float().train(was_training)


@torch.no_grad()
def validate_weights(weights, data, outputs: ValOutputs, *, batch_size: int = 32, imgsz: int = 640, task: str = "val",
                     device="", workers: int = 8, half: bool = False, settings: ValSettings = ValSettings(),
                     callbacks: Callbacks | None = None, dnn: bool = False) -> ValResult:
    """Validate a weights file (or a list of .pt: an ensemble) on the `task` split of `data` (yaml path or dict).

    task: train/val/test, or speed (the val split, square batches); the speed line and where results went
    are printed.
    """
    device = select_device(device, batch_size)
    if half and device.type == "cpu":
        LOGGER.info("--half on CPU: fp16 inference is supported but usually slower than fp32 there")
    save_dir = Path(outputs.save_dir)
    (save_dir / "labels" if outputs.save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    from utils.data.dataset_yaml import check_dataset

    data = check_dataset(data)  # before the model: a wrong path fails fast
    backend = load_backend(weights, device, half=bool(half), dnn=dnn)
    if settings.bf16:
        check_bf16(device, backend.pt, bool(half))
    if not settings.single_cls and backend.nc != data["nc"]:
        raise InputError(f"{weights} has {backend.nc} classes but --data {data.get('yaml_file')} has {data['nc']}; "
                         "pass the dataset the model was trained on, or --single-cls")
    imgsz = check_img_size(imgsz, backend.stride)
    batch_size = backend.batch_size_for(batch_size, imgsz)  # a static export: its own batch and size
    backend.warmup((1, 3, imgsz, imgsz))
    dataloader = _dataloader(data, task, imgsz, batch_size, backend, settings.single_cls, workers)
    nc = 1 if settings.single_cls else int(data["nc"])
    result = _evaluate(backend, dataloader, data, outputs, settings, callbacks, per_class=outputs.verbose or nc < 50,
                       json_stem=_weights_stem(weights), speed_shape=(batch_size, 3, imgsz, imgsz))
    n_txt = len(list(save_dir.glob("labels/*.txt")))
    saved = f"\n{n_txt} labels saved to {save_dir / 'labels'}" if outputs.save_txt else ""
    LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}{saved}")
    return result


# ------------------------------------------------------------------------------------------ shared --

def _evaluate(backend, dataloader, data: dict, outputs: ValOutputs, settings: ValSettings, callbacks,
              compute_loss=None, per_class: bool = False, json_stem: str = "model", speed_shape=None) -> ValResult:
    """The loop over the dataloader, the summary and the printed table (+ the speed line when speed_shape is
    given), plots and json -> ValResult."""
    nc = 1 if settings.single_cls else int(data["nc"])
    names = class_names(backend.names, data.get("names"), nc)
    save_dir, plots = Path(outputs.save_dir), outputs.plots
    tally = Tally(nc, backend.device, ConfusionMatrix(nc=nc) if plots else None)
    with PlotWorkers(processes=2 if plots else 0) as workers:  # forked now: they warm up during the first batches
        out = Writers(save_dir, names, outputs.save_txt, outputs.save_conf,
                      BatchPlotter(save_dir, names, workers) if plots else None,
                      CocoJson(data, dataloader.dataset) if outputs.save_json else None, callbacks or Callbacks())
        run_batches(backend, dataloader, tally, out, settings, compute_loss)
        if plots:  # the biggest figure first: it draws while the curves are computed and the table printed
            tally.confusion.plot(save_dir=save_dir, names=names, submit=workers.submit)
        res = summarise(tally, names, plots, save_dir, submit=workers.submit)
        print_results(res, tally, names, per_class)
        speed = tuple(x / max(tally.seen, 1) * 1e3 for x in tally.dt)
        if speed_shape is not None:
            LOGGER.info(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {speed_shape}"
                        % speed)
    out.callbacks.run("on_val_end")  # after the plots are on disk (loggers may read them)
    if out.coco is not None and out.coco.results:
        _coco_check(out.coco, res, save_dir / f"{json_stem}_predictions.json")
    losses = (tally.loss.cpu() / max(len(dataloader), 1)).tolist()
    return ValResult(float(res["mp"]), float(res["mr"]), float(res["map50"]), float(res["map"]), *losses,
                     maps=per_class_maps(res, nc), speed_ms=speed)


def _coco_check(coco: CocoJson, res: dict, pred_file: Path) -> None:
    """save_json: write the detections, score them with pycocotools and print beside ours."""
    r = coco.evaluate(pred_file)
    if r is not None:
        LOGGER.info(f"pycocotools mAP@.5 {r[1]:.4f}, mAP@.5:.95 {r[0]:.4f}   "
                    f"(ours: mAP@.5 {res['map50']:.4f}, mAP@.5:.95 {res['map']:.4f})")


def _weights_stem(weights) -> str:
    w = weights[0] if isinstance(weights, (list, tuple)) else weights
    return Path(w).stem if w else "model"


def _dataloader(data: dict, task: str, imgsz: int, batch_size: int, backend, single_cls: bool, workers: int):
    from utils.data.loader import create_dataloader

    split = task if task in SPLITS else "val"  # speed and study time the val split
    if not data.get(split):
        raise InputError(f"{data.get('yaml_file') or 'dataset'}: no '{split}' split to validate on")
    # rect batches need a model that takes any (h, w): PyTorch or a dynamic export
    pad, rect = (0.0, False) if task == "speed" else (0.5, backend.pt or backend.dynamic)
    return create_dataloader(data[split], imgsz, batch_size, backend.stride, single_cls, pad=pad, rect=rect,
                             workers=workers, prefix=colorstr(f"{split}: "),
                             nc=None if single_cls else data["nc"])[0]
