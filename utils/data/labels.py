"""Finding images and their labels, and checking one image/label pair.

Label files follow YOLOv5: one row `cls cx cy w h` per object, normalised to [0, 1]; the label of
`.../images/<sub>/x.jpg` is `.../labels/<sub>/x.txt`. Polygon rows (`cls x1 y1 x2 y2 ...`, >= 3 points)
are accepted and turned into their bounding box. Every check returns a reason instead of raising, so
one bad file never stops a scan (see utils/data/label_cache.py for the scan itself).
"""
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp")
MIN_IMAGE_SIZE = 10  # pixels; smaller images are skipped
COORD_TOL = 0.01  # box edges may exceed [0, 1] by this much (rounding in converters); they are clipped
EXIF_ORIENTATION = 0x0112


def img2label_paths(im_files: list[str]) -> list[str]:
    """YOLOv5's rule: the last '/images/' in the path becomes '/labels/', the suffix becomes '.txt'."""
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    out = []
    for f in im_files:
        head, sep, tail = f.rpartition(a)
        f2 = head + b + tail if sep else f
        out.append(os.path.splitext(f2)[0] + ".txt")
    return out


def _images_in(p: Path) -> list[str]:
    if p.is_dir():
        return [str(q) for q in p.rglob("*.*")]
    if p.is_file() and p.suffix == ".txt":  # a list of images, relative lines are relative to the list
        lines = [ln.strip() for ln in p.read_text(errors="ignore").splitlines() if ln.strip()]
        return [ln if os.path.isabs(ln) else str((p.parent / ln).resolve()) for ln in lines]
    if p.is_file():
        return [str(p)]
    raise FileNotFoundError(f"{p} does not exist")


def list_image_files(path) -> list[str]:
    """All image files under a folder, in a .txt list, or in a list of either (sorted, by suffix)."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    files = []
    for p in paths:
        files += _images_in(Path(p))
    ims = sorted(f for f in files if f.rsplit(".", 1)[-1].lower() in IMG_FORMATS)
    if not ims:
        raise FileNotFoundError(f"No images found in {path} (supported: {', '.join(IMG_FORMATS)})")
    return ims


@dataclass
class ImageCheck:
    shape: tuple[int, int] | None = None  # (w, h) after EXIF orientation
    error: str = ""  # non-empty: the image is unusable
    note: str = ""  # a warning that does not drop the image


def exif_size(im: Image.Image) -> tuple[int, int]:
    """(w, h) as the image will be displayed: swapped for EXIF orientations 5-8 (90/270 degree turns)."""
    w, h = im.size
    try:
        if im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            return h, w
    except Exception:  # broken EXIF blocks are common and harmless
        pass
    return w, h


def is_writable(path) -> bool:
    """Writable for us *and* by its mode bits: root passes os.access everywhere, but a tree marked
    read-only (r-x) is shared data that must not be changed, so the mode bits decide too."""
    try:
        return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & 0o222)
    except OSError:
        return False


def _restore_truncated_jpeg(path: str) -> str:
    """A JPEG without its end marker: usable when the loader's decoder reads it; returns a note or raises.

    The file is never rewritten (the dataset is the user's, and a re-encode loses quality): the loader decodes
    what is there each time, which is exactly the image a rewrite would have kept."""
    if cv2.imread(path) is None:  # the loader's own decoder: what it reads here, training reads later
        raise ValueError("truncated JPEG that cannot be decoded")
    return "corrupt JPEG restored in memory (truncated, no end marker); the file is left unchanged"


def verify_image(path: str) -> ImageCheck:
    """Open the header, check format and size, and accept a truncated JPEG when it decodes (never rewritten)."""
    try:
        if os.path.getsize(path) == 0:
            return ImageCheck(error="empty file (0 bytes)")
        with Image.open(path) as im:
            im.verify()  # header and structure, without a full decode
        with Image.open(path) as im:
            fmt = (im.format or "").lower()
            shape = exif_size(im)
        if fmt not in IMG_FORMATS:
            return ImageCheck(error=f"unsupported image format '{fmt}'")
        if min(shape) < MIN_IMAGE_SIZE:
            return ImageCheck(error=f"image size {shape[0]}x{shape[1]} is below {MIN_IMAGE_SIZE} pixels")
        note = ""
        if fmt in ("jpeg", "jpg", "mpo"):
            with open(path, "rb") as f:
                f.seek(-2, 2)
                if f.read() != b"\xff\xd9":
                    note = _restore_truncated_jpeg(path)
        return ImageCheck(shape=shape, note=note)
    except UnidentifiedImageError:
        return ImageCheck(error="not an image (cannot identify the file)")
    except Exception as e:  # anything else a broken file throws: report, never crash the scan
        return ImageCheck(error=f"unreadable image ({type(e).__name__}: {e})")


@dataclass
class LabelCheck:
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.float32))
    status: str = "found"  # found | missing | empty | corrupt
    error: str = ""
    notes: list[str] = field(default_factory=list)


def _row_to_box(values: list[float], lineno: int) -> list[float]:
    """One row -> [cls, x1, y1, x2, y2] (normalised corners); raises ValueError with the reason."""
    if len(values) == 5:
        c, cx, cy, w, h = values
        return [c, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    if len(values) >= 7 and len(values) % 2 == 1:  # polygon: cls x1 y1 x2 y2 x3 y3 ...
        pts = np.array(values[1:]).reshape(-1, 2)
        return [values[0], *pts.min(0), *pts.max(0)]
    raise ValueError(f"line {lineno}: {len(values)} columns, expected 5 (cls cx cy w h)")


def _check_row(tokens: list[str], lineno: int, nc: int | None) -> list[float]:
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        raise ValueError(f"line {lineno}: non-numeric value '{bad}'") from None
    if not np.isfinite(values).all():
        raise ValueError(f"line {lineno}: NaN or infinite value")
    c = values[0]
    if c < 0 or c != int(c):
        raise ValueError(f"line {lineno}: class id {tokens[0]} is not a non-negative integer")
    if nc is not None and c >= nc:
        raise ValueError(f"line {lineno}: class id {int(c)} outside names (nc={nc})")
    if min(values[1:]) < -COORD_TOL:
        raise ValueError(f"line {lineno}: negative coordinate {min(values[1:]):g}")
    box = _row_to_box(values, lineno)
    if min(box[1:]) < -COORD_TOL or max(box[1:]) > 1 + COORD_TOL:
        raise ValueError(f"line {lineno}: box {np.round(box[1:], 4).tolist()} outside [0, 1] "
                         "(coordinates must be normalised)")
    if box[3] <= box[1] or box[4] <= box[2]:
        raise ValueError(f"line {lineno}: zero-size box")
    return box


def _is_float(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def parse_label_file(path: str, nc: int | None = None) -> LabelCheck:
    """Read and validate one label file; boxes come back as (n, 5) float32 `cls cx cy w h`."""
    if not os.path.isfile(path):
        return LabelCheck(status="missing")
    try:
        text = Path(path).read_text(errors="strict")
    except (OSError, UnicodeDecodeError) as e:
        return LabelCheck(status="corrupt", error=f"unreadable label file ({type(e).__name__})")
    boxes = []
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            boxes.append(_check_row(tokens, lineno, nc))
        except ValueError as e:
            return LabelCheck(status="corrupt", error=str(e))
    if not boxes:
        return LabelCheck(status="empty")
    b = np.clip(np.array(boxes, np.float64)[:, 1:], 0, 1)  # within-tolerance overshoot is clipped
    cls = np.array(boxes, np.float64)[:, :1]
    xywh = np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1)
    labels = np.concatenate([cls, xywh], 1).astype(np.float32)
    out = LabelCheck(labels=labels)
    _, first = np.unique(labels, axis=0, return_index=True)
    if len(first) < len(labels):
        out.notes.append(f"{len(labels) - len(first)} duplicate labels removed")
        out.labels = labels[np.sort(first)]
    return out
