"""Export a YOLOv5 model (trained weights or a freshly built yaml) to TorchScript, ONNX and OpenVINO.

Usage:
    python export.py --weights yolov5n.pt --include torchscript onnx
    python export.py --weights yolov5n.pt --include onnx --dynamic --opset 17
    python export.py --cfg models/yolov5n_DAT.yaml --include onnx      # check a variant before training
    python export.py --weights yolov5n.pt --include openvino --dynamic             # yolov5n_openvino_model/
    python export.py --weights yolov5n.pt --include openvino --half                # FP16 weights (CPU is fine)
    python export.py --weights yolov5n.pt --include openvino --int8 --data coco128.yaml   # NNCF INT8

The exporters are plain functions on any in-memory model:
    export_onnx(model, im, file, opset=17, dynamic=False, simplify=False) -> Path
    export_torchscript(model, im, file, optimize=False) -> Path
    export_openvino(model, im, folder, dynamic=False, half=False, int8=False, data=None) -> Path
Both store the model's stride and class names in the file (ONNX metadata_props; TorchScript
_extra_files['config.txt']; OpenVINO metadata.yaml), which models/backends/ reads back.
"""
from __future__ import annotations

import argparse
import copy
import functools
import io
import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from models.registry import opset_needs  # noqa: E402
from models.yolo import Detect, Model  # noqa: E402
from utils.export_checks import (ExportError, check_opset, double_tensors, find_failing_layer,  # noqa: E402
                                 label_onnx_node)
from utils.cli import InputError, run_cli  # noqa: E402
from utils import export_openvino as ov_ir  # noqa: E402
from utils.log import LOGGER, colorstr  # noqa: E402
from utils.torch_utils import select_device  # noqa: E402

FORMATS = {"torchscript": ".torchscript", "onnx": ".onnx", "openvino": ov_ir.FOLDER_SUFFIX}  # --include -> suffix
DEFAULT_OPSET = 17  # >= 16 so grid_sample (DAT, D-LKA) exports; v6.1's 12 cannot export those blocks
DYNAMIC_AXES = {"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 1: "anchors"}}


# ----------------------------------------------------------------------------- shared helpers

def model_metadata(model: nn.Module) -> dict:
    """{'stride': int, 'names': [str]} as stored in every exported file."""
    stride = getattr(model, "stride", None)
    stride = int(max(stride)) if stride is not None else 32
    names = getattr(model, "names", None)
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not names:
        nc = getattr(model, "nc", None) or getattr(model, "yaml", {}).get("nc", 0)
        names = [str(i) for i in range(nc)]
    return {"stride": stride, "names": [str(n) for n in names]}


@contextmanager
def export_mode(model: nn.Module, train: bool = False, inplace: bool | None = None):
    """Detect returns one decoded tensor and rebuilds its grids inside the traced forward, so the
    exported graph computes grids from the input shape (dynamic axes) instead of baking a cached one.
    The model's mode and Detect flags are restored afterwards."""
    was_training = model.training
    heads = [m for m in model.modules() if isinstance(m, Detect)]
    saved = [(m.__dict__.get("export"), m.inplace) for m in heads]
    model.train(train)
    for m in heads:
        m.export = True
        if inplace is not None:
            m.inplace = inplace
        m.grid = [torch.empty(0)] * m.nl
        m.anchor_grid = [torch.empty(0)] * m.nl
    try:
        yield model
    finally:
        model.train(was_training)
        for m, (export, inp) in zip(heads, saved):
            if export is None:
                m.__dict__.pop("export", None)
            else:
                m.export = export
            m.inplace = inp
            m.grid = [torch.empty(0)] * m.nl
            m.anchor_grid = [torch.empty(0)] * m.nl


def _size_mb(f: Path) -> str:
    return f"{f.stat().st_size / 1e6:.1f} MB"


# ----------------------------------------------------------------------------- TorchScript

def _traced_is_shape_free(ts, model: nn.Module, im: torch.Tensor) -> bool:
    """Does the traced graph match the eager model at another batch and height? Tracing bakes any
    size a block turns into a Python int, so this is checked, not assumed; the answer goes in config.txt."""
    b, c, h, w = im.shape
    probe = torch.rand(b + 1, c, h + model_metadata(model)["stride"], w, device=im.device, dtype=im.dtype)
    try:
        with export_mode(model), torch.no_grad():
            want, got = model(probe), ts(probe)
    except Exception:  # a baked reshape fails outright at the new size
        return False
    tol = 1e-2 if im.dtype == torch.half else 1e-4
    return got.shape == want.shape and _max_rel_error(got, want) <= tol


def _explain_trace_failure(model, im, train: bool, err: Exception) -> ExportError:
    """Trace layer by layer to name the block torch.jit.trace could not handle."""
    with export_mode(model, train=train), torch.no_grad():
        culprit = find_failing_layer(model, im, lambda layer, args: torch.jit.trace(layer, args, check_trace=False))
    where, cause = culprit if culprit else ("the model", err)
    return ExportError(f"TorchScript trace failed in {where}: {_first_line(cause)}")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def export_torchscript(model: nn.Module, im: torch.Tensor, file, optimize: bool = False, *, train: bool = False) -> Path:
    """Trace `model` on `im` and save it with config.txt = {shape, stride, names} in _extra_files."""
    f = Path(file)
    prefix = colorstr("TorchScript:")
    LOGGER.info(f"\n{prefix} starting export with torch {torch.__version__}...")
    try:
        with export_mode(model, train=train), torch.no_grad():
            ts = torch.jit.trace(model, im, strict=False, check_trace=False)
    except Exception as e:
        raise _explain_trace_failure(model, im, train, e) from e
    dynamic = not train and _traced_is_shape_free(ts, model, im)
    if not dynamic and not train:
        LOGGER.warning(f"{prefix} the traced graph only reproduces the model at input shape {tuple(im.shape)} "
                       f"(a block bakes its input size in); use that shape with it")
    config = {"shape": list(im.shape), "dynamic": dynamic, **model_metadata(model)}
    extra = {"config.txt": json.dumps(config)}
    if optimize:  # mobile-optimised, saved for the lite interpreter as v6.1 does
        from torch.utils.mobile_optimizer import optimize_for_mobile
        try:
            ts = optimize_for_mobile(ts)
        except RuntimeError as e:  # builds without XNNPACK (e.g. many CUDA wheels) cannot do this pass
            cause = "this torch build has no XNNPACK" if "XNNPACK" in str(e) else str(e).splitlines()[0]
            raise ExportError(f"--optimize (TorchScript mobile optimisation) is unavailable: {cause}; "
                              f"export without --optimize") from None
        ts._save_for_lite_interpreter(str(f), _extra_files=extra)
    else:
        ts.save(str(f), _extra_files=extra)
    LOGGER.info(f"{prefix} export success, saved as {f} ({_size_mb(f)})")
    return f


# ----------------------------------------------------------------------------- ONNX

def _torch_onnx_export(module, args, f, opset: int, dynamic: bool, train: bool, names: bool = True) -> None:
    kw = dict(input_names=["images"], output_names=["output"],
              dynamic_axes=DYNAMIC_AXES if dynamic else None) if names else {}
    torch.onnx.export(module, args, f, dynamo=False, opset_version=opset, do_constant_folding=not train,
                      training=torch.onnx.TrainingMode.TRAINING if train else torch.onnx.TrainingMode.EVAL, **kw)


def _explain_export_failure(model, im, opset: int, dynamic: bool, train: bool, err: Exception) -> ExportError:
    """Re-export layer by layer to name the block that the exporter could not handle."""
    def one(layer, args):
        tensor_in = len(args) == 1 and isinstance(args[0], torch.Tensor)
        axes = {"x": {0: "batch", 2: "height", 3: "width"}} if dynamic and tensor_in else None
        torch.onnx.export(layer, args, io.BytesIO(), dynamo=False, opset_version=opset, do_constant_folding=True,
                          input_names=["x"] if tensor_in else None, dynamic_axes=axes)

    with export_mode(model, train=train):
        culprit = find_failing_layer(model, im, one)
    if culprit is None:
        return ExportError(f"ONNX export (opset {opset}, dynamic={dynamic}) failed: {err}")
    where, cause = culprit
    return ExportError(f"ONNX export (opset {opset}, dynamic={dynamic}) failed in {where}: {_first_line(cause)}")


def _add_metadata(onnx_model, meta: dict) -> None:
    for k, v in meta.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v)


def _simplify(onnx_model, dynamic: bool, im: torch.Tensor):
    try:
        import onnxsim
    except ImportError:
        LOGGER.warning("--simplify: onnxsim is not installed (pip install onnxsim); the ONNX file is kept unsimplified")
        return onnx_model
    LOGGER.info(f"simplifying with onnx-simplifier {onnxsim.__version__}...")
    shapes = {"images": list(im.shape)} if dynamic else None
    simplified, ok = onnxsim.simplify(onnx_model, test_input_shapes=shapes)
    if not ok:
        raise ExportError("onnx-simplifier could not validate the simplified graph")
    return simplified


def _check_runs_in_onnxruntime(model: nn.Module, onnx_model, f: Path, im: torch.Tensor) -> None:
    """Load and run the file once; a load failure caused by float64 tensors names the layer that made them."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: im.detach().float().cpu().numpy()
                           if im.dtype != torch.half else im.detach().cpu().numpy()})
    except Exception as e:
        doubles = double_tensors(onnx_model)
        if doubles:
            where = sorted({label_onnx_node(model, n) for n in doubles})
            raise ExportError(f"{f}: onnxruntime cannot run the graph; float64 tensors come from {', '.join(where)} "
                              f"(nodes {', '.join(doubles[:5])}): build grids in float32 from arange arithmetic, "
                              f"not linspace. onnxruntime said: {str(e).splitlines()[0]}") from e
        raise ExportError(f"{f}: onnxruntime cannot run the exported graph: {str(e).splitlines()[0]}") from e


def export_onnx(model: nn.Module, im: torch.Tensor, file, opset: int = DEFAULT_OPSET, dynamic: bool = False,
                simplify: bool = False, *, train: bool = False, check: bool = True) -> Path:
    """Export with the TorchScript-based exporter; checker, metadata (stride, names), onnxruntime smoke run."""
    import onnx

    f = Path(file)
    prefix = colorstr("ONNX:")
    LOGGER.info(f"\n{prefix} starting export with onnx {onnx.__version__} (opset {opset}, dynamic={dynamic})...")
    check_opset(model, opset, opset_needs(model))  # each block's min opset comes from its registration
    try:
        with export_mode(model, train=train):
            _torch_onnx_export(model, im, str(f), opset, dynamic, train)
    except Exception as e:
        raise _explain_export_failure(model, im, opset, dynamic, train, e) from e
    onnx_model = onnx.load(str(f))
    onnx.checker.check_model(onnx_model)
    _add_metadata(onnx_model, model_metadata(model))
    if simplify:
        onnx_model = _simplify(onnx_model, dynamic, im)
    onnx.save(onnx_model, str(f))
    if check and not train:
        _check_runs_in_onnxruntime(model, onnx_model, f, im)
    LOGGER.info(f"{prefix} export success, saved as {f} ({_size_mb(f)})")
    return f


# ----------------------------------------------------------------------------- OpenVINO

def export_openvino(model: nn.Module, im: torch.Tensor, folder, dynamic: bool = False, half: bool = False,
                    int8: bool = False, data=None, opset: int = DEFAULT_OPSET) -> Path:
    """ONNX (this exporter: layer named on failure) -> OpenVINO IR in `folder` with metadata.yaml; --half stores
    fp16 weights, --int8 quantizes with NNCF on images of `data`. The IR is compiled and run once as a check."""
    folder, prefix = Path(folder), colorstr("OpenVINO:")
    ov = ov_ir.require_openvino()
    if int8 and not data:
        raise InputError("--int8 needs --data (a dataset yaml whose train images calibrate the quantization)")
    LOGGER.info(f"\n{prefix} starting export with openvino {ov.__version__} (dynamic={dynamic}, "
                f"{'int8' if int8 else 'fp16' if half else 'fp32'})...")
    if next(model.parameters()).dtype != torch.float32:  # a --half GPU model: the IR is made from fp32
        model, im = copy.deepcopy(model).float(), im.float()
    label = functools.partial(label_onnx_node, model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = export_onnx(model, im, Path(tmp) / "model.onnx", opset, dynamic, check=False)
        ov_model = ov_ir.convert_onnx(onnx_file, label)
        if int8:
            head = len(model.model) - 1 if isinstance(getattr(model, "model", None), nn.Sequential) else None
            ov_model = ov_ir.quantize_int8(ov_model, ov_ir.calibration_images(data, tuple(im.shape[2:])), head)
    meta = {**model_metadata(model), "shape": list(im.shape), "dynamic": dynamic, "fp16": half and not int8,
            "int8": int8}
    xml = ov_ir.save_ir(ov_model, folder, folder.name.removesuffix(ov_ir.FOLDER_SUFFIX), meta, half and not int8)
    try:
        ov_ir.compile_ir(xml)(im.detach().cpu().float().numpy())
    except Exception as e:
        raise ov_ir.explain_failure(e, "CPU compile/run", None, label) from e
    LOGGER.info(f"{prefix} export success, saved as {folder}/ ({sum(f.stat().st_size for f in folder.iterdir()) / 1e6:.1f} MB)")
    return folder


# ----------------------------------------------------------------------------- run / CLI

def check_include(include) -> list[str]:
    """Lower-cased --include targets; anything unsupported is a clear error listing what is."""
    asked = [str(x).lower() for x in ([include] if isinstance(include, str) else include)]
    bad = [x for x in asked if x not in FORMATS]
    if bad or not asked:
        raise InputError(f"--include {' '.join(bad) or '(nothing)'}: unsupported export format; "
                         f"supported: {', '.join(FORMATS)}")
    return asked


def load_for_export(weights=None, cfg=None, device=torch.device("cpu"), inplace: bool = True) -> nn.Module:
    """Trained weights via attempt_load (fused), or a freshly built and fused yaml model."""
    if weights and cfg:
        raise InputError("give --weights or --cfg, not both")
    if weights:
        from models.load import attempt_load
        return attempt_load(weights, device=device, inplace=inplace, fuse=True)
    if not cfg:
        raise InputError("nothing to export: give --weights model.pt or --cfg model.yaml")
    model = Model(cfg).to(device).eval()
    for m in model.modules():
        if isinstance(m, Detect):
            m.inplace = inplace
    return model.fuse()


def _max_rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def _report_onnx_parity(model, im, f: Path) -> None:
    import onnxruntime as ort
    session = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": im.cpu().numpy()})[0])
    with export_mode(model), torch.no_grad():
        want = model(im).cpu()
    LOGGER.info(f"ONNX: onnxruntime vs PyTorch max |diff| / max |out| = {_max_rel_error(got, want):.2e}")


def run(weights=None, cfg=None, imgsz=(640, 640), batch_size=1, device="cpu", include=("torchscript", "onnx"),
        half=False, inplace=False, train=False, optimize=False, dynamic=False, simplify=False, opset=DEFAULT_OPSET,
        int8=False, data=None, out_dir=None) -> list[Path]:
    """Export `weights` (or a model built from `cfg`) to each format in `include`; returns the written paths."""
    include = check_include(include)
    device = select_device(device)
    if half and device.type == "cpu" and include != ["openvino"]:
        raise InputError("--half is only compatible with GPU export, i.e. use --device 0 "
                         "(an OpenVINO-only export takes --half on CPU: FP16 weights in the IR)")
    if optimize and device.type != "cpu":
        raise InputError("--optimize (TorchScript mobile) is only compatible with CPU export, use --device cpu")
    imgsz = list(imgsz) if isinstance(imgsz, (list, tuple)) else [imgsz]
    imgsz = imgsz * 2 if len(imgsz) == 1 else imgsz[:2]
    model = load_for_export(weights, cfg, device, inplace)
    stride = model_metadata(model)["stride"]
    if any(s < 1 or s % stride for s in imgsz):
        raise InputError(f"--imgsz {imgsz} must be positive multiples of the model's max stride {stride}")
    im = torch.zeros(batch_size, 3, *imgsz, device=device)
    if half and device.type != "cpu":
        im, model = im.half(), model.half()
    source = Path(weights if weights else cfg)
    out = Path(out_dir) if out_dir else (source.parent if weights else ROOT / "runs" / "export")
    out.mkdir(parents=True, exist_ok=True)
    with export_mode(model, inplace=inplace), torch.no_grad():
        for _ in range(2):  # dry runs (eval: BN statistics stay as loaded) so lazily built state exists before tracing
            model(im)
    written = []
    for fmt in include:
        f = out / (source.stem + FORMATS[fmt])
        if fmt == "torchscript":
            written.append(export_torchscript(model, im, f, optimize, train=train))
        elif fmt == "openvino":
            written.append(export_openvino(model, im, f, dynamic, half, int8, data, opset))
        else:
            written.append(export_onnx(model, im, f, opset, dynamic, simplify, train=train))
            if not train and not half:
                _report_onnx_parity(model, im, f)
    LOGGER.info(f"\nExport complete: {', '.join(str(f) for f in written)}"
                f"\nValidate: python val.py --weights {written[-1]}   Detect: python detect.py --weights {written[-1]}")
    return written


def parse_opt(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", type=str, default=None, help="model.pt path")
    src.add_argument("--cfg", type=str, default=None, help="model.yaml: export a freshly built (untrained) model")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640, 640], help="image (h, w)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size")
    p.add_argument("--device", default="cpu", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--half", action="store_true", help="FP16 half-precision export (GPU only; OpenVINO: FP16 IR)")
    p.add_argument("--int8", action="store_true", help="OpenVINO: INT8 post-training quantization (needs --data)")
    p.add_argument("--data", type=str, default=None, help="dataset.yaml: calibration images for --int8")
    p.add_argument("--inplace", action="store_true", help="set YOLOv5 Detect() inplace=True")
    p.add_argument("--train", action="store_true", help="model.train() mode")
    p.add_argument("--optimize", action="store_true", help="TorchScript: optimize for mobile")
    p.add_argument("--dynamic", action="store_true", help="ONNX/OpenVINO: dynamic batch, height and width axes")
    p.add_argument("--simplify", action="store_true", help="ONNX: simplify model (needs onnxsim)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX: opset version")
    p.add_argument("--include", nargs="+", default=["torchscript", "onnx"], help=f"formats: {', '.join(FORMATS)}")
    p.add_argument("--out-dir", type=str, default=None, help="where to write (default: next to --weights, "
                                                             "runs/export for --cfg)")
    return p.parse_args(argv)


def main(argv=None) -> list[Path]:
    """The CLI: a bad flag, file or model ends in one `ERROR:` line and exit status 2 (utils/cli.py)."""
    return run_cli(lambda: run(**vars(parse_opt(argv))))


if __name__ == "__main__":
    main()
