"""The torch.hub API: hubconf entry points, AutoShape (every input kind, NMS attributes, tracing) and Detections
(every method), against YOLOv5 v7.0's own AutoShape output where the official weights are present."""
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.hub import AutoShape, OfflineError
from models.hub_load import create
from models.yolo import Model
from utils.checkpoint import make_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BUS, ZIDANE = ROOT / "data" / "images" / "bus.jpg", ROOT / "data" / "images" / "zidane.jpg"
NAMES = ["box", "disc", "ring"]


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory):
    torch.manual_seed(0)
    m = Model("yolov5n.yaml", nc=len(NAMES))
    m.names = list(NAMES)
    return save_checkpoint(make_checkpoint(m, half=False), tmp_path_factory.mktemp("w") / "tiny.pt")


@pytest.fixture
def tiny(tiny_pt):
    """A hub model whose random weights still give boxes: conf 0 keeps every candidate, max_det caps them."""
    model = create(str(tiny_pt), verbose=False)
    model.conf, model.max_det = 0.0, 6
    return model


def _rgb(path=BUS, size=160):
    im = cv2.imread(str(path))
    h, w = im.shape[:2]
    return np.ascontiguousarray(cv2.resize(im, (size, round(size * h / w)))[..., ::-1])


# ------------------------------------------------------------------------------------- official numbers --

def test_matches_official_v7_autoshape(official_weights):
    """YOLOv5 v7.0's AutoShape on the same pixels (tests/data, its commit named there): same inference shape,
    same boxes, scores and classes."""
    ref = json.loads((ROOT / "tests" / "data" / "hub_official_v7.0.json").read_text())
    model = create(str(official_weights), verbose=False)
    ims = [np.ascontiguousarray(cv2.imread(str(ROOT / "data" / "images" / f))[..., ::-1]) for f in ref["pictures"]]
    for run in ref["runs"]:
        r = model([im.copy() for im in ims], size=run["size"])
        assert list(r.s) == run["shape"] and r.files == run["files"]
        for ours, theirs in zip(r.pred, run["pred"]):
            theirs = torch.tensor(theirs)
            assert ours.shape == theirs.shape
            assert torch.allclose(ours[:, :4], theirs[:, :4], atol=0.02)  # pixels
            assert torch.allclose(ours[:, 4], theirs[:, 4], atol=2e-3) and torch.equal(ours[:, 5], theirs[:, 5])


# ----------------------------------------------------------------------------------------- input kinds --

def test_every_input_kind_gives_the_same_detections(tiny, tmp_path):
    from PIL import Image

    rgb = _rgb()
    f = tmp_path / "pic.png"
    cv2.imwrite(str(f), rgb[..., ::-1])  # lossless: the file decodes to exactly rgb
    pil = Image.open(f)
    inputs = {"str": str(f), "Path": f, "PIL": pil, "numpy HWC": rgb, "numpy CHW": rgb.transpose(2, 0, 1),
              "numpy float": rgb.astype(np.float64), "RGBA": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
              "tensor CHW 0-1": torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float() / 255,
              "tensor uint8": torch.from_numpy(rgb.transpose(2, 0, 1).copy())}
    ref = tiny(rgb, size=128)
    assert len(ref.pred[0]) == 6 and ref.files == ["image0.jpg"]
    for kind, im in inputs.items():
        r = tiny([im] if isinstance(im, torch.Tensor) else im, size=128)
        assert r.s == ref.s, kind
        assert torch.allclose(r.pred[0], ref.pred[0], atol=1e-3), kind
        assert r.ims[0].shape == rgb.shape, kind
    assert tiny(str(f)).files == ["pic.jpg"] and tiny(pil).files == ["pic.jpg"]  # YOLOv5 names every save .jpg
    batch = tiny([str(f), f, pil, rgb], size=128)
    assert batch.n == len(batch) == 4 and all(torch.allclose(p, ref.pred[0], atol=1e-3) for p in batch.pred)
    gray = tiny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), size=128)
    assert gray.ims[0].shape == rgb.shape


def test_numpy_is_read_as_rgb_and_boxes_land_in_picture_pixels(tiny, monkeypatch):
    """A numpy picture is RGB (YOLOv5's convention: OpenCV users pass im[..., ::-1]) and reaches the model as
    0-1 RGB; boxes are clipped to each picture's own size whatever the shared letterbox."""
    seen = []
    forward = tiny.model.forward
    monkeypatch.setattr(tiny.model, "forward", lambda x, **k: seen.append(x) or forward(x, **k))
    rgb = _rgb()
    tiny(rgb, size=160)  # 160x107 -> letterboxed into 128x160 with 10/11 rows of grey above/below
    x = seen[0][0]
    assert x.shape == (3, 128, 160)
    assert torch.allclose(x[:, 10:117], torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float() / 255)
    assert torch.allclose(x[:, :10], torch.full((3, 10, 160), 114 / 255))
    monkeypatch.undo()
    tall, wide = _rgb(ZIDANE, 90).transpose(1, 0, 2).copy(), _rgb(BUS, 200)
    r = tiny([tall, wide], size=160)
    assert r.s == (2, 3, 160, 160)  # shared letterbox: long sides 160, stride multiple
    for p, im in zip(r.pred, r.ims):
        h, w = im.shape[:2]
        assert (p[:, [0, 2]] <= w).all() and (p[:, [1, 3]] <= h).all() and (p[:, :4] >= 0).all()


def test_bad_inputs_get_clear_errors(tiny, tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("AutoShape tried to open a network connection")
    monkeypatch.setattr(socket, "socket", no_network)
    with pytest.raises(OfflineError, match="does not download"):
        tiny("https://ultralytics.com/images/zidane.jpg")
    with pytest.raises(FileNotFoundError, match="nothing.jpg"):
        tiny(str(tmp_path / "nothing.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot be read"):
        tiny(tmp_path / "bad.jpg")
    with pytest.raises(TypeError, match="got dict"):
        tiny([{}])
    with pytest.raises(ValueError, match="one CHW picture"):
        tiny([torch.zeros(2, 3, 32, 32)])
    with pytest.raises(ValueError, match="must be a BCHW batch"):
        tiny(torch.zeros(3, 32, 32))


def test_nms_attributes(tiny, monkeypatch):
    import models.hub as hub

    rgb = _rgb()
    tiny.max_det = 1000
    base = tiny(rgb, size=128).pred[0]
    tiny.classes = [1]
    assert (tiny(rgb, size=128).pred[0][:, 5] == 1).all()
    tiny.classes, tiny.multi_label = None, True
    assert len(tiny(rgb, size=128).pred[0]) > len(base)  # one row per class above conf
    tiny.multi_label, tiny.iou = False, 0.01
    assert len(tiny(rgb, size=128).pred[0]) < len(base)
    tiny.iou, tiny.conf, tiny.max_det = 0.45, 0.999, 6
    assert len(tiny(rgb, size=128).pred[0]) == 0
    tiny.conf = 0.0
    assert len(tiny(rgb, size=128).pred[0]) == 6
    calls = []
    nms = hub.non_max_suppression
    monkeypatch.setattr(hub, "non_max_suppression", lambda *a, **k: calls.append((a[1:], k)) or nms(*a, **k))
    tiny.conf, tiny.iou, tiny.classes, tiny.agnostic, tiny.multi_label, tiny.max_det = 0.1, 0.3, [2], True, True, 7
    tiny(rgb, size=128)
    assert calls == [((0.1, 0.3, [2], True, True), {"max_det": 7})]


def test_augment_runs_tta(tiny):
    rgb = _rgb()
    plain, tta = tiny(rgb, size=128), tiny(rgb, size=128, augment=True)
    assert tta.s == plain.s and not torch.equal(tta.pred[0], plain.pred[0])


def test_tensor_batch_goes_straight_to_the_model_and_traces(tiny):
    """As YOLOv5's CI: a BCHW tensor returns the raw model output, and torch.jit.trace(model, [im]) works."""
    im = torch.rand(1, 3, 64, 64)
    out = tiny(im)
    assert out[0].shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 5 + len(NAMES))
    assert torch.equal(out[0], tiny.model(im)[0])
    traced = torch.jit.trace(tiny, [im], check_trace=False)
    assert torch.allclose(traced(im)[0], out[0], atol=1e-5)
    im2 = torch.rand(1, 3, 64, 64)  # a trace is fixed to its input size (Detect's grids), as in YOLOv5
    assert torch.allclose(traced(im2)[0], tiny(im2)[0], atol=1e-5)


# ---------------------------------------------------------------------------------------- Detections --

@pytest.fixture
def results(tiny):
    return tiny([_rgb(BUS), _rgb(ZIDANE, 120)], size=128)


def test_detections_views_and_text(results, log_lines):
    r = results
    assert len(r) == r.n == 2 and r.names == NAMES and r.files == ["image0.jpg", "image1.jpg"]
    assert len(r.times) == 3 and len(r.t) == 3 and all(t >= 0 for t in r.t) and r.s == (2, 3, 128, 128)
    for i, im in enumerate(r.ims):
        h, w = im.shape[:2]
        xyxy, xywh = r.xyxy[i], r.xywh[i]
        assert torch.allclose(xywh[:, 0], (xyxy[:, 0] + xyxy[:, 2]) / 2) and torch.allclose(xywh[:, 3], xyxy[:, 3] - xyxy[:, 1])
        scale = torch.tensor([w, h, w, h, 1, 1.0])
        assert torch.allclose(r.xyxyn[i] * scale, xyxy) and torch.allclose(r.xywhn[i] * scale, xywh)
        assert torch.equal(xyxy[:, 4:], r.xywhn[i][:, 4:])
    text = str(r)
    assert text.startswith("image 1/2: 107x160 ") and "\nimage 2/2: 100x120 " in text
    assert "Speed: " in text and "at shape (2, 3, 128, 128)" in text and repr(r).startswith("YOLOv5 ")
    r.print()
    assert any("image 2/2" in line for line in log_lines)
    one = r.tolist()
    assert [len(x) for x in one] == [1, 1] and torch.equal(one[1].pred[0], r.pred[1]) and one[1].files == ["image1.jpg"]


def test_detections_save_crop_render_show(results, tmp_path, monkeypatch, log_lines):
    r = results
    originals = [im.copy() for im in r.ims]
    d = r.save(save_dir=tmp_path / "exp")
    assert sorted(p.name for p in d.iterdir()) == ["image0.jpg", "image1.jpg"]
    assert r.save(save_dir=tmp_path / "exp") == tmp_path / "exp2"  # incremented as YOLOv5
    saved = cv2.imread(str(d / "image0.jpg"))[..., ::-1]
    assert saved.shape == originals[0].shape and np.abs(saved.astype(int) - originals[0]).mean() > 1  # boxes drawn
    crops = r.crop(save_dir=tmp_path / "c")
    assert len(crops) == sum(len(p) for p in r.pred)
    assert set(crops[0]) == {"box", "conf", "cls", "label", "im"} and crops[0]["label"].split()[0] in NAMES
    assert len(list((tmp_path / "c" / "crops").rglob("*.jpg"))) == len(crops)
    x1, y1, x2, y2 = (int(v) for v in crops[-1]["box"])  # the most confident box of picture 1, as a BGR crop
    assert crops[-1]["im"].shape[0] >= y2 - y1 and crops[-1]["im"].shape[1] >= x2 - x1
    assert r.crop(save=False) and not (tmp_path / "runs").exists()
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    r.show()
    assert any("Detections.show()" in line and "DISPLAY" in line for line in log_lines)
    rendered = r.render(labels=False)
    assert rendered is r.ims and np.abs(rendered[0].astype(int) - originals[0]).sum() > 0


def test_detections_pandas(results, monkeypatch):
    pytest.importorskip("pandas")
    p = results.pandas()
    assert list(p.xyxy[0].columns) == ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]
    assert list(p.xywhn[1].columns) == ["xcenter", "ycenter", "width", "height", "confidence", "class", "name"]
    assert len(p.xyxy[0]) == len(results.pred[0]) and set(p.xyxy[0]["name"]) <= set(NAMES)
    assert np.allclose(p.xyxy[0][["xmin", "ymin"]].to_numpy(), results.xyxy[0][:, :2].numpy())
    assert isinstance(results.xyxy[0], torch.Tensor)  # the original is unchanged
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ModuleNotFoundError, match="requirements-pandas.txt"):
        results.pandas()


# ------------------------------------------------------------------------------------------- loading --

def test_torch_hub_load_custom_local(tiny_pt, log_lines):
    model = torch.hub.load(str(ROOT), "custom", path=str(tiny_pt.with_suffix("")), source="local", device="cpu")
    assert isinstance(model, AutoShape) and model.names == NAMES and model.stride == 32
    assert any("Adding AutoShape" in line for line in log_lines)
    log_lines.clear()
    raw = torch.hub.load(str(ROOT), "custom", path=str(tiny_pt), source="local", autoshape=False, _verbose=False)
    assert isinstance(raw, Model) and not any("AutoShape" in line for line in log_lines)
    assert logging.getLogger("yolov5").level == logging.INFO  # quiet only while loading


def test_named_models_load_local_files_only(tiny_pt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"yolov5x\.pt not found \(looked at .*tmp.* and .*\); nothing is downl"):
        torch.hub.load(str(ROOT), "yolov5x", source="local")
    (tmp_path / "yolov5n.pt").write_bytes(tiny_pt.read_bytes())  # any checkpoint named so is used from the cwd
    model = torch.hub.load(str(ROOT), "yolov5n", source="local", _verbose=False)
    assert model.names == NAMES
    fresh = torch.hub.load(str(ROOT), "yolov5s", pretrained=False, channels=1, classes=4, source="local",
                           _verbose=False)
    assert isinstance(fresh, AutoShape) and len(fresh.names) == 4 and fresh.model.yaml["ch"] == 1
    assert fresh(torch.zeros(1, 1, 64, 64))[0].shape[-1] == 9


def test_pretrained_transfer_into_other_classes(official_weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "yolov5n.pt").symlink_to(official_weights)
    model = create("yolov5n", classes=3, verbose=False)
    from utils.checkpoint import load_checkpoint
    sd = load_checkpoint(official_weights)["state_dict"]
    own = model.model.state_dict()
    assert torch.equal(own["model.0.conv.weight"], sd["model.0.conv.weight"].float())  # backbone transferred
    assert own["model.24.m.0.weight"].shape[0] == 3 * 8  # head rebuilt for 3 classes


def test_custom_loads_an_onnx_export(tiny_pt, tmp_path):
    pytest.importorskip("onnxruntime")
    import export

    onnx_file, = export.run(weights=str(tiny_pt), imgsz=[64, 64], include=["onnx"], dynamic=True, out_dir=tmp_path)
    model = create(str(onnx_file), verbose=False)
    model.conf, model.max_det = 0.0, 6
    r = model(_rgb(), size=64)
    pt = create(str(tiny_pt), verbose=False)
    pt.conf, pt.max_det = 0.0, 6
    assert torch.allclose(r.pred[0], pt(_rgb(), size=64).pred[0], atol=1e-3)


def test_hubconf_cli(tiny_pt, tmp_path):
    run = [sys.executable, str(ROOT / "hubconf.py"), "--model"]
    ok = subprocess.run(run + [str(tiny_pt)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "image 5/5: 320x640" in ok.stderr and sorted(p.name for p in (tmp_path / "runs/detect/exp").iterdir()) == [
        "bus.jpg", "image2.jpg", "image4.jpg", "zidane.jpg"]
    bad = subprocess.run(run + ["yolov5l"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("ERROR: weights yolov5l.pt not found")
