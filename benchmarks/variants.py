"""Params and true GFLOPs of every model yaml at every scale: the README's variant table.

    python benchmarks/variants.py [--imgsz 640] [--scales nsmlx] [--only TripletAttention,CGA]

GFLOPs come from torch's FlopCounterMode at the real input size (batch 1, fused Conv+BN, like the
v6.1 README); the attention work is included.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.yolo import Model  # noqa: E402
from utils.flops import model_gflops  # noqa: E402
from utils.log import LOGGER  # noqa: E402


def variant_names() -> list[str]:
    """'' for the plain YOLOv5 yamls, then each `yolov5_<Variant>.yaml`."""
    names = [p.stem[len("yolov5_"):] for p in sorted((ROOT / "models").glob("yolov5_*.yaml"))]
    return [""] + names


def measure(variant: str, scale: str, imgsz: int) -> tuple[int, float | None, str]:
    cfg = f"yolov5{scale}.yaml" if not variant else f"yolov5{scale}_{variant}.yaml"
    model = Model(cfg).eval().fuse()
    params = sum(p.numel() for p in model.parameters())
    gflops, why = model_gflops(model, imgsz, model.flop_rules())
    return params, gflops, why


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--scales", default="nsmlx")
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    opt = ap.parse_args(argv)
    LOGGER.setLevel(logging.WARNING)
    torch.set_grad_enabled(False)
    variants = [v for v in variant_names() if not opt.only or v in opt.only.split(",")]
    head = "| variant | " + " | ".join(f"{s} params (M) | {s} GFLOPs" for s in opt.scales) + " |"
    print(head)
    print("|" + "---|" * (1 + 2 * len(opt.scales)))
    for v in variants:
        cells = []
        for s in opt.scales:
            params, gflops, why = measure(v, s, opt.imgsz)
            cells += [f"{params / 1e6:.2f}", f"{gflops:.1f}" if gflops is not None else f"n/a ({why})"]
        print(f"| {'yolov5' + (('_' + v) if v else '')} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
