"""Hyperparameters: the --hyp file read with the file named in every error and checked before training starts,
then settled once into what training uses (v6.1 rescaled them in three places).

A missing key would otherwise surface as a bare KeyError deep in the loss or the augmentation, and a yaml
syntax error would name `<unicode string>` instead of the file.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path

import yaml

from utils.cli import InputError
from utils.log import LOGGER
from utils.train.optim import NOMINAL_BATCH, scaled_weight_decay

# Read with hyp[key] somewhere in training: each must be present.
REQUIRED = ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr",
            "box", "cls", "obj", "anchor_t", "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear",
            "perspective", "flipud", "fliplr", "mosaic", "mixup")
# Read with a default, or only written by YOLOv5's files.
OPTIONAL = ("cls_pw", "obj_pw", "iou_t", "fl_gamma", "copy_paste", "anchors", "nbs", "label_smoothing")
PROBABILITIES = ("flipud", "fliplr", "mosaic", "mixup", "copy_paste")
HYP_DIR = Path(__file__).resolve().parents[2] / "data" / "hyps"  # where bare --hyp names are looked up


class HypError(InputError):
    """A hyperparameter file that cannot be used; the message names the file and the key or line."""


def read_yaml_file(path: str | Path, what: str) -> object:
    """yaml.safe_load of a file; a syntax error names the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        with open(path, errors="replace") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise HypError(f"{where}: not valid YAML ({problem}); fix the {what} file's syntax there") from None


def check_hyp(hyp: dict, source: str = "hyperparameters") -> dict:
    """The hyp dict if every required key is there with a finite non-negative number (probabilities in
    [0, 1], lr0 > 0); else HypError naming the file and the key. Unknown keys are kept, with a warning."""
    if not isinstance(hyp, dict):
        raise HypError(f"{source}: expected a mapping of hyperparameter: value, got {type(hyp).__name__}")
    missing = [k for k in REQUIRED if k not in hyp]
    if missing:
        raise HypError(f"{source}: missing {', '.join(repr(k) for k in missing)}; add "
                       f"{'it' if len(missing) == 1 else 'them'} (see data/hyps/hyp.scratch-low.yaml)")
    for k, v in hyp.items():
        if k not in REQUIRED + OPTIONAL:
            close = difflib.get_close_matches(str(k), REQUIRED + OPTIONAL, n=1)
            LOGGER.warning(f"WARNING: {source}: unknown hyperparameter {k!r} is ignored"
                           + (f" (did you mean {close[0]!r}?)" if close else ""))
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise HypError(f"{source}: {k}: {v!r} must be a finite non-negative number")
        if k in PROBABILITIES and v > 1:
            raise HypError(f"{source}: {k}: {v} is a probability and must be between 0 and 1")
    if hyp["lr0"] <= 0:
        raise HypError(f"{source}: lr0: {hyp['lr0']} must be above 0")
    return hyp


def find_hyp(hyp: str | Path) -> Path:
    """--hyp as a file: the path as given, else a bare name (or data/hyps/<name>) in the repo's data/hyps/, as
    YOLOv5 resolves `--hyp hyp.scratch-high.yaml`. Not found: an error listing the files there."""
    p = Path(hyp)
    tried = [p]
    if p.parent in (Path("."), Path("data/hyps"), Path("hyps")):
        tried += [HYP_DIR / p.name] + ([HYP_DIR / f"{p.name}.yaml"] if p.suffix not in (".yaml", ".yml") else [])
    for cand in tried:
        if cand.is_file():
            return cand
    available = ", ".join(sorted(f.name for f in HYP_DIR.glob("*.yaml"))) or "none"
    raise FileNotFoundError(f"--hyp {hyp} not found (looked at {', '.join(map(str, tried))}); pass a yaml path or "
                            f"one of data/hyps/: {available}")


def load_hyp(hyp: str | Path | dict) -> dict:
    """--hyp (a yaml path or a bare name in data/hyps/, or a dict from train.run(hyp=...)) as a checked dict
    (a copy)."""
    if isinstance(hyp, dict):
        return check_hyp(dict(hyp), "hyp dict")
    file = find_hyp(hyp)
    return dict(check_hyp(read_yaml_file(file, "--hyp"), str(file)))


def nominal_batch(hyp: dict) -> int:
    """Batch size gradients are accumulated to: 64 as v6.1 unless the hyp file sets 'nbs'."""
    return int(hyp.get("nbs", NOMINAL_BATCH))


def scale_hyp_gains(hyp: dict, nc: int, nl: int, imgsz: int) -> dict:
    """v6.1 train.py's rescaling of the loss gains to the number of levels, classes and image size."""
    hyp = dict(hyp)
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    return hyp


def settle_hyp(source: dict, *, nc: int, nl: int, imgsz: int, batch_size: int, label_smoothing: float) -> dict:
    """What training uses: the file's values with the loss gains scaled to the detection layers, classes and
    image size, --label-smoothing added, and weight decay scaled to the batch actually accumulated (all as
    v6.1). A new dict; `source` is left as loaded."""
    hyp = scale_hyp_gains(source, nc, nl, imgsz)
    hyp["label_smoothing"] = label_smoothing
    hyp["weight_decay"] = scaled_weight_decay(hyp["weight_decay"], batch_size, nominal_batch(hyp))
    return hyp
