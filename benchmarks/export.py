"""CPU latency of PyTorch (fused, eval) versus onnxruntime and OpenVINO for yolov5s and every attention variant.

Usage:
    python benchmarks/export.py                               # scale s, 640x640, batch 1, all variants
    python benchmarks/export.py --scale n --imgsz 128 --repeats 3 --variants DAT SE   # quick check

Each model is built from its yaml (random init: latency does not depend on the weights), fused, exported
to a static ONNX file in a temporary folder and from it to an OpenVINO FP32 IR (when openvino is installed:
requirements-openvino.txt), then timed: the median over --repeats single-image forwards after --warmup untimed
ones, PyTorch, onnxruntime and OpenVINO (CPU plugin, f32) on the same number of threads, taking turns in each
round so that load from other processes hits all three alike. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
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
from models.yolo import Model  # noqa: E402
from utils.log import LOGGER  # noqa: E402


def variant_names() -> list[str]:
    return sorted(p.stem[len("yolov5_"):] for p in (ROOT / "models").glob("yolov5_*.yaml"))


def median_ms(fns: dict, warmup: int, repeats: int) -> dict:
    """{name: median ms} of single calls; the callables take turns in each round, so a burst of load on a shared
    machine slows all of them alike instead of whichever happened to be running."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def ort_session(f: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])


def bench_one(cfg: str, im: torch.Tensor, tmp: Path, opt) -> dict:
    model = Model(cfg).eval().fuse()
    row = {"model": Path(cfg).stem, "params": sum(p.numel() for p in model.parameters()) / 1e6}
    f = export.export_onnx(model, im, tmp / f"{row['model']}.onnx", opset=opt.opset, check=False)
    session, feed = ort_session(f, opt.threads), {"images": im.numpy()}
    fns = {"ort": lambda: session.run(None, feed)}
    request = openvino_request(f, opt)
    if request is not None:
        fns["openvino"] = lambda: request.infer({0: feed["images"]})
    with export.export_mode(model), torch.no_grad():
        row.update(median_ms({"torch": lambda: model(im), **fns}, opt.warmup, opt.repeats))
    return row


def openvino_request(onnx_file: Path, opt):
    """The same ONNX file as an OpenVINO FP32 IR on the CPU plugin; None when openvino is not installed."""
    if importlib.util.find_spec("openvino") is None:
        return None
    from utils import export_openvino as ov_ir
    xml = ov_ir.save_ir(ov_ir.convert_onnx(onnx_file, str), onnx_file.parent / f"{onnx_file.stem}_openvino_model",
                        onnx_file.stem, {}, half=False)
    return ov_ir.compile_ir(xml, threads=opt.threads).create_infer_request()


def markdown(rows: list[dict], opt) -> str:
    head = (f"CPU latency, batch 1, {opt.imgsz}x{opt.imgsz}, {opt.threads} threads, median of {opt.repeats} "
            f"(torch {torch.__version__}, onnxruntime {_version('onnxruntime')}, openvino {_version('openvino')})\n\n"
            "| model | params (M) | PyTorch fused (ms) | onnxruntime (ms) | OpenVINO FP32 (ms) | PyTorch / ORT "
            "| PyTorch / OpenVINO |\n|---|---:|---:|---:|---:|---:|---:|")
    return "\n".join([head, *(_row(r) for r in rows)])


def _row(r: dict) -> str:
    if "error" in r:
        return f"| {r['model']} | | failed: {r['error']} | | | | |"
    ov = r.get("openvino")
    ov_ms, ov_ratio = (f"{ov:.1f}", f"{r['torch'] / ov:.2f}") if ov else ("n/a", "n/a")
    return (f"| {r['model']} | {r['params']:.2f} | {r['torch']:.1f} | {r['ort']:.1f} | {ov_ms} "
            f"| {r['torch'] / r['ort']:.2f} | {ov_ratio} |")


def _version(package: str) -> str:
    try:
        return importlib.import_module(package).__version__.split("-")[0]
    except ImportError:
        return "not installed"


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="s", choices=list("nsmlx"))
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--opset", type=int, default=export.DEFAULT_OPSET)
    p.add_argument("--variants", nargs="*", default=None, help="subset of variant names (default: all)")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    opt = parse_opt(argv)
    torch.set_num_threads(opt.threads)
    LOGGER.setLevel(logging.WARNING)  # keep the exporter's progress lines out of the table
    cfgs = [f"yolov5{opt.scale}.yaml"] + [f"yolov5{opt.scale}_{v}.yaml" for v in (opt.variants or variant_names())]
    im = torch.rand(1, 3, opt.imgsz, opt.imgsz)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in cfgs:
            try:
                rows.append(bench_one(cfg, im, Path(tmp), opt))
            except Exception as e:  # one failing variant is a row in the table, not the end of the run
                rows.append({"model": Path(cfg).stem, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"})
            print(f"{rows[-1]['model']}: done", file=sys.stderr, flush=True)
    print(markdown(rows, opt))
    return rows


if __name__ == "__main__":
    main()
