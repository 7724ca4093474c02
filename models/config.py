"""Model yaml lookup and scale selection.

`yolov5s_TripletAttention.yaml` need not exist: when it does not, the letter after `yolov5` picks the
depth/width multiples from the `scales:` table of `yolov5_TripletAttention.yaml`. A `6` after the letter
names the P6 family (four output levels): `yolov5s6.yaml` is scale s of `yolov5-P6.yaml`, and
`yolov5n6_TripletAttention.yaml` scale n of `yolov5-P6_TripletAttention.yaml`. A bare name uses the
file's own `depth_multiple`/`width_multiple` (or its `default_scale`).

Names are looked up as given, then in models/ and models/hub/ (where YOLOv5's extra architectures live,
so `--cfg yolov5-p2.yaml` and `--cfg hub/yolov5-p2.yaml` both work), with exact letter case.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from models.registry import ModelConfigError

MODELS_DIR = Path(__file__).resolve().parent
SCALE_RE = re.compile(r"^(yolov5)([nsmlx])(6?)(.*)$")


def _exact_file(p: Path) -> bool:
    """is_file() with the letter case as written, also on case-insensitive file systems (yolov5-P6 vs hub's -p6)."""
    return p.is_file() and p.name in {c.name for c in p.parent.iterdir()}


def _find(path: Path) -> Path | None:
    for cand in (path, MODELS_DIR / path, MODELS_DIR / path.name, MODELS_DIR / "hub" / path.name):
        if _exact_file(cand):
            return cand
    return None


def scale_free_name(stem: str) -> tuple[str, str] | None:
    """('yolov5_CGA', 'n') for 'yolov5n_CGA'; ('yolov5-P6_CGA', 'n') for 'yolov5n6_CGA'; None without a letter."""
    m = SCALE_RE.match(stem)
    if not m:
        return None
    family = "yolov5-P6" if m.group(3) else m.group(1)
    return family + m.group(4), m.group(2)


def resolve_cfg(cfg: str | Path) -> tuple[Path, str | None]:
    """Return (yaml file, scale letter or None) for a cfg name such as 'yolov5n_CGA.yaml'."""
    path = Path(cfg)
    if path.suffix not in (".yaml", ".yml"):
        path = path.with_suffix(".yaml")
    found = _find(path)
    if found:
        return found, None
    scaled = scale_free_name(path.stem)
    if scaled:
        base = path.with_name(scaled[0] + path.suffix)
        found = _find(base)
        if found:
            return found, scaled[1]
    looked = ", ".join(str(p) for p in (path, MODELS_DIR / path.name, MODELS_DIR / "hub" / path.name))
    raise FileNotFoundError(f"model yaml {cfg!r} not found (looked at {looked}"
                            + (f" and the scale-free {base.name}" if scaled else "") + ")")


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
