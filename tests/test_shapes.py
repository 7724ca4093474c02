"""The synthetic shapes set: deterministic, exact boxes, valid labels, regenerated only when stale."""
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import utils.data.shapes as shapes
from utils.cli import InputError
from utils.data.dataset_yaml import ROOT, check_dataset
from utils.data.labels import parse_label_file


def test_generation_is_deterministic_and_valid(tmp_path):
    a = shapes.generate_shapes(tmp_path / "a", n_train=6, n_val=2, imgsz=96, seed=3)
    b = shapes.generate_shapes(tmp_path / "b", n_train=6, n_val=2, imgsz=96, seed=3)
    c = shapes.generate_shapes(tmp_path / "c", n_train=6, n_val=2, imgsz=96, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.*") if p.name not in ("VERSION.json", shapes.MARKER_FILE))
    assert len(files) == 16
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    n_boxes = 0
    for f in (a / "labels" / "train").glob("*.txt"):
        check = parse_label_file(str(f), nc=len(shapes.NAMES))
        assert check.status in ("found", "empty") and not check.error
        n_boxes += len(check.labels)
    assert n_boxes >= 6  # 0-8 objects per image, rarely none
    im = cv2.imread(str(a / "images" / "train" / "00000.jpg"))
    assert im.shape == (96, 96, 3)


@pytest.mark.parametrize("cls", range(len(shapes.NAMES)))
def test_boxes_are_exact_for_every_class(cls):
    rng = np.random.default_rng(cls)
    for _ in range(5):
        r, angle = rng.uniform(8, 40), rng.uniform(0, 2 * math.pi)
        pts = shapes._polygon(cls, r, angle, rng) + 50
        mask = np.zeros((100, 100), np.uint8)
        cv2.fillPoly(mask, [np.round(pts * (1 << shapes.SHIFT)).astype(np.int32)], 1, cv2.LINE_8, shift=shapes.SHIFT)
        ys, xs = np.nonzero(mask)
        got = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        box = np.concatenate([pts.min(0), pts.max(0)]) + 0.5  # as the generator labels it (pixel edges)
        assert np.abs(got - box).max() < 1.0  # only the partly covered edge pixels differ


def test_objects_vary_in_size_and_class():
    rows = [r for i in range(40) for r in shapes._render_image(np.random.default_rng([0, 0, i]), 256)[1]]
    rows = np.array(rows)
    sizes = np.maximum(rows[:, 3] - rows[:, 1], rows[:, 4] - rows[:, 2])
    assert set(rows[:, 0].astype(int)) == set(range(len(shapes.NAMES)))
    assert sizes.min() < 20 and sizes.max() > 80  # small and large objects


def test_regenerates_only_when_version_changes(tmp_path, monkeypatch):
    root = tmp_path / "s"
    shapes.ensure_generated("shapes", root, n_train=2, n_val=1, imgsz=64)
    stamp = (root / "VERSION.json").stat().st_mtime_ns
    shapes.ensure_generated("shapes", root, n_train=2, n_val=1, imgsz=64)
    assert (root / "VERSION.json").stat().st_mtime_ns == stamp
    monkeypatch.setattr(shapes, "GENERATOR_VERSION", shapes.GENERATOR_VERSION + 1)
    shapes.ensure_generated("shapes", root, n_train=2, n_val=1, imgsz=64)
    assert (root / "VERSION.json").stat().st_mtime_ns != stamp
    assert not list(tmp_path.glob(".s.tmp-*"))  # no half-written copies left


def test_unknown_generator_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic dataset generator 'cubes'"):
        shapes.ensure_generated("cubes", tmp_path / "x")


def test_shipped_shapes_yaml_matches_generator():
    d = yaml.safe_load((ROOT / "data" / "shapes.yaml").read_text())
    assert d["generate"] == "shapes" and d["names"] == shapes.NAMES
    assert Path(d["path"]) == Path("datasets/shapes")


def _victim(tmp_path) -> Path:
    victim = tmp_path / "my_photos"
    (victim / "album").mkdir(parents=True)
    (victim / "album" / "holiday.jpg").write_bytes(b"irreplaceable")
    (victim / "VERSION.json").write_text('{"version": 3}')  # someone else's file of that name is not the mark
    return victim


def _untouched(victim: Path) -> bool:
    return (victim / "album" / "holiday.jpg").read_bytes() == b"irreplaceable" and \
        sorted(p.name for p in victim.rglob("*")) == ["VERSION.json", "album", "holiday.jpg"]


@pytest.mark.parametrize("how", ["ensure_generated", "generate_shapes", "dataset_yaml"])
def test_never_deletes_a_folder_it_did_not_make(tmp_path, how):
    victim = _victim(tmp_path)
    with pytest.raises(InputError, match=f"{victim}.*did not make.*refusing to delete"):
        if how == "ensure_generated":
            shapes.ensure_generated("shapes", victim, n_train=2, n_val=1, imgsz=64)
        elif how == "generate_shapes":
            shapes.generate_shapes(victim, n_train=2, n_val=1, imgsz=64)
        else:
            check_dataset({"generate": "shapes", "path": str(victim), "generate_args": {"n_train": 2, "n_val": 1},
                           "train": "images/train", "val": "images/val", "names": shapes.NAMES})
    assert _untouched(victim)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_photos"]  # nothing rendered beside it either


def test_a_file_or_link_at_the_path_is_refused(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(_victim(tmp_path))
    for target in (f, link):
        with pytest.raises(InputError, match="not a folder made by the shapes generator"):
            shapes.ensure_generated("shapes", target, n_train=2, n_val=1, imgsz=64)
    assert f.read_text() == "mine" and _untouched(tmp_path / "my_photos")


def test_replaces_only_its_own_sets_and_fills_empty_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shapes.ensure_generated("shapes", empty, n_train=2, n_val=1, imgsz=64)
    assert (empty / shapes.MARKER_FILE).is_file() and len(list((empty / "images" / "train").iterdir())) == 2
    shapes.ensure_generated("shapes", empty, n_train=3, n_val=1, imgsz=64)  # other parameters: its own set, replaced
    assert len(list((empty / "images" / "train").iterdir())) == 3
    legacy = shapes.generate_shapes(tmp_path / "legacy", n_train=2, n_val=1, imgsz=64)
    (legacy / shapes.MARKER_FILE).unlink()  # a set written before the marker existed: its VERSION.json marks it
    shapes.ensure_generated("shapes", legacy, n_train=3, n_val=1, imgsz=64)
    assert (legacy / shapes.MARKER_FILE).is_file() and len(list((legacy / "images" / "train").iterdir())) == 3
