"""Where detect.py gets its pictures: an image, a folder, a glob, a .txt list, a video file or a stream.

`load_source(source, img_size, stride)` returns an iterable of `Frame`s, each a batch (1 for files, one
per stream for streams) of letterboxed CHW RGB uint8 arrays plus the original BGR frames. Nothing is
downloaded. Grayscale, RGBA and 16-bit images are read as 8-bit BGR; an unreadable file is reported
and skipped.
"""
from __future__ import annotations

import glob
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from utils.cli import InputError
from utils.data.augment import letterbox
from utils.log import LOGGER

IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp")
VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv")
STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")


@dataclass
class Frame:
    paths: list[str]  # one per picture in the batch
    im: np.ndarray  # (B, 3, H, W) uint8 RGB, letterboxed
    im0s: list[np.ndarray]  # original frames, HWC uint8 BGR
    kind: str  # "image", "video" or "stream"
    desc: str  # progress text, e.g. "image 3/10 /data/a.jpg: "
    frame: int = 0  # frame index within a video
    fps: float = 30.0
    extra: dict = field(default_factory=dict)


def is_stream(s: str) -> bool:
    return s.isnumeric() or s.lower().startswith(STREAM_PREFIXES)


def suffix(p) -> str:
    return Path(str(p)).suffix[1:].lower()


def read_image(path: str) -> np.ndarray | None:
    """HWC uint8 BGR, or None when the file cannot be decoded. IMREAD_COLOR turns grayscale into 3
    channels, drops alpha, scales 16-bit down to 8-bit and applies EXIF orientation."""
    try:
        im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    return im if im is not None and im.size else None


def _read_list(txt: Path) -> list[str]:
    """Lines of a .txt list (blank lines and # comments skipped); relative paths are relative to the file."""
    out = []
    for line in txt.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        out.append(line if is_stream(line) or p.is_absolute() else str(txt.parent / p))
    return out


def expand_source(source) -> list[str]:
    """A source -> the list of entries it names (files, or stream URLs/camera indices)."""
    s = str(source)
    if is_stream(s):
        return [s]
    p = Path(s).expanduser()
    if any(ch in s for ch in "*?["):
        files = sorted(glob.glob(s, recursive=True))
        if not files:
            raise FileNotFoundError(f"--source {s}: the pattern matches no files")
        return [f for f in files if Path(f).is_file()]
    if p.is_dir():
        return sorted(str(f) for f in p.iterdir() if f.is_file() and suffix(f) in IMG_FORMATS + VID_FORMATS)
    if p.is_file() and suffix(p) == "txt":
        entries = []
        for e in _read_list(p):
            entries += expand_source(e) if (is_stream(e) or Path(e).is_dir() or "*" in e) else [e]
        return entries
    if p.is_file():
        return [str(p)]
    raise FileNotFoundError(f"--source {s} does not exist (not a file, folder, glob, .txt list or stream URL)")


def load_source(source, img_size=(640, 640), stride: int = 32, auto: bool = True, vid_stride: int = 1):
    """Frames from any source: files (images and videos) or streams (all streams batched together).

    vid_stride: use every vid_stride-th frame of videos and streams (YOLOv5's --vid-stride)."""
    if not isinstance(vid_stride, int) or vid_stride < 1:
        raise ValueError(f"--vid-stride must be a positive integer, got {vid_stride!r}")
    entries = expand_source(source)
    streams = [e for e in entries if is_stream(e)]
    if streams and len(streams) != len(entries):
        raise InputError(f"--source {source}: mixes stream URLs with files; give them separately")
    if streams:
        return LoadStreams(streams, img_size, stride, auto, vid_stride)
    return LoadFiles(entries, img_size, stride, auto, vid_stride)


def to_input(im0: np.ndarray, img_size, stride: int, auto: bool) -> np.ndarray:
    """Original BGR frame -> letterboxed CHW RGB uint8 (contiguous)."""
    im = letterbox(im0, img_size, stride=stride, auto=auto)[0]
    return np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])


class LoadFiles:
    """Images and videos in order; a file that cannot be read is reported and skipped."""

    def __init__(self, files: list[str], img_size=(640, 640), stride: int = 32, auto: bool = True,
                 vid_stride: int = 1):
        self.img_size, self.stride, self.auto, self.vid_stride = img_size, stride, auto, vid_stride
        self.files, self.skipped = [], []
        for f in files:
            (self.files if suffix(f) in IMG_FORMATS + VID_FORMATS else self.skipped).append(f)
        for f in self.skipped:
            LOGGER.warning(f"WARNING: {f}: not an image or video format ({', '.join(IMG_FORMATS + VID_FORMATS)}), skipped")
        if not self.files:
            raise FileNotFoundError(f"No images or videos found in {files[:3]}{'...' if len(files) > 3 else ''}")

    def __len__(self):
        return len(self.files)

    def __iter__(self):
        n = len(self.files)
        for i, f in enumerate(self.files):
            if suffix(f) in VID_FORMATS:
                yield from self._video(f, i, n)
                continue
            im0 = read_image(f)
            if im0 is None:
                LOGGER.warning(f"WARNING: image {i + 1}/{n} {f}: cannot be read (corrupt or unsupported), skipped")
                self.skipped.append(f)
                continue
            yield Frame([f], to_input(im0, self.img_size, self.stride, self.auto)[None], [im0], "image",
                        f"image {i + 1}/{n} {f}: ")

    def _video(self, f: str, i: int, n: int):
        cap = cv2.VideoCapture(f)
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        if not cap.isOpened():
            LOGGER.warning(f"WARNING: video {i + 1}/{n} {f}: cannot be opened, skipped")
            self.skipped.append(f)
            return
        k, frames = 0, frames // self.vid_stride
        try:
            while True:
                ok, im0 = self._next_frame(cap)
                if not ok:
                    break
                k += 1  # counts used frames (YOLOv5 numbers --save-txt files so)
                yield Frame([f], to_input(im0, self.img_size, self.stride, self.auto)[None], [im0], "video",
                            f"video {i + 1}/{n} ({k}/{frames}) {f}: ", frame=k, fps=fps)
        finally:
            cap.release()

    def _next_frame(self, cap):
        """Skip vid_stride - 1 frames (grab without decoding), decode the next one."""
        for _ in range(self.vid_stride):
            if not cap.grab():
                return False, None
        return cap.retrieve()


class LoadStreams:
    """Live sources read by one thread each; every step yields the newest frame of every stream."""

    def __init__(self, sources: list[str], img_size=(640, 640), stride: int = 32, auto: bool = True,
                 vid_stride: int = 1):
        self.sources, self.img_size, self.stride, self.auto = sources, img_size, stride, auto
        self.vid_stride = vid_stride
        self.caps, self.frames, self.threads, self.fps = [], [], [], []
        for i, s in enumerate(sources):
            cap = cv2.VideoCapture(int(s) if s.isnumeric() else s)
            ok, im = cap.read() if cap.isOpened() else (False, None)
            if not ok:
                self.close()
                raise ConnectionError(f"stream {i + 1}/{len(sources)} {s}: OpenCV cannot open it or read a frame")
            self.caps.append(cap)
            self.frames.append(im)
            self.fps.append(cap.get(cv2.CAP_PROP_FPS) or 30.0)
            LOGGER.info(f"stream {i + 1}/{len(sources)}: {s} {im.shape[1]}x{im.shape[0]} at {self.fps[-1]:.0f} FPS")
        self.alive = [True] * len(sources)
        for i in range(len(sources)):
            t = threading.Thread(target=self._reader, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def _reader(self, i: int) -> None:
        cap, n = self.caps[i], 0
        while self.alive[i] and cap.isOpened():
            n += 1
            ok = cap.grab()
            if ok and n % self.vid_stride == 0:  # decode only the frames that are used
                ok, im = cap.retrieve()
                if ok:
                    self.frames[i] = im
            if not ok:
                LOGGER.warning(f"WARNING: stream {self.sources[i]} stopped delivering frames")
                break
            time.sleep(0.0)
        self.alive[i] = False

    def __len__(self):
        return len(self.sources)

    def __iter__(self):
        k = 0
        while any(self.alive) or k == 0:
            k += 1
            im0s = [f.copy() for f in self.frames]
            im = np.stack([to_input(x, self.img_size, self.stride, self.auto and self._same_shape()) for x in im0s])
            yield Frame(list(self.sources), im, im0s, "stream", "", frame=k, fps=self.fps[0])
        self.close()

    def _same_shape(self) -> bool:
        """Rectangular letterboxing only when every stream has the same shape (so the batch stacks)."""
        return len({f.shape for f in self.frames}) == 1

    def close(self) -> None:
        self.alive = [False] * len(self.alive) if hasattr(self, "alive") else []
        for cap in self.caps:
            cap.release()
