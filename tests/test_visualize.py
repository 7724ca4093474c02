"""detect.py --visualize: YOLOv5's per-layer feature maps, and attention/gate maps that are what the blocks compute
(each view's map is checked against the block's own output), for the four seed blocks and CBAM; the map geometry
back onto the picture; --vid-stride and --data."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

import detect
from models.attention.acmix import ACmix
from models.attention.cbam import CBAM
from models.attention.dat import DAttentionBaseline
from models.attention.efficientvit import CascadedGroupAttention, LocalWindowAttention
from models.attention.triplet import TripletAttention
from models.attention.views import GenericView, acmix_attention, view_for
from models.yolo import Model
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.data.augment import letterbox
from utils.data.sources import load_source
from utils.feature_maps import map_to_picture, points_to_picture, save_feature_maps

ROOT = Path(__file__).resolve().parents[1]
BUS = ROOT / "data" / "images" / "bus.jpg"


def _trained_looking(module: nn.Module) -> nn.Module:
    """Random but not-at-init parameters and BN statistics, so gates and attention are not flat."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return module.eval()


def _run_view(module, x):
    view = view_for(module)
    with torch.no_grad():
        y = module(x)
    return view, y


# ------------------------------------------------------------------------------ each view is the block's map --

@pytest.mark.parametrize("no_spatial", [False, True])
def test_triplet_view_is_the_multiplier_of_the_input(no_spatial):
    m = _trained_looking(TripletAttention(16, no_spatial=no_spatial))
    x = torch.randn(2, 16, 9, 11)
    view, y = _run_view(m, x)
    assert torch.allclose(x * view.multiplier(), y, atol=1e-5)
    maps = {a.name: a for a in view.maps()}
    assert maps["attention"].heat.shape == (2, 9, 11)
    assert ("spatial_gate" in maps) is not no_spatial
    assert maps["attention"].heat.std() > 1e-3  # not a flat picture


def test_cbam_view_is_its_spatial_gate():
    m = _trained_looking(CBAM(32, 4))
    x = torch.randn(1, 32, 7, 8)
    seen = {}
    m.SpatialGate.register_forward_hook(lambda mod, a, out: seen.update(x=a[0], y=out))
    view, _ = _run_view(m, x)
    gate, = view.maps()
    assert torch.allclose(seen["x"] * gate.heat[:, None], seen["y"], atol=1e-6)


@pytest.mark.parametrize("stride,size", [(1, (9, 10)), (2, (7, 9)), (1, (2, 3))])
def test_acmix_weights_rebuild_its_attention_branch(stride, size):
    """weights x v at the key index equals ACmix's own attention output (also strided, and at maps smaller than
    the 7x7 window, where the reflection repeats); each query spreads a total weight of 1."""
    m = _trained_looking(ACmix(16, 16, stride=stride))
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        weights, index, v = acmix_attention(m, x)
        b, (h, w) = 2, size
        qkv = torch.nn.functional.conv2d(x, torch.cat((m.conv1.weight, m.conv2.weight, m.conv3.weight)),
                                         torch.cat((m.conv1.bias, m.conv2.bias, m.conv3.bias)))
        own = m._attention(qkv, b, h, w)
    ho, wo = own.shape[-2:]
    gathered = v.reshape(b * m.head, m.head_dim, h * w)[..., index]  # (B*heads, d, k*k, Ho*Wo)
    rebuilt = (gathered * weights.reshape(b * m.head, 1, 49, ho * wo)).sum(2).reshape(b, -1, ho, wo)
    assert torch.allclose(rebuilt, own, atol=1e-5)
    view, _ = _run_view(m, x)
    received, = view.maps()
    assert received.heat.shape == (2, h, w)
    assert torch.allclose(received.heat.sum((1, 2)), torch.full((2,), float(ho * wo)), rtol=1e-5)


def _proj_input(module):
    seen = {}
    module.register_forward_pre_hook(lambda mod, a: seen.setdefault("x", a[0]))
    return seen


def test_cga_view_attention_rebuilds_every_head_output():
    m = _trained_looking(CascadedGroupAttention(32, 8, num_heads=4, attn_ratio=1, resolution=5))
    seen = _proj_input(m.proj)
    x = torch.randn(2, 32, 5, 6)
    view, _ = _run_view(m, x)
    heads = view.head_attention()
    outs = [view.seen[f"qkv{i}"].split([8, 8, 8], 1)[2].flatten(2) @ a.transpose(1, 2) for i, a in enumerate(heads)]
    assert torch.allclose(torch.cat(outs, 1).reshape(2, 32, 5, 6), seen["x"], atol=1e-5)
    received, = view.maps()
    assert received.heat.shape == (2, 5, 6) and torch.allclose(received.heat.sum((1, 2)), torch.ones(2))


def test_local_window_view_maps_windows_back_and_ignores_padding():
    """With the opt-in padding mask (pad_mask=True) no weight lands on window padding."""
    m = _trained_looking(LocalWindowAttention(32, 8, num_heads=4, attn_ratio=1, window_resolution=4, pad_mask=True))
    seen = _proj_input(m.attn.proj)
    x = torch.randn(1, 32, 6, 7)  # padded to 8x8: 2x2 windows
    view, _ = _run_view(m, x)
    heads = view.head_attention()
    assert heads[0].shape == (4, 16, 16)
    valid = view.seen["valid"].reshape(4, 1, 16)
    assert all(float(a.masked_select(~valid.expand_as(a)).abs().max()) == 0 for a in heads)  # no weight on padding
    outs = [view.seen[f"qkv{i}"].split([8, 8, 8], 1)[2].flatten(2) @ a.transpose(1, 2) for i, a in enumerate(heads)]
    assert torch.allclose(torch.cat(outs, 1).reshape(4, 32, 4, 4), seen["x"], atol=1e-5)
    received, = view.maps()
    assert received.heat.shape == (1, 6, 7)
    # every window hands out one unit per valid query, averaged over its valid queries: one unit per window
    assert torch.allclose(received.heat.sum(), torch.tensor(4.0), atol=1e-4)


def test_dat_view_points_and_attention():
    m = _trained_looking(DAttentionBaseline(n_heads=4, n_head_channels=8, n_groups=2, q_size=(8, 8)))
    seen = _proj_input(m.proj_out)
    x = torch.randn(2, 32, 8, 10)
    view, _ = _run_view(m, x)
    attn = view.seen["attn"]  # (B*heads, HW, Ns)
    v = m.proj_v(m._sample_keys(x, m._sample_points(m.proj_q(x), 2, 8, 10)[0], 2, 4, 5)).reshape(8, 8, 20)
    assert torch.allclose((v @ attn.transpose(1, 2)).reshape(2, 32, 8, 10), seen["x"], atol=1e-5)
    points, = view.maps()
    twin = DAttentionBaseline(n_heads=4, n_head_channels=8, n_groups=2, q_size=(8, 8), return_tuple=True).eval()
    twin.load_state_dict(m.state_dict())
    with torch.no_grad():
        pos = twin(x)[1]  # (B, groups, Hk, Wk, 2) as (y, x)
    assert torch.allclose(points.points, pos.reshape(2, -1, 2).flip(-1))
    assert points.weights.shape == (2, 40) and torch.allclose(points.weights.sum(1), torch.full((2,), 2.0))


def test_generic_view_recovers_a_spatial_gate():
    class Gate(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x.mean(1, keepdim=True))

    x = torch.randn(1, 8, 5, 6)
    view = GenericView(Gate())
    view.module(x)
    ratio, = view.maps()
    assert torch.allclose(ratio.heat, torch.sigmoid(x.mean(1)), atol=1e-5)


# -------------------------------------------------------------------------------------- map geometry --

def test_maps_land_on_the_picture_where_the_model_saw_it():
    """A map equal to the letterboxed input itself, taken back to the picture, is the picture again."""
    pic = cv2.GaussianBlur(cv2.imread(str(BUS)), (0, 0), 3)[:300, :500, 0].astype(np.float32)  # 300x500
    boxed = letterbox(pic, (256, 256), auto=False)[0]  # scaled to 154x256, grey rows above and below
    back = map_to_picture(boxed, (256, 256), pic.shape)
    assert back.shape == pic.shape and np.abs(back - pic)[5:-5, 5:-5].mean() < 2.0
    # grid points: corners of a 4x5 map over a 128x160 input that holds a 128x160 picture unpadded
    xy = points_to_picture(np.array([[-1.0, -1.0], [1.0, 1.0]]), (4, 5), (128, 160), (128, 160))
    assert np.allclose(xy, [[16, 16], [144, 112]])


def test_feature_maps_grid_and_npy(tmp_path):
    x = torch.randn(1, 40, 6, 7)
    f = save_feature_maps(x, "models.common.C3", 4, tmp_path)
    assert f.name == "stage4_C3_features.png"
    grid = cv2.imread(str(f))
    scale = round(160 / 7)
    assert grid.shape[:2] == (4 * (6 * scale + 4) - 4, 8 * (7 * scale + 4) - 4)  # first 32 channels, rows of 8
    assert np.array_equal(np.load(f.with_suffix(".npy")), x[0].numpy())
    assert save_feature_maps(torch.randn(1, 8, 1, 5), "Conv", 9, tmp_path) is None  # 1-pixel maps skipped


# ------------------------------------------------------------------------------------ detect --visualize --

SEED_BLOCKS = {"TripletAttention": ["stage3_TripletAttention_attention", "stage3_TripletAttention_spatial_gate"],
               "ACmix": ["stage18_ACmix_attention", "stage22_ACmix_attention", "stage26_ACmix_attention"],
               "CGA": ["stage10_LocalWindowAttention_attention"],
               "DAT": ["stage10_DAttentionBaseline_sampling_points"],
               "CBAM": ["stage9_CBAM_spatial_gate"]}


@pytest.mark.parametrize("variant", list(SEED_BLOCKS))
def test_detect_visualize_writes_feature_and_attention_maps(variant, tmp_path, one_thread):
    torch.manual_seed(0)
    model = Model(f"yolov5n_{variant}.yaml", nc=3)
    weights = save_checkpoint(make_checkpoint(model, half=False), tmp_path / f"{variant}.pt")
    save_dir = detect.run(weights=str(weights), source=BUS, imgsz=96, device="cpu", visualize=True,
                          project=tmp_path / "runs", name="exp")
    vis = save_dir / "bus"
    for stem in SEED_BLOCKS[variant]:
        assert (vis / f"{stem}.png").is_file() and (vis / f"{stem}.npy").is_file(), stem
    n_layers = len(model.model) - 1  # every layer but Detect has a feature grid (maps at 96 px are >= 3x3)
    assert len(list(vis.glob("stage*_features.png"))) == n_layers
    first = next(s for s in SEED_BLOCKS[variant])
    data = np.load(vis / f"{first}.npy")
    assert np.isfinite(data).all() and data.ndim == 2


def test_visualize_ignored_for_exports_and_kept_first_pass_with_tta(tmp_path, log_lines):
    torch.manual_seed(0)
    weights = save_checkpoint(make_checkpoint(Model("yolov5n_TripletAttention.yaml", nc=3), half=False),
                              tmp_path / "t.pt")
    save_dir = detect.run(weights=str(weights), source=BUS, imgsz=96, device="cpu", visualize=True, augment=True,
                          project=tmp_path / "runs", name="tta")
    assert np.load(save_dir / "bus" / "stage3_TripletAttention_attention.npy").shape == (16, 24)  # unscaled pass
    import export
    onnx_file, = export.run(weights=str(weights), imgsz=[96, 96], include=["onnx"], out_dir=tmp_path / "x")
    save_dir = detect.run(weights=str(onnx_file), source=BUS, imgsz=96, device="cpu", visualize=True,
                          project=tmp_path / "runs", name="onnx")
    assert not (save_dir / "bus").exists() and any("--visualize needs PyTorch" in line for line in log_lines)


# ---------------------------------------------------------------------------------- --vid-stride, --data --

def test_vid_stride_uses_every_nth_frame(tmp_path):
    path, frames = tmp_path / "v.avi", [np.full((64, 80, 3), 30 * i, np.uint8) for i in range(7)]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (80, 64))
    for f in frames:
        vw.write(f)
    vw.release()
    if not cv2.VideoCapture(str(path)).isOpened():
        pytest.skip("OpenCV here cannot write/read MJPG video")
    got = [(fr.frame, int(round(fr.im0s[0].mean() / 30))) for fr in load_source(path, 64, 32, vid_stride=3)]
    assert got == [(1, 2), (2, 5)]  # frames 3 and 6 (1-based), numbered as used frames like YOLOv5
    with pytest.raises(ValueError, match="--vid-stride"):
        load_source(path, 64, 32, vid_stride=0)


def test_data_names_for_a_model_without_names(tmp_path, log_lines):
    torch.manual_seed(0)
    weights = save_checkpoint(make_checkpoint(Model("yolov5n.yaml", nc=2), half=False), tmp_path / "w.pt")
    (tmp_path / "d.yaml").write_text("names: [apple, pear]\ntrain: nowhere\nval: nowhere\n")
    (tmp_path / "three.yaml").write_text("names: [a, b, c]\n")
    detect.run(weights=str(weights), source=BUS, imgsz=64, conf_thres=0.0, max_det=3, device="cpu", nosave=True,
               data=str(tmp_path / "d.yaml"), project=tmp_path / "runs")
    assert any(("apple" in line or "pear" in line) and "bus.jpg" in line for line in log_lines)
    with pytest.raises(ValueError, match="has 3 class names but the model predicts 2"):
        detect.run(weights=str(weights), source=BUS, imgsz=64, device="cpu", data=str(tmp_path / "three.yaml"),
                   project=tmp_path / "runs")
    assert detect.class_names(["cat", "dog"], str(tmp_path / "d.yaml")) == ["cat", "dog"]  # own names win


def test_detect_cli_bad_input_is_one_line(tmp_path, capsys):
    from utils.cli import run_cli
    opt = detect.parse_opt(["--weights", str(tmp_path / "missing.pt"), "--device", "cpu"])
    assert Path(opt.source) == ROOT / "data" / "images"  # YOLOv5's default source
    with pytest.raises(SystemExit) as e:
        run_cli(detect.main, opt)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith("ERROR: weights file not found") and "missing.pt" in err[0]


def test_local_window_view_with_the_official_unmasked_padding():
    """The default (official) block attends to the zero padding too: the view still rebuilds each head's output
    and maps the windows back to the picture."""
    m = _trained_looking(LocalWindowAttention(32, 8, num_heads=4, attn_ratio=1, window_resolution=4))
    seen = _proj_input(m.attn.proj)
    view, _ = _run_view(m, torch.randn(1, 32, 6, 7))
    heads = view.head_attention()
    outs = [view.seen[f"qkv{i}"].split([8, 8, 8], 1)[2].flatten(2) @ a.transpose(1, 2) for i, a in enumerate(heads)]
    assert torch.allclose(torch.cat(outs, 1).reshape(4, 32, 4, 4), seen["x"], atol=1e-5)
    received, = view.maps()
    assert received.heat.shape == (1, 6, 7)
