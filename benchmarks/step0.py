"""Step-0 mAP: a pretrained checkpoint transferred into every attention variant, validated before any training.

    python benchmarks/step0.py [--weights ../shared/weights/yolov5n.pt] [--data data/coco128.yaml] [--img 320]
                               [--only TripletAttention,ACmix] [--batch-size 32] [--workers 2]

Prints, per variant, mAP50-95 with plain insertion (the block as built, on top of the pretrained layers) and
with identity insertion (--attn-init identity, the default: the inserted layers start as the identity), and the
difference from the plain YOLOv5 model. Identity insertion should reproduce the plain model's mAP (issue 13:
within 0.005). Each variant is validated in this process on one shared val loader; about 10-20 s per model on
2 CPU cores at 320, so the whole table takes a few minutes.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.validator import validate_model  # noqa: E402
from models.load import pretrained_model  # noqa: E402
from utils.data.dataset_yaml import check_dataset  # noqa: E402
from utils.log import LOGGER  # noqa: E402

SCALE = re.compile(r"^yolov5([nsmlx])")


def attention_variants() -> list[str]:
    """Every models/yolov5_<V>.yaml (the plain yolov5{n,s,...}.yaml have no underscore)."""
    return [p.stem[len("yolov5_"):] for p in sorted((ROOT / "models").glob("yolov5_*.yaml"))]


def val_loader(data: dict, imgsz: int, batch_size: int, workers: int, stride: int = 32):
    """The val split as val.py loads it for a PyTorch model (rectangular batches, pad 0.5)."""
    from utils.data.loader import create_dataloader
    return create_dataloader(data["val"], imgsz, batch_size, stride, pad=0.5, rect=True, workers=workers,
                             nc=data["nc"])[0]


def validate(model: torch.nn.Module, data: dict, loader, imgsz: int) -> tuple[float, float]:
    """(mAP50, mAP50-95) of `model` on `loader`, through the validator's in-memory path (as training calls it)."""
    r = validate_model(model.eval(), loader, data, half=False)
    return r.map50, r.map


def step0(weights: str, cfg: str, data: dict, loader, imgsz: int, attn_init: str) -> tuple[float, float]:
    exclude = ["anchor"]  # as train.py with --cfg: anchors come from the yaml
    model, _ = pretrained_model(weights, cfg, data["nc"], None, exclude, verbose=False, attn_init=attn_init)
    return validate(model, data, loader, imgsz)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(ROOT.parent / "shared" / "weights" / "yolov5n.pt"))
    ap.add_argument("--data", default=str(ROOT / "data" / "coco128.yaml"))
    ap.add_argument("--imgsz", "--img", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated variant names (default: every attention yaml)")
    opt = ap.parse_args(argv)
    LOGGER.setLevel(logging.WARNING)
    torch.set_grad_enabled(False)
    scale = SCALE.match(Path(opt.weights).stem)
    scale = scale.group(1) if scale else "n"
    data = check_dataset(opt.data)
    loader = val_loader(data, opt.imgsz, opt.batch_size, opt.workers)
    t0 = time.time()
    _, base = step0(opt.weights, f"yolov5{scale}.yaml", data, loader, opt.imgsz, "identity")
    print(f"step-0 mAP50-95, {Path(opt.weights).name} into each variant, {Path(opt.data).name} at {opt.imgsz}")
    print(f"plain yolov5{scale}: {base:.4f}\n")
    print("| variant | plain insertion | identity insertion | identity - plain yolov5 |")
    print("|---|---|---|---|")
    variants = [v for v in attention_variants() if not opt.only or v in opt.only.split(",")]
    for v in variants:
        cfg = f"yolov5{scale}_{v}.yaml"
        _, plain = step0(opt.weights, cfg, data, loader, opt.imgsz, "plain")
        _, ident = step0(opt.weights, cfg, data, loader, opt.imgsz, "identity")
        print(f"| {cfg} | {plain:.4f} | {ident:.4f} | {ident - base:+.4f} |", flush=True)
    print(f"\n{len(variants)} variants in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
