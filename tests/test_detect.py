"""detect.py and its sources: every source kind, odd image formats, unreadable files, outputs, --view-img
without a display, the annotator and crops."""

import cv2
import numpy as np
import pytest
import torch

import detect
from models.yolo import Model
from utils.annotate import Annotator, display_available, save_one_box
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.data.sources import LoadStreams, expand_source, load_source, read_image

NAMES = ["box", "disc"]




@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    m = Model("yolov5n.yaml", nc=len(NAMES))
    m.names = list(NAMES)
    return save_checkpoint(make_checkpoint(m, half=False), tmp_path_factory.mktemp("w") / "tiny.pt")


def _picture(h=72, w=96, seed=0):
    rng = np.random.default_rng(seed)
    im = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.rectangle(im, (10, 10), (50, 40), (0, 0, 255), -1)
    return im


@pytest.fixture
def odd_images(tmp_path):
    """A folder with a jpg, grayscale png, RGBA png, 16-bit png and a corrupt jpg."""
    d = tmp_path / "imgs"
    d.mkdir()
    im = _picture()
    cv2.imwrite(str(d / "colour.jpg"), im)
    cv2.imwrite(str(d / "gray.png"), cv2.cvtColor(im, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(d / "rgba.png"), cv2.cvtColor(im, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(d / "deep.png"), im.astype(np.uint16) * 257)
    (d / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return d


def _video(path, n=3, h=64, w=80):
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (w, h))
    for i in range(n):
        vw.write(_picture(h, w, seed=i))
    vw.release()
    if read_image(path) is None and not cv2.VideoCapture(str(path)).isOpened():
        pytest.skip("OpenCV here cannot write/read mp4v video")
    return path


# -------------------------------------------------------------------------------------------- sources --

def test_read_image_normalises_odd_formats(odd_images):
    ref = read_image(odd_images / "colour.jpg")
    for name in ("gray.png", "rgba.png", "deep.png"):
        im = read_image(odd_images / name)
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape == ref.shape, name
    deep, rgba = read_image(odd_images / "deep.png"), read_image(odd_images / "rgba.png")
    assert np.abs(deep.astype(int) - rgba.astype(int)).max() <= 1  # 16-bit scaled down, not clipped
    assert read_image(odd_images / "broken.jpg") is None


def test_expand_source_kinds(tmp_path, odd_images):
    assert len(expand_source(odd_images)) == 5
    assert expand_source(str(odd_images / "*.png")) == sorted(str(p) for p in odd_images.glob("*.png"))
    lst = tmp_path / "list.txt"
    lst.write_text("# two of them\nimgs/colour.jpg\n\n" + str(odd_images / "gray.png") + "\n")
    assert expand_source(lst) == [str(tmp_path / "imgs" / "colour.jpg"), str(odd_images / "gray.png")]
    assert expand_source("rtsp://example.invalid/cam") == ["rtsp://example.invalid/cam"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_source(tmp_path / "nothing_here.jpg")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        expand_source(str(tmp_path / "*.bmp"))


def test_unreadable_file_is_reported_and_skipped(odd_images, log_lines):
    frames = list(load_source(odd_images, (64, 64), 32))
    assert len(frames) == 4 and all(f.im.shape[:2] == (1, 3) and f.im.dtype == np.uint8 for f in frames)
    assert any("broken.jpg" in line and "cannot be read" in line for line in log_lines)


def test_video_frames_and_stream_reader(tmp_path):
    v = _video(tmp_path / "clip.mp4")
    frames = list(load_source(v, (64, 64), 32))
    assert [f.frame for f in frames] == [1, 2, 3] and all(f.kind == "video" for f in frames)
    streams = LoadStreams([str(v)], (64, 64), 32)  # a file opened as a stream exercises the reader thread
    got = list(streams)
    assert got and got[0].im.shape[0] == 1 and got[0].kind == "stream"
    with pytest.raises(ConnectionError, match="cannot open"):
        LoadStreams([str(tmp_path / "missing.mp4")])


# ---------------------------------------------------------------------------------------- annotation --

def test_annotator_draws_and_crop_saves(tmp_path):
    im = np.zeros((60, 80, 3), np.uint8)
    a = Annotator(im.copy(), line_width=2)
    a.box_label([10, 20, 50, 50], "box 0.91", color=(0, 255, 0))
    out = a.result()
    assert out[46, 10].tolist() == [0, 255, 0] and out[46, 30].tolist() == [0, 0, 0]  # edge drawn, inside empty
    assert (out[20:42, 10:50] == 255).all(2).any()  # white label text on a tab (inside: no room above)
    crop = save_one_box([10, 20, 50, 50], im, tmp_path / "crops" / "a.jpg")
    # 40x30 box centred at (30, 35), grown to 40*1.02+10 = 50.8 by 30*1.02+10 = 40.6 -> x 4..55, y 14..55
    assert crop.shape[:2] == (41, 51)
    save_one_box([10, 20, 50, 50], im, tmp_path / "crops" / "a.jpg")
    assert sorted(p.name for p in (tmp_path / "crops").iterdir()) == ["a.jpg", "a2.jpg"]
    with pytest.raises(TypeError):
        Annotator(np.zeros((10, 10), np.uint8))


# -------------------------------------------------------------------------------------------- detect --

def test_detect_on_folder_with_txt_crops_and_no_display(tmp_path, weights, odd_images, monkeypatch, log_lines):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert display_available()[0] is False
    save_dir = detect.run(weights=str(weights), source=odd_images, imgsz=64, conf_thres=0.0, max_det=3,
                          device="cpu", save_txt=True, save_conf=True, save_crop=True, view_img=True,
                          project=tmp_path / "runs", name="exp")
    assert save_dir == tmp_path / "runs" / "exp"
    assert sorted(p.name for p in save_dir.glob("*.*g")) == ["colour.jpg", "deep.png", "gray.png", "rgba.png"]
    txts = sorted(save_dir.glob("labels/*.txt"))
    assert len(txts) == 4
    rows = np.loadtxt(txts[0], ndmin=2)
    assert rows.shape == (3, 6) and (rows[:, 1:5] >= 0).all() and (rows[:, 1:5] <= 1).all()
    assert list(save_dir.glob("crops/*/*.jpg"))
    assert any("--view-img" in line and "DISPLAY" in line for line in log_lines)
    assert any(line.startswith("Speed: ") and "at shape (1, 3, 64, 64)" in line for line in log_lines)


def test_detect_cli_video_classes_and_nosave(tmp_path, weights):
    v = _video(tmp_path / "clip.mp4")
    opt = detect.parse_opt(["--weights", str(weights), "--source", str(v), "--img", "64", "--conf-thres", "0",
                            "--classes", "1", "--max-det", "2", "--save-txt", "--device", "cpu",
                            "--project", str(tmp_path / "runs"), "--hide-conf", "--agnostic-nms"])
    assert opt.imgsz == [64, 64]
    save_dir = detect.main(opt)
    assert (save_dir / "clip.mp4").is_file()
    txts = sorted(save_dir.glob("labels/clip_*.txt"))
    assert [t.stem for t in txts] == ["clip_1", "clip_2", "clip_3"]
    assert all((np.loadtxt(t, ndmin=2)[:, 0] == 1).all() for t in txts)  # --classes 1 only
    nosave = detect.run(weights=str(weights), source=v, imgsz=64, device="cpu", nosave=True,
                        project=tmp_path / "runs", name="quiet")
    assert not list(nosave.glob("*.mp4"))


# ------------------------------------------------------------------------------------------ exported --

def test_detect_on_exported_onnx_and_torchscript(tmp_path, weights, odd_images, log_lines):
    """Exported files go through the same load_backend: a dynamic ONNX and a TorchScript export detect on
    72x96 pictures at --imgsz 128 (minimal padding: 96x128); a static export letterboxes to its own size and refuses
    another --imgsz with an error naming both sizes."""
    import export

    files = export.run(weights=str(weights), imgsz=[64, 64], include=["onnx", "torchscript"], dynamic=True,
                       out_dir=tmp_path / "dyn")
    for f in files:
        save_dir = detect.run(weights=str(f), source=odd_images, imgsz=128, conf_thres=0.0, max_det=5, device="cpu",
                              save_txt=True, project=tmp_path / "runs", name=f.suffix[1:])
        txts = sorted(save_dir.glob("labels/*.txt"))
        assert len(txts) == 4 and len(list(save_dir.glob("*.*g"))) == 4, f.name
        rows = np.loadtxt(txts[0], ndmin=2)
        assert rows.shape == (5, 5) and set(rows[:, 0]) <= {0, 1} and ((rows[:, 1:] >= 0) & (rows[:, 1:] <= 1)).all()
    assert any(" 96x128 " in line for line in log_lines)  # not the 128x128 square

    static, = export.run(weights=str(weights), imgsz=[64, 64], include=["onnx"], out_dir=tmp_path / "static")
    log_lines.clear()
    detect.run(weights=str(static), source=odd_images, imgsz=64, device="cpu", project=tmp_path / "runs", name="st")
    assert any(" 64x64 " in line for line in log_lines)  # full square letterbox
    with pytest.raises(ValueError, match=r"exported for image size 64x64 .* --imgsz is 96x96"):
        detect.run(weights=str(static), source=odd_images, imgsz=96, device="cpu", project=tmp_path / "runs")


def test_detect_bf16_writes_its_outputs(tmp_path, weights, odd_images):
    opt = detect.parse_opt(["--weights", str(weights), "--source", str(odd_images), "--img", "64", "--conf-thres",
                            "0", "--max-det", "3", "--save-txt", "--device", "cpu", "--project",
                            str(tmp_path / "runs"), "--bf16"])
    assert opt.bf16
    save_dir = detect.main(opt)
    assert sorted(p.name for p in save_dir.glob("*.*g")) == ["colour.jpg", "deep.png", "gray.png", "rgba.png"]
    txts = sorted(save_dir.glob("labels/*.txt"))
    assert len(txts) == 4
    rows = np.loadtxt(txts[0], ndmin=2)
    assert rows.shape == (3, 5) and np.isfinite(rows).all() and (rows[:, 1:5] >= 0).all() and (rows[:, 1:5] <= 1).all()
