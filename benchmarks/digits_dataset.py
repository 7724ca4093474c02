"""Render a held-out detection set: printed digits 0-9 on cluttered backgrounds, YOLO labels, a dataset yaml.

The fair-comparison study (compare.py) was developed on coco128 and the shapes demo; a check of its
conclusions needs data that played no part in that. This set is new to the project (nothing was tuned on
it): ten classes of digits drawn with OpenCV's Hershey fonts at random sizes (12-90 px), weights, colours
and small rotations, on backgrounds of smoothed noise, colour gradients and distractor strokes (lines,
circles, letters that are no class). COCO-pretrained YOLOv5 has never seen these classes, so a fine-tune
measures transfer to a new domain.

Usage:
    python benchmarks/digits_dataset.py --out ../datasets/digits [--train 240 --val 120 --seed 2026]
    python compare.py --data ../datasets/digits/digits.yaml --weights yolov5n.pt --cfg yolov5n.yaml ...
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np

FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX,
         cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_COMPLEX_SMALL)
DISTRACTORS = "ABCDEFGHKMNPRSTUVWXYZ#%&@?"


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency colour noise over a random gradient, plus a few strokes that belong to no class."""
    coarse = rng.uniform(0, 255, (max(h // 32, 2), max(w // 32, 2), 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(-80, 80, 3).astype(np.float32)
    img = np.clip(img * rng.uniform(0.4, 1.0) + ramp + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    for _ in range(rng.integers(2, 8)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        p1, p2 = tuple(int(v) for v in rng.integers(0, (w, h))), tuple(int(v) for v in rng.integers(0, (w, h)))
        if rng.random() < 0.5:
            cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
        else:
            cv2.circle(img, p1, int(rng.integers(5, 40)), colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 3)):
        draw_glyph(img, rng, str(rng.choice(list(DISTRACTORS))), int(rng.integers(14, 60)))
    return img


def draw_glyph(img: np.ndarray, rng: np.random.Generator, text: str, height: int, centre=None):
    """Draw `text` about `height` px tall, rotated by up to 15 degrees; returns its pixel box (x1, y1, x2, y2)."""
    font = int(rng.choice(FONTS))
    thickness = int(rng.integers(1, max(2, height // 8)))
    scale = cv2.getFontScaleFromHeight(font, height, thickness)
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    pad = thickness + 2
    tile = np.zeros((th + base + 2 * pad, tw + 2 * pad), np.uint8)
    cv2.putText(tile, text, (pad, pad + th), font, scale, 255, thickness, cv2.LINE_AA)
    angle = float(rng.uniform(-15, 15))
    rot = cv2.getRotationMatrix2D((tile.shape[1] / 2, tile.shape[0] / 2), angle, 1.0)
    cos, sin = abs(rot[0, 0]), abs(rot[0, 1])
    nw, nh = int(tile.shape[0] * sin + tile.shape[1] * cos) + 1, int(tile.shape[0] * cos + tile.shape[1] * sin) + 1
    rot[:, 2] += (nw - tile.shape[1]) / 2, (nh - tile.shape[0]) / 2
    mask = cv2.warpAffine(tile, rot, (nw, nh))
    h, w = img.shape[:2]
    if nw >= w or nh >= h:
        return None
    if centre is None:
        x0, y0 = int(rng.integers(0, w - nw)), int(rng.integers(0, h - nh))
    else:
        x0, y0 = int(np.clip(centre[0] - nw / 2, 0, w - nw)), int(np.clip(centre[1] - nh / 2, 0, h - nh))
    alpha = mask.astype(np.float32)[..., None] / 255
    colour = np.array(rng.integers(0, 256, 3), np.float32)
    region = img[y0:y0 + nh, x0:x0 + nw].astype(np.float32)
    if np.abs(region.mean((0, 1)) - colour).sum() < 120:  # keep the digit readable against its background
        colour = 255 - colour
    img[y0:y0 + nh, x0:x0 + nw] = (region * (1 - alpha) + colour * alpha).astype(np.uint8)
    ys, xs = np.nonzero(mask > 64)
    if not len(xs):
        return None
    return x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1


def overlaps(box, boxes) -> bool:
    for b in boxes:
        iw = min(box[2], b[2]) - max(box[0], b[0])
        ih = min(box[3], b[3]) - max(box[1], b[1])
        if iw > 0 and ih > 0:
            return True
    return False


def render(rng: np.random.Generator, h: int = 320, w: int = 320) -> tuple[np.ndarray, list[tuple]]:
    """One picture and its labels [(class, xc, yc, bw, bh) normalised]."""
    img, boxes, labels = background(rng, h, w), [], []
    for _ in range(int(rng.integers(1, 7))):
        digit = int(rng.integers(0, 10))
        height = int(math.exp(rng.uniform(math.log(12), math.log(90))))
        for _try in range(10):  # digits do not overlap each other, so every label is a visible digit
            canvas = img.copy()
            box = draw_glyph(canvas, rng, str(digit), height)
            if box is not None and not overlaps(box, boxes):
                img = canvas
                break
        else:
            continue
        boxes.append(box)
        x1, y1, x2, y2 = box
        labels.append((digit, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h))
    return img, labels


def write_split(root: Path, split: str, n: int, rng: np.random.Generator) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, labels = render(rng)
        cv2.imwrite(str(root / "images" / split / f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        lines = [f"{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}" for c, x, y, bw, bh in labels]
        (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="../datasets/digits", help="folder to render into (must not exist yet)")
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--val", type=int, default=120)
    ap.add_argument("--seed", type=int, default=2026)
    opt = ap.parse_args(argv)
    root = Path(opt.out).resolve()
    if root.exists():
        raise SystemExit(f"ERROR: {root} exists; pick a new --out (this script never writes into an existing folder)")
    rng = np.random.default_rng(opt.seed)
    write_split(root, "train", opt.train, rng)
    write_split(root, "val", opt.val, rng)
    yaml_file = root / "digits.yaml"
    yaml_file.write_text(f"# rendered by benchmarks/digits_dataset.py --seed {opt.seed}\npath: {root}\n"
                         f"train: images/train\nval: images/val\nnames: [{', '.join(repr(str(d)) for d in range(10))}]\n")
    print(f"{opt.train} train + {opt.val} val pictures in {root}; dataset yaml {yaml_file}")
    return yaml_file


if __name__ == "__main__":
    main()
