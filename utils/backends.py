"""Inference backends for exported weights: .onnx (onnxruntime), .torchscript (torch.jit) and .pt.

Each backend has the surface val.py and detect.py use (the same as utils/backend.py's TorchBackend):
    names, nc, stride, fp16, device, pt (True only for PyTorch), forward(im) -> (B, N, 5 + nc) tensor,
    __call__(im, augment=False) -> (pred, None), warmup(imgsz)
plus the input-shape facts a caller needs to pick its batches:
    dynamic       True when any batch size and any stride-multiple (h, w) is accepted (rect batches are fine)
    input_shape   (b, c, h, w) the file was exported with; None in a dynamic position
Stride and class names are read back from the file (ONNX metadata_props, TorchScript extra/config.txt).
"""
from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import torch

EXPORTED_SUFFIXES = (".onnx", ".torchscript")


def _parse_meta_value(text: str):
    """Our files store JSON; v6.1's exporter stored Python reprs (str(dict)), which literal_eval reads."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return ast.literal_eval(text)


def _names_list(names, nc: int | None = None) -> list[str]:
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    names = [str(n) for n in (names or [])]
    return names or [f"class{i}" for i in range(nc or 0)]


class _ExportedBackend:
    """What every non-PyTorch backend shares: metadata, shape checks, the val/detect call convention."""

    pt = False

    def __init__(self, path: Path, device: torch.device, meta: dict, input_shape: tuple, fp16: bool, dynamic: bool):
        self.path, self.device, self.fp16 = path, device, fp16
        if "stride" not in meta or "names" not in meta:
            raise ValueError(f"{path}: no stride/names metadata in the file; re-export it with this repo's export.py")
        self.stride = int(meta["stride"])
        self.names = _names_list(meta["names"])
        self.nc = len(self.names)
        self.input_shape, self.dynamic = tuple(input_shape), dynamic

    def check_input(self, im: torch.Tensor) -> None:
        """A static export only takes the shape it was exported with; say which one instead of a runtime crash."""
        for i, (want, got) in enumerate(zip(self.input_shape, im.shape)):
            if want is not None and want != got:
                raise ValueError(f"{self.path} was exported for input shape {tuple(self.input_shape)} "
                                 f"(None = dynamic) but got {tuple(im.shape)}; re-export with --dynamic or use "
                                 f"--imgsz {self.input_shape[2]} --batch-size {self.input_shape[0]} without --rect")

    def __call__(self, im: torch.Tensor, augment: bool = False):
        if augment:
            raise ValueError(f"{self.path}: --augment (test-time augmentation) needs PyTorch .pt weights")
        return self.forward(im), None

    def warmup(self, imgsz=(1, 3, 640, 640)) -> None:
        """One forward so session/graph set-up is not timed (accelerators only, as v6.1)."""
        if self.device.type != "cpu":
            shape = [s if s is not None else d for s, d in zip(self.input_shape, imgsz)]
            self.forward(torch.zeros(*shape, device=self.device, dtype=torch.half if self.fp16 else torch.float))


class OnnxBackend(_ExportedBackend):
    """onnxruntime InferenceSession (CUDA provider when the device is CUDA and onnxruntime-gpu has it)."""

    onnx = True

    def __init__(self, path, device=torch.device("cpu")):
        import onnxruntime as ort

        path = Path(path)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        self.session = ort.InferenceSession(str(path), providers=providers)
        inp = self.session.get_inputs()[0]
        shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
        meta = {k: _parse_meta_value(v) for k, v in self.session.get_modelmeta().custom_metadata_map.items()}
        self.input_name = inp.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        super().__init__(path, device, meta, shape, fp16=inp.type == "tensor(float16)",
                         dynamic=all(s is None for i, s in enumerate(shape) if i != 1))

    def forward(self, im: torch.Tensor) -> torch.Tensor:
        self.check_input(im)
        x = im.detach().to("cpu", torch.half if self.fp16 else torch.float).numpy()
        y = self.session.run(self.output_names[:1], {self.input_name: x})[0]
        return torch.from_numpy(y).to(self.device)


def read_torchscript_config(path: Path) -> dict:
    """extra/config.txt of a TorchScript zip (also readable when it was saved for the lite interpreter)."""
    with zipfile.ZipFile(path) as z:
        hits = [n for n in z.namelist() if n.endswith("extra/config.txt")]
        return json.loads(z.read(hits[0])) if hits else {}


class TorchScriptBackend(_ExportedBackend):
    """torch.jit.load of a traced model (or the lite interpreter for --optimize exports)."""

    jit = True

    def __init__(self, path, device=torch.device("cpu")):
        try:  # traced D-LKA graphs call torchvision::deform_conv2d, registered on import
            import torchvision  # noqa: F401
        except ImportError:
            pass
        path = Path(path)
        meta = read_torchscript_config(path)
        try:
            self.model = torch.jit.load(str(path), map_location=device)
        except RuntimeError:  # saved with _save_for_lite_interpreter (export --optimize)
            from torch.jit.mobile import _load_for_lite_interpreter
            self.model = _load_for_lite_interpreter(str(path), map_location=device)
        params = list(self.model.parameters()) if hasattr(self.model, "parameters") else []
        fp16 = bool(params) and params[0].dtype == torch.half
        shape = meta.get("shape", [None, 3, None, None])
        dynamic = bool(meta.get("dynamic", False))
        super().__init__(path, device, meta, (None, 3, None, None) if dynamic else shape, fp16, dynamic)

    def forward(self, im: torch.Tensor) -> torch.Tensor:
        self.check_input(im)
        with torch.no_grad():
            y = self.model(im.to(self.device, torch.half if self.fp16 else torch.float))
        return y[0] if isinstance(y, (list, tuple)) else y


class PyTorchBackend:
    """A .pt checkpoint through attempt_load (eval, fused); shape-free, so rect batches are fine."""

    pt, dynamic, input_shape = True, True, (None, 3, None, None)

    def __init__(self, path, device=torch.device("cpu"), half: bool = False):
        from models.experimental import attempt_load

        self.path, self.device, self.fp16 = Path(path), device, half
        model = attempt_load(str(path), device=device, inplace=True, fuse=True)
        self.model = model.half() if half else model.float()
        self.nc = int(getattr(model, "nc", None) or model.yaml["nc"])
        self.names = _names_list(getattr(model, "names", None), self.nc)
        self.stride = int(max(model.stride))

    def forward(self, im: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(im)[0]

    def __call__(self, im: torch.Tensor, augment: bool = False):
        return self.model(im, augment=augment)

    def warmup(self, imgsz=(1, 3, 640, 640)) -> None:
        if self.device.type != "cpu":
            self.forward(torch.zeros(*imgsz, device=self.device, dtype=torch.half if self.fp16 else torch.float))


def load_exported(weights, device=torch.device("cpu"), half: bool = False):
    """A backend for an exported file; precision is whatever the file was exported with."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        backend = OnnxBackend(path, device)
    elif suffix == ".torchscript":
        backend = TorchScriptBackend(path, device)
    else:
        raise ValueError(f"{path}: not an exported model (expected one of {', '.join(EXPORTED_SUFFIXES)})")
    if half and not backend.fp16:
        from utils.log import LOGGER
        LOGGER.warning(f"WARNING: {path} holds an FP32 graph; --half is ignored (export with --half for FP16)")
    return backend


def load_any(weights, device=torch.device("cpu"), half: bool = False):
    """.pt, .onnx or .torchscript -> a backend (dispatch on the suffix)."""
    if Path(weights).suffix.lower() == ".pt":
        return PyTorchBackend(weights, device, half)
    return load_exported(weights, device, half)
