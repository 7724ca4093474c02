"""The scan: each bad input is reported (file, line, reason) and skipped while the rest still loads; the cache."""
import hashlib
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.data.dataset import LoadImagesAndLabels
from utils.data.labels import img2label_paths, parse_label_file
from utils.data.loader import create_dataloader
from utils.log import LOGGER

GOOD = "0 0.5 0.5 0.4 0.4\n1 0.25 0.25 0.2 0.3\n"


@pytest.fixture
def logs():
    """Everything LOGGER says during the test, as one string (LOGGER does not propagate to caplog)."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    h = Keep(level=logging.DEBUG)
    LOGGER.addHandler(h)
    yield lambda: "\n".join(records)
    LOGGER.removeHandler(h)


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOV5_CACHE_DIR", str(tmp_path / "usercache"))


def make_dataset(root: Path, n_good=3, size=(48, 64)):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_good):
        cv2.imwrite(str(root / "images" / f"good{i}.jpg"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        (root / "labels" / f"good{i}.txt").write_text(GOOD)
    return root / "images"


def add_pair(images: Path, name: str, label: str | None = GOOD, size=(48, 64)):
    f = images / name
    cv2.imwrite(str(f), np.full((*size, 3), 90, np.uint8))
    if label is not None:
        Path(img2label_paths([str(f)])[0]).write_text(label)
    return f


def load_all(images, nc=3, with_loader=False):
    ds = LoadImagesAndLabels(str(images), img_size=64, batch_size=2, nc=nc, prefix="train: ")
    for i in range(ds.n):  # the rest of the dataset still loads
        img, labels, path, shapes = ds[i]
        assert img.shape[0] == 3 and labels.shape[1] == 6
    if with_loader:
        loader, _ = create_dataloader(str(images), 64, 2, 32, nc=nc, workers=0)
        assert sum(b[0].shape[0] for b in loader) == ds.n
    return ds


BAD_LABELS = [  # (label text, expected message); each makes its image unusable
    ("0 0.5 0.5 0.4 0.4\n1 0.5 0.5 0.4\n", "line 2: 4 columns, expected 5"),
    ("0 0.5 0.5 0.4 0.4 0.1\n", "line 1: 6 columns, expected 5"),
    ("0 nan 0.5 0.4 0.4\n", "line 1: NaN or infinite value"),
    ("0 0.5 0.5 -0.4 0.4\n", "line 1: negative coordinate -0.4"),
    ("-1 0.5 0.5 0.4 0.4\n", "line 1: class id -1 is not a non-negative integer"),
    ("0 0.5 0.5 0.4 0.4\n0 0.9 0.5 0.4 0.4\n", "line 2: box [0.7, 0.3, 1.1, 0.7] outside [0, 1]"),
    ("0 25 30 10 12\n", "outside [0, 1] (coordinates must be normalised)"),
    ("7 0.5 0.5 0.4 0.4\n", "line 1: class id 7 outside names (nc=3)"),
    ("0 0.5 0.5 0.4 abc\n", "line 1: non-numeric value 'abc'"),
]


@pytest.mark.parametrize("text,message", BAD_LABELS)
def test_bad_label_rows_skip_the_image_and_say_why(tmp_path, logs, text, message):
    images = make_dataset(tmp_path / "ds")
    bad = add_pair(images, "bad.jpg", text)
    ds = load_all(images, with_loader=True)
    out = logs()
    assert message in out and str(Path(img2label_paths([str(bad)])[0])) in out and "bad.jpg skipped" in out
    assert str(bad) not in ds.im_files and ds.n == 3
    assert "3 found, 0 missing, 0 empty, 1 corrupt" in out


def test_small_overshoot_is_clipped_not_rejected(tmp_path):
    images = make_dataset(tmp_path / "ds")
    f = add_pair(images, "edge.jpg", "0 0.5 0.5 1.004 0.4\n")
    ds = load_all(images)
    lb = ds.labels[ds.im_files.index(str(f))]
    assert np.allclose(lb[0], [0, 0.5, 0.5, 1.0, 0.4], atol=1e-6)


def test_duplicate_rows_are_dropped(tmp_path, logs):
    images = make_dataset(tmp_path / "ds")
    f = add_pair(images, "dup.jpg", GOOD + GOOD + "0 0.5 0.5 0.4 0.4\n")
    ds = load_all(images)
    assert "dup.txt: 3 duplicate labels removed" in logs()
    lb = ds.labels[ds.im_files.index(str(f))]
    assert len(lb) == 2 and lb[0, 0] == 0 and lb[1, 0] == 1  # first occurrences kept, in order


def test_missing_and_empty_labels_are_backgrounds(tmp_path, logs):
    images = make_dataset(tmp_path / "ds")
    add_pair(images, "nolabel.jpg", None)
    add_pair(images, "empty.jpg", "\n")
    ds = load_all(images)
    assert ds.n == 5 and "3 found, 1 missing, 1 empty, 0 corrupt" in logs()


def _truncate(f: Path, keep: float):
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("read_only", [False, True])
def test_truncated_jpeg_is_restored_in_memory_never_rewritten(tmp_path, logs, read_only):
    """The dataset is the user's: its bytes stay as they were, and the image loaded is the decodable part."""
    images = make_dataset(tmp_path / "ds")
    f = images / "trunc.jpg"
    yy, xx = np.mgrid[0:48, 0:64]
    full = np.stack([yy * 5, xx * 4, (yy + xx) * 2], -1).astype(np.uint8)  # long side 64 = img_size: no resize
    ok, buf = cv2.imencode(".jpg", full, [cv2.IMWRITE_JPEG_QUALITY, 95])
    f.write_bytes(buf.tobytes()[: int(len(buf) * 0.7)])
    Path(img2label_paths([str(f)])[0]).write_text(GOOD)
    before = hashlib.sha256(f.read_bytes()).hexdigest()
    if read_only:
        os.chmod(f, 0o444)
        os.chmod(images, 0o555)
    try:
        ds = load_all(images, with_loader=True)
        loaded = ds.load_image(ds.im_files.index(str(f)))[0]
    finally:
        os.chmod(images, 0o755)
    assert hashlib.sha256(f.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in images.iterdir()) == ["good0.jpg", "good1.jpg", "good2.jpg", "trunc.jpg"]
    assert f"{f}: corrupt JPEG restored in memory" in logs() and "file is left unchanged" in logs()
    np.testing.assert_array_equal(loaded, cv2.imread(str(f)))  # the decode of what the file holds
    reference = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(loaded[:8], reference[:8])  # the part present is the real image


def test_undecodable_jpeg_is_skipped(tmp_path, logs):
    images = make_dataset(tmp_path / "ds")
    f = add_pair(images, "broken.jpg", size=(120, 160))
    _truncate(f, 0.05)  # header only
    ds = load_all(images)
    assert f"{f}: ignoring corrupt image" in logs() and str(f) not in ds.im_files and ds.n == 3


@pytest.mark.parametrize("kind,message", [("zero", "empty file (0 bytes)"),
                                          ("text", "not an image (cannot identify the file)"),
                                          ("tiny", "image size 8x6 is below 10 pixels")])
def test_bad_image_files_are_skipped(tmp_path, logs, kind, message):
    images = make_dataset(tmp_path / "ds")
    f = images / "bad.jpg"
    if kind == "zero":
        f.write_bytes(b"")
    elif kind == "text":
        f.write_text("this is not a picture\n")
    else:
        cv2.imwrite(str(f), np.zeros((6, 8, 3), np.uint8))
    Path(img2label_paths([str(f)])[0]).write_text(GOOD)
    ds = load_all(images)
    assert f"{f}: ignoring corrupt image: {message}" in logs() and ds.n == 3


def test_exif_orientation_is_applied(tmp_path):
    images = make_dataset(tmp_path / "ds")
    arr = np.zeros((40, 80, 3), np.uint8)  # stored 80 wide, 40 high
    arr[:, :20] = (255, 0, 0)  # red strip on the stored left side
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    f = images / "rot.jpg"
    im.save(f, exif=exif, quality=95)
    (images.parent / "labels" / "rot.txt").write_text("0 0.5 0.125 1.0 0.25\n")  # the strip, as displayed
    ds = load_all(images)
    i = ds.im_files.index(str(f))
    assert tuple(ds.shapes[i]) == (40, 80)  # (w, h) as displayed
    img, hw0, _ = ds.load_image(i)
    assert hw0 == (80, 40)
    top, bottom = img[: img.shape[0] // 8].mean((0, 1)), img[-img.shape[0] // 2:].mean((0, 1))
    assert top[2] > 200 and bottom[2] < 50  # BGR: red now on top, as the label says


def test_no_usable_images_is_a_clear_error(tmp_path):
    images = tmp_path / "ds" / "images"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(b"")
    (images / "b.png").write_text("nope")
    with pytest.raises(ValueError, match="No usable images in .*2 image files, all 2 corrupt"):
        LoadImagesAndLabels(str(images), 64)


def test_polygon_rows_become_boxes(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("2 0.1 0.2 0.5 0.2 0.3 0.6\n")
    lb = parse_label_file(str(f), nc=3).labels
    assert np.allclose(lb, [[2, 0.3, 0.4, 0.4, 0.4]], atol=1e-6)


# ---- cache -----------------------------------------------------------------------------------
def test_cache_is_written_next_to_labels_and_reused(tmp_path, logs):
    images = make_dataset(tmp_path / "ds")
    load_all(images)
    cache = tmp_path / "ds" / "labels.cache"
    assert cache.is_file()
    with np.load(cache, allow_pickle=False) as z:  # loads without pickle
        assert len(z["im_files"]) == 3
    load_all(images)
    assert "from cache" in logs()


def test_stale_cache_is_rebuilt(tmp_path, logs):
    images = make_dataset(tmp_path / "ds")
    load_all(images)
    (images.parent / "labels" / "good0.txt").write_text(GOOD + "2 0.5 0.5 0.1 0.1\n")  # size changes
    ds = load_all(images)
    assert logs().count("from cache") == 0 and len(ds.labels[0]) == 3


def test_unreadable_cache_is_rebuilt(tmp_path, logs):
    images = make_dataset(tmp_path / "ds")
    load_all(images)
    (tmp_path / "ds" / "labels.cache").write_bytes(b"garbage")
    ds = load_all(images)
    assert ds.n == 3 and "from cache" not in logs()
    with np.load(tmp_path / "ds" / "labels.cache", allow_pickle=False) as z:
        assert len(z["im_files"]) == 3


def test_read_only_labels_cache_goes_to_user_dir(tmp_path, logs):
    images = make_dataset(tmp_path / "ds")
    os.chmod(tmp_path / "ds", 0o555)
    try:
        load_all(images)
        load_all(images)
    finally:
        os.chmod(tmp_path / "ds", 0o755)
    assert not (tmp_path / "ds" / "labels.cache").exists()
    assert len(list((tmp_path / "usercache").glob("labels-*.cache"))) == 1 and "from cache" in logs()


def test_nc_change_invalidates_cache(tmp_path):
    images = make_dataset(tmp_path / "ds")
    add_pair(images, "c2.jpg", "2 0.5 0.5 0.1 0.1\n")
    assert load_all(images, nc=3).n == 4
    assert load_all(images, nc=2).n == 3  # class 2 now outside names
