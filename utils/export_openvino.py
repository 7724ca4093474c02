"""OpenVINO IR from an exported ONNX file, and the IR folder format the OpenVINO backend reads.

Folder `<name>_openvino_model/`: `<name>.xml` (graph) + `<name>.bin` (weights) + `metadata.yaml` (stride, names,
input shape, dynamic, fp16 weights, int8). FP16 (`--half`) compresses the weights in the IR; INT8 (`--int8`)
is NNCF post-training quantization calibrated on letterboxed dataset images. Converting from our ONNX export
reuses its checks (opset, layer named on an exporter error); an OpenVINO conversion or compile failure is
reported with the yaml layer and the operator it could not handle.
Compiled for CPU with f32 inference precision: the CPU plugin would otherwise run bf16 where the processor
has it, which moves outputs by ~1e-2 and is not what an FP32 export promises.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from utils.cli import InputError
from utils.export_checks import ExportError
from utils.log import LOGGER

METADATA = "metadata.yaml"
FOLDER_SUFFIX = "_openvino_model"
CALIBRATION_IMAGES = 300  # NNCF's default subset size; fewer when the split has fewer images


def require_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise ExportError("OpenVINO export/inference needs the openvino package: "
                          "pip install -r requirements-openvino.txt") from None
    return ov


def compile_ir(xml: Path, device: str = "CPU", threads: int | None = None):
    """Compiled for `device` in f32; `threads` caps the CPU plugin's threads (None: OpenVINO's default, all cores)."""
    ov = require_openvino()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return ov.Core().compile_model(str(xml), device, config)


# ----------------------------------------------------------------------------- naming a failure

def _onnx_nodes_of(onnx_file: Path, op_types: set[str]) -> list[str]:
    import onnx
    return [n.name for n in onnx.load(str(onnx_file)).graph.node if n.op_type in op_types]


def explain_failure(err: Exception, stage: str, onnx_file: Path | None, label: Callable[[str], str]) -> ExportError:
    """'OpenVINO <stage> failed in layer 10 (DAttentionBaseline), operator GridSample: <first line>'.

    OpenVINO names failing nodes ("node with name '/model.24/Mul_5'") or operator types ("GridSample-16");
    ONNX node names start with the yaml layer (/model.N/...), which `label` turns into the layer and its type."""
    text = str(err)
    nodes = re.findall(r"name '([^']+)'", text)
    ops = sorted(set(re.findall(r"\b([A-Z][A-Za-z0-9]+)-\d+\b", text)) - {"ONNX"})
    if not nodes and ops and onnx_file is not None:
        nodes = _onnx_nodes_of(onnx_file, set(ops))
    where = sorted({label(n) for n in nodes if n.startswith("/model.")}) or ["the model"]
    op = f", operator {', '.join(ops)}" if ops else ""
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return ExportError(f"OpenVINO {stage} failed in {', '.join(where)}{op}: {first[:300]}")


# ----------------------------------------------------------------------------- convert, quantize, save

def convert_onnx(onnx_file: Path, label: Callable[[str], str]):
    ov = require_openvino()
    try:
        return ov.convert_model(str(onnx_file))
    except Exception as e:  # the converter's own exception types vary between releases
        raise explain_failure(e, "conversion", onnx_file, label) from e


def calibration_images(data, imgsz: tuple[int, int], n: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """Up to n images of the dataset's train split, letterboxed to imgsz (h, w), RGB, (1, 3, h, w) float32 / 255,
    as val.py feeds a model."""
    import cv2

    from utils.data.augment import letterbox
    from utils.data.dataset_yaml import check_dataset
    from utils.data.labels import list_image_files

    files = list_image_files(check_dataset(data)["train"])
    step = max(len(files) // n, 1)  # spread over the split when it is larger than n
    ims = []
    for f in files[::step][:n]:
        im = cv2.imread(f)
        if im is None:
            LOGGER.warning(f"calibration: cannot read {f}, skipped")
            continue
        im = letterbox(im, imgsz, auto=False)[0][:, :, ::-1].transpose(2, 0, 1)
        ims.append(np.ascontiguousarray(im, dtype=np.float32)[None] / 255)
    if not ims:
        raise ExportError(f"--int8: no readable calibration images in the train split of {data}")
    return ims


def quantize_int8(ov_model, images: list[np.ndarray], head_layer: int | None):
    """NNCF post-training quantization (mixed preset: symmetric weights, asymmetric activations). The Detect
    head's box decoding (sigmoid, grid and anchor arithmetic in pixels) stays in float: only its 1x1 convs
    are quantized."""
    try:
        import nncf
    except ImportError:
        raise ExportError("--int8 needs nncf: pip install -r requirements-openvino.txt") from None
    ignored = None
    if head_layer is not None:  # ONNX names: /model.24/m.0/Conv (kept) vs /model.24/Mul_3, /model.24/Sigmoid ...
        ignored = nncf.IgnoredScope(patterns=[rf".*/model\.{head_layer}/[A-Z].*"], validate=False)
    LOGGER.info(f"NNCF {nncf.__version__}: INT8 post-training quantization on {len(images)} images...")
    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-node INFO lines would flood the export log
    return nncf.quantize(ov_model, nncf.Dataset(images), preset=nncf.QuantizationPreset.MIXED,
                         subset_size=len(images), ignored_scope=ignored)


def save_ir(ov_model, folder: Path, stem: str, meta: dict, half: bool) -> Path:
    """Write <folder>/<stem>.xml/.bin and metadata.yaml; returns the .xml path."""
    ov = require_openvino()
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / f"{stem}.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=half)
    (folder / METADATA).write_text(yaml.safe_dump(meta, sort_keys=False))
    return xml


# ----------------------------------------------------------------------------- reading a folder back

def is_openvino_path(path: Path) -> bool:
    """A folder named *_openvino_model, a folder holding an IR .xml, or the .xml itself."""
    path = Path(path)
    return path.suffix.lower() == ".xml" or path.name.endswith(FOLDER_SUFFIX) or (path.is_dir() and any(path.glob("*.xml")))


def find_ir(path: Path) -> tuple[Path, dict]:
    """(the .xml, its metadata) for a folder or an .xml path; a clear error when either is missing."""
    path = Path(path)
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise FileNotFoundError(f"{path}: expected one OpenVINO .xml in the folder, found {len(xmls)}")
        xml = xmls[0]
    else:
        xml = path
    if not xml.is_file() or not xml.with_suffix(".bin").is_file():
        raise FileNotFoundError(f"OpenVINO IR not found: {xml} and its .bin (export with --include openvino)")
    meta_file = xml.parent / METADATA
    if not meta_file.is_file():
        raise InputError(f"{xml.parent}: no {METADATA} (stride, names); re-export it with this repo's export.py")
    return xml, yaml.safe_load(meta_file.read_text()) or {}
