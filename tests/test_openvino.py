"""OpenVINO export (export.py --include openvino) and the OpenVINO backend (val.py/detect.py --weights <folder>).

Agreement measure as in test_export.py: boxes max|diff| <= 1e-4 * max|box|, scores max|diff| <= 1e-4. Skipped
when openvino (requirements-openvino.txt) is not installed; the INT8 tests also need nncf.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("openvino")

import export  # noqa: E402
from models.backends import OpenVinoBackend, load_backend  # noqa: E402
from models.load import attempt_load  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.export_checks import label_onnx_node  # noqa: E402
from utils.export_openvino import METADATA, explain_failure  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"
RTOL = 1e-4
SEEDS = ["TripletAttention", "ACmix", "CGA", "DAT"]  # the first four attention blocks of the project

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _assert_detections_close(got: torch.Tensor, want: torch.Tensor, what: str):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    box = float((got[..., :4] - want[..., :4]).abs().max() / want[..., :4].abs().max())
    score = float((got[..., 4:] - want[..., 4:]).abs().max())
    assert box <= RTOL and score <= RTOL, f"{what}: boxes {box:.2e} (relative), scores {score:.2e} > {RTOL}"


def _reference(model, ims):
    with export.export_mode(model), torch.no_grad():
        return [model(im) for im in ims]


def _inputs():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, 3, 64, 64, generator=g), torch.rand(2, 3, 192, 128, generator=g)]


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    from utils.data.shapes import NAMES, generate_shapes

    root = generate_shapes(tmp_path_factory.mktemp("data") / "shapes", n_train=8, n_val=4, imgsz=64, seed=1)
    return {"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}


# ----------------------------------------------------------------------------- the four seed variants

@pytest.mark.parametrize("block", SEEDS)
def test_seed_variant_trained_briefly_matches_pytorch_at_two_sizes(block, shapes_data, tmp_path):
    """yolov5n_<block>.yaml trained one epoch (shapes data, 64 px), exported as a dynamic IR at 64x64 from its
    checkpoint, then run at 64x64 and at a batch of two 192x128 images."""
    import train

    train.run(data=shapes_data, cfg=f"yolov5n_{block}.yaml", weights="", epochs=1, imgsz=64, batch_size=4, workers=0,
              noautoanchor=True, noval=True, noplots=True, seed=0, project=str(tmp_path), name="t")
    weights = tmp_path / "t" / "weights" / "last.pt"
    folder, = export.run(weights=str(weights), imgsz=[64, 64], include=["openvino"], dynamic=True, out_dir=tmp_path)
    assert folder.name == "last_openvino_model" and (folder / "last.xml").is_file() and (folder / "last.bin").is_file()
    backend = load_backend(folder)
    assert isinstance(backend, OpenVinoBackend) and backend.dynamic and backend.input_shape == (None, 3, None, None)
    model = attempt_load(str(weights), fuse=True)
    ims = _inputs()
    for im, ref in zip(ims, _reference(model, ims)):
        _assert_detections_close(backend.forward(im), ref, f"{block} OpenVINO at {tuple(im.shape)}")


@pytest.mark.slow
@pytest.mark.parametrize("cfg", ["yolov5n.yaml"] + [f"yolov5n_{p.stem[len('yolov5_'):]}.yaml"
                                                   for p in sorted(MODELS.glob("yolov5_*.yaml"))])
def test_every_variant_converts_and_matches(cfg, tmp_path):
    """Every attention variant (fresh weights, fused) converts: a static IR at 96x64 reproduces PyTorch."""
    torch.manual_seed(0)
    model = Model(cfg).eval().fuse(flops=False)
    im = torch.rand(1, 3, 96, 64)
    folder = export.export_openvino(model, im, tmp_path / "m_openvino_model")
    backend = OpenVinoBackend(folder)
    assert not backend.dynamic and backend.input_shape == (1, 3, 96, 64)
    _assert_detections_close(backend.forward(im), _reference(model, [im])[0], f"{cfg} OpenVINO static")


# ----------------------------------------------------------------------------- formats, metadata, errors

@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = Model("yolov5n.yaml").eval().fuse(flops=False)
    model.names = [f"thing{i}" for i in range(80)]
    return model


def test_static_ir_metadata_and_shape_rules(small_model, tmp_path):
    im = torch.rand(1, 3, 64, 96)
    folder = export.export_openvino(small_model, im, tmp_path / "s_openvino_model")
    meta = yaml.safe_load((folder / METADATA).read_text())
    assert meta == {"stride": 32, "names": small_model.names, "shape": [1, 3, 64, 96], "dynamic": False,
                    "fp16": False, "int8": False}
    backend = load_backend(folder / "s.xml")  # the .xml itself works too
    assert backend.names == small_model.names and backend.stride == 32 and backend.batch_size_for(8, [64, 96]) == 1
    with pytest.raises(ValueError, match=r"exported for image size 64x96 .* --imgsz is 64x64"):
        backend.check_imgsz(64)


def test_half_ir_stores_fp16_weights_and_stays_close(small_model, tmp_path):
    im = torch.rand(1, 3, 64, 64)
    fp32 = export.export_openvino(small_model, im, tmp_path / "a_openvino_model")
    fp16 = export.export_openvino(small_model, im, tmp_path / "b_openvino_model", half=True)
    size = lambda f: (f / (f.name.split("_")[0] + ".bin")).stat().st_size  # noqa: E731
    assert size(fp16) < 0.6 * size(fp32)
    assert yaml.safe_load((fp16 / METADATA).read_text())["fp16"] is True
    got, want = OpenVinoBackend(fp16).forward(im), _reference(small_model, [im])[0]
    assert float((got[..., 4:] - want[..., 4:]).abs().max()) < 1e-2  # fp16 weights: ~1e-3 on the scores


def test_cli_half_on_cpu_is_fine_for_openvino_alone_and_int8_needs_data(tmp_path, capsys):
    files = export.run(cfg="yolov5n.yaml", imgsz=[64, 64], include=["openvino"], half=True, out_dir=tmp_path)
    assert yaml.safe_load((files[0] / METADATA).read_text())["fp16"] is True
    with pytest.raises(ValueError, match="--half is only compatible with GPU export"):
        export.run(cfg="yolov5n.yaml", imgsz=[64, 64], include=["onnx", "openvino"], half=True, out_dir=tmp_path)
    with pytest.raises(SystemExit) as e:
        export.main(["--cfg", "yolov5n.yaml", "--include", "openvino", "--int8", "--imgsz", "64",
                     "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("ERROR: --int8 needs --data")


def test_missing_or_incomplete_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="OpenVINO IR not found"):
        load_backend(tmp_path / "nothing_openvino_model")
    (tmp_path / "x_openvino_model").mkdir()
    (tmp_path / "x_openvino_model" / "x.xml").write_text("<net/>")
    (tmp_path / "x_openvino_model" / "x.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="no metadata.yaml"):
        load_backend(tmp_path / "x_openvino_model")


def test_a_conversion_failure_names_the_layer_and_the_operator(tmp_path):
    """OpenVINO reports failing operators by type ("GridSample-16") or by node name; both become the yaml layer."""
    torch.manual_seed(0)
    model = Model("yolov5n_DAT.yaml").eval()
    onnx_file = export.export_onnx(model, torch.rand(1, 3, 64, 64), tmp_path / "m.onnx", check=False)
    label = lambda n: label_onnx_node(model, n)  # noqa: E731
    by_type = RuntimeError("Check 'is_conversion_successful' failed: FrontEnd API failed with OpConversionFailure:\n"
                           "Model wasn't fully converted. Failed operations detailed log:\n-- GridSample-16 with a "
                           "message:\nunsupported mode")
    assert "failed in layer 10 (DAttentionBaseline), operator GridSample:" in str(
        explain_failure(by_type, "conversion", onnx_file, label))
    by_name = RuntimeError("[CPU] Broadcast node with name '/model.25/Mul_5' Check 'arg_shape' failed")
    assert "failed in layer 25 (Detect):" in str(explain_failure(by_name, "CPU compile/run", None, label))


# ----------------------------------------------------------------------------- INT8

def test_int8_quantizes_the_convs_but_not_the_box_decoding(small_model, shapes_data, tmp_path):
    pytest.importorskip("nncf")
    import openvino as ov

    im = torch.rand(1, 3, 64, 64)
    folder = export.export_openvino(small_model, im, tmp_path / "q_openvino_model", int8=True, data=shapes_data)
    assert yaml.safe_load((folder / METADATA).read_text())["int8"] is True
    graph = ov.Core().read_model(str(folder / "q.xml"))
    fq = [op for op in graph.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(fq) > 50, "the convolutions should be quantized"
    head_ops = {t.get_node().get_friendly_name() for op in fq for out in op.outputs() for t in out.get_target_inputs()}
    decode = sorted(n for n in head_ops if n.startswith("/model.24/") and not n.startswith("/model.24/m."))
    assert not decode, f"the Detect box decoding got quantized inputs: {decode[:5]}"
    got, want = OpenVinoBackend(folder).forward(im), _reference(small_model, [im])[0]
    assert got.shape == want.shape and torch.isfinite(got).all()


# ----------------------------------------------------------------------------- val and detect on the folder

@pytest.mark.slow
def test_val_on_dynamic_openvino_export_of_yolov5n_equals_the_pt(official_weights, coco128_dir, tmp_path):
    """coco128 at 320, rect batches for both: the dynamic IR scores what the .pt scores (within 0.001)."""
    import val

    names = yaml.safe_load((Path(__file__).resolve().parents[1] / "data" / "coco128.yaml").read_text())["names"]
    data = {"path": str(coco128_dir), "train": "images/train2017", "val": "images/train2017", "names": names}
    folder, = export.run(weights=str(official_weights), imgsz=[320, 320], include=["openvino"], dynamic=True,
                         out_dir=tmp_path)
    kw = dict(data=data, imgsz=320, batch_size=32, device="cpu", workers=0, plots=False, project=tmp_path)
    pt = val.run(weights=str(official_weights), name="pt", **kw)[0]
    got = val.run(weights=str(folder), name="openvino", **kw)[0]
    assert pt[3] > 0.2  # a real mAP, not an empty comparison
    assert abs(pt[2] - got[2]) <= 1e-3 and abs(pt[3] - got[3]) <= 1e-3, (pt[:4], got[:4])


def test_detect_takes_the_folder(small_model, tmp_path):
    import cv2

    import detect

    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), np.random.default_rng(0).integers(0, 255, (72, 96, 3), dtype=np.uint8))
    folder = export.export_openvino(small_model, torch.rand(1, 3, 64, 64), tmp_path / "d_openvino_model", dynamic=True)
    save_dir = detect.run(weights=str(folder), source=src, imgsz=128, conf_thres=0.0, max_det=5, device="cpu",
                          save_txt=True, project=tmp_path / "runs", name="ov")
    assert (save_dir / "a.jpg").is_file() and len(np.loadtxt(save_dir / "labels" / "a.txt", ndmin=2)) == 5
