"""Model core: v6.1 numbers, parse_model errors, the registry, the summary line."""
import re

import pytest
import torch
import torch.nn as nn

from models.registry import REGISTRY, ModelConfigError, register, same_channels, unregister
from models.yolo import Detect, Model
from utils.flops import count_flops, model_info

V61 = {  # scale: (params, layers, fused params, fused layers, README GFLOPs (fused, 640))
    "n": (1872157, 270, 1867405, 213, 4.5),
    "s": (7235389, 270, 7225885, 213, 16.5),
    "m": (21190557, 369, 21172173, 290, 49.0),
    "l": (46563709, 468, 46533693, 367, 109.1),
    "x": (86749405, 567, 86705005, 444, 205.7),
}


def _summary_numbers(line: str):
    m = re.match(r"Model Summary: (\d+) layers, (\d+) parameters, (\d+) gradients, ([\d.]+) GFLOPs$", line)
    assert m, line
    return int(m[1]), int(m[2]), int(m[3]), float(m[4])


@pytest.mark.parametrize("scale", "nsmlx")
def test_v61_param_and_layer_counts(scale):
    params, layers, fparams, flayers, _ = V61[scale]
    model = Model(f"yolov5{scale}.yaml")
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(list(model.modules())) == layers
    model.eval().fuse()
    assert sum(p.numel() for p in model.parameters()) == fparams
    assert len(list(model.modules())) == flayers


@pytest.mark.parametrize("scale", "ns")
def test_summary_line_and_fused_gflops(scale):
    params, layers, fparams, flayers, readme_gflops = V61[scale]
    model = Model(f"yolov5{scale}.yaml")
    n_layers, n_p, n_g, _ = _summary_numbers(model.info())
    assert (n_layers, n_p, n_g) == (layers, params, params)
    model.eval().fuse()
    _, _, _, gflops = _summary_numbers(model.info())
    exact = count_flops(model, torch.zeros(1, 3, 640, 640)) / 1e9
    assert abs(exact - readme_gflops) / readme_gflops < 0.01
    assert gflops == round(exact, 1)


@pytest.mark.slow
@pytest.mark.parametrize("scale", "mlx")
def test_fused_gflops_large_scales(scale):
    model = Model(f"yolov5{scale}.yaml").eval().fuse()
    exact = count_flops(model, torch.zeros(1, 3, 640, 640)) / 1e9
    assert abs(exact - V61[scale][4]) / V61[scale][4] < 0.01


def test_gflops_follow_input_size_quadratically():
    model = Model("yolov5n.yaml")
    f640 = count_flops(model, torch.zeros(1, 3, 640, 640))
    f320 = count_flops(model, torch.zeros(1, 3, 320, 320))
    assert abs(f640 / f320 - 4.0) < 0.05
    assert "at 320x256" in model_info(model, imgsz=(320, 256))


def test_state_dict_names_match_official_layout():
    sd = Model("yolov5n.yaml").state_dict()
    assert "model.0.conv.weight" in sd and "model.24.m.2.weight" in sd and "model.24.anchors" in sd
    assert sd["model.24.anchors"].shape == (3, 3, 2)


def test_strides_anchor_units_and_outputs():
    model = Model("yolov5n.yaml").eval()
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    det = model.model[-1]
    # anchors are stored in grid units: P3's first anchor 10x13 px / stride 8
    assert torch.allclose(det.anchors[0, 0], torch.tensor([10 / 8, 13 / 8]))
    with torch.no_grad():
        y, raw = model(torch.zeros(2, 3, 64, 96))
    assert y.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 85)
    assert [r.shape[2:4] for r in raw] == [(8, 12), (4, 6), (2, 3)]


def test_half_and_bf16_inference_runs():
    model = Model("yolov5n.yaml").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[0]
        out = model.to(torch.bfloat16)(x.to(torch.bfloat16))[0]
    assert out.dtype == torch.float32  # bf16 maps, decoded in fp32 (pixel coordinates need more than 8 bits)
    assert torch.allclose(out.float()[..., :4], ref[..., :4], rtol=0.05, atol=1.0)


def test_scale_letter_picks_multiples(tmp_path):
    base = (tmp_path / "yolov5_Toy.yaml")
    text = open("models/yolov5s.yaml").read().replace("depth_multiple: 0.33", "depth_multiple: 0.33\ndefault_scale: s\n"
                                                      "scales: {n: [0.33, 0.25], s: [0.33, 0.50], m: [0.67, 0.75]}")
    base.write_text(text)
    n = Model(str(tmp_path / "yolov5n_Toy.yaml"))
    s = Model(str(base))
    assert sum(p.numel() for p in n.parameters()) == V61["n"][0]
    assert sum(p.numel() for p in s.parameters()) == V61["s"][0]
    with pytest.raises(FileNotFoundError, match="yolov5q_Toy"):
        Model(str(tmp_path / "yolov5q_Toy.yaml"))


# ----------------------------------------------------------------------------- yaml errors

def _yaml_with(rows_head=None, rows_backbone=None):
    import yaml
    d = yaml.safe_load(open("models/yolov5n.yaml"))
    if rows_backbone:
        for i, row in rows_backbone.items():
            d["backbone"][i] = row
    if rows_head:
        for i, row in rows_head.items():
            d["head"][i] = row
    return d


def test_unknown_module_names_layer_and_suggests():
    d = _yaml_with(rows_backbone={2: [-1, 1, "C4", [128]]})
    with pytest.raises(ModelConfigError, match=r"layer 2.*\[-1, 1, 'C4', \[128\]\].*unknown module 'C4'.*did you mean.*'C3'"):
        Model(d)


def test_from_index_out_of_range():
    d = _yaml_with(rows_head={2: [[-1, 40], 1, "Concat", [1]]})  # layer 12
    with pytest.raises(ModelConfigError, match=r"layer 12.*`from` index 40 is out of range"):
        Model(d)


def test_bad_arg_count():
    d = _yaml_with(rows_backbone={9: [-1, 1, "SPPF", [1024, 5, 3, 7, 9]]})
    with pytest.raises(ModelConfigError, match=r"layer 9.*bad arguments for SPPF"):
        Model(d)


def test_channel_mismatch_on_channel_preserving_block():
    class Gate(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.w = nn.Parameter(torch.ones(channels, 1, 1))

        def forward(self, x):
            return x * self.w

    register("ToyGate", build=same_channels(1), attention=True)(Gate)
    try:
        d = _yaml_with()
        d["backbone"].insert(3, [-1, 1, "ToyGate", [512]])  # input has 128*0.25 = 32 channels; 512 scales to 128
        d["head"][-1] = [[18, 21, 24], 1, "Detect", ["nc", "anchors"]]
        with pytest.raises(ModelConfigError, match=r"layer 3.*channel mismatch.*512.*128.*input has 32"):
            Model(d)
    finally:
        unregister("ToyGate")


def test_misaligned_concat_names_layer_at_probe():
    d = _yaml_with(rows_head={2: [[-1, 4], 1, "Concat", [1]]})  # P4-sized upsample joined with the P3 map
    with pytest.raises(ModelConfigError, match=r"layer 12 \(Concat"):
        Model(d)


def test_toy_block_registers_without_touching_parse_model():
    import inspect

    import models.yolo as yolo_mod

    src = inspect.getsource(yolo_mod.parse_model)

    class Halve(nn.Module):
        """A toy channel-preserving block defined only in this test."""

        def __init__(self, channels, scale=0.5):
            super().__init__()
            self.scale = scale
            self.conv = nn.Conv2d(channels, channels, 1)

        def forward(self, x):
            return x + self.scale * self.conv(x)

    register("Halve", build=same_channels(1), attention=True)(Halve)
    try:
        d = _yaml_with()
        d["backbone"].insert(3, [-1, 1, "Halve", [None, 0.25]])
        for row in d["head"]:  # shift absolute `from` indices past the insertion
            if isinstance(row[0], list):
                row[0] = [x + 1 if x > 2 else x for x in row[0]]
        model = Model(d)
        toy = model.model[3]
        assert isinstance(toy, Halve) and toy.scale == 0.25 and toy.conv.in_channels == 32
        with torch.no_grad():
            assert model.eval()(torch.zeros(1, 3, 64, 64))[0].shape[-1] == 85
    finally:
        unregister("Halve")
    assert "Halve" not in REGISTRY and inspect.getsource(yolo_mod.parse_model) == src


def test_parse_model_has_no_per_module_branches():
    import inspect

    import models.yolo as yolo_mod
    src = inspect.getsource(yolo_mod.parse_model)
    for name in ("C3", "Conv", "Concat", "Detect", "SPPF", "BatchNorm2d", "eval("):
        assert name not in src, f"parse_model mentions {name}"


def test_nn_layers_resolve_without_eval():
    d = _yaml_with(rows_head={1: [-1, 1, "nn.Upsample", ["None", 2, "nearest"]]})
    model = Model(d)
    assert isinstance(model.model[11], nn.Upsample)
    d = _yaml_with(rows_head={1: [-1, 1, "nn.os.system", ["echo hi"]]})
    with pytest.raises(ModelConfigError, match="unknown module"):
        Model(d)


def test_detect_is_registered_and_exported_mode():
    model = Model("yolov5n.yaml").eval()
    det = model.model[-1]
    assert isinstance(det, Detect)
    det.export = True
    try:
        with torch.no_grad():
            y = model(torch.zeros(1, 3, 64, 64))
        assert isinstance(y, torch.Tensor) and y.shape == (1, 252, 85)
    finally:
        det.export = False


def test_contract_expand_are_inverse_and_keep_yolov5_channel_order():
    """Contract puts pixel (i, j) of each 2x2 block into channel group i*2+j (YOLOv5's order, unlike
    pixel_unshuffle's channel-major one); Expand undoes it exactly."""
    from models.common import Contract, Expand
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    y = Contract(2)(x)
    assert y.shape == (2, 12, 2, 3)
    for i in range(2):
        for j in range(2):
            group = y[:, (i * 2 + j) * 3:(i * 2 + j + 1) * 3]
            assert torch.equal(group, x[:, :, i::2, j::2])
    assert torch.equal(Expand(2)(y), x)


# ------------------------------------------------------------------------------- Detect's eval decode --

V61_ANCHORS = ([10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326])  # yolov5n.yaml


def _reference_decode(maps, no=85, strides=(8, 16, 32)):
    """YOLOv5's box decode written out level by level from its formulas (not from Detect): sigmoid, then
    xy = (2s - 0.5 + cell) * stride, wh = (2s)^2 * anchor (pixels); cells in (y, x) row-major order."""
    out = []
    for m, anchors, stride in zip(maps, V61_ANCHORS, strides):
        bs, _, ny, nx = m.shape
        p = m.float().view(bs, 3, no, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()
        gy, gx = torch.meshgrid(torch.arange(ny, dtype=torch.float32), torch.arange(nx, dtype=torch.float32),
                                indexing="ij")
        xy = (p[..., :2] * 2 - 0.5 + torch.stack((gx, gy), -1)) * stride
        wh = (p[..., 2:4] * 2) ** 2 * torch.tensor(anchors, dtype=torch.float32).view(3, 1, 1, 2)
        out.append(torch.cat((xy, wh, p[..., 4:]), -1).reshape(bs, -1, no))
    return torch.cat(out, 1)


def _conv_outputs(det):
    """Hooks recording the head convs' outputs (the maps before any decode)."""
    maps = [None] * det.nl
    handles = [m.register_forward_hook(lambda mod, i, o, k=k: maps.__setitem__(k, o)) for k, m in enumerate(det.m)]
    return maps, handles


@pytest.mark.parametrize("bf16", [False, True])
def test_detect_eval_decode_matches_the_formulas_and_the_export_path(bf16):
    """The one-pass in-place eval decode gives the straightforward decode's numbers (fp32: 1e-6), the export
    path (out of place) the same, the raw maps are the conv outputs as (bs, na, ny, nx, no) in eval and
    training; under CPU bf16 autocast the
    bf16 conv outputs are decoded in fp32."""
    torch.manual_seed(0)
    model = Model("yolov5n.yaml").eval()
    det = model.model[-1]
    assert det.inplace and not det.export
    x = torch.rand(2, 3, 64, 96)
    maps, handles = _conv_outputs(det)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y, raw = model(x)
        captured = list(maps)
        det.export = True
        try:
            y_export = model(x)
        finally:
            det.export = False
        model.train()
        train_out = model(x)  # batch statistics: other maps, recorded again
        train_maps = list(maps)
        model.eval()
    for h in handles:
        h.remove()
    assert all(m.dtype == (torch.bfloat16 if bf16 else torch.float32) for m in captured)
    ref = _reference_decode(captured)
    assert y.dtype == torch.float32 and y.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 85)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
    if not bf16:  # the export path decodes in the maps' dtype (as v6.1), bf16 there
        torch.testing.assert_close(y_export, ref, rtol=1e-6, atol=1e-6)
    def as_5d(m):
        bs, _, ny, nx = m.shape
        return m.view(bs, 3, 85, ny, nx).permute(0, 1, 3, 4, 2)

    assert all(torch.equal(r, as_5d(m)) for r, m in zip(raw, captured))
    assert all(torch.equal(t, as_5d(m)) for t, m in zip(train_out, train_maps))
