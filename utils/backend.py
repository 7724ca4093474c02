"""load_backend: the one place val.py and detect.py turn a weights path into something that predicts.

Dispatch is on the suffix: .pt (ours or official checkpoints, via attempt_load; a list is an ensemble),
.onnx (onnxruntime; stride and names from metadata_props) and .torchscript (torch.jit; extra/config.txt).
Every backend has the same small surface:
    names, nc, stride, fp16, device, pt (True only for PyTorch)
    dynamic       True when any batch size and any stride-multiple (h, w) is accepted (rect batches are fine)
    input_shape   (b, c, h, w) the model takes; None in a dynamic position
    forward(im) -> (B, N, 5 + nc);  __call__(im, augment=False) -> (pred, raw maps or None);  warmup(imgsz)
    check_imgsz(imgsz)                  clear error when a static export cannot take that (h, w)
    batch_size_for(batch_size, imgsz)   the batch size to use (a static export's own), after check_imgsz
"""
from __future__ import annotations

import ast
import json
import math
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

from utils.log import LOGGER
from utils.tv_ops import load_torchvision_ops

SUFFIXES = (".pt", ".onnx", ".torchscript")


def _names_list(names, nc: int | None = None) -> list[str]:
    """Class names as a list; dicts (v6.1 exports, later checkpoints) are read in key order."""
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    names = [str(n) for n in (names or [])]
    if nc is not None and len(names) != nc:
        return [f"class{i}" for i in range(nc)]
    return names


class _Backend:
    """What every backend shares: the shape rules and warmup."""

    pt, dynamic, input_shape = False, True, (None, 3, None, None)
    device: torch.device
    fp16: bool
    path: Path | str = "model"

    def check_imgsz(self, imgsz) -> None:
        """A static export takes only the (h, w) it was exported with: a clear error for another size."""
        hw = [imgsz, imgsz] if isinstance(imgsz, int) else list(imgsz)
        want = list(self.input_shape[2:])
        if all(w is not None for w in want) and hw != want:
            raise ValueError(f"{self.path} was exported for image size {want[0]}x{want[1]} (h x w) but --imgsz is "
                             f"{hw[0]}x{hw[1]}; pass --imgsz {' '.join(map(str, want))} or re-export with --dynamic")

    def batch_size_for(self, batch_size: int, imgsz) -> int:
        """A dynamic model takes any batch; a static export only its own batch size and (h, w)."""
        self.check_imgsz(imgsz)
        fixed = self.input_shape[0]
        if fixed is not None and fixed != batch_size:
            LOGGER.info(f"{self.path} takes batches of exactly {fixed}: using --batch-size {fixed}")
            return fixed
        return batch_size

    def warmup(self, imgsz=(1, 3, 640, 640)) -> None:
        """One forward so lazily built kernels/sessions are not timed (only on accelerators, as v6.1)."""
        if self.device.type != "cpu":
            shape = [s if s is not None else d for s, d in zip(self.input_shape, imgsz)]
            self.forward(torch.zeros(*shape, device=self.device, dtype=torch.half if self.fp16 else torch.float))


# ----------------------------------------------------------------------------------------- PyTorch --

class TorchBackend(_Backend):
    """A PyTorch model (ours or an official v6.1 checkpoint), eval, fused, fp32 or fp16."""

    pt = True

    def __init__(self, model: torch.nn.Module, device: torch.device, half: bool = False, channels_last: bool = False):
        self.model = model.half() if half else model.float()
        self.device, self.fp16 = device, half
        self.nc = int(getattr(model, "nc", None) or model.yaml["nc"])
        self.names = _names_list(getattr(model, "names", None), self.nc)
        self.stride = int(max(model.stride)) if hasattr(model, "stride") else 32
        self.channels_last = channels_last and self._try_channels_last()

    def _try_channels_last(self) -> bool:
        """NHWC convs run ~30% faster on CPU (oneDNN); keep NCHW for a model whose blocks cannot take it."""
        self.model.to(memory_format=torch.channels_last)
        try:
            with torch.no_grad():
                x = torch.zeros(1, 3, 2 * self.stride, 2 * self.stride, device=self.device,
                                dtype=torch.half if self.fp16 else torch.float)
                self.model(x.contiguous(memory_format=torch.channels_last))
            return True
        except RuntimeError as e:
            LOGGER.info(f"channels-last inference not possible for this model ({e}); using NCHW")
            self.model.to(memory_format=torch.contiguous_format)
            return False

    def __call__(self, im: torch.Tensor, augment: bool = False):
        """-> (pred, raw maps): training's validation needs the raw maps for its loss."""
        if self.channels_last:
            im = im.contiguous(memory_format=torch.channels_last)
        out = self.model(im, augment=augment)
        return out if isinstance(out, (list, tuple)) else (out, None)

    def forward(self, im: torch.Tensor) -> torch.Tensor:
        return self(im)[0]


# ---------------------------------------------------------------------------------------- exported --

def _parse_meta_value(text: str):
    """Our files store JSON; v6.1's exporter stored Python reprs (str(dict)), which literal_eval reads."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return ast.literal_eval(text)


class _ExportedBackend(_Backend):
    """What ONNX and TorchScript share: metadata, the static-shape check, the val/detect call convention."""

    def __init__(self, path: Path, device: torch.device, meta: dict, input_shape, fp16: bool, dynamic: bool):
        self.path, self.device, self.fp16 = path, device, fp16
        if "stride" not in meta or "names" not in meta:
            raise ValueError(f"{path}: no stride/names metadata in the file; re-export it with this repo's export.py")
        self.stride = int(meta["stride"])
        self.names = _names_list(meta["names"])
        self.nc = len(self.names)
        self.input_shape, self.dynamic = tuple(input_shape), dynamic

    def _fit(self, im: torch.Tensor) -> torch.Tensor:
        """A static export takes only its own shape: say which instead of a runtime crash. A short last
        batch (dataset size not a multiple of the batch) is padded with blank images."""
        want, got = self.input_shape, tuple(im.shape)
        if any(w is not None and w != g for w, g in zip(want[1:], got[1:])) or (want[0] or got[0]) < got[0]:
            raise ValueError(f"{self.path} was exported for input shape {want} (None = dynamic) but got {got}; "
                             f"re-export with --dynamic or use --imgsz {want[2]} --batch-size {want[0]}")
        if want[0] is not None and got[0] < want[0]:
            im = torch.cat((im, im.new_zeros(want[0] - got[0], *got[1:])))
        return im

    def __call__(self, im: torch.Tensor, augment: bool = False):
        if augment:
            raise ValueError(f"{self.path}: --augment (test-time augmentation) needs PyTorch .pt weights")
        return self.forward(im), None

    def forward(self, im: torch.Tensor) -> torch.Tensor:
        n = im.shape[0]
        return self._run(self._fit(im).to(self.device, torch.half if self.fp16 else torch.float))[:n]


class OnnxBackend(_ExportedBackend):
    """onnxruntime InferenceSession (CUDA provider when the device is CUDA and onnxruntime-gpu has it)."""

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
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
        super().__init__(path, device, meta, shape, fp16=inp.type == "tensor(float16)",
                         dynamic=all(s is None for i, s in enumerate(shape) if i != 1))

    def _run(self, im: torch.Tensor) -> torch.Tensor:
        y = self.session.run([self.output_name], {self.input_name: im.detach().cpu().numpy()})[0]
        return torch.from_numpy(y).to(self.device)


def read_torchscript_config(path: Path) -> dict:
    """extra/config.txt of a TorchScript zip (also readable when it was saved for the lite interpreter)."""
    with zipfile.ZipFile(path) as z:
        hits = [n for n in z.namelist() if n.endswith("extra/config.txt")]
        return json.loads(z.read(hits[0])) if hits else {}


class TorchScriptBackend(_ExportedBackend):
    """torch.jit.load of a traced model (or the lite interpreter for --optimize exports)."""

    def __init__(self, path, device=torch.device("cpu")):
        try:  # traced D-LKA graphs call torchvision::deform_conv2d
            load_torchvision_ops()
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
        dynamic = bool(meta.get("dynamic", False))
        shape = (None, 3, None, None) if dynamic else meta.get("shape", (None, 3, None, None))
        super().__init__(path, device, meta, shape, fp16, dynamic)

    def _run(self, im: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y = self.model(im)
        return y[0] if isinstance(y, (list, tuple)) else y


# -------------------------------------------------------------------------------------------- load --

def load_backend(weights, device: torch.device = torch.device("cpu"), half: bool = False, fuse: bool = True,
                 channels_last=None):
    """Weights path (.pt, .onnx, .torchscript; or a list of .pt paths for an ensemble) -> a backend on `device`.

    half: fp16 for .pt; an exported file runs in the precision it was exported with.
    channels_last (.pt; default: on CPU) runs the convolutions in NHWC memory order, faster with oneDNN.
    """
    paths = [Path(w) for w in (weights if isinstance(weights, (list, tuple)) else [weights])]
    suffixes = {p.suffix.lower() for p in paths}
    if suffixes == {".pt"}:
        from models.experimental import attempt_load

        model = attempt_load([str(p) for p in paths] if len(paths) > 1 else str(paths[0]), device=device, fuse=fuse)
        return TorchBackend(model, device, half, device.type == "cpu" if channels_last is None else channels_last)
    if len(paths) > 1:
        raise ValueError(f"an ensemble needs .pt weights, got {', '.join(map(str, paths))}")
    path, suffix = paths[0], paths[0].suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: weights format '{suffix}' is not supported (use one of {', '.join(SUFFIXES)})")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    backend = (OnnxBackend if suffix == ".onnx" else TorchScriptBackend)(path, device)
    if half and not backend.fp16:
        LOGGER.warning(f"WARNING: {path} holds an FP32 graph; --half is ignored (export with --half for FP16)")
    return backend


def wrap_model(model: torch.nn.Module, half: bool = False) -> TorchBackend:
    """A backend around an in-memory model (training passes its EMA model)."""
    device = next(model.parameters()).device
    if half and device.type == "cpu":
        LOGGER.debug("validating in fp16 on CPU (asked for explicitly)")
    return TorchBackend(model, device, half)


def check_img_size(imgsz, stride: int = 32, floor: int = 0):
    """Round an image size (int or [h, w]) up to a multiple of the model stride, saying so when it changes."""
    def fit(x: int) -> int:
        return max(math.ceil(int(x) / stride) * stride, floor)

    new = fit(imgsz) if isinstance(imgsz, int) else [fit(x) for x in imgsz]
    if new != imgsz:
        LOGGER.warning(f"WARNING: --img-size {imgsz} must be a multiple of max stride {stride}, updating to {new}")
    return new


@contextmanager
def cpu_threads(n: int, device: torch.device):
    """Run a block with n CPU threads (then restore). NMS and matching are many small ops: on CPU one
    thread does them as fast as two on an idle machine and ~8x faster on a busy one, where every
    parallel op waits for a descheduled worker thread."""
    if device.type != "cpu" or torch.get_num_threads() <= n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
