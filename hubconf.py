"""PyTorch Hub entry points, as YOLOv5's hubconf.py (offline: weights are local files, nothing is downloaded).

Usage:
    import torch
    model = torch.hub.load('.', 'yolov5n', source='local')  # ./yolov5n.pt (working dir or repo root)
    model = torch.hub.load('.', 'custom', path='runs/train/exp/weights/best.pt', source='local')
    model = torch.hub.load('.', 'yolov5s', pretrained=False, classes=10, source='local')  # from yolov5s.yaml
    results = model('data/images/bus.jpg')  # also Path, PIL, numpy HWC RGB, lists; size=, augment=
    results.print()  # .show() .save() .crop() .render() .pandas() .tolist() .xyxy ...

    python hubconf.py --model yolov5n
Keyword arguments as YOLOv5: pretrained, channels, classes, autoshape, _verbose (v6.1: verbose), device.
"""
import sys
from pathlib import Path

dependencies = ["torch", "torchvision", "numpy", "cv2", "yaml"]  # checked by torch.hub before loading

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))


def _create(name, pretrained=True, channels=3, classes=80, autoshape=True, verbose=True, device=None):
    """A named model ('yolov5s') or a weights path; see models/hub_load.py."""
    from models.hub_load import create
    return create(name, pretrained, channels, classes, autoshape, verbose, device)


def custom(path="path/to/model.pt", autoshape=True, _verbose=True, device=None, verbose=None):
    """A local checkpoint of ours or of YOLOv5 (.pt), or an export (.onnx, .torchscript)."""
    return _create(path, autoshape=autoshape, verbose=_verbose if verbose is None else verbose, device=device)


def _named(name):
    def entry(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None, verbose=None):
        return _create(name, pretrained, channels, classes, autoshape, _verbose if verbose is None else verbose, device)
    entry.__name__ = name
    entry.__doc__ = (f"YOLOv5 {name}: {name}.pt from the working directory or the repo root "
                     f"(pretrained=False: {name}.yaml with random weights).")
    return entry


yolov5n, yolov5s, yolov5m, yolov5l, yolov5x = (_named(f"yolov5{s}") for s in "nsmlx")
yolov5n6, yolov5s6, yolov5m6, yolov5l6, yolov5x6 = (_named(f"yolov5{s}6") for s in "nsmlx")


def _demo(model_name: str) -> None:
    """YOLOv5's hubconf demo (every input kind at size 320) without its URL input: nothing downloads here."""
    import cv2
    import numpy as np
    from PIL import Image

    model = _create(name=model_name, pretrained=True, channels=3, classes=80, autoshape=True, verbose=True)
    images = ROOT / "data" / "images"
    ims = [str(images / "zidane.jpg"),  # filename
           images / "zidane.jpg",  # Path
           cv2.imread(str(images / "bus.jpg"))[:, :, ::-1],  # OpenCV, BGR -> RGB
           Image.open(images / "bus.jpg"),  # PIL
           np.zeros((320, 640, 3))]  # numpy
    results = model(ims, size=320)
    results.print()
    results.save()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Load a hub model and run it on the sample images")
    parser.add_argument("--model", type=str, default="yolov5s", help="model name (its .pt must be local) or path")
    opt = parser.parse_args()
    from utils.cli import run_cli
    run_cli(_demo, opt.model)  # bad input: one ERROR line, exit 2
