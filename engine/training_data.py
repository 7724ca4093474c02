"""--data when it is not given to val.py: the dataset the checkpoint was trained on.

Our checkpoints keep train.py's options (`opt`, with `data`) and the class names, so `python val.py --weights
runs/train/exp/weights/best.pt` validates on the training run's own dataset, as the user would expect after
`python train.py`. Anything else (official YOLOv5 weights, exports, a checkpoint trained on a dict) falls back
to what it can: a dict is used as stored, everything without a record gets YOLOv5's default coco128.yaml.
"""
from __future__ import annotations

from pathlib import Path

from utils.checkpoint import load_checkpoint
from utils.cli import InputError
from utils.data.dataset_yaml import dataset_names
from utils.log import LOGGER

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "data" / "coco128.yaml"  # YOLOv5's val.py default


def _candidates(data: str, weights: Path) -> list[Path]:
    """Where a recorded --data may be now: as recorded (absolute, or from the working directory), from the
    folder train.py ran in by YOLOv5's layout (<there>/runs/train/<name>/weights/best.pt), in the repo's data/."""
    p = Path(data)
    out = [p]
    if not p.is_absolute():
        parents = weights.resolve().parents
        if len(parents) > 4 and parents[0].name == "weights":
            out.append(parents[4] / p)
        out.append(ROOT / "data" / p.name)  # where `--data coco128.yaml` itself resolves
    return list(dict.fromkeys(out))


def _names_line(names: list) -> str:
    return ", ".join(map(str, names[:8])) + (", ..." if len(names) > 8 else "")


def data_for_weights(weights, default: Path = DEFAULT_DATA):
    """The --data to validate `weights` on when the user gave none: our checkpoint's training dataset (a yaml
    path or the dict it was trained on), else `default`. A recorded yaml that is gone, or that now lists other
    classes than the checkpoint, is an InputError asking for --data."""
    w = Path(weights[0] if isinstance(weights, (list, tuple)) else weights)
    if w.suffix != ".pt" or not w.is_file():
        return str(default)  # exports carry no training record; a missing file is reported by the loader
    ckpt = load_checkpoint(w)
    opt = ckpt.get("opt") if ckpt["format"] != "official" else None  # official weights: YOLOv5's default
    data = opt.get("data") if isinstance(opt, dict) else None
    if not data:
        return str(default)
    if isinstance(data, dict):
        LOGGER.info(f"--data not given: using the dataset dict {w} was trained on")
        # A checkpoint is a file that travels: what it records may be read, never used to write. `generate`
        # would render a synthetic set at the dict's `path`; without it a missing set is reported, not made.
        return {k: v for k, v in data.items() if k != "generate"}
    names = list(ckpt.get("names") or [])
    tried = _candidates(str(data), w)
    found = next((c for c in tried if c.is_file()), None)
    if found is None:
        raise InputError(f"--data not given and {w} was trained on --data {data} ({len(names)} classes: "
                         f"{_names_line(names)}), which is not found (looked at {', '.join(map(str, tried))}); "
                         f"pass --data with that dataset's yaml")
    if not opt.get("single_cls") and names and dataset_names(found) != names:
        raise InputError(f"--data not given and {w} was trained on --data {data}, but {found} now lists other "
                         f"classes ({_names_line(dataset_names(found))}) than the checkpoint "
                         f"({_names_line(names)}); pass --data with the dataset it was trained on")
    LOGGER.info(f"--data not given: using {found}, the dataset {w} was trained on")
    return str(found)
