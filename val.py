"""Validate a YOLOv5 model on a dataset split: P, R, mAP@.5 and mAP@.5:.95 by YOLOv5's current val rules
(per-threshold matching, P/R at the smoothed-F1 peak; utils/eval/metrics.py also has v6.1's variants).

Usage:
    python val.py --weights yolov5n.pt --data coco128.yaml --img 640
    python val.py --weights yolov5n.pt --data coco128.yaml --save-json     # + pycocotools check
    python val.py --weights yolov5n.pt --data coco128.yaml --task speed    # timing only
    python val.py --weights yolov5n.pt --data coco128.yaml --task study    # mAP/speed over image sizes
Training calls run(data=dict, model=ema, dataloader=val_loader, compute_loss=..., plots=False, ...).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (as train.py): on a shared CPU spinning workers of
# busy processes slow each other several-fold. Only takes effect when set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from models.backends import load_backend, wrap_model  # noqa: E402
from utils.boxes import scale_boxes, xywh2xyxy  # noqa: E402
from utils.callbacks import Callbacks  # noqa: E402
from utils.log import LOGGER, colorstr  # noqa: E402
from utils.eval.metrics import IOU_THRESHOLDS, ConfusionMatrix, ap_per_class, match_predictions  # noqa: E402
from utils.eval.nms import NMSStats, non_max_suppression  # noqa: E402
from utils.run_dirs import increment_path  # noqa: E402
from utils.torch_utils import check_img_size, cpu_threads, select_device  # noqa: E402
from utils.eval.val_outputs import BatchPlotter, CocoJson, save_one_txt  # noqa: E402

HEADER = ("%20s" + "%11s" * 6) % ("Class", "Images", "Labels", "P", "R", "mAP@.5", "mAP@.5:.95")
ROW = "%20s" + "%11i" * 2 + "%11.3g" * 4
SPLITS = ("train", "val", "test")


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
class Outputs:
    """Where results go besides the returned metrics."""
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

def score_batch(tally: Tally, out: Outputs, preds, targets, im, paths, shapes, single_cls: bool) -> None:
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


def save_image_outputs(out: Outputs, predn, path, shape) -> None:
    if out.save_txt:
        save_one_txt(predn, out.save_conf, shape, out.save_dir / "labels" / f"{Path(path).stem}.txt")
    if out.coco is not None:
        out.coco.add(predn, path)


def run_batches(backend, dataloader, tally: Tally, out: Outputs, opts: dict, compute_loss=None) -> None:
    """The loop: pre-process, inference (+ loss), NMS, scoring; each timed as v6.1 times them."""
    from tqdm import tqdm

    device, half = tally.device, backend.fp16
    out.callbacks.run("on_val_start")
    pbar = tqdm(dataloader, desc=HEADER, bar_format="{l_bar}{bar:10}{r_bar}{bar:-10b}", file=sys.stderr)
    for batch_i, (im, targets, paths, shapes) in enumerate(pbar):
        out.callbacks.run("on_val_batch_start")
        t1 = time_sync(device)
        im = im.to(device, non_blocking=True)
        im = (im.half() if half else im.float()) / 255
        targets = targets.to(device)
        nb, _, height, width = im.shape
        t2 = time_sync(device)
        tally.dt[0] += t2 - t1
        pred, raw = backend(im, augment=opts["augment"])
        tally.dt[1] += time_sync(device) - t2
        if compute_loss is not None and raw is not None:
            tally.loss += compute_loss([x.float() for x in raw], targets)[1]  # box, obj, cls
        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)  # to pixels
        lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if opts["save_hybrid"] else []
        with cpu_threads(1, device):
            t3 = time_sync(device)
            preds = non_max_suppression(pred, opts["conf_thres"], opts["iou_thres"], labels=lb, multi_label=True,
                                        agnostic=opts["single_cls"], max_det=opts["max_det"], stats=tally.nms)
            tally.dt[2] += time_sync(device) - t3
            score_batch(tally, out, preds, targets, im, paths, shapes, opts["single_cls"])
        if out.plots is not None:
            out.plots.add(batch_i, im, targets, paths, preds)
        out.callbacks.run("on_val_batch_end", batch_i, im, targets, paths, shapes, preds)


# ------------------------------------------------------------------------------------------ summary --

def summarise(tally: Tally, names: list, plots: bool, save_dir: Path) -> dict:
    """ap_per_class over everything seen -> P, R, mAP50, mAP50-95 (class means) and per-class arrays."""
    nc = tally.nc
    res = dict(mp=0.0, mr=0.0, map50=0.0, map=0.0, ap_class=np.zeros(0, int), nt=np.zeros(nc, int))
    if not tally.stats:
        return res
    stats = [torch.cat(x, 0).numpy() for x in zip(*tally.stats)]
    res["nt"] = np.bincount(stats[3].astype(np.int64), minlength=nc)
    if stats[0].any():
        # P and R at the smoothed-F1 peak, as YOLOv5 now (see utils/eval/metrics.py)
        _, _, p, r, _, ap, ap_class = ap_per_class(*stats, plot=plots, save_dir=save_dir, names=names)
        ap50, ap = ap[:, 0], ap.mean(1)
        res.update(mp=p.mean(), mr=r.mean(), map50=ap50.mean(), map=ap.mean(), p=p, r=r, ap50=ap50, ap=ap,
                   ap_class=ap_class)
    return res


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


def coco_check(out: Outputs, res: dict, weights) -> None:
    """--save-json: write the detections, score them with pycocotools and print beside ours."""
    w = Path(weights[0] if isinstance(weights, (list, tuple)) else weights).stem if weights else "model"
    r = out.coco.evaluate(out.save_dir / f"{w}_predictions.json")
    if r is not None:
        LOGGER.info(f"pycocotools mAP@.5 {r[1]:.4f}, mAP@.5:.95 {r[0]:.4f}   "
                    f"(ours: mAP@.5 {res['map50']:.4f}, mAP@.5:.95 {res['map']:.4f})")
    res["coco"] = r


# ---------------------------------------------------------------------------------------------- run --

def _dataloader(data: dict, task: str, imgsz: int, batch_size: int, backend, single_cls: bool, workers: int):
    from utils.data.loader import create_dataloader

    split = task if task in SPLITS else "val"  # speed and study time the val split
    if not data.get(split):
        raise ValueError(f"{data.get('yaml_file') or 'dataset'}: no '{split}' split to validate on")
    # rect batches need a model that takes any (h, w): PyTorch or a dynamic export
    pad, rect = (0.0, False) if task == "speed" else (0.5, backend.pt or backend.dynamic)
    return create_dataloader(data[split], imgsz, batch_size, backend.stride, single_cls, pad=pad, rect=rect,
                             workers=workers, prefix=colorstr(f"{split}: "),
                             nc=None if single_cls else data["nc"])[0]


def _standalone_setup(data, weights, device, batch_size, half, project, name, exist_ok, save_txt, single_cls):
    device = select_device(device, batch_size)
    if half and device.type == "cpu":
        LOGGER.info("--half on CPU: fp16 inference is supported but usually slower than fp32 there")
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    from utils.data.dataset_yaml import check_dataset

    data = check_dataset(data)  # before the model: a wrong path fails fast
    backend = load_backend(weights, device, half=bool(half))
    if not single_cls and backend.nc != data["nc"]:
        raise ValueError(f"{weights} has {backend.nc} classes but --data {data.get('yaml_file')} has {data['nc']}; "
                         "pass the dataset the model was trained on, or --single-cls")
    return device, save_dir, backend, data


@torch.no_grad()
def run(data, weights=None, batch_size=32, imgsz=640, conf_thres=0.001, iou_thres=0.6, max_det=300, task="val",
        device="", workers=8, single_cls=False, augment=False, verbose=False, save_txt=False, save_hybrid=False,
        save_conf=False, save_json=False, project=ROOT / "runs/val", name="exp", exist_ok=False, half=None,
        dnn=False, model=None, dataloader=None, save_dir=Path(""), plots=True, callbacks=None, compute_loss=None):
    """Validate -> ((P, R, mAP50, mAP50-95, box, obj, cls), per-class mAP50-95 (nc,), (pre, inf, NMS) ms/img).

    Standalone: `weights` (path or list -> ensemble) and `data` (yaml path or dict). Training: `model` and
    `dataloader` given; fp16 then defaults to CUDA only (as v6.1), elsewhere only when half=True.
    """
    training = model is not None
    if training:
        was_training = model.training
        half = next(model.parameters()).device.type == "cuda" if half is None else half
        backend = wrap_model(model.eval(), half=half)
        device = backend.device
    else:
        device, save_dir, backend, data = _standalone_setup(data, weights, device, batch_size, half, project, name,
                                                            exist_ok, save_txt, single_cls)
        imgsz = check_img_size(imgsz, backend.stride)
        batch_size = backend.batch_size_for(batch_size, imgsz)  # a static export: its own batch and size
        backend.warmup((1, 3, imgsz, imgsz))
        dataloader = _dataloader(data, task, imgsz, batch_size, backend, single_cls, workers)
    nc = 1 if single_cls else int(data["nc"])
    names = class_names(backend.names, data.get("names"), nc)
    tally = Tally(nc, device, ConfusionMatrix(nc=nc) if plots else None)
    out = Outputs(Path(save_dir), names, save_txt, save_conf, BatchPlotter(save_dir, names) if plots else None,
                  CocoJson(data, dataloader.dataset) if save_json else None, callbacks or Callbacks())
    opts = dict(augment=augment, save_hybrid=save_hybrid, conf_thres=conf_thres, iou_thres=iou_thres,
                single_cls=single_cls, max_det=max_det)
    try:
        run_batches(backend, dataloader, tally, out, opts, compute_loss)
    finally:
        if training:
            model.float().train(was_training)
    res = summarise(tally, names, plots, out.save_dir)
    print_results(res, tally, names, per_class=verbose or (nc < 50 and not training))
    t = tuple(x / max(tally.seen, 1) * 1e3 for x in tally.dt)
    if not training:
        shape = (batch_size, 3, imgsz, imgsz)
        LOGGER.info(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {shape}" % t)
    if plots:
        tally.confusion.plot(save_dir=out.save_dir, names=names)
        out.plots.join()
    out.callbacks.run("on_val_end")
    if out.coco is not None and out.coco.results:
        coco_check(out, res, weights)
    if not training:
        n_txt = len(list(out.save_dir.glob("labels/*.txt")))
        saved = f"\n{n_txt} labels saved to {out.save_dir / 'labels'}" if save_txt else ""
        LOGGER.info(f"Results saved to {colorstr('bold', str(out.save_dir))}{saved}")
    maps = np.zeros(nc) + res["map"]
    for i, c in enumerate(res["ap_class"]):
        maps[c] = res["ap"][i]
    losses = (tally.loss.cpu() / max(len(dataloader), 1)).tolist()
    return (res["mp"], res["mr"], res["map50"], res["map"], *losses), maps, t


# ---------------------------------------------------------------------------------------------- CLI --

def parse_opt(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Validate YOLOv5 weights on a dataset split")
    p.add_argument("--data", type=str, default=str(ROOT / "data/coco128.yaml"), help="dataset.yaml path")
    p.add_argument("--weights", nargs="+", type=str, default=["yolov5s.pt"],
                   help="model path: .pt (several: ensemble), .onnx or .torchscript")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--task", default="val", choices=("train", "val", "test", "speed", "study"), help="what to run")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    p.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    p.add_argument("--augment", action="store_true", help="augmented inference (flips and scales)")
    p.add_argument("--verbose", action="store_true", help="report mAP by class")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-hybrid", action="store_true", help="save label+prediction hybrid results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file and score it")
    p.add_argument("--project", default=str(ROOT / "runs/val"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference")
    p.add_argument("--dnn", action="store_true", help="(ONNX via OpenCV DNN; not supported yet)")
    opt = p.parse_args(argv)
    opt.save_json |= opt.data.endswith("coco.yaml")
    opt.save_txt |= opt.save_hybrid
    return opt


def study(opt: argparse.Namespace) -> list[Path]:
    """mAP and speed over image sizes 256..1536 per weights file -> study_<data>_<weights>.txt (+ a plot)."""
    from utils.eval.val_outputs import plot_study

    sizes, files = list(range(256, 1536 + 128, 128)), []
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    for w in opt.weights:
        rows = []
        for s in sizes:
            LOGGER.info(f"\nRunning study with {w} at --imgsz {s}...")
            kw = {**vars(opt), "weights": w, "imgsz": s, "plots": False, "exist_ok": True, "name": save_dir.name}
            r, _, t = run(**kw)
            rows.append([*r, *t])
        f = save_dir / f"study_{Path(opt.data).stem}_{Path(w).stem}.txt"
        np.savetxt(f, np.array(rows), fmt="%10.4g")
        files.append(f)
    plot_study(files, sizes, save_dir / "study.png")
    return files


def main(opt: argparse.Namespace):
    if opt.task in SPLITS:
        if opt.conf_thres > 0.001:
            LOGGER.info(f"WARNING: confidence threshold {opt.conf_thres} > 0.001 gives invalid mAP values")
        return run(**vars(opt))
    if opt.task == "speed":  # timing at deployment thresholds, no plots or json
        opt.conf_thres, opt.iou_thres, opt.save_json = 0.25, 0.45, False
        return [run(**{**vars(opt), "weights": w, "plots": False}) for w in opt.weights]
    return study(opt)


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(lambda: main(parse_opt()))
