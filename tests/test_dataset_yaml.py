"""check_dataset: yaml forms (names list/map, nc, path resolution, split forms) and its clear errors."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from utils.data.dataset_yaml import ROOT, check_dataset


def _tiny_dataset(root: Path, n=2):
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), np.zeros((32, 32, 3), np.uint8))
    return root


def _write_yaml(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump(d))
    return path


def test_names_list_and_map(tmp_path):
    root = _tiny_dataset(tmp_path / "ds")
    a = check_dataset(dict(path=str(root), train="images/train", val="images/val", names=["a", "b"]))
    b = check_dataset(dict(path=str(root), train="images/train", val="images/val", names={1: "b", 0: "a"}, nc=2))
    assert a["names"] == b["names"] == ["a", "b"] and a["nc"] == b["nc"] == 2
    assert a["path"] == root and a["train"] == str(root / "images" / "train") and a["test"] is None


def test_nc_only_gives_default_names(tmp_path):
    root = _tiny_dataset(tmp_path / "ds")
    d = check_dataset(dict(path=str(root), train="images/train", val="images/val", nc=3))
    assert d["names"] == ["class0", "class1", "class2"]


def test_nc_disagreeing_with_names_is_an_error(tmp_path):
    root = _tiny_dataset(tmp_path / "ds")
    f = _write_yaml(tmp_path / "bad.yaml", dict(path=str(root), train="images/train", val="images/val",
                                                  nc=3, names=["a", "b"]))
    with pytest.raises(ValueError, match=r"bad.yaml: nc=3 disagrees with names \(2 entries\)"):
        check_dataset(f)


def test_names_map_with_gap_is_an_error(tmp_path):
    root = _tiny_dataset(tmp_path / "ds")
    with pytest.raises(ValueError, match="without gaps"):
        check_dataset(dict(path=str(root), train="images/train", val="images/val", names={0: "a", 2: "c"}))


def test_missing_yaml_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        check_dataset(tmp_path / "nope.yaml")


def test_relative_path_resolves_against_yaml_folder(tmp_path, monkeypatch):
    _tiny_dataset(tmp_path / "cfg" / "myset")
    f = _write_yaml(tmp_path / "cfg" / "d.yaml", dict(path="myset", train="images/train", val="images/val",
                                                       names=["x"]))
    monkeypatch.chdir(tmp_path)  # not the yaml's folder
    d = check_dataset(str(f))
    assert d["path"] == (tmp_path / "cfg" / "myset").resolve() and d["yaml_file"] == str(f.resolve())


def test_missing_path_lists_every_place_and_the_hint(tmp_path):
    f = _write_yaml(tmp_path / "d.yaml", dict(path="../datasets/zzz_absent", train="images/train",
                                              val="images/val", names=["x"], hint="Put it somewhere nice"))
    with pytest.raises(FileNotFoundError) as e:
        check_dataset(f)
    msg = str(e.value)
    assert str(f) in msg and "Put it somewhere nice" in msg
    assert str(ROOT.parent / "datasets" / "zzz_absent") in msg
    shared = ROOT.parent / "shared"  # may be a symlink; the message names the place it resolves to
    assert any(str(p / "datasets" / "zzz_absent") in msg for p in (shared, shared.resolve()))


def test_splits_as_txt_list_and_list_of_folders(tmp_path):
    root = _tiny_dataset(tmp_path / "ds")
    (root / "train.txt").write_text("./images/train/0.png\n./images/train/1.png\n")
    d = check_dataset(dict(path=str(root), train="train.txt", val=["images/val", "images/train"], names=["a"]))
    assert d["train"] == str(root / "train.txt")
    assert d["val"] == [str(root / "images" / "val"), str(root / "images" / "train")]


def test_missing_split_entry_is_named(tmp_path):
    root = _tiny_dataset(tmp_path / "ds")
    with pytest.raises(FileNotFoundError, match="'val' entry 'images/nothing'"):
        check_dataset(dict(path=str(root), train="images/train", val="images/nothing", names=["a"]))


def test_missing_val_key_is_an_error(tmp_path):
    root = _tiny_dataset(tmp_path / "ds")
    with pytest.raises(ValueError, match="missing 'val'"):
        check_dataset(dict(path=str(root), train="images/train", names=["a"]))


def test_shipped_coco128_yaml(coco128_dir):
    d = check_dataset("coco128.yaml")  # found under <repo>/data like YOLOv5's check_file
    assert d["nc"] == 80 and d["names"][0] == "person" and d["names"][79] == "toothbrush"
    assert Path(d["path"]) == coco128_dir.resolve()  # the same copy the fixture found (YOLOV5_SHARED or ../shared)
    assert Path(d["train"]) == coco128_dir.resolve() / "images" / "train2017"


def test_yolov5_shared_is_where_datasets_are_found(tmp_path, monkeypatch):
    """$YOLOV5_SHARED/datasets/<name> is searched before ../shared, as the test fixtures do."""
    # A name no real folder beside the repo has (a user's ../datasets/coco128 is rightly found first).
    name = "yolov5_shared_probe_set"
    root = tmp_path / "elsewhere" / "datasets" / name
    (root / "images" / "train2017").mkdir(parents=True)
    yaml_file = tmp_path / "cfg" / "probe.yaml"
    yaml_file.parent.mkdir()
    yaml_file.write_text(f"path: ../datasets/{name}\ntrain: images/train2017\nval: images/train2017\nnames: [a]\n")
    monkeypatch.setenv("YOLOV5_SHARED", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    d = check_dataset(str(yaml_file))
    assert Path(d["path"]) == root.resolve() and Path(d["train"]) == root.resolve() / "images" / "train2017"


def test_shipped_coco128_yaml_says_where_to_put_images(monkeypatch, tmp_path):
    d = yaml.safe_load((ROOT / "data" / "coco128.yaml").read_text())
    d["path"] = "../datasets/coco128_not_here"
    with pytest.raises(FileNotFoundError, match="Put COCO128 at ../datasets/coco128"):
        check_dataset(d)


def test_shapes_yaml_generates_once(tmp_path):
    root = tmp_path / "shapes"
    d = dict(path=str(root), generate="shapes", generate_args=dict(n_train=4, n_val=2, imgsz=64),
             train="images/train", val="images/val", names=["circle", "square", "triangle", "star", "cross",
                                                            "ellipse"])
    out = check_dataset(d)
    assert len(list(Path(out["train"]).glob("*.jpg"))) == 4 and len(list(Path(out["val"]).glob("*.jpg"))) == 2
    stamp = (root / "VERSION.json").stat().st_mtime_ns
    check_dataset(d)
    assert (root / "VERSION.json").stat().st_mtime_ns == stamp  # not regenerated
