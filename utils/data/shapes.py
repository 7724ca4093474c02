"""A synthetic detection set of rendered shapes, generated deterministically on first use (no download).

Each image has a smooth random-colour background with noise and unlabelled distractor lines, and
0-8 shapes of 6 classes with random colours, sizes (about 24-120 px), rotations and partial overlaps
(no earlier shape loses more than 40% of its area). Boxes are exact: the min/max of the very polygon
that is rasterised. Each image is seeded by (seed, split, index), so the set never depends on order.

The generator only ever replaces a folder it made itself: each set it writes carries a marker file
(MARKER_FILE), and an existing folder without it (a dataset yaml's `path:` pointing at someone's own data)
is refused by name instead of being deleted. Empty folders are the one exception: they hold nothing to lose.
"""
import fcntl
import json
import math
import shutil
import os
import time
from pathlib import Path

import cv2
import numpy as np

from utils.cli import InputError
from utils.log import LOGGER

GENERATOR_VERSION = 3  # 2: boxes measured from pixel edges (+0.5); 3: objects >= ~24 px, 0-3 distractor lines
R_MIN, R_MAX = 12, 60  # shape "radius" range in pixels (log-uniform): >= ~12 px objects at the 128 px demo size
NAMES = ["circle", "square", "triangle", "star", "cross", "ellipse"]
DEFAULTS = dict(n_train=400, n_val=100, imgsz=256, seed=0)
SHIFT = 4  # fixed-point bits for cv2.fillPoly: sub-pixel vertices
MAX_LOSS = 0.4  # an object may lose at most this fraction of its area to later ones
MARKER_FILE = ".made-by-yolov5-shapes"  # in every folder this generator writes: the only ones it may replace
LEGACY_STAMP_KEYS = {"version", "n_train", "n_val", "imgsz", "seed", "names"}  # VERSION.json before the marker


def _polygon(cls: int, r: float, angle: float, rng) -> np.ndarray:
    """Unit-free outline (k, 2) of a shape of 'radius' r, rotated by angle, centred at the origin."""
    if cls == 0:  # circle
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)  # includes 0, pi/2, ...: extremes are vertices
        return np.stack([np.cos(t), np.sin(t)], 1) * r
    if cls == 1:  # square
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * r / math.sqrt(2)
    elif cls == 2:  # equilateral triangle
        t = np.deg2rad([90, 210, 330])
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif cls == 3:  # five-pointed star
        t = np.arange(10) * math.pi / 5 + math.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], 1)
    elif cls == 4:  # plus-shaped cross with arms of half-width 0.3 r
        a, b = 1.0, 0.3
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b],
                        [-a, b], [-a, -b], [-b, -b]]) * r
    else:  # ellipse, clearly not a circle
        t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        pts = np.stack([np.cos(t) * r, np.sin(t) * r * rng.uniform(0.35, 0.65)], 1)
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _background(rng, size: int) -> np.ndarray:
    grid = rng.integers(0, 256, (rng.integers(2, 7), rng.integers(2, 7), 3)).astype(np.uint8)
    bg = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(0, 4)):  # unlabelled distractor lines
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        color = rng.integers(0, 256, 3).tolist()
        cv2.line(bg, tuple(map(int, p1)), tuple(map(int, p2)), color, int(rng.integers(1, 4)), cv2.LINE_AA)
    return bg


def _contrasting_colour(rng, local_mean: np.ndarray) -> list[int]:
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        if np.abs(c - local_mean).mean() > 35:
            break
    return c.tolist()


def _render_image(rng, size: int):
    """One image and its labels [(cls, x1, y1, x2, y2)] in pixels."""
    img = _background(rng, size)
    owner = np.full((size, size), -1, np.int16)  # which object a pixel shows
    areas, rows = [], []
    n_obj = 0 if rng.random() < 0.05 else int(rng.integers(1, 9))
    for _ in range(n_obj * 6):  # a few attempts per object
        if len(rows) == n_obj:
            break
        cls = int(rng.integers(len(NAMES)))
        r = float(np.exp(rng.uniform(math.log(R_MIN), math.log(R_MAX))))
        pts = _polygon(cls, r, rng.uniform(0, 2 * math.pi), rng)
        lo, hi = pts.min(0), pts.max(0)
        if (hi - lo).max() >= size - 2:
            continue
        centre = rng.uniform(-lo, size - hi)  # keep the whole shape inside the image
        pts = pts + centre
        fixed = np.round(pts * (1 << SHIFT)).astype(np.int32)
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [fixed], 1, cv2.LINE_8, shift=SHIFT)
        m = mask.astype(bool)
        if areas:
            lost = np.bincount(owner[m][owner[m] >= 0], minlength=len(areas))
            visible = np.bincount(owner[owner >= 0], minlength=len(areas))
            if ((visible - lost) < (1 - MAX_LOSS) * np.array(areas)).any():
                continue
        local = img[m].mean(0) if m.any() else img.reshape(-1, 3).mean(0)
        cv2.fillPoly(img, [fixed], _contrasting_colour(rng, local), cv2.LINE_AA, shift=SHIFT)
        owner[m] = len(areas)
        areas.append(int(m.sum()))
        # cv2 puts coordinate x at the centre of pixel x; labels measure from the image edge: +0.5
        rows.append((cls, *(pts.min(0) + 0.5), *(pts.max(0) + 0.5)))
    cv2.setRNGSeed(int(rng.integers(2**31)))  # cv2's noise is ~7x faster than numpy's; seeded from rng
    noise = np.empty(img.shape, np.int16)
    cv2.randn(noise, 0, float(rng.uniform(2, 12)))
    img = cv2.add(img, noise, dtype=cv2.CV_8U)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    return img, rows


def _write_split(root: Path, split: str, n: int, size: int, seed: int) -> int:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    n_boxes = 0
    for i in range(n):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        img, rows = _render_image(rng, size)
        cv2.imwrite(str(root / "images" / split / f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        lines = []
        for cls, x1, y1, x2, y2 in rows:
            x1, y1, x2, y2 = (np.clip([x1, y1, x2, y2], 0, size) / size).tolist()
            lines.append(f"{cls} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}")
        (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        n_boxes += len(rows)
    return n_boxes


def made_by_generator(root: Path) -> bool:
    """Whether root carries this generator's marker (or, from before the marker, exactly its VERSION.json)."""
    root = Path(root)
    if (root / MARKER_FILE).is_file():
        return True
    try:
        stamp = json.loads((root / "VERSION.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and set(stamp) == LEGACY_STAMP_KEYS and stamp.get("names") == NAMES


def check_replaceable(root: Path) -> None:
    """Refuse (by name) to replace anything at root that this generator did not make; empty folders are fine."""
    root = Path(root)
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise InputError(f"synthetic dataset path {root} exists and is not a folder made by the shapes generator; "
                         f"refusing to replace it: point the dataset yaml's 'path:' at a new folder")
    if root.is_dir() and any(root.iterdir()) and not made_by_generator(root):
        raise InputError(f"synthetic dataset path {root} is an existing folder the shapes generator did not make "
                         f"(no {MARKER_FILE} in it); refusing to delete or overwrite it: point the dataset yaml's "
                         f"'path:' at a new folder, or remove that folder yourself")


def _replace_with(root: Path, tmp: Path) -> None:
    """Move the finished set at tmp to root, removing only a set this generator made (checked again here)."""
    check_replaceable(root)
    if root.is_dir():
        if made_by_generator(root):
            shutil.rmtree(root)
        else:
            os.rmdir(root)  # empty (checked above); fails rather than deletes if something appeared since
    tmp.rename(root)  # appear complete or not at all


def generate_shapes(root, n_train=400, n_val=100, imgsz=256, seed=0) -> Path:
    """Render the set into root/{images,labels}/{train,val} and write root/VERSION.json and the marker;
    returns root. An existing root that this generator did not make is an InputError, left untouched."""
    root = Path(root)
    check_replaceable(root)  # before rendering anything
    tmp = root.with_name(f".{root.name}.tmp-{time.time_ns()}")
    t0 = time.time()
    boxes = _write_split(tmp, "train", n_train, imgsz, seed) + _write_split(tmp, "val", n_val, imgsz, seed)
    stamp = dict(version=GENERATOR_VERSION, n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed, names=NAMES)
    (tmp / "VERSION.json").write_text(json.dumps(stamp))
    (tmp / MARKER_FILE).write_text("Made by the shapes generator (utils/data/shapes.py), which may replace this "
                                   "folder when its parameters or version change.\n")
    try:
        _replace_with(root, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    LOGGER.info(f"Generated synthetic shapes: {n_train + n_val} images, {boxes} boxes in {root} "
                f"({time.time() - t0:.1f}s)")
    return root


def is_current(root, **params) -> bool:
    """True when root holds a set made by this generator version with these parameters."""
    try:
        stamp = json.loads((Path(root) / "VERSION.json").read_text())
    except (OSError, ValueError):
        return False
    want = dict(version=GENERATOR_VERSION, **{**DEFAULTS, **params}, names=NAMES)
    return stamp == want


def ensure_generated(kind: str, root, **params) -> Path:
    """Generate the synthetic set `kind` into root unless an up-to-date copy is already there."""
    if kind != "shapes":
        raise ValueError(f"unknown synthetic dataset generator '{kind}' (known: shapes)")
    root = Path(root)
    if is_current(root, **params):  # (a current VERSION.json is also the generator's mark)
        return root
    check_replaceable(root)  # before anything is written beside it
    root.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (DDP ranks, parallel test workers) may ask at once: one generates, the rest wait.
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_current(root, **params):
            generate_shapes(root, **{**DEFAULTS, **params})
    return root
