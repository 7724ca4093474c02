"""What val.py writes besides the metrics: label txt files, COCO json (+ pycocotools check), batch plots.

Kept out of val.py so the validation loop reads as its steps; every function here only writes files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.boxes import xyxy2xywh
from utils.log import LOGGER


def save_one_txt(predn: torch.Tensor, save_conf: bool, shape, file: Path) -> None:
    """Append detections (original-image pixels, xyxy) as YOLO rows `cls cx cy w h [conf]` normalised."""
    h, w = shape[0], shape[1]
    gn = torch.tensor([w, h, w, h], dtype=torch.float32)
    rows = []
    for *xyxy, conf, cls in predn.detach().cpu().float().tolist():
        xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
        line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
        rows.append(("%g " * len(line)).rstrip() % line)
    with open(file, "a") as f:
        f.write("".join(r + "\n" for r in rows))


def output_to_target(output: list[torch.Tensor]) -> np.ndarray:
    """NMS output per image -> rows [img_idx, cls, cx, cy, w, h, conf] (pixels) for plot_images."""
    rows = []
    for i, det in enumerate(output):
        det = det.detach().cpu().float()
        if len(det):
            idx = torch.full((len(det), 1), float(i))
            rows.append(torch.cat((idx, det[:, 5:6], xyxy2xywh(det[:, :4]), det[:, 4:5]), 1))
    return torch.cat(rows, 0).numpy() if rows else np.zeros((0, 7), np.float32)


class BatchPlotter:
    """val_batch{i}_labels.jpg / val_batch{i}_pred.jpg for the first `n` batches, drawn by `workers` (a
    utils.plot_workers.PlotWorkers: in worker processes, overlapping with inference); the caller joins them."""

    def __init__(self, save_dir: Path, names, workers, n: int = 3, max_subplots: int = 16):
        self.save_dir, self.names, self.workers, self.n = Path(save_dir), list(names), workers, n
        self.max_subplots = max_subplots

    def add(self, batch_i: int, im: torch.Tensor, targets: torch.Tensor, paths, preds) -> None:
        if batch_i >= self.n:
            return
        # only the images the mosaic shows, as the uint8 plot_images makes of [0, 1] floats (x255, truncated):
        # a quarter of the bytes to send
        k = self.max_subplots
        im = im[:k].detach().cpu()
        im = (im.float() * 255).to(torch.uint8) if im.is_floating_point() else im
        targets, preds = targets.detach().cpu(), output_to_target(preds[:k])
        for rows, fname in ((targets, f"val_batch{batch_i}_labels.jpg"), (preds, f"val_batch{batch_i}_pred.jpg")):
            self.workers.submit(_plot_images, im.numpy(), _numpy_rows(rows), list(paths[:k]), self.save_dir / fname,
                                self.names)


def _plot_images(*args):
    from utils.plots import plot_images  # imported in the worker that draws
    plot_images(*args)


def _numpy_rows(rows) -> np.ndarray:
    return rows.numpy() if isinstance(rows, torch.Tensor) else rows


# ------------------------------------------------------------------------------------------ COCO --

def coco_annotations_file(data: dict) -> Path | None:
    """The official instances_val2017.json when the val split is COCO val2017 and the file is present."""
    val = data.get("val")
    if not (isinstance(val, str) and Path(val).stem == "val2017"):
        return None
    f = Path(data.get("path", "")) / "annotations" / "instances_val2017.json"
    return f if f.is_file() else None


class CocoJson:
    """Collects detections in COCO json format and scores them with pycocotools.

    Ground truth is the official annotations file when the dataset has one (then class ids go through
    coco80_to_coco91), else the dataset's own YOLO labels converted on the fly.
    """

    def __init__(self, data: dict, dataset):
        from utils.eval.coco_eval import coco80_to_coco91, coco_image_ids

        self.dataset, self.names = dataset, data["names"]
        self.anno_file = coco_annotations_file(data)
        self.class_map = coco80_to_coco91() if self.anno_file else None
        self.image_ids = coco_image_ids(dataset.im_files)
        self.results: list[dict] = []

    def add(self, predn: torch.Tensor, path) -> None:
        from utils.eval.coco_eval import predictions_to_coco

        self.results.extend(predictions_to_coco(predn, self.image_ids[str(path)], self.class_map))

    def evaluate(self, pred_file: Path) -> tuple[float, float] | None:
        """Write pred_file, run COCOeval -> (mAP50-95, mAP50), or None (reason logged) when it cannot run."""
        from utils.eval.coco_eval import coco_evaluate, coco_gt_from_yolo, save_json

        save_json(self.results, pred_file)
        LOGGER.info(f"\nEvaluating pycocotools mAP... saving {pred_file}...")
        try:
            if self.anno_file:
                gt = str(self.anno_file)
            else:  # the loader's labels: already single-cls'd when asked, sizes are EXIF-corrected (w, h)
                ds = self.dataset
                gt = coco_gt_from_yolo(ds.im_files, ds.shapes.tolist(), ds.labels, self.names)
                save_json(gt, pred_file.with_name(pred_file.stem.replace("_predictions", "") + "_gt.json"))
            return coco_evaluate(gt, self.results, image_ids=sorted(self.image_ids.values()), verbose=True)
        except Exception as e:  # pycocotools missing or failing is reported, our mAP stands on its own
            LOGGER.warning(f"WARNING: pycocotools unable to run: {type(e).__name__}: {e}")
            return None


def plot_study(files, sizes, save_path: Path) -> Path:
    """study.png: mAP@.5:.95 and inference ms against image size, one line per weights file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), tight_layout=True)
    FigureCanvasAgg(fig)
    ax_map, ax_ms = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for f in files:
        y = np.loadtxt(f, ndmin=2)  # columns: P R mAP50 mAP50-95 box obj cls pre inf nms
        label = Path(f).stem.split("_")[-1]
        ax_map.plot(sizes[:len(y)], y[:, 3], ".-", label=label)
        ax_ms.plot(sizes[:len(y)], y[:, 8], ".-", label=label)
    ax_map.set(xlabel="image size (pixels)", ylabel="mAP@.5:.95")
    ax_ms.set(xlabel="image size (pixels)", ylabel="inference ms / image")
    ax_map.legend()
    fig.savefig(save_path, dpi=200)
    return save_path
