"""Regenerate tests/data/hub_official_v7.0.json: what YOLOv5 v7.0's own AutoShape returns on data/images.

Runs the official `models.common.AutoShape(DetectMultiBackend('yolov5n.pt'))` of a v7.0 checkout (through
benchmarks/official_yolov5.enter, which adds numerics-neutral compatibility shims) on this repo's two sample
pictures, given as numpy RGB arrays decoded here with OpenCV (so both sides see the same pixels), at two sizes,
and writes per picture the detections, the inference shape and the file names. Modules the checkout imports
but this path never calls (requests, seaborn, IPython, psutil, scipy, thop) are stubbed when missing.

    python benchmarks/reference/hub_official.py --repo ../yolov5-v7.0 --weights ../shared/weights/yolov5n.pt
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "hub_official_v7.0.json"
PICTURES = ("bus.jpg", "zidane.jpg")
SIZES = (320, 640)


def _stub_missing(names=("requests", "seaborn", "IPython", "IPython.display", "psutil", "scipy", "thop")) -> None:
    import importlib.util
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            mod = types.ModuleType(name)
            mod.display = lambda *a, **k: None
            mod.get_ipython = lambda: None  # matplotlib asks when it switches backend
            sys.modules[name] = mod


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", required=True, help="official YOLOv5 v7.0 checkout")
    p.add_argument("--weights", required=True, help="the official v6.1 yolov5n.pt")
    p.add_argument("--commit", default="", help="the checkout's commit, when it is not a git work tree")
    opt = p.parse_args()
    import cv2

    ims = [cv2.imread(str(ROOT / "data" / "images" / f))[..., ::-1].copy() for f in PICTURES]
    weights = str(Path(opt.weights).resolve())
    sys.path.insert(0, str(ROOT))
    from benchmarks.official_yolov5 import enter

    _stub_missing()
    repo = enter(opt.repo)
    commit = opt.commit or subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                          text=True).stdout.strip()
    import torch
    from models.common import AutoShape, DetectMultiBackend

    model = AutoShape(DetectMultiBackend(weights, device=torch.device("cpu"), fuse=True))
    runs = []
    for size in SIZES:
        r = model([im.copy() for im in ims], size=size)
        runs.append({"size": size, "shape": list(r.s), "files": r.files,
                     "pred": [[[round(v, 4) for v in row] for row in p.tolist()] for p in r.pred]})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"source": f"ultralytics/yolov5 v7.0 ({commit or 'commit unknown'}), "
                               "models.common.AutoShape(DetectMultiBackend(yolov5n.pt)) on numpy RGB inputs "
                               "decoded with OpenCV; written by benchmarks/reference/hub_official.py",
                               "pictures": list(PICTURES), "runs": runs}) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
