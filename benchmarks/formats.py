"""One checkpoint in every export format on one dataset: file size, mAP50-95 and CPU inference time per image,
all from one run (the job of YOLOv5's benchmarks.py). PyTorch first, then TorchScript, ONNX Runtime and
OpenVINO FP32 / FP16 / INT8 (the OpenVINO rows need requirements-openvino.txt; INT8 is calibrated on the
dataset's train images).

Usage:
    python benchmarks/formats.py --weights yolov5n.pt --data coco128.yaml --imgsz 320
    python benchmarks/formats.py --weights best.pt --data data/shapes.yaml --imgsz 128 --formats pytorch onnx

Every format is validated by val.run with the same settings (rect batches: the exports are dynamic, so all
formats see the same letterboxed images). The latency is then measured on the backends val uses
(models.backends.load_backend): the median of --repeats single-image forwards at imgsz x imgsz after --warmup
untimed ones (first calls build kernels, TorchScript profiles, OpenVINO compiles; val's own per-image time
includes them on CPU), the formats taking turns in each round so that load from other processes hits all alike.
A format that fails to export or validate is a row with the error, not the end of the run.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import export  # noqa: E402
import val  # noqa: E402
from models.backends import load_backend  # noqa: E402
from utils.log import LOGGER  # noqa: E402

# name -> (export.py --include target or None for the checkpoint itself, extra export options)
FORMATS = {
    "pytorch": ("PyTorch", None, {}),
    "torchscript": ("TorchScript", "torchscript", {}),
    "onnx": ("ONNX Runtime", "onnx", {}),
    "openvino": ("OpenVINO FP32", "openvino", {}),
    "openvino-fp16": ("OpenVINO FP16", "openvino", {"half": True}),
    "openvino-int8": ("OpenVINO INT8", "openvino", {"int8": True}),
}


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


def export_format(key: str, weights: Path, work: Path, opt) -> Path:
    """The checkpoint itself for PyTorch, else a dynamic export into its own folder under `work`."""
    _, include, extra = FORMATS[key]
    if include is None:
        return weights
    out = work / key
    out.mkdir(parents=True, exist_ok=True)
    path, = export.run(weights=str(weights), imgsz=[opt.imgsz, opt.imgsz], include=[include], dynamic=True,
                       data=opt.data, out_dir=out, **extra)
    return path


def export_and_validate(key: str, weights: Path, work: Path, opt) -> dict:
    row = {"format": FORMATS[key][0]}
    try:
        path = export_format(key, weights, work, opt)
        row.update(path=path, file=path.name, size=size_mb(path))
        results, _, _ = val.run(data=opt.data, weights=str(path), imgsz=opt.imgsz, batch_size=opt.batch_size,
                                device="cpu", workers=opt.workers, plots=False, project=work / "val", name=key)
        row.update(map50=results[2], map=results[3])
    except Exception as e:  # one failing format is a row in the table, not the end of the run
        row["error"] = _short(e)
    return row


def measure_latency(rows: list[dict], opt) -> None:
    """Median ms of one (1, 3, imgsz, imgsz) forward per format on the backend val.py uses; the formats take turns
    in each round, after --warmup untimed forwards each."""
    im = torch.rand(1, 3, opt.imgsz, opt.imgsz)
    backends = {}
    for r in rows:
        if "error" not in r:
            try:
                backends[r["format"]] = load_backend(r["path"], torch.device("cpu"))
            except Exception as e:
                r["error"] = _short(e)
    times = {k: [] for k in backends}
    with torch.no_grad():
        for i in range(opt.warmup + opt.repeats):
            for k, backend in backends.items():
                t = time.perf_counter()
                backend.forward(im)
                if i >= opt.warmup:
                    times[k].append((time.perf_counter() - t) * 1e3)
    for r in rows:
        if r["format"] in times:
            r["ms"] = statistics.median(times[r["format"]])


def _short(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"


def markdown(rows: list[dict], opt) -> str:
    head = (f"{Path(opt.weights).name} on {Path(str(opt.data)).name} at {opt.imgsz} (val batch {opt.batch_size}); "
            f"CPU latency: batch 1, {opt.threads} threads, median of {opt.repeats} (torch {torch.__version__})\n\n"
            "| format | file | size (MB) | mAP50 | mAP50-95 | latency (ms/img) |\n|---|---|---:|---:|---:|---:|")
    lines = [f"| {r['format']} | | | failed: {r['error']} | | |" if "error" in r else
             f"| {r['format']} | {r['file']} | {r['size']:.1f} | {r['map50']:.4f} | {r['map']:.4f} | {r['ms']:.1f} |"
             for r in rows]
    return "\n".join([head, *lines])


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="checkpoint (.pt): ours or an official YOLOv5 one")
    p.add_argument("--data", default=str(ROOT / "data" / "coco128.yaml"), help="dataset yaml")
    p.add_argument("--imgsz", "--img", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=32, help="val batch size (the latency is always batch 1)")
    p.add_argument("--repeats", type=int, default=20, help="timed forwards per format")
    p.add_argument("--warmup", type=int, default=3, help="untimed forwards first")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--workers", type=int, default=0, help="dataloader workers (0: no process competes for the CPU)")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--keep", type=str, default=None, help="keep the exports in this folder (default: a temp folder)")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    opt = parse_opt(argv)
    torch.set_num_threads(opt.threads)  # PyTorch and OpenVINO both use this many threads
    LOGGER.setLevel(logging.WARNING)  # keep the exporters' and val's progress out of the table
    keys = ["pytorch"] + [k for k in opt.formats if k != "pytorch"] if "pytorch" in opt.formats else opt.formats
    work = Path(opt.keep) if opt.keep else Path(tempfile.mkdtemp(prefix="formats_"))
    weights = work / Path(opt.weights).name  # a copy: exports land in `work`, not beside the user's weights
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy2(opt.weights, weights)
    rows = []
    try:
        for key in keys:
            rows.append(export_and_validate(key, weights, work, opt))
            print(f"{rows[-1]['format']}: {'failed' if 'error' in rows[-1] else 'done'}", file=sys.stderr, flush=True)
        measure_latency(rows, opt)
    finally:
        if not opt.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(rows, opt))
    return rows


if __name__ == "__main__":
    main()
