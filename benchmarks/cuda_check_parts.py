"""The pieces of benchmarks/cuda_check.py: one function per check, each returning figures, never printing a verdict.

Everything runs in a temporary folder: the dataset yaml points into ../shared (read only: label caches go to the
user cache dir there, see utils/data/label_cache.py), weights are copied before export writes beside them.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SEED_VARIANTS = ("yolov5n_TripletAttention.yaml", "yolov5n_ACmix.yaml", "yolov5n_CGA.yaml", "yolov5n_DAT.yaml")


@dataclass
class Check:
    name: str
    status: str  # PASS / FAIL / SKIP
    figures: str = ""
    note: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- data --

def dataset_yaml(tmp: Path, name: str) -> Path | None:
    """tmp/<name>.yaml for ../shared/datasets/<name> (coco128: its train2017 as both splits, as coco128.yaml);
    None when the folder is absent."""
    d = SHARED / "datasets" / name
    if not (d / "images").is_dir():
        return None
    split = "images/train2017" if name == "coco128" else "images/val"
    names = yaml.safe_load((ROOT / "data" / "coco128.yaml").read_text())["names"]
    f = tmp / f"{name}.yaml"
    f.write_text(yaml.safe_dump({"path": str(d), "train": split, "val": split, "names": names}))
    return f


def local_weights(tmp: Path) -> Path | None:
    """A copy of ../shared/weights/yolov5n.pt in tmp (export writes beside its input)."""
    src = SHARED / "weights" / "yolov5n.pt"
    if not src.is_file():
        return None
    dst = tmp / "yolov5n.pt"
    if not dst.exists():
        shutil.copyfile(src, dst)
    return dst


# ------------------------------------------------------------------------------------------ training --

def synthetic_batch(batch: int, imgsz: int, device: torch.device, seed: int = 0):
    """Random images and 3 boxes per image (normalised xywh), enough for every loss term to be non-zero."""
    g = torch.Generator().manual_seed(seed)
    ims = torch.rand(batch, 3, imgsz, imgsz, generator=g)
    rows = []
    for i in range(batch):
        for k in range(3):
            xy, wh = torch.rand(2, generator=g) * 0.6 + 0.2, torch.rand(2, generator=g) * 0.2 + 0.05
            rows.append(torch.tensor([i, (i + k) % 80, *xy.tolist(), *wh.tolist()]))
    return ims.to(device), torch.stack(rows).to(device)


def train_steps(cfg: str, device: torch.device, steps: int, imgsz: int, batch: int, mode: str):
    """`steps` SGD steps of cfg on one synthetic batch -> (losses, seconds per step after the first).
    mode: fp32; amp (CUDA fp16 autocast + GradScaler, as train.py on a GPU); bf16 (CPU autocast, no scaler)."""
    from models.yolo import Model
    from utils.train.hyp import load_hyp, settle_hyp
    from utils.train.loss import ComputeLoss

    torch.manual_seed(0)
    model = Model(cfg).to(device).train()
    hyp = settle_hyp(load_hyp("hyp.scratch-low.yaml"), nc=80, nl=model.model[-1].nl, imgsz=imgsz, batch_size=batch,
                     label_smoothing=0.0)
    model.hyp = hyp
    loss_fn = ComputeLoss(model, hyp)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=mode == "amp")
    dtype = {"amp": torch.float16, "bf16": torch.bfloat16}.get(mode)
    ims, targets = synthetic_batch(batch, imgsz, device)
    losses, t0 = [], 0.0
    for step in range(steps):
        if step == 1:
            sync(device)
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = loss_fn(model(ims), targets)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    sync(device)
    return losses, (time.perf_counter() - t0) / max(steps - 1, 1)


# ---------------------------------------------------------------------------------------- validation --

def validate(weights: Path, data: Path, device: torch.device, imgsz: int, batch: int, tmp: Path, tag: str,
             half: bool = False, bf16: bool = False, square: bool = False):
    """One val of a weights file (.pt or an export) -> (ValResult, wall seconds). square: imgsz x imgsz
    letterboxes (val.py's task 'speed' loader), as a static export takes them, instead of rect batches."""
    from engine.val_loop import ValSettings
    from engine.validator import ValOutputs, validate_weights

    sync(device)
    t0 = time.perf_counter()
    r = validate_weights(str(weights), str(data), ValOutputs(tmp / "val" / tag), batch_size=batch, imgsz=imgsz,
                         device=str(device.index if device.type == "cuda" else "cpu"), workers=min(8, os.cpu_count()),
                         half=half, settings=ValSettings(bf16=bf16), task="speed" if square else "val")
    sync(device)
    return r, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------- subprocesses --

def run_script(args: list[str], timeout: float, env: dict | None = None) -> tuple[int, str]:
    """A CLI of this repo in a fresh process -> (exit code, last lines of its output)."""
    try:
        p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    text = (p.stdout + p.stderr).strip().splitlines()
    return p.returncode, "\n".join(text[-15:])


def export(weights: Path, device: torch.device, imgsz: int, half: bool) -> tuple[list[Path], str]:
    """export.py to ONNX and TorchScript beside `weights` -> (files that exist, error text or '')."""
    args = ["export.py", "--weights", str(weights), "--include", "onnx", "torchscript", "--imgsz", str(imgsz),
            "--device", str(device.index if device.type == "cuda" else "cpu")] + (["--half"] if half else [])
    rc, text = run_script(args, timeout=300)
    files = [weights.with_suffix(s) for s in (".onnx", ".torchscript")]
    return [f for f in files if f.is_file()], "" if rc == 0 else text


def ddp_epoch(weights: Path, data: Path, tmp: Path, imgsz: int) -> tuple[int, str]:
    """train.py under torchrun on 2 GPUs (NCCL), one epoch of coco128 -> (exit code, last lines)."""
    args = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
            "train.py", "--weights", str(weights), "--data", str(data), "--epochs", "1", "--img", str(imgsz),
            "--batch-size", "16", "--device", "0,1", "--project", str(tmp / "ddp"), "--name", "exp", "--noplots",
            "--workers", "4"]
    return run_script(args, timeout=600)


def final_losses(text: str) -> str:
    """The last 'all' row of a train.py log (P R mAP50 mAP50-95), for the table."""
    rows = [ln for ln in text.splitlines() if re.match(r"\s+all\s", ln)]
    return " ".join(rows[-1].split()[1:]) if rows else ""
