"""Run an official YOLOv5 checkout (v6.1 or v7.0) on today's numpy and torch, for side-by-side timings.

The speed targets of issues 5 and 6 are ratios to the official code on the same machine. This lets
the benchmarks measure that reference in the same run instead of quoting a figure taken another
day. Nothing of the official code is copied here: you pass the path of your own checkout
(`git clone -b v7.0 https://github.com/ultralytics/yolov5`; v7.0 is the last release that runs
without the `ultralytics` package, and its val.py gives the figures issue 6 quotes). Both releases
predate numpy 2 and torch 2.6, so before their modules load this process gets shims that change no
numerics:
  - np.int / np.float / np.bool / np.trapz aliases (removed from numpy; v6.1 uses them),
  - torch.load defaulting to weights_only=False (v6.1 checkpoints are pickled modules),
  - Tensor.clamp_ on an integer tensor taking 0-d tensor bounds as integers (v6.1's build_targets
    clamps long grid indices with float tensors, an error since torch 2.x),
  - a `pkg_resources` stand-in when setuptools no longer ships it, no requirement/git/font checks
    (they pip-install or download), Pillow 10's missing
    FreeTypeFont.getsize, and a local TTF as Arial.ttf in a temporary config dir.
It also needs the checkout's own extra imports: pandas, seaborn, scipy, requests, tensorboard, and for
v7.0 ipython and psutil (`pip install ...`).

Usage (runs the official script with these shims, arguments passed through):
    python benchmarks/official_yolov5.py --repo ../yolov5-v7.0 val.py --weights yolov5n.pt --data coco128.yaml
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import shutil
import sys
import tempfile
import types
from pathlib import Path

SHIMMED = False


def _numpy_aliases() -> None:
    import numpy as np
    for name, typ in (("int", int), ("float", float), ("bool", bool)):
        if name not in np.__dict__:
            setattr(np, name, typ)
    if "trapz" not in np.__dict__:  # renamed trapezoid in numpy 2.0, removed later
        np.trapz = np.trapezoid


def _torch_compat() -> None:
    import torch
    load = torch.load

    def load_pickles(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return load(*args, **kwargs)
    torch.load = load_pickles

    clamp_ = torch.Tensor.clamp_

    def clamp_numbers(self, min=None, max=None):
        if not self.is_floating_point():
            min, max = (int(v.item()) if isinstance(v, torch.Tensor) and v.dim() == 0 else v for v in (min, max))
        return clamp_(self, min, max)
    torch.Tensor.clamp_ = clamp_numbers


def _pkg_resources() -> None:
    if importlib.util.find_spec("pkg_resources") is None:
        from packaging.version import parse
        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)


def _pillow_getsize() -> None:
    from PIL import ImageFont
    if not hasattr(ImageFont.FreeTypeFont, "getsize"):  # removed in Pillow 10; v6.1's label boxes use it
        def getsize(self, text, *args, **kwargs):
            left, top, right, bottom = self.getbbox(text, *args, **kwargs)
            return right, bottom
        ImageFont.FreeTypeFont.getsize = getsize


def _font_dir() -> None:
    import matplotlib
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    cfg = Path(tempfile.mkdtemp(prefix="yolov5_official_cfg_"))
    shutil.copy(ttf, cfg / "Arial.ttf")
    os.environ["YOLOV5_CONFIG_DIR"] = str(cfg)


def copy_dataset(root: str | Path, dest_dir: Path) -> Path:
    """A private copy of a dataset root (without label caches): the official code writes its caches
    beside the labels, which must not happen in shared or read-only data."""
    dest = dest_dir / Path(root).name
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns("*.cache"))
    return dest


def enter(repo: str | Path) -> Path:
    """Make `repo` (an official YOLOv5 checkout) importable as the top-level models/utils packages."""
    global SHIMMED
    repo = Path(repo).resolve()
    if not (repo / "train.py").is_file() or not (repo / "utils" / "general.py").is_file():
        raise FileNotFoundError(f"{repo} is not a YOLOv5 checkout (no train.py / utils/general.py)")
    for name in [m for m in sys.modules if m.split(".")[0] in ("models", "utils", "train", "val")]:
        del sys.modules[name]  # this repo's own packages share those names
    sys.path = [str(repo)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parents[1]]
    os.chdir(repo)
    if not SHIMMED:
        _numpy_aliases()
        _torch_compat()
        _pkg_resources()
        _pillow_getsize()
        _font_dir()
        SHIMMED = True
    import utils.general as general
    general.check_requirements = lambda *a, **k: None  # would pip-install
    general.check_git_status = lambda *a, **k: None  # would reach github
    general.check_git_info = lambda *a, **k: {}  # v7.0: would import gitpython
    general.check_font = lambda *a, **k: None  # the font is already in place
    return repo


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", required=True, help="official YOLOv5 v6.1 or v7.0 checkout")
    p.add_argument("script", help="train.py, val.py or detect.py of that checkout")
    p.add_argument("args", nargs=argparse.REMAINDER)
    opt = p.parse_args(argv)
    repo = enter(opt.repo)
    sys.argv = [str(repo / opt.script), *opt.args]
    runpy.run_path(str(repo / opt.script), run_name="__main__")


if __name__ == "__main__":
    main()
