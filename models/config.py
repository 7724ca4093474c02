"""Model yaml lookup and scale selection.

`yolov5s_TripletAttention.yaml` need not exist: when it does not, the letter after `yolov5` picks the
depth/width multiples from the `scales:` table of `yolov5_TripletAttention.yaml`. A bare name uses the
file's own `depth_multiple`/`width_multiple` (or its `default_scale`).
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from models.registry import ModelConfigError

MODELS_DIR = Path(__file__).resolve().parent
SCALE_RE = re.compile(r"^(yolov5)([nsmlx])(6?)(.*)$")


def _find(path: Path) -> Path | None:
    for cand in (path, MODELS_DIR / path, MODELS_DIR / path.name):
        if cand.is_file():
            return cand
    return None


def resolve_cfg(cfg: str | Path) -> tuple[Path, str | None]:
    """Return (yaml file, scale letter or None) for a cfg name such as 'yolov5n_CGA.yaml'."""
    path = Path(cfg)
    if path.suffix not in (".yaml", ".yml"):
        path = path.with_suffix(".yaml")
    found = _find(path)
    if found:
        return found, None
    m = SCALE_RE.match(path.stem)
    if m:
        base = path.with_name(f"{m.group(1)}{m.group(3)}{m.group(4)}{path.suffix}")
        found = _find(base)
        if found:
            return found, m.group(2)
    looked = ", ".join(str(p) for p in (path, MODELS_DIR / path.name))
    raise FileNotFoundError(f"model yaml {cfg!r} not found (looked at {looked}"
                            + (f" and the scale-free {base.name}" if m else "") + ")")


def apply_scale(d: dict, scale: str | None, source: str) -> dict:
    """Set depth_multiple/width_multiple from `scales:` for the given letter (or the file's default)."""
    scales = d.get("scales") or {}
    letter = scale or d.get("default_scale")
    if letter:
        if letter not in scales:
            if scale is None and "depth_multiple" in d:
                return d
            raise ModelConfigError(f"{source}: scale {letter!r} is not in its scales: {sorted(scales)}")
        d["depth_multiple"], d["width_multiple"] = (float(v) for v in scales[letter])
        d["scale"] = letter
    for key in ("depth_multiple", "width_multiple"):
        if key not in d:
            raise ModelConfigError(f"{source}: no {key} and no scale chosen (name the file yolov5<n|s|m|l|x>_..., "
                             f"or set default_scale)")
    return d


def load_model_yaml(cfg: str | Path | dict) -> dict:
    """The model dict with multiples resolved; `yaml_file` records the name as asked for."""
    if isinstance(cfg, dict):
        return dict(cfg)
    path, scale = resolve_cfg(cfg)
    try:
        with open(path, errors="replace") as f:  # a stream, so a syntax error names the file and line
            d = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ModelConfigError(f"{path}: not valid yaml: {e}") from None
    if not isinstance(d, dict) or "backbone" not in d or "head" not in d:
        raise ModelConfigError(f"{path}: a model yaml needs 'backbone' and 'head' lists")
    d = apply_scale(d, scale, str(path))
    d["yaml_file"] = Path(cfg).name if scale else path.name
    return d
