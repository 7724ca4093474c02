"""Issue 8 blocks (EMA, CPCA, PSA, MSCA, MSDA, SeaFormer, D-LKA, CAB, SE, CBAM, CoordAtt, ECA, SimAM):
registry builds from empty yaml args at every width, parameter counts against the spec's formulas, any
size, low precision, gradients, FLOP formulas against the counter, ONNX (static and dynamic H/W), the
official-bug fixes, official state_dict keys, and the placement yamls. Small sizes throughout."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import both_formulations

import models.common  # noqa: F401  (registers every block)
from models.registry import REGISTRY, LayerContext, check_call, op_flop_rules
from utils.flops import count_flops

YAML_BLOCKS = ["SE", "CBAM", "ECA", "CoordAtt", "SimAM", "EMA", "CPCA", "PSA_p", "MSCA", "MSDA", "Sea_Attention",
               "DLKA", "CAB"]
ALIASES = ["eca_layer", "simam_module", "RepBlock", "PSA_s", "MSCASpatialAttention", "deformable_LKA"]
ALL_BLOCKS = YAML_BLOCKS + ALIASES
YAML_FILES = ["SE", "CBAM", "ECA", "CoordAtt", "SimAM", "EMA", "CPCA", "PSA", "MSCA", "MSDA", "SeaFormer", "DLKA", "CAB"]



def _sea_params(c: int, kd: int = 16, r: int = 2) -> int:
    """Spec formula (nh = heads*kd, dh = r*kd*heads) with the yaml defaults key_dim 16, heads min(8, C // 16)."""
    nh, dh = min(8, c // 16) * kd, r * kd * min(8, c // 16)
    return (2 * (c * nh + 2 * nh) + (c * dh + 2 * dh) + (dh * c + 2 * c) + 2 * (dh * dh + 2 * dh) + 64 * nh
            + 11 * (2 * nh + dh) + (2 * nh + dh) * c + 2 * c)


def _ema_groups(c: int) -> int:
    """EMA's yaml default factor: the largest divisor of C that is <= 32."""
    return max(g for g in range(1, 33) if c % g == 0)


def _cpca_params(c: int) -> int:
    return c * c + 2 * c * (c // 4) + c // 4 + 112 * c  # = 1.5C^2 + 112.25C when 4 divides C


def _cab_params(c: int) -> int:
    """3x3 C -> C/3, 3x3 -> C (biases), RCAN SE with squeeze min(30, C) (the yaml default)."""
    mid, hidden = c // 3, c // min(30, c)
    return 18 * c * mid + mid + c + 2 * c * hidden + hidden + c


# Parameter formulas from shared/spec/attention.md section 7 (C = channels, default yaml arguments), written with
# the integer widths the layers get (C // r), so they hold at every width
SPEC_PARAMS = {
    "SE": lambda c: 2 * c * (c // 16) + c // 16 + c,
    "CBAM": lambda c: 2 * c * (c // 16) + c // 16 + c + 100,
    "CoordAtt": lambda c: max(8, c // 32) * (c + 3 + 2 * c) + 2 * c,
    "EMA": lambda c: 10 * (c // _ema_groups(c)) ** 2 + 4 * (c // _ema_groups(c)),
    "CPCA": _cpca_params,
    "RepBlock": _cpca_params,
    "PSA_p": lambda c: 2 * c * c + c,
    "MSCA": lambda c: c * c + 111 * c,
    "MSCASpatialAttention": lambda c: 3 * c * c + 113 * c,
    "MSDA": lambda c: 4 * c * c + c,  # 3C^2 (qkv, no bias) + C^2 + C (proj)
    "DLKA": lambda c: 3 * c * c + 6129 * c + 148,
    "deformable_LKA": lambda c: c * c + 6127 * c + 148,  # DLKA without its two 1x1 convs (2C^2 + 2C)
    "Sea_Attention": _sea_params,
    "CAB": _cab_params,
    "SimAM": lambda c: 0,
    "simam_module": lambda c: 0,
}
# Checked by instantiating the official classes (spec section 7)
SPEC_PARAMS_AT_64 = {"PSA_s": 7064, "Sea_Attention": 81920, "CAB": 24599, "ECA": 3, "eca_layer": 3}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _ctx(name: str, c: int, args=None) -> LayerContext:
    return LayerContext(0, f"[-1, 1, {name}, {args or []}]", [c], list(args or []), 1, 1.0, 1.0, 80, None)


def make(name: str, c: int, args=None):
    spec = REGISTRY[name]
    ctx = _ctx(name, c, args)
    built = spec.build(ctx)
    check_call(spec.cls, built, ctx)
    return spec.cls(*built.args, **built.kwargs)


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ALL_BLOCKS)
def test_registered_as_channel_preserving_attention(name):
    spec = REGISTRY[name]
    assert spec.attention and spec.flops is not None and spec.min_size == 1
    assert spec.build(_ctx(name, 40)).c2 == 40


@pytest.mark.parametrize("name", ALL_BLOCKS)
def test_builds_from_empty_args_at_every_width(name):
    """Every width a yaml can give (16..1280 in steps of 8), from `[-1, 1, name, []]`: the channel arguments are
    the input's, and the parameter count is the spec's formula (ECA: k parameters, k the odd kernel nearest
    (log2 C + 1) / 2, the paper's adaptive rule)."""
    spec = REGISTRY[name]
    with torch.device("meta"):  # shapes only: fast even at 1280 channels
        for c in range(16, 1281, 8):
            built = spec.build(_ctx(name, c))
            assert built.c2 == c and built.args[0] == c, (name, c, built.args)
            m = spec.cls(*built.args, **built.kwargs)
            if name in SPEC_PARAMS:
                assert n_params(m) == SPEC_PARAMS[name](c), (name, c)
            elif name in ("ECA", "eca_layer"):
                k = n_params(m)
                assert k % 2 == 1 and abs(k - (math.log2(c) + 1) / 2) <= 1, (name, c, k)


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS_AT_64))
def test_param_counts_match_spec(name):
    assert n_params(make(name, 64)) == SPEC_PARAMS_AT_64[name]


@pytest.mark.parametrize("name", ALL_BLOCKS)
def test_any_size_and_input_untouched(name):
    torch.manual_seed(0)
    m = make(name, 16)
    for train in (True, False):
        m.train(train)
        for h, w in ((1, 1), (2, 3), (7, 5)):
            x = torch.randn(2, 16, h, w)
            x0 = x.clone()
            y = m(x)
            assert y.shape == x.shape and torch.isfinite(y).all(), (name, h, w, train)
            assert torch.equal(x, x0), f"{name} wrote into its input"


@pytest.mark.parametrize("name", YAML_BLOCKS)
def test_low_precision(name):
    torch.manual_seed(0)
    m = make(name, 16).eval()
    x = torch.randn(2, 16, 5, 6)
    with torch.no_grad():
        ref = m(x)
        scale = ref.abs().max().item() + 1
        for dt in (torch.float16, torch.bfloat16):
            y = m.to(dt)(x.to(dt))
            assert y.dtype == dt and torch.isfinite(y).all(), (name, dt)
            assert (y.float() - ref).abs().max().item() < 0.1 * scale, (name, dt)
        m.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        assert torch.isfinite(y).all() and (y.float() - ref).abs().max().item() < 0.1 * scale


@pytest.mark.parametrize("name", ALL_BLOCKS)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    m = make(name, 16).train()
    x = torch.randn(2, 16, 6, 7, requires_grad=True)
    m(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("name", ALL_BLOCKS)
def test_flops_formula_matches_counter(name):
    m = make(name, 24)
    for shape in ((2, 24, 5, 7), (1, 24, 1, 1)):
        counted = count_flops(m, torch.randn(shape), op_flop_rules(m))  # the block's registered op rules
        assert counted > 0 or name in ("SimAM", "simam_module")
        assert REGISTRY[name].flops(m, shape) == counted, (name, shape)


def _onnx_ready() -> bool:
    return all(importlib.util.find_spec(p) is not None for p in ("onnx", "onnxruntime"))


@pytest.mark.skipif(not _onnx_ready(), reason="onnx/onnxruntime not installed")
@pytest.mark.parametrize("name", YAML_BLOCKS)
def test_onnx_static_and_dynamic(name, tmp_path):
    import onnxruntime as ort
    torch.manual_seed(0)
    m = make(name, 16).eval()
    x = torch.randn(1, 16, 6, 8)
    for dynamic in (False, True):
        f = tmp_path / f"{name}_{dynamic}.onnx"
        axes = {"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}} if dynamic else None
        torch.onnx.export(m, (x,), str(f), opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes=axes, dynamo=False)
        sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        for xi in ((x, torch.randn(1, 16, 5, 9), torch.randn(1, 16, 1, 1)) if dynamic else (x,)):
            with torch.no_grad():
                ref = m(xi).numpy()
            out = sess.run(None, {"x": xi.numpy()})[0]
            assert out.shape == ref.shape and abs(out - ref).max() < 1e-4, (name, dynamic, tuple(xi.shape))


# ----------------------------------------------------------------------------- the official-bug fixes

def test_simam_is_finite_on_1x1_where_the_official_formula_is_nan():
    x = torch.randn(2, 8, 1, 1)
    d = (x - x.mean((2, 3), keepdim=True)).pow(2)
    official = x * torch.sigmoid(d / (4 * (d.sum((2, 3), keepdim=True) / (1 * 1 - 1) + 1e-4)) + 0.5)
    assert torch.isnan(official).all()
    y = make("SimAM", 8)(x)
    assert torch.allclose(y, x * torch.sigmoid(torch.tensor(0.5)))


def _official_msda(m, x):
    """DilateFormer's formulation (nn.Unfold, outputs written into a view of the input) for comparison."""
    b, h, w, c = x.shape
    nd = m.num_dilation
    xc = x.permute(0, 3, 1, 2)
    qkv = m.qkv(xc).reshape(b, 3, nd, c // nd, h, w).permute(2, 1, 0, 3, 4, 5)
    xv = xc.reshape(b, nd, c // nd, h, w).permute(1, 0, 3, 4, 2)
    for i, att in enumerate(m.dilate_attention):
        q, k, v = qkv[i]
        hd, kk = att.head_dim, m.kernel_size ** 2
        unfold = torch.nn.Unfold(m.kernel_size, att.dilation, att.dilation * (m.kernel_size - 1) // 2, 1)
        d = q.shape[1]
        q = q.reshape(b, d // hd, hd, 1, h * w).permute(0, 1, 4, 3, 2)
        k = unfold(k).reshape(b, d // hd, hd, kk, h * w).permute(0, 1, 4, 2, 3)
        a = ((q @ k) * att.scale).softmax(-1)
        v = unfold(v).reshape(b, d // hd, hd, kk, h * w).permute(0, 1, 4, 3, 2)
        xv[i] = (a @ v).transpose(1, 2).reshape(b, h, w, d)
    return m.proj(xv.permute(1, 2, 3, 0, 4).reshape(b, h, w, c))


def test_msda_matches_official_formulation_without_writing_its_input():
    from models.common import MultiDilatelocalAttention
    torch.manual_seed(0)
    m = MultiDilatelocalAttention(24, num_heads=6, dilation=[1, 2, 3]).eval()
    x = torch.randn(2, 7, 9, 24)
    x_official = x.clone()
    with torch.no_grad():
        ref = _official_msda(m, x_official)
        y = m(x)
    assert not torch.equal(x_official, x), "the official formulation should overwrite its input (the bug)"
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-6)
    wrapper = make("MSDA", 24, [None, 6, {"dilation": [1, 2, 3]}])
    wrapper.load_state_dict(m.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(wrapper(x.permute(0, 3, 1, 2)), y.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,args", [("MSDA", [None, 8]), ("MSDA", [None, 4, False, None, 0, 0, 5, [1, 3]]),
                                       ("Sea_Attention", [None, 16, 2, 1])])  # attn_ratio 1: the fused CPU kernel
def test_sdpa_equals_explicit_attention(name, args):
    """Output, input gradient and every parameter gradient to 1e-5 of their largest magnitude."""
    torch.manual_seed(0)
    m = make(name, 32, args).eval()
    with torch.no_grad():
        for p in m.parameters():  # off the init (Sea's zero-initialised BN weights would zero the output)
            p.add_(torch.randn(p.shape) * 0.2)
    (y0, dx0, g0), (y1, dx1, g1) = both_formulations(m, torch.randn(2, 32, 9, 11))
    for got, want, what in [(y1, y0, "output"), (dx1, dx0, "input grad")] + [(g1[n], g0[n], n) for n in g0]:
        assert (got - want).abs().max() <= 1e-5 * want.abs().max() + 1e-7, f"{name} {what}"


def test_sdpa_runs_where_it_has_a_fused_kernel():
    """MSDA's per-position attention and Sea's with key_dim = head width call SDPA's flash kernel on CPU."""
    for name, args in [("MSDA", [None, 8]), ("Sea_Attention", [None, 16, 2, 1])]:
        m = make(name, 32, args).eval()
        with torch.profiler.profile() as prof, torch.no_grad():
            m(torch.randn(1, 32, 6, 5))
        assert any("flash_attention" in e.name for e in prof.events()), name


def test_psa_p_official_gate_numerics_and_paper_gate_range():
    from models.common import PSA_p
    torch.manual_seed(0)
    official = PSA_p(16, 16, gate="official").eval()
    paper = PSA_p(16, 16).eval()
    paper.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(2, 16, 6, 5)
    with torch.no_grad():
        q = official.conv_q_left(x).mean((2, 3)).unsqueeze(1)
        logits = q @ official.conv_v_left(x).flatten(2)
        official_gate = torch.sigmoid(logits.softmax(-1))  # as the official channel_pool
        paper_gate = torch.sigmoid(q.softmax(-1) @ official.conv_v_left(x).flatten(2))
        spatial = official.spatial_pool(x)
        assert torch.allclose(official(x), spatial + x * official_gate.reshape(2, 1, 6, 5), atol=1e-6)
        assert torch.allclose(paper(x), spatial + x * paper_gate.reshape(2, 1, 6, 5), atol=1e-6)
    assert official_gate.min() >= 0.5 and official_gate.max() <= 0.7311
    assert paper_gate.max() - paper_gate.min() > official_gate.max() - official_gate.min()


def _official_ema(m, x):
    """EMA as the official code computes it (adaptive pools, nn.Softmax), written out for comparison."""
    b, c, h, w = x.shape
    g = m.groups
    gx = x.reshape(b * g, -1, h, w)
    x_h = F.adaptive_avg_pool2d(gx, (h, 1))
    x_w = F.adaptive_avg_pool2d(gx, (1, w)).permute(0, 1, 3, 2)
    hw = m.conv1x1(torch.cat([x_h, x_w], dim=2))
    x_h, x_w = torch.split(hw, [h, w], dim=2)
    x1 = m.gn(gx * x_h.sigmoid() * x_w.permute(0, 1, 3, 2).sigmoid())
    x2 = m.conv3x3(gx)
    x11 = F.adaptive_avg_pool2d(x1, 1).reshape(b * g, -1, 1).permute(0, 2, 1).softmax(-1)
    x21 = F.adaptive_avg_pool2d(x2, 1).reshape(b * g, -1, 1).permute(0, 2, 1).softmax(-1)
    weights = x11 @ x2.reshape(b * g, c // g, -1) + x21 @ x1.reshape(b * g, c // g, -1)
    return (gx * weights.reshape(b * g, 1, h, w).sigmoid()).reshape(b, c, h, w)


def test_ema_and_cbam_match_official_pooling():
    torch.manual_seed(0)
    ema = make("EMA", 32, [None, None, 8]).eval()
    cbam = make("CBAM", 32).eval()
    for h, w in ((1, 1), (5, 7)):
        x = torch.randn(2, 32, h, w)
        with torch.no_grad():
            assert torch.allclose(ema(x), _official_ema(ema, x), rtol=1e-5, atol=1e-6)
            gate = cbam.ChannelGate
            raw = gate.mlp(F.avg_pool2d(x, (h, w), stride=(h, w))) + gate.mlp(F.max_pool2d(x, (h, w), stride=(h, w)))
            assert torch.allclose(gate(x), x * torch.sigmoid(raw)[:, :, None, None], rtol=1e-5, atol=1e-6)


def test_sea_attention_default_activation_and_yaml_strings():
    from models.common import Sea_Attention
    m = Sea_Attention(32, 16, 2)  # the official default activation=None crashes; here it is ReLU6
    assert isinstance(m.act, torch.nn.ReLU6)
    assert isinstance(Sea_Attention(32, 16, 2, activation="GELU").act, torch.nn.GELU)
    with pytest.raises(ValueError, match="not a torch.nn module"):
        Sea_Attention(32, 16, 2, activation="NoSuchAct")


def test_dlka_export_path_equals_torchvision():
    from models.attention.dlka import deform_conv_by_grid_sample
    torch.manual_seed(0)
    m = make("deformable_LKA", 8)
    for conv in (m.conv0, m.conv_spatial):
        dc = conv.deform_conv
        for h, w in ((1, 1), (5, 7)):
            x = torch.randn(2, 8, h, w)
            off = 4 * torch.randn(2, 2 * dc.weight.shape[-1] ** 2, h, w)
            ref = dc(x, off)
            out = deform_conv_by_grid_sample(x, off, dc.weight, dc.padding, dc.dilation)
            assert torch.allclose(out, ref, atol=1e-5)


def test_build_errors_name_the_argument():
    from models.registry import ModelConfigError
    with pytest.raises(ModelConfigError, match="factor"):
        make("EMA", 48, [None, None, 5])
    with pytest.raises(ModelConfigError, match="num_heads"):
        make("MSDA", 64, [None, 6])
    with pytest.raises(ModelConfigError, match="k_size"):
        make("ECA", 64, [None, 4])


OFFICIAL_KEYS = {
    "SE": {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"},
    "CBAM": {"ChannelGate.mlp.1.weight", "ChannelGate.mlp.1.bias", "ChannelGate.mlp.3.weight", "ChannelGate.mlp.3.bias",
             "SpatialGate.spatial.conv.weight", "SpatialGate.spatial.bn.weight", "SpatialGate.spatial.bn.bias",
             "SpatialGate.spatial.bn.running_mean", "SpatialGate.spatial.bn.running_var",
             "SpatialGate.spatial.bn.num_batches_tracked"},
    "ECA": {"conv.weight"},
    "CoordAtt": {"conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                 "bn1.num_batches_tracked", "conv_h.weight", "conv_h.bias", "conv_w.weight", "conv_w.bias"},
    "EMA": {"gn.weight", "gn.bias", "conv1x1.weight", "conv1x1.bias", "conv3x3.weight", "conv3x3.bias"},
    "CAB": {"cab.0.weight", "cab.0.bias", "cab.2.weight", "cab.2.bias", "cab.3.attention.1.weight",
            "cab.3.attention.1.bias", "cab.3.attention.3.weight", "cab.3.attention.3.bias"},
    "MSDA": {"qkv.weight", "proj.weight", "proj.bias"},
    "PSA_p": {"conv_q_right.weight", "conv_v_right.weight", "conv_up.weight", "conv_q_left.weight", "conv_v_left.weight"},
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_KEYS))
def test_official_state_dict_keys(name):
    assert set(make(name, 64).state_dict()) == OFFICIAL_KEYS[name]


def test_official_key_prefixes_of_larger_blocks():
    keys = set(make("CPCA", 16).state_dict())
    assert {"ca.fc1.weight", "dconv5_5.weight", "dconv1_21.weight", "dconv21_1.bias", "conv.weight"} <= keys
    keys = set(make("Sea_Attention", 32).state_dict())
    assert {"to_q.c.weight", "to_q.bn.running_var", "proj.1.c.weight", "proj_encode_row.1.bn.weight",
            "pos_emb_columnk.pos_embed", "dwconv.c.weight", "pwconv.bn.bias"} <= keys
    keys = set(make("DLKA", 16).state_dict())
    assert {"proj_1.weight", "spatial_gating_unit.conv0.offset_net.weight",
            "spatial_gating_unit.conv_spatial.deform_conv.weight", "spatial_gating_unit.conv1.bias"} <= keys
    keys = set(make("MSCA", 16).state_dict())
    assert {"conv0.weight", "conv0_1.weight", "conv2_2.bias", "conv3.weight"} <= keys


# ----------------------------------------------------------------------------- placement yamls

@pytest.mark.parametrize("variant", YAML_FILES)
def test_yaml_builds_at_every_scale(variant):
    from models.config import load_model_yaml
    from models.yolo import parse_model
    for s in "nsmlx":
        d = load_model_yaml(f"yolov5{s}_{variant}.yaml")
        with torch.device("meta"):
            layers, _ = parse_model(d, ch=[3])
        assert any(REGISTRY.get(getattr(m, "type", ""), None) and REGISTRY[m.type].attention for m in layers), s


@pytest.mark.parametrize("variant", YAML_FILES)
def test_yaml_forward_backward(variant):
    from models.yolo import Model
    torch.manual_seed(0)
    m = Model(f"yolov5n_{variant}.yaml").train()
    for hw in ((64, 64), (64, 96)):
        out = m(torch.randn(1, 3, *hw))
        assert [tuple(o.shape[2:4]) for o in out] == [(hw[0] // s, hw[1] // s) for s in (8, 16, 32)]
        sum(o.float().mean() for o in out).backward()
        assert all(p.grad is not None for p in m.parameters()), variant
        m.zero_grad(set_to_none=True)
