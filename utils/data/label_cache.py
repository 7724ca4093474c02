"""Scan a dataset once (every image and label verified) and cache the result.

The cache lives next to the labels as `<labels dir>.cache` (YOLOv5's place) when that folder is writable,
else in `$YOLOV5_CACHE_DIR` or `~/.cache/yolov5-attention/`. It is an .npz read with allow_pickle=False
(never pickle), keyed by a hash of every image/label path and size, the class count and the cache
version; a stale or unreadable cache is rebuilt.
"""
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.data.labels import is_writable, parse_label_file, verify_image
from utils.log import LOGGER

CACHE_VERSION = 1
NUM_THREADS = min(8, max(1, os.cpu_count() or 1))


def user_cache_dir() -> Path:
    return Path(os.getenv("YOLOV5_CACHE_DIR") or Path.home() / ".cache" / "yolov5-attention")


def files_hash(files: list[str], nc: int | None) -> str:
    """Hash of paths and sizes (missing files count as size -1), the class count and the cache version."""
    h = hashlib.sha256(f"v{CACHE_VERSION} nc={nc}\n".encode())
    for f in files:
        try:
            size = os.stat(f).st_size
        except OSError:
            size = -1
        h.update(f"{f}:{size}\n".encode())
    return h.hexdigest()


def cache_locations(primary: Path) -> list[Path]:
    """Where the cache may be: YOLOv5's place first, then the user cache dir (name keyed by the place)."""
    key = hashlib.sha1(str(primary.resolve()).encode()).hexdigest()[:12]
    return [primary, user_cache_dir() / f"{primary.stem}-{key}.cache"]


def check_pair(im_file: str, lb_file: str, nc: int | None) -> dict:
    """Verify one image and its label file; never raises."""
    im = verify_image(im_file)
    if im.error:
        return dict(status="corrupt", msgs=[f"{im_file}: ignoring corrupt image: {im.error}"])
    lb = parse_label_file(lb_file, nc)
    msgs = [f"{im_file}: {im.note}"] if im.note else []
    msgs += [f"{lb_file}: {n}" for n in lb.notes]
    if lb.status == "corrupt":
        return dict(status="corrupt", msgs=msgs + [f"{lb_file}: {lb.error}; image {im_file} skipped"])
    return dict(status=lb.status, shape=im.shape, labels=lb.labels, msgs=msgs)


def _scan(im_files, lb_files, nc, prefix, desc) -> dict:
    keep, shapes, labels, msgs = [], [], [], []
    stats = dict(found=0, missing=0, empty=0, corrupt=0)
    with ThreadPoolExecutor(NUM_THREADS) as pool:
        results = pool.map(lambda a: check_pair(*a, nc), zip(im_files, lb_files))
        bar = tqdm(results, desc=desc, total=len(im_files), disable=len(im_files) < 1000, leave=False)
        for im_file, r in zip(im_files, bar):
            stats[r["status"]] += 1
            msgs += r["msgs"]
            if r["status"] != "corrupt":
                keep.append(im_file)
                shapes.append(r["shape"])
                labels.append(r["labels"])
    return dict(im_files=keep, shapes=shapes, labels=labels, msgs=msgs, stats=stats)


def _save(path: Path, scan: dict, hash_: str) -> None:
    counts = np.array([len(lb) for lb in scan["labels"]], np.int64)
    all_labels = np.concatenate(scan["labels"], 0) if scan["labels"] else np.zeros((0, 5), np.float32)
    s = scan["stats"]
    arrays = dict(version=np.array(CACHE_VERSION), hash=np.array(hash_), im_files=np.array(scan["im_files"], str),
                  shapes=np.array(scan["shapes"], np.int64).reshape(-1, 2), counts=counts,
                  labels=all_labels.astype(np.float32), msgs=np.array(scan["msgs"], str),
                  stats=np.array([s["found"], s["missing"], s["empty"], s["corrupt"]], np.int64))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_writable(path.parent):
        raise PermissionError(f"{path.parent} is read-only")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:  # a file object keeps np.savez from appending '.npz'
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _load(path: Path, hash_: str) -> dict | None:
    """The cached scan, or None when missing, stale or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION or str(z["hash"]) != hash_:
                return None
            splits = np.cumsum(z["counts"])[:-1]
            stats = dict(zip(("found", "missing", "empty", "corrupt"), z["stats"].tolist()))
            return dict(im_files=z["im_files"].tolist(), shapes=[tuple(s) for s in z["shapes"].tolist()],
                        labels=np.split(z["labels"], splits) if len(z["counts"]) else [],
                        msgs=z["msgs"].tolist(), stats=stats)
    except Exception:  # missing, truncated, not a zip, wrong keys: rebuild
        return None


def load_or_scan(im_files: list[str], lb_files: list[str], cache_path: Path, nc: int | None = None,
                 prefix: str = "") -> dict:
    """Scan results for these files: dict(im_files, shapes [(w, h)], labels [(n,5)], msgs, stats, cache_path)."""
    hash_ = files_hash(im_files + lb_files, nc)
    for place in cache_locations(cache_path):
        scan = _load(place, hash_) if place.is_file() else None
        if scan is not None:
            scan["cache_path"] = place
            log_scan(scan, prefix, place, cached=True)
            return scan
    scan = _scan(im_files, lb_files, nc, prefix, f"{prefix}Scanning '{cache_path.with_suffix('')}'")
    scan["cache_path"] = None
    for place in cache_locations(cache_path):
        try:
            _save(place, scan, hash_)
            scan["cache_path"] = place
            break
        except OSError:
            continue
    log_scan(scan, prefix, cache_path.with_suffix(""), cached=False)
    if scan["cache_path"] is None:
        LOGGER.warning(f"{prefix}WARNING: could not write a label cache to {cache_locations(cache_path)}")
    elif scan["cache_path"] != cache_path:
        LOGGER.info(f"{prefix}{cache_path.parent} is not writable; cache saved to {scan['cache_path']}")
    return scan


def log_scan(scan: dict, prefix: str, where: Path, cached: bool) -> None:
    s = scan["stats"]
    backgrounds = s["missing"] + s["empty"]
    LOGGER.info(f"{prefix}Scanning '{where}' images and labels... {s['found']} found, {s['missing']} missing, "
                f"{s['empty']} empty, {s['corrupt']} corrupt ({len(scan['im_files'])} images, "
                f"{backgrounds} backgrounds{', from cache' if cached else ''})")
    for m in scan["msgs"]:
        LOGGER.warning(f"{prefix}WARNING: {m}")
