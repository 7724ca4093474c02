"""COCO-style evaluation with pycocotools: YOLO labels -> COCO ground truth, detections -> results json.

The ground truth is built on the fly from YOLO labels (no instances json needed), so any dataset can
be scored by COCOeval as a cross-check of utils/eval/metrics.py. Boxes in COCO json are [x, y, w, h] with
(x, y) the top-left corner, in pixels of the original image. Category ids are class indices unless
a class_map is given (coco80_to_coco91() for the official COCO annotations).
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from utils.log import LOGGER

_COCO91_MISSING = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # ids 1..90 that COCO's 80 classes skip


def coco80_to_coco91() -> list[int]:
    """The official COCO category id of each of the 80 YOLO class indices."""
    return [i for i in range(1, 91) if i not in _COCO91_MISSING]


def coco_image_ids(image_files) -> dict[str, int]:
    """One id per image for both json files: int(stem) when every stem is a distinct number (then ids
    match the official COCO annotations, as v6.1's json), else the position in image_files."""
    stems = [Path(f).stem for f in image_files]
    if all(s.isnumeric() for s in stems) and len(set(map(int, stems))) == len(stems):
        return {str(f): int(s) for f, s in zip(image_files, stems)}
    return {str(f): i for i, f in enumerate(image_files)}


def coco_gt_from_yolo(image_files, sizes_wh, labels, names=None, class_map=None) -> dict:
    """COCO ground-truth dict from YOLO labels.

    image_files: paths; sizes_wh: (width, height) of each original image; labels: per image an
    (n, 5) array [cls, cx, cy, w, h] normalised to [0, 1]; names: class names (list or dict), which
    fixes the categories (else the classes present in labels).
    """
    if not len(image_files) == len(sizes_wh) == len(labels):
        raise ValueError(f"coco_gt_from_yolo: {len(image_files)} images, {len(sizes_wh)} sizes and "
                         f"{len(labels)} label arrays must match")
    ids = coco_image_ids(image_files)
    images, annotations, seen = [], [], set()
    for f, (w, h), lb in zip(image_files, sizes_wh, labels):
        images.append({"id": ids[str(f)], "file_name": Path(f).name, "width": int(w), "height": int(h)})
        for c, cx, cy, bw, bh in np.asarray(lb, dtype=np.float64).reshape(-1, 5):
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            annotations.append({"id": len(annotations) + 1, "image_id": ids[str(f)], "iscrowd": 0,
                                "category_id": _category(int(c), class_map), "bbox": box,
                                "area": box[2] * box[3]})
            seen.add(int(c))
    table = names if isinstance(names, dict) else dict(enumerate(names or []))
    classes = sorted(table) if table else sorted(seen)
    categories = [{"id": _category(c, class_map), "name": str(table.get(c, c))} for c in classes]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_gt_from_label_files(image_files, names=None, class_map=None) -> dict:
    """COCO ground truth read from disk: labels by YOLOv5's images/ -> labels/ rule, sizes from the
    image headers (EXIF orientation applied). Missing or empty label files mean no objects."""
    from PIL import Image

    from utils.data.labels import exif_size, img2label_paths, parse_label_file

    sizes, labels = [], []
    for im_file, lb_file in zip(image_files, img2label_paths([str(f) for f in image_files])):
        with Image.open(im_file) as im:
            sizes.append(exif_size(im))
        check = parse_label_file(lb_file)
        if check.error:
            raise ValueError(f"{lb_file}: {check.error}")
        labels.append(check.labels)
    return coco_gt_from_yolo(image_files, sizes, labels, names, class_map)


def _category(cls: int, class_map) -> int:
    return int(class_map[cls]) if class_map is not None else int(cls)


def predictions_to_coco(predn, image_id, class_map=None) -> list[dict]:
    """Detections (n, 6) [x1, y1, x2, y2, conf, cls] in original-image pixels -> COCO result dicts
    (bbox rounded to 3 decimals and score to 5, as v6.1 writes them)."""
    rows = predn.detach().cpu().double().numpy() if hasattr(predn, "detach") else np.asarray(predn, float)
    out = []
    for x1, y1, x2, y2, conf, cls in rows.reshape(-1, 6):
        out.append({"image_id": image_id, "category_id": _category(int(cls), class_map),
                    "bbox": [round(float(v), 3) for v in (x1, y1, x2 - x1, y2 - y1)],
                    "score": round(float(conf), 5)})
    return out


def save_json(obj, path) -> Path:
    """Write a ground-truth dict or a list of results as json; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)
    return path


def _load_json(x):
    if isinstance(x, (str, Path)):
        with open(x) as f:
            return json.load(f)
    return x


def _import_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError("COCO evaluation needs pycocotools, which is not installed: "
                          "`pip install pycocotools` (it is in requirements.txt)") from e
    return COCO, COCOeval


def coco_evaluate(gt, predictions, image_ids=None, verbose=False) -> tuple[float, float]:
    """Run COCOeval (bbox) -> (mAP50-95, mAP50).

    gt: a ground-truth dict or json path; predictions: a list of result dicts or json path;
    image_ids: evaluate only these images (default all images of gt). verbose logs COCO's table.
    """
    COCO, COCOeval = _import_pycocotools()
    gt, predictions = _load_json(gt), _load_json(predictions)
    if not predictions:
        LOGGER.warning("WARNING: COCO evaluation: no predictions, mAP is 0")
        return 0.0, 0.0
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # pycocotools prints progress to stdout
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(predictions)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        LOGGER.info(printed.getvalue().rstrip())
    map50_95, map50 = (max(float(s), 0.0) for s in evaluator.stats[:2])  # -1 means "no ground truth"
    return map50_95, map50
