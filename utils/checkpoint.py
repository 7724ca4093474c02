"""Checkpoints as plain data: tensors + the model yaml + metadata, loadable with `torch.load(weights_only=True)`.

Our format (a dict, `format: 'yolov5-attention'`):
  model      state_dict (fp16 or fp32)      yaml       the resolved model dict (Model.yaml)
  names      list of class names            stride     list of floats
  epoch, best_fitness, metrics, hyp, opt (plain dict), date (ISO), version, dtype
  optimizer  optimizer.state_dict() or None ema, updates   EMA state_dict and update count, or None
Nothing in it needs project code to unpickle, so moving or renaming modules never breaks old files.

`load_checkpoint` reads ours or an official YOLOv5 pickle (through utils.official_pt's allow-list) and
returns one normalised dict; models/load.py rebuilds a Model from it.
"""
from __future__ import annotations

from copy import deepcopy
from datetime import datetime
from pathlib import Path

import torch
import torch.nn as nn

from utils.data.names import names_list
from utils.plain import to_plain  # noqa: F401 (re-export: callers import it from here)
from utils.atomic_files import remove_stale_temps, remove_stale_temps_in, write_atomic  # noqa: F401 (re-export)
from utils.log import LOGGER
from utils.official_pt import (CheckpointError, UnsafeCheckpointError, is_official_pickle,  # noqa: F401 (re-export)
                               official_from_pickle, unpickle_archive)
from utils.torch_utils import de_parallel

FORMAT = "yolov5-attention"
FORMAT_VERSION = 1


def _state(model_or_sd, half: bool) -> dict[str, torch.Tensor]:
    sd = model_or_sd if isinstance(model_or_sd, dict) else de_parallel(model_or_sd).state_dict()
    out = {}
    for k, v in sd.items():
        v = v.detach().to("cpu", copy=True)
        out[k] = v.half() if half and v.is_floating_point() else v
    return out


def make_checkpoint(model: nn.Module, *, epoch: int = -1, best_fitness=None, metrics=None, hyp=None, opt=None,
                    optimizer=None, ema=None, half: bool = True, extra: dict | None = None) -> dict:
    """Our checkpoint dict for `model` (a Model, maybe wrapped in DDP). `ema` may be a ModelEMA (.ema, .updates)."""
    m = de_parallel(model)
    ema_sd, updates = None, None
    if ema is not None:
        updates = getattr(ema, "updates", None)
        ema_sd = _state(ema.ema if hasattr(ema, "ema") else ema, half)
    if optimizer is not None and not isinstance(optimizer, dict):
        optimizer = optimizer.state_dict()
    stride = getattr(m, "stride", None)
    ckpt = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": _state(m, half), "yaml": deepcopy(m.yaml),
        "names": names_list(getattr(m, "names", [])),
        "stride": [float(s) for s in stride.tolist()] if isinstance(stride, torch.Tensor) else stride,
        "epoch": int(epoch), "best_fitness": best_fitness, "metrics": metrics or {}, "hyp": hyp or {}, "opt": opt or {},
        "optimizer": optimizer, "ema": ema_sd, "updates": updates,
        "dtype": "float16" if half else "float32",
        "date": datetime.now().isoformat(), "version": f"{FORMAT} checkpoint v{FORMAT_VERSION}, torch {torch.__version__}",
    }
    ckpt.update(extra or {})
    return to_plain(ckpt)


# ----------------------------------------------------------------------------- atomic save

def save_checkpoint(obj, path: str | Path) -> Path:
    """Write atomically: a temp file in the same folder, fsync, then os.replace over `path`.

    A crash or kill at any moment leaves either the old file or the new one, never a partial file. A killed
    write leaves its temp file behind (nothing can run at SIGKILL); the next successful save of the same file
    removes it, and a resumed run removes those of its whole run folder (remove_stale_temps_in).
    `obj` is a checkpoint dict (made plain here) or a model (wrapped with make_checkpoint()).
    """
    obj = make_checkpoint(obj) if isinstance(obj, nn.Module) else to_plain(obj)
    return write_atomic(path, lambda f: torch.save(obj, f))


# ----------------------------------------------------------------------------- loading

_META_KEYS = ("epoch", "best_fitness", "metrics", "hyp", "opt", "date", "version")


def _normalise_ours(raw: dict, path: Path) -> dict:
    for key in ("model", "yaml"):
        if not isinstance(raw.get(key), dict):
            raise CheckpointError(f"{path}: {FORMAT} checkpoint without a '{key}' dict")
    out = {"format": FORMAT, "file": str(path), "yaml": raw["yaml"], "state_dict": raw["model"],
           "ema": raw.get("ema"), "updates": raw.get("updates"), "optimizer": raw.get("optimizer"),
           "names": list(raw.get("names") or []), "stride": raw.get("stride"), "dtype": raw.get("dtype")}
    out.update({k: raw.get(k) for k in _META_KEYS})
    out["meta"] = {k: v for k, v in raw.items() if k not in out and k not in ("model", "format")}
    return out


def _normalise_official(raw, path: Path) -> dict:
    off = official_from_pickle(raw, path)
    meta = off["meta"]
    # v6.0 kept Detect.anchor_grid as a buffer; it is derived from anchors and stride, so it is dropped here.
    sd = {k: v for k, v in off["state_dict"].items() if not k.endswith(".anchor_grid")}
    ema = {k: v for k, v in off["ema"].items() if not k.endswith(".anchor_grid")} if off["ema"] else None
    out = {"format": "official", "file": str(path), "yaml": off["yaml"], "state_dict": sd, "ema": ema,
           "updates": meta.get("updates"), "optimizer": meta.get("optimizer"), "names": off["names"],
           "stride": off["stride"], "dtype": str(next(iter(sd.values())).dtype).replace("torch.", "") if sd else None,
           "class": off["class"]}
    out.update({k: meta.get(k) for k in _META_KEYS})
    if out["opt"] is None and isinstance(meta.get("train_args"), dict):  # v7 / ultralytics-style name
        out["opt"] = meta["train_args"]
    out["meta"] = {k: v for k, v in meta.items() if k not in out}
    return out


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read our format or an official YOLOv5 .pt; never executes pickled code.

    Returns {format ('yolov5-attention'|'official'), file, yaml, state_dict, ema, updates, optimizer, names,
    stride, dtype, epoch, best_fitness, metrics, hyp, opt, date, version, meta}.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    raw = unpickle_archive(path)  # the allow-listed unpickler: tensors, plain data, inert module stand-ins
    try:
        if isinstance(raw, dict) and raw.get("format") == FORMAT:
            ckpt = _normalise_ours(raw, path)
        elif is_official_pickle(raw):
            ckpt = _normalise_official(raw, path)
        else:
            ckpt = None
    except RecursionError:  # unpickle_archive refuses self-containing structures; this is the last guard
        raise CheckpointError(f"{path}: the checkpoint's structure nests too deeply to read; refused") from None
    if ckpt is None:
        keys = sorted(map(str, raw))[:8] if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path}: neither a {FORMAT} checkpoint nor an official YOLOv5 one (found {keys})")
    if map_location is not None and torch.device(map_location) != torch.device("cpu"):
        ckpt = _to_device(ckpt, map_location)
    return ckpt


class NotResumableError(CheckpointError, ValueError):
    """--resume was given a checkpoint that holds no training state of this project."""


def check_resumable(ckpt: dict) -> dict:
    """`ckpt` (from load_checkpoint) if --resume can continue it: our format, written during training, with its
    optimizer state and options. Official checkpoints and finished (stripped) ones are refused by name."""
    src = ckpt.get("file", "checkpoint")
    if ckpt.get("format") != FORMAT:
        raise NotResumableError(f"{src} is an official YOLOv5 checkpoint, not a resumable last.pt of this project; "
                                f"to fine-tune from it start a new run with --weights {src}")
    if ckpt.get("optimizer") is None or not isinstance(ckpt.get("epoch"), int) or ckpt["epoch"] < 0:
        raise NotResumableError(f"{src} holds no optimizer state (its training finished and it was stripped), so "
                                f"there is nothing to resume; start a new run with --weights {src}")
    if not isinstance(ckpt.get("opt"), dict):
        raise NotResumableError(f"{src} holds no training options, so it is not a resumable last.pt of this "
                                f"project; start a new run with --weights {src}")
    return ckpt


def strip_optimizer(f: str | Path, s: str | Path = "") -> Path:
    """Final-weights form, as YOLOv5: ema replaces model, training state dropped, epoch -1, fp16."""
    ck = unpickle_archive(f)  # the one checked reader (torch.load would accept e.g. a 1e12-element stride-0 view)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{f}: strip_optimizer works on {FORMAT} checkpoints only")
    if ck.get("ema"):
        ck["model"] = ck["ema"]
    ck.update(optimizer=None, ema=None, updates=None, best_fitness=None, epoch=-1, dtype="float16")
    ck["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ck["model"].items()}
    out = save_checkpoint(ck, s or f)
    LOGGER.info(f"Optimizer stripped from {f},{f' saved as {s},' if s else ''} {out.stat().st_size / 1e6:.1f}MB")
    return out
