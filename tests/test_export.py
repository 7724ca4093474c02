"""export.py and models/backends/: every variant exports (ONNX static + dynamic, TorchScript) and the
exported graphs reproduce PyTorch; metadata round-trips; bad requests are clear errors.

Agreement measure: max|exported - pytorch| <= 1e-4 * max|pytorch| (max-abs over max-abs); for detections
the boxes are measured that way and the scores (in [0, 1]) separately with max|diff| <= 1e-4.
The per-variant matrix iterates over whatever models/yolov5_*.yaml exist (scale n), plus yolov5n.yaml;
each model is built once per session and the inputs are small (64x64 and a batch-2 96x64).
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import export
from models.registry import opset_needs, register, same_channels, unregister
from models.yolo import Model
from models.backends import OnnxBackend, TorchScriptBackend, load_backend
from utils.export_checks import ExportError

MODELS = Path(__file__).resolve().parents[1] / "models"
RTOL = 1e-4
SIZES = [(1, 64, 64), (2, 192, 128)]  # (batch, h, w): the export size and another one for the dynamic graphs
LAYER_SIZES = SIZES + [(1, 320, 224)]
STATIC_SIZE = (1, 256, 320)  # P5 2x2 at export, then 6x4 and 10x7: size-dependent branches differ

# Blocks whose export is known to be wrong, per check, with the cause (reported to the block owners).
# Non-strict xfails, because the owners are fixing them: a fixed block shows up as XPASS in the summary,
# and its entry should then be removed so the check guards it again.
KNOWN_EXPORT_BUGS = {
}


def _blocks_in(yaml_file: Path) -> set[str]:
    import yaml

    d = yaml.safe_load(yaml_file.read_text())
    return {str(row[2]) for row in list(d.get("backbone") or []) + list(d.get("head") or [])}


def _variant_params(check: str):
    """yolov5n.yaml plus every models/yolov5_*.yaml at scale n; attention variants are marked slow so
    `-m "not slow"` gives a quick run (CI runs them all); known export bugs are xfails."""
    params = [] if check == "layers" else ["yolov5n.yaml"]
    for p in sorted(MODELS.glob("yolov5_*.yaml")):
        marks = [pytest.mark.slow]
        for block in sorted(_blocks_in(p)):
            checks, cause = KNOWN_EXPORT_BUGS.get(block, (set(), ""))
            if check in checks:
                marks.append(pytest.mark.xfail(reason=cause, strict=False))
        params.append(pytest.param(f"yolov5n_{p.stem[len('yolov5_'):]}.yaml", marks=marks))
    return params


def _inputs(sizes=SIZES):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(b, 3, h, w, generator=g) for b, h, w in sizes]


@functools.lru_cache(maxsize=None)
def _built(cfg: str):
    """(model, inputs, PyTorch outputs) built once per variant for the whole session."""
    torch.manual_seed(0)
    model = Model(cfg).eval()
    ims = _inputs()
    with export.export_mode(model), torch.no_grad():
        refs = [model(im) for im in ims]
    return model, ims, refs


def _assert_close(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float = RTOL):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    scale = float(want.abs().max())
    assert scale > 0, f"{what}: the reference output is all zeros, nothing to compare"
    err = float((got - want).abs().max()) / scale
    assert err <= rtol, f"{what}: max|diff|/max|ref| = {err:.2e} > {rtol:.1e}"


def _fp32_noise(layer: nn.Module, x: torch.Tensor, ref: torch.Tensor) -> float:
    """How far fp32 eager itself is from float64 on this input (max-abs over max-abs)."""
    import copy

    try:
        with torch.no_grad():
            exact = copy.deepcopy(layer).double()(x.double())
    except Exception:  # a block without float64 support: no finer measure than RTOL
        return 0.0
    return float((ref.double() - exact).abs().max() / exact.abs().max())


def _assert_detections_close(got: torch.Tensor, want: torch.Tensor, what: str):
    """Boxes (pixels) relative to their own max-abs; objectness/class scores (in [0, 1]) on their own,
    so the large box numbers cannot hide a score error."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    _assert_close(got[..., :4], want[..., :4], f"{what} boxes")
    err = float((got[..., 4:] - want[..., 4:]).abs().max())
    assert err <= RTOL, f"{what} scores: max|diff| = {err:.2e} > {RTOL}"


# ----------------------------------------------------------------------------- per-variant matrix

@pytest.mark.parametrize("cfg", _variant_params("onnx_static"))
def test_onnx_static_export_matches_pytorch(cfg, tmp_path):
    """At 256x320 (P5 8x10): large enough that window/size branches take their general path."""
    model, _, _ = _built(cfg)
    im = _inputs([STATIC_SIZE])[0]
    with export.export_mode(model), torch.no_grad():
        ref = model(im)
    f = export.export_onnx(model, im, tmp_path / "m.onnx", dynamic=False, check=False)  # the backend runs it
    backend = OnnxBackend(f)
    assert not backend.dynamic and backend.input_shape == (1, 3, *STATIC_SIZE[1:])
    _assert_detections_close(backend.forward(im), ref, f"{cfg} ONNX static")


@pytest.mark.parametrize("cfg", _variant_params("onnx_dynamic"))
def test_onnx_dynamic_export_matches_pytorch_at_two_sizes(cfg, tmp_path):
    model, ims, refs = _built(cfg)
    f = export.export_onnx(model, ims[0], tmp_path / "m.onnx", dynamic=True, check=False)
    backend = OnnxBackend(f)
    assert backend.dynamic and backend.input_shape == (None, 3, None, None)
    for im, ref in zip(ims, refs):
        _assert_detections_close(backend.forward(im), ref, f"{cfg} ONNX dynamic at {tuple(im.shape)}")


@pytest.mark.parametrize("cfg", _variant_params("torchscript"))
def test_torchscript_export_matches_pytorch_at_two_sizes(cfg, tmp_path):
    model, ims, refs = _built(cfg)
    f = export.export_torchscript(model, ims[0], tmp_path / "m.torchscript")
    backend = TorchScriptBackend(f)
    assert backend.dynamic, f"{cfg}: the traced graph bakes its input size in"
    for im, ref in zip(ims, refs):
        _assert_detections_close(backend.forward(im), ref, f"{cfg} TorchScript at {tuple(im.shape)}")


def _perturbed(layer: nn.Module, g: torch.Generator) -> nn.Module:
    """A copy with every parameter nudged: blocks that start as identity (zero-initialised last BN or
    gate) would otherwise output zeros or their input, hiding any error of the attention path."""
    import copy

    layer = copy.deepcopy(layer)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return layer


@pytest.mark.parametrize("cfg", _variant_params("layers"))
def test_attention_layers_alone_export_shape_free(cfg):
    """Each attention layer on random-normal input at its own feature sizes: exported (dynamic ONNX and
    traced) at the size a 64x64 image gives, compared at the sizes of 192x128 and 320x224 images.
    Whole-model checks alone can miss a layer's error: a randomly initialised network may pass the
    block's output on with too little weight for the detections to show it."""
    import io

    import onnxruntime as ort

    from models.registry import REGISTRY
    from utils.export_checks import layer_inputs

    model, ims, _ = _built(cfg)
    with export.export_mode(model):
        captured = layer_inputs(model, ims[0])  # shapes at the export size; the others follow from the stride
    layers = [i for i, m in enumerate(model.model) if getattr(REGISTRY.get(m.type), "attention", False)]
    assert layers, f"{cfg} has no attention layer"
    g = torch.Generator().manual_seed(1)
    for i in layers:
        layer = _perturbed(model.model[i], g)
        _, c, h, w = captured[i][0].shape
        stride = SIZES[0][1] // h
        xs = [torch.randn(b, c, -(-hi // stride), -(-wi // stride), generator=g) for b, hi, wi in LAYER_SIZES]
        with torch.no_grad():
            refs = [layer(x) for x in xs]
            ts = torch.jit.trace(layer, xs[0], check_trace=False)
        f = io.BytesIO()
        torch.onnx.export(layer, (xs[0],), f, dynamo=False, opset_version=export.DEFAULT_OPSET, input_names=["x"],
                          dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}})
        session = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
        for x, ref in zip(xs, refs):
            what = f"{cfg} layer {i} ({layer.type}) exported at {tuple(xs[0].shape[2:])}, run at {tuple(x.shape[2:])}"
            # nudged weights can make a block ill-conditioned (D-LKA: fp32 itself 1e-5 off float64), so allow
            # 10x fp32's own error where that exceeds RTOL; a size baked into a graph gives errors of order 1
            rtol = max(RTOL, 10 * _fp32_noise(layer, x, ref))
            _assert_close(torch.from_numpy(session.run(None, {"x": x.numpy()})[0]), ref, f"{what}, ONNX", rtol)
            with torch.no_grad():
                _assert_close(ts(x), ref, f"{what}, TorchScript", rtol)


# ----------------------------------------------------------------------------- metadata and backends

def test_metadata_round_trips_through_both_formats(tmp_path):
    model, ims, _ = _built("yolov5n.yaml")
    model.names = [f"thing{i}" for i in range(80)]
    try:
        files = [export.export_onnx(model, ims[0], tmp_path / "m.onnx"),
                 export.export_torchscript(model, ims[0], tmp_path / "m.torchscript")]
    finally:
        model.names = [str(i) for i in range(80)]
    for f in files:
        b = load_backend(f)
        assert (b.stride, b.nc, b.names[:2], b.pt) == (32, 80, ["thing0", "thing1"], False)


def test_export_leaves_the_model_as_it_was(tmp_path):
    model, ims, refs = _built("yolov5n.yaml")
    export.export_onnx(model, ims[0], tmp_path / "m.onnx")
    assert not model.training and not model.model[-1].export
    with torch.no_grad():
        y, raw = model(ims[1])  # eval mode again returns (pred, raw maps)
    _assert_detections_close(y, refs[1], "after export")


def test_static_onnx_rejects_another_shape_clearly(tmp_path):
    model, ims, _ = _built("yolov5n.yaml")
    b = OnnxBackend(export.export_onnx(model, ims[0], tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match=r"exported for input shape \(1, 3, 64, 64\)"):
        b.forward(ims[1])
    with pytest.raises(ValueError, match="augment"):
        b(ims[0], augment=True)


def test_run_on_official_weights_matches_attempt_load(official_weights, tmp_path):
    from models.experimental import attempt_load

    files = export.run(weights=str(official_weights), imgsz=[64, 96], include=["onnx", "torchscript"],
                       dynamic=True, out_dir=tmp_path)
    assert [f.suffix for f in files] == [".onnx", ".torchscript"]
    model = attempt_load(str(official_weights))
    im = torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        want = model(im)[0]
    for f in files:
        b = load_backend(f)
        assert b.names[0] == "person" and b.stride == 32
        _assert_detections_close(b.forward(im), want, f.name)


def test_cli_exports_a_fresh_yaml_model(tmp_path):
    files = export.main(["--cfg", "yolov5n.yaml", "--include", "onnx", "--imgsz", "64", "--out-dir", str(tmp_path)])
    assert files == [tmp_path / "yolov5n.onnx"] and files[0].stat().st_size > 1e6


def test_train_mode_export_gives_the_raw_maps(tmp_path):
    model, ims, _ = _built("yolov5n.yaml")
    import onnx

    f = export.export_onnx(model, ims[0], tmp_path / "m.onnx", train=True)
    assert len(onnx.load(str(f)).graph.output) == 3  # one raw map per detection level


# ----------------------------------------------------------------------------- clear errors

def test_unsupported_include_lists_the_supported_formats():
    with pytest.raises(ValueError, match="tflite.*supported: torchscript, onnx"):
        export.check_include(["onnx", "tflite"])
    with pytest.raises(SystemExit):
        export.main(["--cfg", "yolov5n.yaml", "--include", "engine"])


def test_optimize_works_or_says_why(tmp_path):
    model, ims, refs = _built("yolov5n.yaml")
    try:
        f = export.export_torchscript(model, ims[0], tmp_path / "m.torchscript", optimize=True)
    except ExportError as e:  # torch wheels without XNNPACK cannot optimise for mobile
        assert "--optimize" in str(e) and "XNNPACK" in str(e)
        return
    _assert_detections_close(TorchScriptBackend(f).forward(ims[0]), refs[0], "TorchScript --optimize")


def test_half_on_cpu_is_refused():
    with pytest.raises(ValueError, match="--half is only compatible with GPU"):
        export.run(cfg="yolov5n.yaml", device="cpu", half=True)


def test_simplify_without_onnxsim_says_so(tmp_path, monkeypatch):
    model, ims, _ = _built("yolov5n.yaml")
    monkeypatch.setitem(sys.modules, "onnxsim", None)  # import fails as if not installed
    said = []
    monkeypatch.setattr(export.LOGGER, "warning", lambda msg, *a: said.append(msg))
    f = export.export_onnx(model, ims[0], tmp_path / "m.onnx", simplify=True)
    assert f.is_file() and any("onnxsim is not installed" in m for m in said)


class _GridSampleToy(nn.Module):
    """A block that uses grid_sample (ONNX GridSample exists from opset 16)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        grid = x[:, :2].permute(0, 2, 3, 1).tanh()  # any (B, H, W, 2) grid in [-1, 1]
        return F.grid_sample(x, grid, align_corners=False)


@pytest.fixture
def toy_grid_model():
    """toy_grid_model(**facts): a yaml model with _GridSampleToy at layer 1, registered with `facts`."""
    def build(**facts):
        unregister("_GridSampleToy")
        register("_GridSampleToy", build=same_channels(1), attention=True, **facts)(_GridSampleToy)
        d = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": [[10, 13, 16, 30]],
             "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "_GridSampleToy", []]],
             "head": [[[1], 1, "Detect", ["nc", "anchors"]]]}
        return Model(d).eval()
    try:
        yield build
    finally:
        unregister("_GridSampleToy")


def test_exporter_error_names_the_undeclared_block(toy_grid_model, tmp_path):
    im = torch.rand(1, 3, 32, 32)
    with pytest.raises(ExportError, match=r"failed in layer 1 \(_GridSampleToy\)"):  # the exporter's own error
        export.export_onnx(toy_grid_model(), im, tmp_path / "m.onnx", opset=12)
    declared = toy_grid_model(min_opset=16)  # in its registration: refused up front, naming layer, block and opset
    with pytest.raises(ExportError, match=r"--opset 12 is too low .*layer 1 \(_GridSampleToy\): _GridSampleToy "
                                          r"needs opset >= 16\); use --opset 16"):
        export.export_onnx(declared, im, tmp_path / "m.onnx", opset=12)
    assert export.export_onnx(declared, im, tmp_path / "m.onnx", opset=16).is_file()


def test_min_opset_is_read_from_the_registration(toy_grid_model, tmp_path):
    """GridSample exports at 16; only the registration (min_opset=17) can refuse 16, so the check reads it."""
    model = toy_grid_model(min_opset=17)
    assert opset_needs(model) == [("model.1", "_GridSampleToy", 17)]
    with pytest.raises(ExportError, match=r"layer 1 \(_GridSampleToy\): _GridSampleToy needs opset >= 17"):
        export.export_onnx(model, torch.rand(1, 3, 32, 32), tmp_path / "m.onnx", opset=16)


@pytest.mark.skipif(not (MODELS / "yolov5_DAT.yaml").is_file(), reason="DAT yaml not present")
def test_opset_too_low_for_dat_names_it(tmp_path):
    model, ims, _ = _built("yolov5n_DAT.yaml")
    assert opset_needs(model) == [("model.10", "DAttentionBaseline", 16)]
    with pytest.raises(ExportError, match=r"DAttentionBaseline needs opset >= 16.*--opset 16"):
        export.export_onnx(model, ims[0], tmp_path / "m.onnx", opset=12)


# ----------------------------------------------------------------------------- val on the exported model

def _coco8(shared_dir) -> dict:
    import yaml

    root = shared_dir / "datasets" / "coco8"
    if not (root / "images" / "val").is_dir():
        pytest.skip(f"{root} is not present")
    names = yaml.safe_load((root / "coco8.yaml").read_text())["names"]
    return {"path": str(root), "train": "images/train", "val": "images/val", "names": names}


@pytest.mark.slow
def test_val_on_exported_yolov5n_gives_the_same_map(official_weights, shared_dir, tmp_path):
    """coco8 at 320: the dynamic ONNX and the TorchScript export score what the .pt scores (within 0.001),
    validated with rect batches as the .pt is (utils/backend.load_backend reads all three)."""
    import val

    data = _coco8(shared_dir)
    files = export.run(weights=str(official_weights), imgsz=[320, 320], include=["onnx", "torchscript"],
                       dynamic=True, out_dir=tmp_path)
    kw = dict(data=data, imgsz=320, batch_size=4, device="cpu", workers=0, plots=False, project=tmp_path)
    pt = val.run(weights=str(official_weights), name="pt", **kw)[0]
    assert pt[3] > 0.1  # a real mAP, not an empty comparison
    for f in files:
        assert load_backend(f).dynamic, f"{f.name} should be a dynamic export"
        got = val.run(weights=str(f), name=f.suffix[1:], **kw)[0]
        assert abs(pt[2] - got[2]) <= 1e-3 and abs(pt[3] - got[3]) <= 1e-3, (f.name, pt[:4], got[:4])


@pytest.mark.slow
def test_val_on_a_static_export_uses_its_batch_and_refuses_another_size(official_weights, shared_dir, tmp_path):
    """A static ONNX (batch 3 at 256): val takes its batch size, pads coco8's short last batch (4 images = 3 + 1)
    and scores what the .pt scores on the same square letterboxed batches (task 'speed': no rect, no pad);
    another --imgsz is a clear error."""
    import val

    data = _coco8(shared_dir)
    f, = export.run(weights=str(official_weights), imgsz=[256, 256], batch_size=3, include=["onnx"], out_dir=tmp_path)
    b = load_backend(f)
    assert not b.dynamic and b.input_shape == (3, 3, 256, 256) and b.batch_size_for(8, 256) == 3
    kw = dict(data=data, imgsz=256, device="cpu", workers=0, plots=False, project=tmp_path, task="speed")
    got = val.run(weights=str(f), batch_size=8, name="onnx", **kw)[0]
    want = val.run(weights=str(official_weights), batch_size=3, name="pt", **kw)[0]
    assert want[3] > 0.1
    assert abs(want[2] - got[2]) <= 1e-3 and abs(want[3] - got[3]) <= 1e-3, (want[:4], got[:4])
    with pytest.raises(ValueError, match=r"exported for image size 256x256 .* --imgsz is 320x320"):
        val.run(weights=str(f), batch_size=3, **{**kw, "imgsz": 320})
