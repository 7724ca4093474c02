"""LoadImagesAndLabels: YOLOv5's training/validation dataset (scan, rect batches, image cache, augmentation).

Items are `(img, labels, path, shapes)`: img a uint8 CHW RGB tensor; labels an (n, 6) float tensor
`[0, cls, cx, cy, w, h]` normalised to the returned image (collate writes the batch index into column 0);
shapes `((h0, w0), ((h / h0, w / w0), (padw, padh)))` to map boxes back to the original, or None under mosaic.
"""
import hashlib
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from utils.cli import InputError
from utils.data.augment import (augment_hsv, flip_lr, flip_ud, letterbox, mixup, mosaic4, mosaic4_scale_translate,
                           random_perspective)
from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.data.label_cache import NUM_THREADS, load_or_scan, user_cache_dir
from utils.data.labels import img2label_paths, is_writable, list_image_files
from utils.log import LOGGER
from utils.torch_utils import derive_seeds

DEFAULT_HYP = Path(__file__).resolve().parents[2] / "data" / "hyps" / "hyp.scratch-low.yaml"
_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def rect_batch_shapes(shapes_wh, batch_size, img_size, stride, pad):
    """Per-batch (h, w) for images sorted by aspect ratio: the batch's extreme ratio, stride-rounded."""
    ar = shapes_wh[:, 1] / shapes_wh[:, 0]
    bi = np.floor(np.arange(len(ar)) / batch_size).astype(int)
    shapes = [[1, 1]] * (bi[-1] + 1)
    for i in range(bi[-1] + 1):
        ari = ar[bi == i]
        mini, maxi = ari.min(), ari.max()
        if maxi < 1:
            shapes[i] = [maxi, 1]
        elif mini > 1:
            shapes[i] = [1, 1 / mini]
    return np.ceil(np.array(shapes) * img_size / stride + pad).astype(int) * stride


class LoadImagesAndLabels(Dataset):
    def __init__(self, path, img_size=640, batch_size=16, augment=False, hyp=None, rect=False,
                 image_weights=False, cache_images=None, single_cls=False, stride=32, pad=0.0, prefix="",
                 nc=None, seed=0):
        self.seed = seed  # with the epoch and index, fixes an item's augmentation (see __getitem__)
        self.img_size, self.augment, self.stride, self.path = img_size, augment, stride, path
        self.hyp = hyp if hyp is not None or not augment else yaml.safe_load(DEFAULT_HYP.read_text())
        self.image_weights = image_weights
        self.rect = False if image_weights else rect
        self.mosaic = augment and not self.rect  # mosaic would undo the rect shapes
        self.mosaic_border = [-img_size // 2, -img_size // 2]
        self._scan(path, prefix, nc)
        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0
        self.n = len(self.im_files)
        self.batch = np.floor(np.arange(self.n) / batch_size).astype(int)
        self.indices = range(self.n)
        if self.rect:
            self._sort_by_aspect_ratio(batch_size, pad)
        self.ims = [None] * self.n
        self.im_hw0, self.im_hw = [None] * self.n, [None] * self.n
        self.npy_files = [None] * self.n
        if cache_images:
            self.cache_images(cache_images, prefix)

    def _scan(self, path, prefix, nc):
        im_files = list_image_files(path)
        label_files = img2label_paths(im_files)
        p = Path(path[0] if isinstance(path, (list, tuple)) else path)
        cache_path = (p if p.is_file() else Path(label_files[0]).parent).with_suffix(".cache")
        scan = load_or_scan(im_files, label_files, cache_path, nc, prefix)
        if not scan["im_files"]:
            s = scan["stats"]
            raise InputError(f"{prefix}No usable images in {path}: {len(im_files)} image files, all "
                             f"{s['corrupt']} corrupt (see the warnings above)")
        self.im_files = scan["im_files"]
        self.label_files = img2label_paths(self.im_files)
        self.labels = [np.array(lb, np.float32).reshape(-1, 5) for lb in scan["labels"]]
        self.shapes = np.array(scan["shapes"], np.float64).reshape(-1, 2)  # (w, h)
        if self.augment and not any(len(lb) for lb in self.labels):
            LOGGER.warning(f"{prefix}WARNING: no labels in {path}; training will learn background only")

    def _sort_by_aspect_ratio(self, batch_size, pad):
        order = (self.shapes[:, 1] / self.shapes[:, 0]).argsort()
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes = self.shapes[order]
        self.batch_shapes = rect_batch_shapes(self.shapes, batch_size, self.img_size, self.stride, pad)

    def __len__(self):
        return self.n

    # ---- image loading -------------------------------------------------------------------------
    def _decode(self, i):
        """Decode an image at full size, or (training) straight at 1/2, 1/4, 1/8 size when that suffices."""
        f = self.im_files[i]
        if self.augment and f.lower().endswith((".jpg", ".jpeg")):
            w0, h0 = self.shapes[i]
            factor = max((k for k in _REDUCED if k * self.img_size <= max(w0, h0)), default=1)
            if factor > 1:
                im = cv2.imread(f, _REDUCED[factor])
                if im is not None and im.shape[:2] == (math.ceil(h0 / factor), math.ceil(w0 / factor)):
                    return im, (int(h0), int(w0))
        im = cv2.imread(f)
        if im is None:
            raise FileNotFoundError(f"Image not readable: {f}")
        return im, im.shape[:2]

    def resized_shape(self, i):
        """(h, w) that load_image(i) returns, known from the scan without decoding."""
        if self.im_hw[i] is not None:
            return self.im_hw[i]
        w0, h0 = self.shapes[i]
        r = self.img_size / max(h0, w0)
        return math.ceil(h0 * r), math.ceil(w0 * r)  # ceil as YOLOv5's loader: official val figures depend on it

    def _tile(self, i, hw):
        """load_image(i) at exactly the (h, w) the mosaic planned (guards EXIF disagreements)."""
        im = self.load_image(i)[0]
        return im if im.shape[:2] == tuple(hw) else cv2.resize(im, (hw[1], hw[0]))

    def load_image(self, i):
        """(image resized so its long side is img_size, (h0, w0) original, (h, w) resized)."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        if self.npy_files[i] is not None and os.path.exists(self.npy_files[i]):
            im = np.load(self.npy_files[i], allow_pickle=False)
            hw0 = im.shape[:2]
        else:
            im, hw0 = self._decode(i)
        r = self.img_size / max(hw0)
        size = (math.ceil(hw0[1] * r), math.ceil(hw0[0] * r))
        if (im.shape[1], im.shape[0]) != size:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, size, interpolation=interp)
        return im, hw0, im.shape[:2]

    def cache_images(self, kind, prefix=""):
        """'ram': keep resized images in memory; 'disk': save decoded images as .npy (beside or in the cache dir)."""
        if kind == "disk":
            self.npy_files = [self._npy_path(f) for f in self.im_files]
            with ThreadPoolExecutor(NUM_THREADS) as pool:
                list(pool.map(self._save_npy, range(self.n)))
            LOGGER.info(f"{prefix}Cached {self.n} images to disk (.npy)")
            return
        if kind not in ("ram", True):
            raise InputError(f"cache must be 'ram' or 'disk', got {kind!r}")
        with ThreadPoolExecutor(NUM_THREADS) as pool:
            for i, (im, hw0, hw) in enumerate(pool.map(self.load_image, range(self.n))):
                self.ims[i], self.im_hw0[i], self.im_hw[i] = im, hw0, hw
        gb = sum(im.nbytes for im in self.ims) / 1e9
        LOGGER.info(f"{prefix}Cached {self.n} images in RAM ({gb:.2f} GB)")

    @staticmethod
    def _npy_path(f):
        beside = Path(f).with_suffix(".npy")
        if is_writable(beside.parent):
            return str(beside)
        key = hashlib.sha1(str(Path(f).resolve().parent).encode()).hexdigest()[:12]
        return str(user_cache_dir() / "npy" / key / beside.name)

    def _save_npy(self, i):
        p = Path(self.npy_files[i])
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            im = cv2.imread(self.im_files[i])
            tmp = p.with_name(p.name + ".tmp.npy")
            np.save(tmp, im, allow_pickle=False)
            os.replace(tmp, p)

    # ---- items ---------------------------------------------------------------------------------
    def load_mosaic(self, index):
        """4 images around a random centre, then random_perspective down to img_size; rows cls,xyxy px."""
        s = self.img_size
        center = [int(random.uniform(-x, 2 * s + x)) for x in self.mosaic_border]
        indices = [index] + random.choices(self.indices, k=3)
        random.shuffle(indices)
        labels = [self.labels[i] for i in indices]
        h = self.hyp
        if not (h["degrees"] or h["shear"] or h["perspective"]):  # every shipped hyp: the fast, exact path
            shapes = [self.resized_shape(i) for i in indices]
            return mosaic4_scale_translate(lambda k: self._tile(indices[k], shapes[k]), shapes, labels, s,
                                           center, scale=h["scale"], translate=h["translate"])
        ims = [self.load_image(i)[0] for i in indices]
        img4, labels4 = mosaic4(ims, labels, s, center)
        return random_perspective(img4, labels4, degrees=h["degrees"], translate=h["translate"],
                                  scale=h["scale"], shear=h["shear"], perspective=h["perspective"],
                                  border=self.mosaic_border)

    def _load_letterboxed(self, index):
        img, (h0, w0), (h, w) = self.load_image(index)
        shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
        img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
        labels = self.labels[index].copy()
        if len(labels):
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
        if self.augment:
            h_ = self.hyp
            img, labels = random_perspective(img, labels, degrees=h_["degrees"], translate=h_["translate"],
                                             scale=h_["scale"], shear=h_["shear"], perspective=h_["perspective"])
        return img, labels, ((h0, w0), ((h / h0, w / w0), pad))

    def seed_item(self, epoch, index):
        """Reseed random and numpy from (seed, epoch, index): augmentation is then the same whichever
        worker loads the item and whatever it loaded before (mosaic's extra images included)."""
        py_seed, np_seed = derive_seeds(self.seed, epoch, index, n=2)  # untagged: the oldest use, numbers kept
        random.seed(py_seed)
        np.random.seed(np_seed)

    def __getitem__(self, index):
        """index: an int (global RNG as is), or (index, epoch) from the loader's sampler (reseeded first)."""
        if isinstance(index, tuple):
            index, epoch = index
            if self.augment:
                self.seed_item(epoch, index)
        hyp = self.hyp
        if self.mosaic and random.random() < hyp["mosaic"]:
            img, labels = self.load_mosaic(index)
            shapes = None
            if random.random() < hyp["mixup"]:
                img, labels = mixup(img, labels, *self.load_mosaic(random.randint(0, self.n - 1)))
        else:
            img, labels, shapes = self._load_letterboxed(index)
        labels = np.asarray(labels, np.float32).reshape(-1, 5)
        if len(labels):
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True, eps=1e-3)
        if self.augment:
            augment_hsv(img, hgain=hyp["hsv_h"], sgain=hyp["hsv_s"], vgain=hyp["hsv_v"])
            if random.random() < hyp["flipud"]:
                img, labels = flip_ud(img, labels)
            if random.random() < hyp["fliplr"]:
                img, labels = flip_lr(img, labels)
        labels_out = torch.zeros((len(labels), 6))
        if len(labels):
            labels_out[:, 1:] = torch.from_numpy(labels)
        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(img), labels_out, self.im_files[index], shapes
