"""Validate a YOLOv5 model on a dataset split: P, R, mAP@.5 and mAP@.5:.95 by YOLOv5's current val rules
(per-threshold matching, P/R at the smoothed-F1 peak; utils/eval/metrics.py also has v6.1's variants).

Usage:
    python val.py --weights yolov5n.pt --data coco128.yaml --img 640
    python val.py --weights yolov5n.pt --data coco128.yaml --save-json     # + pycocotools check
    python val.py --weights yolov5n.pt --data coco128.yaml --task speed    # timing only
    python val.py --weights yolov5n.pt --data coco128.yaml --task study    # mAP/speed over image sizes
    python val.py --weights runs/train/exp/weights/best.pt                 # on the dataset it was trained on

This is the command line; the validator itself is engine/validator.py. run(**kwargs) takes YOLOv5's keywords and
returns YOLOv5's tuple; for the figures by name call engine.validator.validate_weights (a weights file) or
validate_model (an in-memory model, as the trainer does), which return a ValResult.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.cpu_alloc import passive_omp_waits  # noqa: E402  (imports no torch)

passive_omp_waits()  # before torch loads, or it has no effect (see utils/cpu_alloc.py)
import numpy as np  # noqa: E402

from engine.training_data import data_for_weights  # noqa: E402
from engine.validator import SPLITS, ValOutputs, ValSettings, validate_model, validate_weights  # noqa: E402
from utils.log import LOGGER  # noqa: E402
from utils.run_dirs import increment_path  # noqa: E402


def run(data=None, weights=None, batch_size=32, imgsz=640, conf_thres=0.001, iou_thres=0.6, max_det=300,
        task="val", device="", workers=8, single_cls=False, augment=False, verbose=False, save_txt=False,
        save_hybrid=False, save_conf=False, save_json=False, project=ROOT / "runs/val", name="exp", exist_ok=False,
        half=None, dnn=False, model=None, dataloader=None, save_dir=Path(""), plots=True, callbacks=None,
        compute_loss=None, bf16=False):
    """YOLOv5's val.run -> ((P, R, mAP50, mAP50-95, box, obj, cls), per-class mAP50-95 (nc,), (pre, inf, NMS)
    ms/img). The same figures by name: engine.validator.validate_weights / validate_model -> ValResult.

    `weights` (path, or a list of .pt -> ensemble) and `data` (yaml path or dict) validate a weights file into
    project/name. YOLOv5's training call, `model` and `dataloader` (+ compute_loss, save_dir), is
    validate_model; fp16 then defaults to CUDA only (as v6.1), elsewhere only when half=True. Without `data`
    one of our checkpoints is validated on the dataset it was trained on, other weights on coco128.yaml.
    bf16: CPU bfloat16 autocast for the forward (.pt on CPU only; fp16 on CUDA is `half`).
    """
    if data is None and model is None:
        data = data_for_weights(weights)
    settings = ValSettings(conf_thres, iou_thres, max_det, single_cls, augment, save_hybrid, bool(bf16))
    if model is not None:
        outputs = ValOutputs(Path(save_dir), plots, save_txt, save_conf, save_json, verbose)
        result = validate_model(model, dataloader, data, outputs, settings=settings, compute_loss=compute_loss,
                                half=half, callbacks=callbacks)
    else:
        outputs = ValOutputs(increment_path(Path(project) / name, exist_ok=exist_ok), plots, save_txt, save_conf,
                             save_json, verbose)
        result = validate_weights(weights, data, outputs, batch_size=batch_size, imgsz=imgsz, task=task,
                                  device=device, workers=workers, half=bool(half), settings=settings,
                                  callbacks=callbacks, dnn=dnn)
    return result.legacy()


# ---------------------------------------------------------------------------------------------- CLI --

def parse_opt(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Validate YOLOv5 weights on a dataset split")
    p.add_argument("--data", type=str, default=None,
                   help="dataset.yaml path (default: the dataset our checkpoint was trained on, else coco128.yaml)")
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
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast on CPU (.pt weights; on CUDA use --half)")
    p.add_argument("--dnn", action="store_true", help="accepted for YOLOv5 compatibility and ignored (warns): "
                   ".onnx runs on onnxruntime")
    opt = p.parse_args(argv)
    opt.save_json |= str(opt.data or "").endswith("coco.yaml")
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
        data_name = Path(opt.data).stem if isinstance(opt.data, (str, Path)) else "data"
        f = save_dir / f"study_{data_name}_{Path(w).stem}.txt"
        np.savetxt(f, np.array(rows), fmt="%10.4g")
        files.append(f)
    plot_study(files, sizes, save_dir / "study.png")
    return files


def main(opt: argparse.Namespace):
    if opt.data is None:
        opt.data = data_for_weights(opt.weights)
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
    from utils.cpu_alloc import keep_freed_memory

    # the whole process is this validation: keep its large activations' pages between batches (a process-wide
    # allocator setting, so only here and not in run(), which a training or a notebook may call)
    keep_freed_memory(large=True)
    run_cli(lambda: main(parse_opt()))
