"""EfficientViT CGA / LocalWindowAttention: official keys, each fix of spec section 5, FLOPs, the yaml rule.

Official numbers: tests/test_official_vectors.py (vectors made by running the official code); this file
reads one of them (cga_res7.pt) for the bias index buffer and the reload check.
"""
import copy
from pathlib import Path

import pytest
import torch

from models.attention.efficientvit import CascadedGroupAttention, Conv2d_BN, LocalWindowAttention, bias_index
from models.registry import REGISTRY, LayerContext, ModelConfigError, op_flop_rules
from utils.flops import count_flops

SPEC_CGA = (64, 16, 4, 1, 7)  # dim, key_dim, heads, attn_ratio, resolution (spec section 1)
SPEC_CGA_256 = (256, 16, 4, 4, 7)
OFFICIAL_CGA = Path(__file__).resolve().parent / "data" / "official" / "cga_res7.pt"  # made by the official code


def randomize(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights and BN statistics, so equality tests can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return m


def assert_close(a, b, rel=1e-5):
    assert (a - b).abs().max() <= rel * b.abs().max() + 1e-7, (a - b).abs().max()


def test_state_dict_matches_spec():
    sd = CascadedGroupAttention(*SPEC_CGA).state_dict()
    assert len(sd) == 56
    assert sd["attention_biases"].shape == (4, 49)
    assert sd["attention_bias_idxs"].shape == (49, 49) and sd["attention_bias_idxs"].dtype == torch.int64
    assert sd["qkvs.3.c.weight"].shape == (48, 16, 1, 1) and sd["dws.0.c.weight"].shape == (16, 1, 5, 5)
    assert sd["proj.1.c.weight"].shape == (64, 64, 1, 1) and sd["proj.1.bn.running_var"].shape == (64,)
    assert sum(p.numel() for p in CascadedGroupAttention(*SPEC_CGA).parameters()) == 9604
    big = CascadedGroupAttention(*SPEC_CGA_256)
    assert sum(p.numel() for p in big.parameters()) == 93316
    assert big.state_dict()["qkvs.0.c.weight"].shape == (96, 64, 1, 1)
    lwa = LocalWindowAttention(64, 16, 4, 1, 20, 7).state_dict()
    assert set(lwa) == {f"attn.{k}" for k in sd}


def test_bias_index_closed_form_and_clamp():
    official = torch.load(OFFICIAL_CGA, weights_only=True)["state_dict"]["attention_bias_idxs"]  # resolution 7
    assert torch.equal(bias_index(7, 7, 7), official)
    assert torch.equal(CascadedGroupAttention(*SPEC_CGA).attention_bias_idxs, official)
    h, w, r = 9, 4, 3
    idx = bias_index(h, w, r)
    for p in range(h * w):
        for q in (0, 5, h * w - 1):
            dy, dx = abs(p // w - q // w), abs(p % w - q % w)
            assert idx[p, q] == min(dy, r - 1) * r + min(dx, r - 1)


def test_official_default_is_unmasked():
    assert LocalWindowAttention(64, 16, 4, 1, 14, 7).pad_mask is False


def test_padding_is_masked():
    """With the opt-in mask the bottom/right windows of a 10x10 map equal attention on the unpadded crops."""
    lwa = randomize(LocalWindowAttention(64, 16, 4, 1, 14, 7, pad_mask=True)).eval()
    x = torch.randn(1, 64, 10, 10)
    y = lwa(x)
    for rows, cols in [(slice(0, 7), slice(0, 7)), (slice(0, 7), slice(7, 10)), (slice(7, 10), slice(7, 10))]:
        assert_close(y[..., rows, cols], lwa.attn(x[..., rows, cols]))
    lwa.pad_mask = False
    unmasked = lwa(x)
    assert_close(unmasked[..., :7, :7], y[..., :7, :7])
    assert (unmasked[..., 7:, 7:] - y[..., 7:, 7:]).abs().max() > 1e-3


@pytest.mark.parametrize("hw", [(1, 1), (5, 5), (3, 6), (7, 2)])
def test_maps_smaller_than_window(hw):
    lwa = randomize(LocalWindowAttention(32, 8, 4, 1, 14, 7)).eval()
    x = torch.randn(2, 32, *hw)
    y = lwa(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert_close(y, lwa.attn(x))


EXPORT_SIZES = [(1, 1), (5, 5), (7, 7), (8, 10), (10, 7), (14, 14), (20, 17)]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("pad_mask", [True, False])
@pytest.mark.parametrize("traced_hw", [(5, 5), (8, 10)])
def test_one_traced_graph_is_right_at_every_size(traced_hw, pad_mask):
    """Traced inside one window (5x5) or with padded windows (8x10): dynamic ONNX and TorchScript
    must window, pad and mask as eager does at every other size (no frozen size branch)."""
    ort = pytest.importorskip("onnxruntime")
    import io

    lwa = randomize(LocalWindowAttention(32, 8, 4, 1, 14, 7, pad_mask=pad_mask), seed=2).eval()
    x0 = torch.randn(1, 32, *traced_hw)
    with torch.no_grad():
        ts = torch.jit.trace(lwa, x0, check_trace=False)
    f = io.BytesIO()
    torch.onnx.export(lwa, (x0,), f, opset_version=17, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    for hw in EXPORT_SIZES:
        x = torch.randn(2, 32, *hw)
        with torch.no_grad():
            want = lwa(x)
            assert_close(ts(x), want)
        assert_close(torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]), want, rel=1e-4)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("pad_mask", [False, True])
@pytest.mark.parametrize("hw", [(8, 10), (10, 10), (5, 6)])
def test_static_onnx_runs_in_onnxruntime_and_declares_the_right_shape(hw, pad_mask):
    """A padded map once made the exporter declare the padded window size (7x7) as the output shape,
    which onnxruntime refuses in the next Concat."""
    ort = pytest.importorskip("onnxruntime")
    import io

    class ThenConcat(torch.nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, x):
            return torch.cat((self.block(x), x), 1)

    model = ThenConcat(randomize(LocalWindowAttention(32, 8, 4, 1, 14, 7, pad_mask=pad_mask))).eval()
    x = torch.randn(1, 32, *hw)
    f = io.BytesIO()
    torch.onnx.export(model, (x,), f, opset_version=17, dynamo=False, input_names=["x"])
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert_close(torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]), model(x), rel=1e-4)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_cga_trace_at_resolution_is_right_at_other_sizes():
    """Traced at H = W = resolution (where eager reads the stored index buffer), run elsewhere."""
    cga = randomize(CascadedGroupAttention(32, 8, 4, 1, 7)).eval()
    with torch.no_grad():
        ts = torch.jit.trace(cga, torch.randn(1, 32, 7, 7), check_trace=False)
        for hw in [(7, 7), (3, 9), (10, 10)]:
            x = torch.randn(2, 32, *hw)
            assert_close(ts(x), cga(x))


def test_any_resolution_uses_clamped_bias():
    cga = randomize(CascadedGroupAttention(32, 8, 4, 1, 3)).eval()
    for hw in [(1, 1), (2, 5), (9, 9)]:
        assert cga(torch.randn(2, 32, *hw)).shape == (2, 32, *hw)
    bias = cga.relative_bias(5, 5)
    table = cga.attention_biases.view(4, 3, 3)
    assert torch.equal(bias[:, 0, 24], table[:, 2, 2])  # offset (4, 4) clamps to (2, 2)
    assert torch.equal(bias[:, 6, 7], table[:, 0, 1])


def test_no_stale_bias_after_load_ema_or_cast():
    """Run, then load the official weights: the output is the official one (no cached bias from before)."""
    official = torch.load(OFFICIAL_CGA, weights_only=True)
    cga = CascadedGroupAttention(**official["config"])
    assert cga.eval() is cga and cga.train() is cga and cga.eval() is cga
    x = official["input"]
    before = cga(x)
    cga.load_state_dict(official["state_dict"])
    after = cga(x)
    assert (after - before).abs().max() > 1e-3
    assert_close(after, official["output"])
    with torch.no_grad():  # an EMA-style in-place update
        cga.attention_biases.mul_(0.5).add_(1.0)
    assert (cga(x) - after).abs().max() > 1e-4
    for dtype, tol in [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)]:
        low = copy.deepcopy(cga).to(dtype)
        y = low(x.to(dtype))
        assert y.dtype == dtype
        assert (y.float() - cga(x)).norm() <= tol * cga(x).norm()


def test_autocast_and_gradients():
    lwa = randomize(LocalWindowAttention(64, 16, 4, 1, 14, 7))
    x = torch.randn(2, 64, 9, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(lwa(x).float()).all()
    lwa.zero_grad()
    lwa(x).square().mean().backward()
    missing = [n for n, p in lwa.named_parameters() if p.grad is None]
    assert not missing


def test_cascade_constraint_error():
    with pytest.raises(ValueError, match="attn_ratio"):
        CascadedGroupAttention(64, 16, 4, 4, 7)
    with pytest.raises(ValueError, match="kernels"):
        CascadedGroupAttention(80, 4, 5, 4, 7)
    CascadedGroupAttention(64, 16, 1, 4, 7)  # one head: no cascade, any width


def test_conv2d_bn_fuse():
    m = randomize(Conv2d_BN(8, 16, 3, 1, 1)).eval()
    x = torch.randn(2, 8, 6, 5)
    assert_close(m.fuse()(x), m(x))


@pytest.mark.parametrize("c", [48, 64])  # 64: head width = key_dim
@pytest.mark.parametrize("name,hw", [("CascadedGroupAttention", (6, 9)), ("LocalWindowAttention", (6, 9)),
                                     ("LocalWindowAttention", (15, 10)), ("LocalWindowAttention", (14, 21))])
def test_flops_formula_matches_counter(name, hw, c):
    spec = REGISTRY[name]
    m = build(name, c)
    shape = (2, c, *hw)
    assert spec.flops(m, shape) == count_flops(m, torch.randn(shape), op_flop_rules(m))


def test_spec_flop_numbers():
    assert REGISTRY["CascadedGroupAttention"].flops(CascadedGroupAttention(*SPEC_CGA), (2, 64, 7, 7)) == 2947840
    assert REGISTRY["CascadedGroupAttention"].flops(CascadedGroupAttention(*SPEC_CGA_256), (2, 256, 7, 7)) == 21048832
    lwa = LocalWindowAttention(64, 16, 4, 1, 20, 7)
    assert REGISTRY["LocalWindowAttention"].flops(lwa, (2, 64, 20, 20)) == 26530560


def build(name, c1, args=()):
    spec = REGISTRY[name]
    ctx = LayerContext(10, f"[-1, 1, {name}, {list(args)}]", [c1], list(args), 1, 1.0, 1.0, 80, None, "s")
    built = spec.build(ctx)
    return spec.cls(*built.args, **built.kwargs)


@pytest.mark.parametrize("name", ["CascadedGroupAttention", "LocalWindowAttention"])
def test_yaml_rule_every_width(name):
    spec = REGISTRY[name]
    for c1 in range(16, 1281, 8):  # the rule at every width; modules for a few
        kw = spec.build(LayerContext(10, "row", [c1], [], 1, 1.0, 1.0, 80, None, "s")).kwargs
        assert kw["attn_ratio"] * kw["key_dim"] * kw["num_heads"] == c1
    for c1 in (16, 72, 1280):
        m = build(name, c1)
        m = m.attn if name == "LocalWindowAttention" else m
        assert m.d * m.num_heads == c1
    with pytest.raises(ModelConfigError, match="num_heads=3"):
        build(name, 64, [None, 16, 3])
    with pytest.raises(ModelConfigError, match="attn_ratio"):
        build(name, 64, [None, 16, 4, 4])


def test_model_cga_yaml_trains():
    from models.yolo import Model
    model = Model("yolov5n_CGA.yaml")
    assert isinstance(model.model[10], LocalWindowAttention) and model.model[10].dim == 256
    assert model.model[-1].f == [18, 21, 24]
    out = model(torch.randn(2, 3, 96, 64))
    sum(o.mean() for o in out).backward()
    assert all(p.grad is not None for p in model.model[10].parameters())
