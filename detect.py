"""Run a YOLOv5 model on images, folders, globs, .txt lists, videos or streams; save annotated results.

Usage:
    python detect.py --weights yolov5n.pt --source img.jpg          # image
                                                   path/            # folder
                                                   'path/*.jpg'     # glob
                                                   list.txt         # one path or URL per line
                                                   vid.mp4          # video
                                                   'rtsp://...'     # stream (where OpenCV can open it)
Results go to runs/detect/exp*, labels (--save-txt) to runs/detect/exp*/labels. Without --source: data/images.
--visualize writes per picture runs/detect/exp*/<stem>/stage{i}_{type}_features.png (first 32 channels of every
layer, as YOLOv5) and, for attention blocks, stage{i}_{type}_{map}.png: the block's attention/gate map over the
picture (see models/attention/views.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.cpu_alloc import passive_omp_waits  # noqa: E402  (imports no torch)

passive_omp_waits()  # before torch loads, or it has no effect (see utils/cpu_alloc.py)
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from utils.annotate import Annotator, colors, display_available, save_one_box  # noqa: E402
from models.backends import load_backend  # noqa: E402
from models.visualize import Visualizer  # noqa: E402
from utils.cli import InputError  # noqa: E402
from utils.data.dataset_yaml import dataset_names  # noqa: E402
from utils.boxes import scale_boxes, xyxy2xywh  # noqa: E402
from utils.log import LOGGER, colorstr  # noqa: E402
from utils.eval.nms import non_max_suppression  # noqa: E402
from utils.run_dirs import increment_path  # noqa: E402
from utils.data.sources import Frame, load_source  # noqa: E402
from utils.torch_utils import autocast_for, check_bf16, check_img_size, cpu_threads, select_device  # noqa: E402


@dataclass
class Saver:
    """Where one detect run writes: annotated images/videos, label txt files, crops."""
    save_dir: Path
    names: list
    save_img: bool = True
    save_txt: bool = False
    save_conf: bool = False
    save_crop: bool = False
    view_img: bool = False
    line_thickness: int = 3
    hide_labels: bool = False
    hide_conf: bool = False
    writers: dict = field(default_factory=dict)  # output video path -> cv2.VideoWriter

    def label(self, cls: int, conf: float) -> str | None:
        if self.hide_labels:
            return None
        return self.names[cls] if self.hide_conf else f"{self.names[cls]} {conf:.2f}"

    def write_txt(self, file: Path, det: torch.Tensor, shape) -> None:
        gn = torch.tensor(shape)[[1, 0, 1, 0]].float()  # normalise by w, h, w, h
        with open(file, "a") as f:
            for *xyxy, conf, cls in det.tolist():
                xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
                line = (cls, *xywh, conf) if self.save_conf else (cls, *xywh)
                f.write(("%g " * len(line)).rstrip() % line + "\n")

    def save_frame(self, frame: Frame, i: int, im0: np.ndarray, path: Path) -> None:
        if frame.kind == "image":
            if not cv2.imwrite(str(self.save_dir / path.name), im0):
                cv2.imwrite(str((self.save_dir / path.name).with_suffix(".jpg")), im0)  # a format cv2 cannot write
            return
        out = (self.save_dir / (path.name if frame.kind == "video" else f"stream{i}")).with_suffix(".mp4")
        if out not in self.writers:
            h, w = im0.shape[:2]
            self.writers[out] = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), frame.fps, (w, h))
        self.writers[out].write(im0)

    def close(self) -> None:
        for w in self.writers.values():
            w.release()
        self.writers.clear()


def annotate_one(saver: Saver, frame: Frame, i: int, det: torch.Tensor, im_shape) -> str:
    """Scale one picture's detections to its original frame, draw/save them; returns the log text."""
    path, im0 = Path(frame.paths[i]), frame.im0s[i].copy()
    s = f"{frame.desc}{i}: " if frame.kind == "stream" else frame.desc
    s += "%gx%g " % tuple(im_shape[2:])
    annotator = Annotator(im0, line_width=saver.line_thickness)
    if len(det):
        det[:, :4] = scale_boxes(im_shape[2:], det[:, :4], im0.shape).round()
        for c in det[:, 5].unique():
            n = int((det[:, 5] == c).sum())
            s += f"{n} {saver.names[int(c)]}{'s' * (n > 1)}, "
        if saver.save_txt:
            stem = path.stem if frame.kind == "image" else f"{path.stem}_{frame.frame}"
            saver.write_txt(saver.save_dir / "labels" / f"{stem}.txt", det, im0.shape)
        crop_src = frame.im0s[i]
        for *xyxy, conf, cls in reversed(det.tolist()):
            c = int(cls)
            if saver.save_img or saver.save_crop or saver.view_img:
                annotator.box_label(xyxy, saver.label(c, conf), color=colors(c, True))
            if saver.save_crop:
                save_one_box(xyxy, crop_src, saver.save_dir / "crops" / saver.names[c] / f"{path.stem}.jpg")
    im0 = annotator.result()
    if saver.view_img:
        cv2.imshow(str(path), im0)
        cv2.waitKey(1)
    if saver.save_img:
        saver.save_frame(frame, i, im0, path)
    return s


def _time(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _check_view_img(view_img: bool) -> bool:
    if not view_img:
        return False
    ok, why = display_available()
    if not ok:
        LOGGER.warning(f"WARNING: --view-img: cannot show images ({why}); continuing without showing them")
    return ok


def _is_placeholder(names: list[str]) -> bool:
    """Names a model gets when it has none: '0', '1', ... (a fresh Model) or 'class0', ... (exports)."""
    return names in ([str(i) for i in range(len(names))], [f"class{i}" for i in range(len(names))])


def class_names(model_names: list[str], data) -> list[str]:
    """The model's own class names; --data fills them in for a model without names (as YOLOv5)."""
    if data is None:
        return model_names
    names = dataset_names(data)
    if not _is_placeholder(model_names):
        if names != model_names:
            LOGGER.info(f"--data {data}: the model has class names of its own; using those")
        return model_names
    if len(names) != len(model_names):
        raise InputError(f"--data {data} has {len(names)} class names but the model predicts {len(model_names)} "
                         "classes; pass the dataset the model was trained on")
    return names


def _visualizer(backend, visualize: bool):
    if not visualize:
        return None
    if not backend.pt:
        LOGGER.warning("WARNING: --visualize needs PyTorch (.pt) weights; ignored for an exported model")
        return None
    return Visualizer(backend.model)


@torch.no_grad()
def run(weights="yolov5s.pt", source=ROOT / "data/images", imgsz=(640, 640), conf_thres=0.25, iou_thres=0.45,
        max_det=1000, device="", view_img=False, save_txt=False, save_conf=False, save_crop=False, nosave=False,
        classes=None, agnostic_nms=False, augment=False, visualize=False, project=ROOT / "runs/detect", name="exp",
        exist_ok=False, line_thickness=3, hide_labels=False, hide_conf=False, half=False, dnn=False, data=None,
        vid_stride=1, bf16=False) -> Path:
    """Detect objects in `source`; returns the run directory (annotated files, labels/, crops/, and with
    `visualize` one folder of feature and attention maps per picture). bf16: CPU bfloat16 autocast (.pt only)."""
    device = select_device(device)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    backend = load_backend(weights, device, half=half, dnn=dnn)
    if bf16:
        check_bf16(device, backend.pt, half)
    imgsz = check_img_size([imgsz, imgsz] if isinstance(imgsz, int) else list(imgsz), backend.stride)
    backend.check_imgsz(imgsz)  # a static export: --imgsz must be its size
    # minimal (stride-multiple) padding needs a model that takes any (h, w): PyTorch or a dynamic export
    dataset = load_source(source, imgsz, backend.stride, auto=backend.pt or backend.dynamic, vid_stride=vid_stride)
    saver = Saver(save_dir, class_names(backend.names, data), not nosave, save_txt, save_conf, save_crop,
                  _check_view_img(view_img), line_thickness, hide_labels, hide_conf)
    visualizer = _visualizer(backend, visualize)
    backend.warmup((1, 3, *imgsz))
    dt, seen = [0.0, 0.0, 0.0], 0
    try:
        for frame in dataset:
            t1 = _time(device)
            im = torch.from_numpy(frame.im).to(device)
            im = (im.half() if backend.fp16 else im.float()) / 255
            t2 = _time(device)
            with autocast_for(device, bf16):
                pred = backend(im, augment=augment)[0]
            t3 = _time(device)
            with cpu_threads(1, device):
                preds = non_max_suppression(pred, conf_thres, iou_thres, classes, agnostic_nms, max_det=max_det)
            t4 = _time(device)
            dt = [dt[0] + t2 - t1, dt[1] + t3 - t2, dt[2] + t4 - t3]
            if visualizer:  # image 0 of the batch, as YOLOv5; not timed
                vis_dir = increment_path(save_dir / Path(frame.paths[0]).stem, mkdir=True)
                visualizer.save(vis_dir, frame.im0s[0], im.shape[2:])
            for i, det in enumerate(preds):
                seen += 1
                s = annotate_one(saver, frame, i, det, im.shape)
                LOGGER.info(f"{s}Done. ({t3 - t2:.3f}s)")
    finally:
        saver.close()
        if visualizer:
            visualizer.close()
    t = tuple(x / max(seen, 1) * 1e3 for x in dt)
    LOGGER.info(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {(1, 3, *imgsz)}" % t)
    if save_txt or saver.save_img:
        n = len(list(save_dir.glob("labels/*.txt")))
        s = f"\n{n} label{'s' * (n != 1)} saved to {save_dir / 'labels'}" if save_txt else ""
        LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}{s}")
    return save_dir


def parse_opt(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Detect objects with YOLOv5 weights")
    p.add_argument("--weights", nargs="+", type=str, default=["yolov5s.pt"], help="model path(s)")
    p.add_argument("--source", type=str, default=str(ROOT / "data/images"), help="file/dir/glob/.txt/URL, 0 for webcam")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference size h,w")
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--view-img", action="store_true", help="show results")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-crop", action="store_true", help="save cropped prediction boxes")
    p.add_argument("--nosave", action="store_true", help="do not save images/videos")
    p.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--augment", action="store_true", help="augmented inference (flips and scales)")
    p.add_argument("--visualize", action="store_true",
                   help="save feature maps of every layer and the attention/gate maps of attention blocks")
    p.add_argument("--project", default=str(ROOT / "runs/detect"), help="save results to project/name")
    p.add_argument("--name", default="exp", help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--line-thickness", default=3, type=int, help="bounding box thickness (pixels)")
    p.add_argument("--hide-labels", default=False, action="store_true", help="hide labels")
    p.add_argument("--hide-conf", default=False, action="store_true", help="hide confidences")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast on CPU (.pt weights; on CUDA use --half)")
    p.add_argument("--dnn", action="store_true", help="accepted for YOLOv5 compatibility and ignored (warns): "
                   ".onnx runs on onnxruntime")
    p.add_argument("--data", type=str, default=None, help="dataset.yaml whose class names a model without names uses")
    p.add_argument("--vid-stride", type=int, default=1, help="use every n-th frame of videos and streams")
    opt = p.parse_args(argv)
    opt.imgsz = opt.imgsz * 2 if len(opt.imgsz) == 1 else opt.imgsz[:2]
    if len(opt.weights) == 1:
        opt.weights = opt.weights[0]
    return opt


def main(opt: argparse.Namespace) -> Path:
    return run(**vars(opt))


if __name__ == "__main__":
    from utils.cli import register_user_error, run_cli
    register_user_error(ConnectionError)  # a stream or URL source that cannot be reached
    run_cli(lambda: main(parse_opt()))
