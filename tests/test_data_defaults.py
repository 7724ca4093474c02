"""Defaults that follow the data: --hyp names in data/hyps/, and val.py/detect.py without --data using the dataset
(and class names) one of our checkpoints was trained on."""
from copy import deepcopy
from pathlib import Path

import pytest
import yaml

import detect
import val
from conftest import run_script
from engine.training_data import DEFAULT_DATA, data_for_weights
from models.yolo import Model
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.cli import InputError
from utils.data.shapes import NAMES, generate_shapes
from utils.train.hyp import load_hyp

ROOT = Path(__file__).resolve().parents[1]
TINY = {"nc": len(NAMES), "depth_multiple": 0.33, "width_multiple": 0.25, "anchors": [[10, 13, 16, 30, 33, 23]],
        "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "C3", [64]], [-1, 1, "Conv", [128, 3, 2]]],
        "head": [[[-1], 1, "Detect", ["nc", "anchors"]]]}

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------- --hyp names --

def test_bare_hyp_names_resolve_in_data_hyps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repo: the name alone must find the repo's file
    high = load_hyp("hyp.scratch-high.yaml")
    assert high == yaml.safe_load((ROOT / "data/hyps/hyp.scratch-high.yaml").read_text())
    assert high["mixup"] == 0.1  # scratch-high's own value (low and med differ)
    assert load_hyp("data/hyps/hyp.scratch-med.yaml")["mixup"] == 0.1 and load_hyp("hyp.scratch-low")["mixup"] == 0
    mine = tmp_path / "hyp.scratch-high.yaml"  # a file of the same name in the working directory wins
    mine.write_text(yaml.safe_dump({**high, "lr0": 0.5}))
    assert load_hyp("hyp.scratch-high.yaml")["lr0"] == 0.5


def test_unknown_hyp_name_lists_the_available_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"hyp.scratch-huge.yaml not found.*hyp.scratch-high.yaml, "
                                                r"hyp.scratch-low.yaml, hyp.scratch-med.yaml"):
        load_hyp("hyp.scratch-huge.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_hyp(tmp_path / "nope.yaml")  # a path elsewhere: not looked up in data/hyps/


# ------------------------------------------------------------------------------- val.py/detect.py --data --

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder as train.py leaves it: <cwd>/runs/train/exp/weights/best.pt, trained on data/tiny.yaml."""
    cwd = tmp_path_factory.mktemp("project")
    root = generate_shapes(cwd / "datasets" / "shapes", n_train=2, n_val=3, imgsz=64, seed=0)
    (cwd / "data").mkdir()
    (cwd / "data" / "tiny.yaml").write_text(yaml.safe_dump(
        {"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}))
    model = Model(deepcopy(TINY))
    model.names = list(NAMES)
    best = cwd / "runs" / "train" / "exp" / "weights" / "best.pt"
    save_checkpoint(make_checkpoint(model, opt={"data": "data/tiny.yaml", "single_cls": False}, half=False), best)
    return {"cwd": cwd, "best": best, "data": cwd / "data" / "tiny.yaml", "model": model}


def test_our_checkpoint_finds_its_recorded_dataset(trained, tmp_path, monkeypatch, log_lines):
    monkeypatch.chdir(trained["cwd"])
    assert data_for_weights("runs/train/exp/weights/best.pt") == "data/tiny.yaml"
    monkeypatch.chdir(tmp_path)  # elsewhere: found from the run folder's layout
    assert data_for_weights([str(trained["best"])]) == str(trained["data"])
    assert any("the dataset" in m and "was trained on" in m for m in log_lines)


def test_val_without_data_validates_on_the_training_dataset(trained, tmp_path):
    opt = val.parse_opt(["--weights", str(trained["best"]), "--img", "64", "--device", "cpu", "--workers", "0",
                         "--project", str(tmp_path), "--verbose"])
    assert opt.data is None
    (p, r, *_), maps, _ = val.main(opt)
    assert opt.data == str(trained["data"]) and maps.shape == (len(NAMES),)  # 6 shapes, not coco128's 80
    (p2, r2, *_), _, _ = val.run(weights=str(trained["best"]), imgsz=64, device="cpu", workers=0,
                                  project=str(tmp_path), plots=False)
    assert (p2, r2) == (p, r)


def test_a_vanished_dataset_asks_for_data_naming_it(trained, tmp_path):
    ck = make_checkpoint(trained["model"], opt={"data": str(tmp_path / "gone" / "mine.yaml")}, half=False)
    w = save_checkpoint(ck, tmp_path / "w.pt")
    with pytest.raises(InputError, match=r"trained on --data .*mine.yaml \(6 classes: circle, square.*pass --data"):
        data_for_weights(w)
    r = run_script("val.py", "--weights", w, "--img", 64, "--device", "cpu", cwd=tmp_path)
    assert r.rc == 2 and "Traceback" not in r.stderr and len(r.error_lines) == 1
    assert "mine.yaml" in r.error_lines[0] and "pass --data" in r.error_lines[0]


def test_a_recorded_yaml_with_other_classes_is_not_used(trained, tmp_path):
    other = tmp_path / "tiny.yaml"
    other.write_text(yaml.safe_dump({"path": ".", "train": "a", "val": "a", "names": ["cat", "dog"]}))
    w = save_checkpoint(make_checkpoint(trained["model"], opt={"data": str(other)}, half=False), tmp_path / "w.pt")
    with pytest.raises(InputError, match=r"now lists other classes \(cat, dog\)"):
        data_for_weights(w)


def test_without_a_record_yolov5s_default_stays(trained, tmp_path, official_weights):
    d = {"path": "x", "train": "a", "val": "a", "names": NAMES}
    w = save_checkpoint(make_checkpoint(trained["model"], opt={"data": d}, half=False), tmp_path / "dict.pt")
    assert data_for_weights(w) == d  # trained on a dict (train.run(data={...})): that dict
    recorded = {**d, "generate": "shapes", "path": str(tmp_path / "not_made")}  # a dict that would write files
    w = save_checkpoint(make_checkpoint(trained["model"], opt={"data": recorded}, half=False), tmp_path / "gen.pt")
    assert data_for_weights(w) == {k: v for k, v in recorded.items() if k != "generate"}
    w = save_checkpoint(make_checkpoint(trained["model"], half=False), tmp_path / "bare.pt")
    assert data_for_weights(w) == str(DEFAULT_DATA)  # no record
    assert data_for_weights(official_weights) == str(DEFAULT_DATA)  # official weights: coco128.yaml
    assert data_for_weights(tmp_path / "m.onnx") == str(DEFAULT_DATA)


def test_detect_without_data_labels_with_the_checkpoints_classes(trained, tmp_path, log_lines):
    image = next((trained["cwd"] / "datasets" / "shapes" / "images" / "val").glob("*.jpg"))
    opt = detect.parse_opt(["--weights", str(trained["best"]), "--source", str(image), "--img", "64",
                            "--conf-thres", "0", "--device", "cpu", "--project", str(tmp_path)])
    assert opt.data is None
    detect.main(opt)
    said = " ".join(log_lines)
    assert any(f" {n}" in said for n in NAMES) and " person" not in said
