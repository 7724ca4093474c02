"""One-shot GPU check: what a CPU machine cannot test, in a few minutes on a CUDA machine.

    python benchmarks/cuda_check.py                          # on a GPU machine (device 0; DDP needs 2 GPUs)
    python benchmarks/cuda_check.py --device cpu --quick     # the same checks at toy sizes, CPU stand-ins

Checks (one table, PASS/FAIL/SKIP with figures; exit code 1 on any FAIL):
  a. AMP training: a few SGD steps under fp16 autocast + GradScaler per seed variant (TripletAttention, ACmix,
     CGA, DAT on yolov5n), losses finite.
  b. fp16 val (--half) against fp32 of the official yolov5n.pt on coco128: |dmAP50-95| <= 0.002.
  c. export.py --half to ONNX and TorchScript, and a val of the TorchScript export against (b)'s fp32.
  d. NCCL DDP: train.py under torchrun --nproc_per_node 2 for one epoch (SKIP below 2 GPUs).
  e. Speed: val wall time and a training step, fp16 against fp32.
On CPU (--device cpu) fp16 is replaced by its CPU counterpart and the row says so: bf16 autocast for (a, b, e),
an fp32 export for (c); DDP is skipped. --quick: coco8 at 320 and 2 training steps at 64 (the test's sizes).
Material comes from ../shared (datasets/coco128 or coco8, weights/yolov5n.pt); nothing is written there or
downloaded. Numbers are this machine's on this run; the README's GPU figures came from this script.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.cuda_check_parts import (SEED_VARIANTS, Check, dataset_yaml, ddp_epoch, export,  # noqa: E402
                                         local_weights, train_steps, validate)

FP16_MAP_TOL = 0.002  # the bound for fp16 val on coco128
BF16_MAP_TOL = 0.01  # the CPU stand-in on coco8 (8 images: one box moves mAP by more than 0.002)


class Plan:
    """Sizes and the reduced precision this run uses, and how rows label it."""

    def __init__(self, device: torch.device, quick: bool):
        self.device, self.quick, self.cuda = device, quick, device.type == "cuda"
        self.low = "fp16" if self.cuda else "bf16"
        self.stand_in = "" if self.cuda else "CPU stand-in: bf16 autocast for fp16"
        self.dataset = "coco8" if quick else "coco128"
        self.imgsz = 320 if quick else 640
        self.steps, self.train_imgsz, self.train_batch = (2, 64, 1) if quick else (6, 640, 16)
        self.map_tol = FP16_MAP_TOL if self.cuda else BF16_MAP_TOL


def check_amp_training(plan: Plan) -> list[Check]:
    rows = []
    mode = "amp" if plan.cuda else "bf16"
    for cfg in SEED_VARIANTS:
        name = f"a. {plan.low} train {Path(cfg).stem.split('_', 1)[1]}"
        try:
            losses, sec = train_steps(cfg, plan.device, plan.steps, plan.train_imgsz, plan.train_batch, mode)
        except Exception as e:  # a check that crashes is a FAIL with its reason, the others still run
            rows.append(Check(name, "FAIL", note=f"{type(e).__name__}: {e}"[:120]))
            continue
        ok = all(math.isfinite(x) for x in losses)
        figures = f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, {sec * 1e3:.0f} ms/step"
        rows.append(Check(name, "PASS" if ok else "FAIL", figures,
                          plan.stand_in or "GradScaler" if ok else f"non-finite: {losses}"))
    return rows


def check_val(plan: Plan, weights, data, tmp: Path) -> tuple[list[Check], dict]:
    name = f"b. val {plan.low} vs fp32"
    if weights is None or data is None:
        return [Check(name, "SKIP", note="needs ../shared/weights/yolov5n.pt and ../shared/datasets")], {}
    batch = 32 if not plan.quick else 8
    kw = dict(imgsz=plan.imgsz, batch=batch, tmp=tmp)
    if not plan.quick:
        validate(weights, data, plan.device, tag="warmup", **kw)  # first-use costs (cudnn, caches) out of the timing
    fp32, t32 = validate(weights, data, plan.device, tag="fp32", **kw)
    low, tlow = validate(weights, data, plan.device, tag=plan.low, half=plan.cuda, bf16=not plan.cuda, **kw)
    delta = low.map - fp32.map
    ok = abs(delta) <= plan.map_tol and fp32.map > 0.2
    figures = f"mAP50-95 {fp32.map:.4f} -> {low.map:.4f} (d {delta:+.4f}, tol {plan.map_tol})"
    note = f"{plan.dataset} at {plan.imgsz}" + (f"; {plan.stand_in}" if plan.stand_in else "")
    return [Check(name, "PASS" if ok else "FAIL", figures, note)], {"val": (t32, tlow)}


def check_export(plan: Plan, weights, data, tmp: Path) -> list[Check]:
    half = plan.cuda
    label = "--half" if half else "fp32 (CPU stand-in: --half export needs CUDA)"
    if weights is None:
        return [Check("c. export", "SKIP", note="needs ../shared/weights/yolov5n.pt")]
    files, err = export(weights, plan.device, plan.imgsz, half)
    rows = [Check("c. export onnx+torchscript", "PASS" if len(files) == 2 and not err else "FAIL",
                  ", ".join(f.name for f in files), label if not err else err.splitlines()[-1][:120])]
    ts = weights.with_suffix(".torchscript")
    if data is None or not ts.is_file():
        return rows + [Check("c. val of the export", "SKIP", note="needs the export and the dataset")]
    kw = dict(imgsz=plan.imgsz, batch=1, tmp=tmp, square=True)  # the export is static: square, batch 1 for both
    pt, _ = validate(weights, data, plan.device, tag="pt-square", **kw)
    r, _ = validate(ts, data, plan.device, tag="export", half=half, **kw)
    delta = r.map - pt.map
    ok = abs(delta) <= plan.map_tol
    rows.append(Check("c. val of the torchscript export", "PASS" if ok else "FAIL",
                      f"mAP50-95 {pt.map:.4f} -> {r.map:.4f} (d {delta:+.4f} vs .pt fp32)", label))
    return rows


def check_ddp(plan: Plan, weights, tmp: Path) -> list[Check]:
    name = "d. NCCL DDP, 2 GPUs, 1 epoch"
    n = torch.cuda.device_count() if plan.cuda else 0
    if n < 2:
        return [Check(name, "SKIP", note=f"needs >= 2 CUDA GPUs, {n} here")]
    data = dataset_yaml(tmp, "coco128")
    if weights is None or data is None:
        return [Check(name, "SKIP", note="needs ../shared/weights/yolov5n.pt and datasets/coco128")]
    rc, text = ddp_epoch(weights, data, tmp, 320)
    return [Check(name, "PASS" if rc == 0 else "FAIL", f"exit {rc}", "" if rc == 0 else text.splitlines()[-1][:120])]


def check_speed(plan: Plan, val_times) -> list[Check]:
    rows = []
    if val_times:
        t32, tlow = val_times
        rows.append(Check(f"e. val speed {plan.low}/fp32", "PASS", f"{t32:.1f} s -> {tlow:.1f} s ({t32 / tlow:.2f}x)",
                          f"{plan.dataset} at {plan.imgsz}, end to end" + (f"; {plan.stand_in}" if plan.stand_in else "")))
    cfg, mode = "yolov5n.yaml", "amp" if plan.cuda else "bf16"
    _, s32 = train_steps(cfg, plan.device, plan.steps, plan.train_imgsz, plan.train_batch, "fp32")
    _, slow = train_steps(cfg, plan.device, plan.steps, plan.train_imgsz, plan.train_batch, mode)
    rows.append(Check(f"e. train step {plan.low}/fp32", "PASS",
                      f"{s32 * 1e3:.0f} ms -> {slow * 1e3:.0f} ms ({s32 / slow:.2f}x)",
                      f"yolov5n, batch {plan.train_batch} at {plan.train_imgsz}, synthetic"))
    return rows


def print_table(rows: list[Check]) -> None:
    w = max(len(r.name) for r in rows)
    print(f"\n{'check':<{w}}  {'result':<6}  figures | note")
    for r in rows:
        print(f"{r.name:<{w}}  {r.status:<6}  {r.figures}" + (f" | {r.note}" if r.note else ""))
    counts = {s: sum(r.status == s for r in rows) for s in ("PASS", "FAIL", "SKIP")}
    print(" ".join(f"{k} {v}" for k, v in counts.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="0", help="cuda device index, or cpu (stand-ins, see the module doc)")
    p.add_argument("--quick", action="store_true", help="toy sizes (coco8 at 320, 2 steps at 64)")
    opt = p.parse_args(argv)
    if opt.device != "cpu" and not torch.cuda.is_available():
        print(f"ERROR: --device {opt.device}: no CUDA device here; run with --device cpu --quick for the CPU stand-ins")
        return 2
    device = torch.device("cpu" if opt.device == "cpu" else f"cuda:{opt.device}")
    plan = Plan(device, opt.quick)
    rows: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="cuda_check_") as d:
        tmp = Path(d)
        weights, data = local_weights(tmp), dataset_yaml(tmp, plan.dataset)
        rows += check_amp_training(plan)
        val_rows, figures = check_val(plan, weights, data, tmp)
        rows += val_rows
        rows += check_export(plan, weights, data, tmp)
        rows += check_ddp(plan, weights, tmp)
        rows += check_speed(plan, figures.get("val"))
    print_table(rows)
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
