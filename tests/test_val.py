"""The validator (engine/validator.py) and val.py around it: standalone and training calls, the named result
and val.run's YOLOv5 tuple, outputs (txt/json/plots), --save-hybrid giving a perfect score, the official model
on coco8 (the metric rules themselves are tested in test_metrics.py)."""
import math

import cv2
import numpy as np
import pytest
import torch
import yaml

import val
from engine.validator import ValOutputs, ValResult, validate_model, validate_weights
from models.yolo import Model
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.train.results import RESULT_KEYS

NAMES = ["box", "disc"]




def make_dataset(root, n=6, seed=0):
    """n images of 96x128 with 1-2 non-overlapping shapes each -> dataset yaml path, number of labels."""
    rng = np.random.default_rng(seed)
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    n_labels = 0
    for i in range(n):
        h, w = (96, 128) if i % 2 else (128, 96)
        im = np.full((h, w, 3), 90, np.uint8)
        rows = []
        for k in range(1 + i % 2):
            x0, y0 = 8 + 44 * k, 10 + 30 * k
            bw, bh = int(rng.integers(20, 36)), int(rng.integers(20, 36))
            cls = (i + k) % 2
            cv2.rectangle(im, (x0, y0), (x0 + bw, y0 + bh), (40, 200, 60) if cls else (220, 40, 40), -1)
            rows.append(f"{cls} {(x0 + bw / 2) / w:.6f} {(y0 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        cv2.imwrite(str(root / "images" / "val" / f"{i:04d}.jpg"), im)
        (root / "labels" / "val" / f"{i:04d}.txt").write_text("\n".join(rows) + "\n")
        n_labels += len(rows)
    f = root / "data.yaml"
    f.write_text(yaml.safe_dump({"path": str(root), "train": "images/val", "val": "images/val", "names": NAMES}))
    return f, n_labels


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    m = Model("yolov5n.yaml", nc=len(NAMES))
    m.names = list(NAMES)
    return m


@pytest.fixture
def weights(tmp_path, tiny_model):
    return save_checkpoint(make_checkpoint(tiny_model, half=False), tmp_path / "tiny.pt")


# ----------------------------------------------------------------------------------------------- run --

def test_save_hybrid_scores_perfectly_and_writes_everything(tmp_path, weights, log_lines):
    """--save-hybrid adds the labels as conf-1 detections, so AP must be YOLOv5's ceiling 0.995 at
    every threshold whatever the (untrained) model predicts; all outputs are written."""
    data, n_labels = make_dataset(tmp_path / "ds")
    (mp, mr, map50, map_, *losses), maps, t = val.run(
        data=str(data), weights=str(weights), imgsz=128, batch_size=4, device="cpu", workers=0, save_hybrid=True,
        save_txt=True, save_conf=True, save_json=True, verbose=True, project=tmp_path / "runs", name="exp")
    assert map50 == pytest.approx(0.995, abs=1e-6) and map_ == pytest.approx(0.995, abs=1e-6)
    assert maps.shape == (2,) and np.allclose(maps, 0.995) and len(losses) == 3 and len(t) == 3
    assert 0 < mp <= 1 and 0 < mr <= 1
    d = tmp_path / "runs" / "exp"
    for f in ("confusion_matrix.png", "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png",
              "val_batch0_labels.jpg", "val_batch0_pred.jpg", "val_batch1_pred.jpg", "tiny_predictions.json"):
        assert (d / f).is_file(), f
    assert len(list((d / "labels").glob("*.txt"))) == 6
    row = next(line for line in log_lines if line.strip().startswith("all"))
    assert row.split()[1:3] == ["6", str(n_labels)]
    assert any(line.strip().startswith(NAMES[0]) for line in log_lines)  # --verbose per-class rows
    assert any(line.startswith("Speed: ") and "per image at shape (4, 3, 128, 128)" in line for line in log_lines)
    coco = next(line for line in log_lines if line.startswith("pycocotools"))
    assert float(coco.split("mAP@.5:.95")[1].split()[0].strip(",")) == pytest.approx(1.0, abs=0.01)


def _val_loader(tmp_path, n=4):
    from utils.data.loader import create_dataloader

    make_dataset(tmp_path / "ds", n=n)
    d = {"names": NAMES, "nc": 2, "val": str(tmp_path / "ds" / "images" / "val")}
    return d, create_dataloader(d["val"], 96, 4, 32, pad=0.5, rect=True, workers=0)[0]


def test_training_call_restores_model_and_reports_losses(tmp_path, tiny_model):
    from utils.train.loss import ComputeLoss

    d, loader = _val_loader(tmp_path)
    model = tiny_model.train()
    hyp = yaml.safe_load((val.ROOT / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    for half in (None, True):  # None: fp32 on CPU as v6.1; True: pure fp16 on CPU when asked
        r = validate_model(model, loader, d, ValOutputs(tmp_path), compute_loss=ComputeLoss(model, hyp), half=half)
        assert isinstance(r, ValResult) and r.maps.shape == (2,) and len(r.speed_ms) == 3
        assert all(math.isfinite(x) for x in r.as_tuple()) and min(r.box_loss, r.obj_loss, r.cls_loss) > 0
        assert model.training and next(model.parameters()).dtype == torch.float32


def test_val_run_keeps_yolov5s_tuple_of_the_named_result(tmp_path, tiny_model):
    """val.run(model=..., dataloader=...) (YOLOv5's training call) returns ValResult.legacy(): the same figures,
    positionally in YOLOv5's order; columns() names them as results.csv does."""
    from utils.train.loss import ComputeLoss

    d, loader = _val_loader(tmp_path)
    hyp = yaml.safe_load((val.ROOT / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    loss = ComputeLoss(tiny_model, hyp)
    named = validate_model(tiny_model, loader, d, ValOutputs(tmp_path), compute_loss=loss)
    (p, r, m50, m, box, obj, cls), maps, t = val.run(d, model=tiny_model, dataloader=loader, plots=False,
                                                   save_dir=tmp_path, compute_loss=loss)
    assert (p, r, m50, m, box, obj, cls) == (named.precision, named.recall, named.map50, named.map,
                                             named.box_loss, named.obj_loss, named.cls_loss)
    assert np.array_equal(maps, named.maps) and len(t) == 3
    cols = named.columns()
    assert list(cols) == [k for k in RESULT_KEYS if k.startswith(("metrics/", "val/"))]
    assert cols["metrics/mAP_0.5"] == m50 and cols["val/obj_loss"] == obj
    assert named.fitness == pytest.approx(0.1 * m50 + 0.9 * m)


def test_dnn_flag_is_accepted_and_warned_about_once(tmp_path, weights, log_lines):
    """YOLOv5's --dnn (OpenCV DNN for ONNX) does not exist here: accepted, one warning per process."""
    from models.backends import _warn_dnn_ignored

    _warn_dnn_ignored.cache_clear()  # another test in this process may have warned already
    data, _ = make_dataset(tmp_path / "ds", n=2)
    opt = val.parse_opt(["--data", str(data), "--weights", str(weights), "--img", "96", "--device", "cpu",
                         "--workers", "0", "--dnn", "--project", str(tmp_path / "r")])
    for _ in range(2):
        r, _, _ = val.main(opt)
        assert len(r) == 7
    warned = [line for line in log_lines if "--dnn" in line]
    assert len(warned) == 1 and "ignored" in warned[0]


def test_speed_task_with_single_cls(tmp_path, weights, log_lines):
    data, _ = make_dataset(tmp_path / "ds", n=4)
    out = val.main(val.parse_opt(["--data", str(data), "--weights", str(weights), "--img", "96", "--task", "speed",
                                  "--single-cls", "--device", "cpu", "--workers", "0", "--project", str(tmp_path / "r")]))
    (r, maps, t), = out
    assert len(r) == 7 and maps.shape == (1,) and len(t) == 3
    assert any("per image at shape (32, 3, 96, 96)" in line for line in log_lines)


def test_wrong_dataset_for_weights_is_refused(tmp_path, weights):
    data, _ = make_dataset(tmp_path / "ds", n=2)
    d = yaml.safe_load(data.read_text())
    d["names"] = ["a", "b", "c"]
    data.write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match="has 2 classes but --data"):
        val.run(data=str(data), weights=str(weights), imgsz=96, device="cpu", workers=0, project=tmp_path / "r")


# ------------------------------------------------------------------------------------ official weights --

@pytest.fixture
def coco8_data(shared_dir) -> dict:
    """coco8 from ../shared as a dataset dict with COCO's 80 names (skips without it)."""
    coco8 = shared_dir / "datasets" / "coco8"
    if not (coco8 / "images" / "val").is_dir():
        pytest.skip("coco8 is not present")
    names = yaml.safe_load((val.ROOT / "data" / "coco128.yaml").read_text())["names"]
    return {"path": str(coco8), "train": "images/train", "val": "images/val", "names": names}


def test_official_yolov5n_on_coco8_agrees_with_pycocotools(tmp_path, coco8_data, official_weights):
    data = coco8_data
    r, _, _ = val.run(data=data, weights=str(official_weights), imgsz=320, device="cpu", workers=0, save_json=True,
                      plots=False, project=tmp_path / "r", name="exp")
    from utils.eval.coco_eval import coco_evaluate

    d = tmp_path / "r" / "exp"
    coco_map, coco_map50 = coco_evaluate(d / "yolov5n_gt.json", d / "yolov5n_predictions.json")
    assert r[3] > 0.2, "the official model should find most of coco8's objects"
    assert abs(coco_map - r[3]) < 0.02 and abs(coco_map50 - r[2]) < 0.02


def test_training_and_standalone_calls_agree_on_coco8(tmp_path, coco8_data, official_weights):
    """The same model on the same batches scores exactly the same through both entry points: validate_weights
    (a file, as val.py) and validate_model (an in-memory model and a ready loader, as the trainer). The file's
    backend runs channels-last on CPU, so the in-memory model does too (else sums reorder at the 1e-6 level)."""
    from models.load import attempt_load
    from utils.data.loader import create_dataloader
    from utils.torch_utils import try_channels_last

    data = coco8_data
    standalone = validate_weights(str(official_weights), data, ValOutputs(tmp_path / "s"), imgsz=320, device="cpu",
                                  workers=0)
    from utils.data.dataset_yaml import check_dataset
    data = check_dataset(data)
    loader = create_dataloader(data["val"], 320, 32, 32, pad=0.5, rect=True, workers=0)[0]
    model = attempt_load(str(official_weights), device=torch.device("cpu"), fuse=True)
    assert try_channels_last(model, torch.zeros(1, 3, 64, 64))
    training = validate_model(model, loader, data, ValOutputs(tmp_path / "t"))
    assert standalone.map > 0.2
    assert training.as_tuple() == standalone.as_tuple() and np.array_equal(training.maps, standalone.maps)


def test_load_backend_refuses_unknown_formats_and_mixed_ensembles(tmp_path, weights):
    from models.backends import load_backend

    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"m\.engine: weights format '\.engine' is not supported"):
        load_backend(tmp_path / "m.engine", cpu)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_backend(tmp_path / "missing.onnx", cpu)
    with pytest.raises(ValueError, match="an ensemble needs .pt weights"):
        load_backend([weights, tmp_path / "m.onnx"], cpu)
    b = load_backend(weights, cpu)
    assert (b.pt, b.dynamic, b.input_shape, b.nc, b.names) == (True, True, (None, 3, None, None), 2, NAMES)
    assert b.batch_size_for(5, 96) == 5 and b.forward(torch.zeros(1, 3, 64, 96)).shape[-1] == 7


# ----------------------------------------------------------------------------------------------- bf16 --

def test_bf16_val_runs_close_to_fp32_and_refuses_what_it_cannot_do(tmp_path, weights):
    """--bf16 (CPU autocast) on the synthetic set: the same images and labels seen, figures close to fp32's;
    with --half, on an export, or on a GPU it is one InputError naming the fix."""
    from utils.cli import InputError
    from utils.torch_utils import check_bf16

    data, _ = make_dataset(tmp_path / "ds")
    kw = dict(data=str(data), weights=str(weights), imgsz=128, batch_size=4, device="cpu", workers=0,
              project=tmp_path / "runs", plots=False)
    fp32 = val.run(**kw, name="fp32")
    opt = val.parse_opt(["--data", str(data), "--weights", str(weights), "--img", "128", "--batch-size", "4",
                         "--device", "cpu", "--workers", "0", "--project", str(tmp_path / "runs"), "--name", "bf16",
                         "--bf16"])
    assert opt.bf16
    bf16 = val.main(opt)
    assert np.allclose(bf16[0][:4], fp32[0][:4], atol=0.02), (bf16[0], fp32[0])
    with pytest.raises(InputError, match="--half and --bf16"):
        val.run(**kw, name="both", bf16=True, half=True)
    with pytest.raises(InputError, match="on cuda use --half"):
        check_bf16(torch.device("cuda"), True, False)
    with pytest.raises(InputError, match=r"PyTorch weights \(\.pt\) only"):
        check_bf16(torch.device("cpu"), False, False)


def test_bf16_val_of_the_official_yolov5n_on_coco8_is_within_001_of_fp32(tmp_path, coco8_data, official_weights):
    data = coco8_data
    kw = dict(data=data, weights=str(official_weights), imgsz=320, device="cpu", workers=0, plots=False,
              project=tmp_path / "r")
    fp32, _, _ = val.run(**kw, name="fp32")
    bf16, _, _ = val.run(**kw, name="bf16", bf16=True)
    assert fp32[3] > 0.2 and bf16[3] > 0.2
    assert abs(bf16[3] - fp32[3]) <= 0.01 and abs(bf16[2] - fp32[2]) <= 0.02, (bf16, fp32)
