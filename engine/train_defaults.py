"""train.py's defaults follow the data: without --data the built-in demo's own settings (data/demo.yaml), with
--data YOLOv5's. train.py leaves these options None when they are not given, so a value the user typed is
never replaced, and a demo value never reaches a user's own dataset.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from utils.cli import InputError

ROOT = Path(__file__).resolve().parents[1]
DEMO_FILE = ROOT / "data" / "demo.yaml"
# YOLOv5's defaults for these options (train.py's argparse of v6.1); 'hyp' is looked up in data/hyps/.
YOLOV5_DEFAULTS = {"imgsz": 640, "epochs": 300, "optimizer": "SGD", "hyp": "hyp.scratch-low.yaml", "noval": False}
DEMO_KEYS = ("data", *YOLOV5_DEFAULTS)  # what data/demo.yaml must set


def demo_settings(file: Path = DEMO_FILE) -> dict:
    """data/demo.yaml with `data` and `hyp` as paths into data/ and data/hyps/."""
    try:
        d = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{file}: the demo's settings cannot be read ({e}); restore it from the repository") from None
    missing = [k for k in DEMO_KEYS if not isinstance(d, dict) or k not in d]
    if missing:
        raise InputError(f"{file}: missing {', '.join(missing)}; restore it from the repository")
    out = {k: d[k] for k in DEMO_KEYS}
    out["data"] = str(ROOT / "data" / out["data"])
    out["hyp"] = str(ROOT / "data" / "hyps" / out["hyp"])
    return out


def training_defaults(data_given: bool) -> dict:
    """The values of the data-dependent options when the user did not give them."""
    if data_given:
        return {**YOLOV5_DEFAULTS, "hyp": str(ROOT / "data" / "hyps" / YOLOV5_DEFAULTS["hyp"])}
    return demo_settings()


def fill_unset(opt: argparse.Namespace, defaults: dict) -> argparse.Namespace:
    """Set each option that is None (not given) to its default; given ones stay."""
    for k, v in defaults.items():
        if getattr(opt, k, None) is None:
            setattr(opt, k, v)
    return opt
