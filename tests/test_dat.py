"""DAT DAttentionBaseline: official keys, each fix of spec section 6, FLOPs, the yaml rule.

Official numbers: tests/test_official_vectors.py (vectors made by running the official code)."""
import copy
import io

import pytest
import torch

from models.attention.dat import DAttentionBaseline, axis_coords
from models.registry import REGISTRY, LayerContext, ModelConfigError, op_flop_rules
from utils.flops import count_flops

# Spec section 1 reference config: nc 64 = 4 heads x 16, 2 groups, stride 2, ksize 3.
SPEC = dict(q_size=(20, 20), kv_size=(20, 20), n_heads=4, n_head_channels=16, n_groups=2, attn_drop=0.0,
            proj_drop=0.0, stride=2, offset_range_factor=2, use_pe=True, dwc_pe=False, no_off=False,
            fixed_pe=False, ksize=3, log_cpb=False)


def randomize(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m


def tuple_block(seed=0, **changes):
    """Random weights, the official (y, pos, reference) return."""
    return randomize(DAttentionBaseline(**{**SPEC, **changes}, return_tuple=True), seed).eval()


def assert_close(a, b, rel=1e-5):
    assert (a - b).abs().max() <= rel * b.abs().max() + 1e-7, (a - b).abs().max()


def test_state_dict_matches_spec():
    m = DAttentionBaseline(**SPEC)
    sd = m.state_dict()
    assert len(sd) == 14 and not list(m.buffers())
    assert sd["rpe_table"].shape == (4, 39, 39)
    assert sd["conv_offset.0.weight"].shape == (32, 1, 3, 3) and sd["conv_offset.0.bias"].shape == (32,)
    assert sd["conv_offset.1.norm.weight"].shape == (32,) and sd["conv_offset.3.weight"].shape == (2, 32, 1, 1)
    assert sd["proj_out.weight"].shape == (64, 64, 1, 1) and sd["proj_q.bias"].shape == (64,)
    assert sum(p.numel() for p in m.parameters()) == 23172


def test_yolo_path_returns_tensor():
    m = DAttentionBaseline(**SPEC)
    assert isinstance(m(torch.randn(1, 64, 8, 8)), torch.Tensor)
    spec = REGISTRY["DAttentionBaseline"]
    built = spec.build(LayerContext(10, "row", [64], [], 1, 1.0, 1.0, 80, None, "s"))
    assert built.kwargs["return_tuple"] is False


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (1, 5), (2, 7), (6, 1)])
def test_tiny_maps(hw):
    """The official code divides by Hk - 1 = 0 here; a single key row/column sits at the centre."""
    x = torch.randn(2, 64, *hw)
    y, pos, refpts = tuple_block()(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and torch.isfinite(pos).all()
    assert (refpts[..., 0, :, 0] == 0).all() if refpts.shape[2] == 1 else True


def test_attn_drop_trains():
    """The official in-place dropout on the softmax output fails in backward; ours trains."""
    ours = tuple_block(attn_drop=0.5).train()
    x = torch.randn(2, 64, 9, 9)
    y1 = ours(x)[0]
    y1.square().mean().backward()
    assert all(p.grad is not None for p in ours.parameters())
    assert (ours(x)[0] - y1).abs().max() > 0  # dropout is active


def test_low_precision():
    m = randomize(DAttentionBaseline(**SPEC)).eval()
    x = torch.randn(2, 64, 13, 17)
    y = m(x)
    for dtype, tol in [(torch.float16, 5e-3), (torch.bfloat16, 2e-2)]:
        low = copy.deepcopy(m).to(dtype)
        out = low(x.to(dtype))
        assert out.dtype == dtype and (out.float() - y).norm() <= tol * y.norm()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(m(x).float()).all()


def test_ref_align_centered():
    assert axis_coords(10, torch.float32, None, "official")[-1] > 1  # half a cell outside the map
    official = DAttentionBaseline(**SPEC, return_tuple=True).eval()
    centered = copy.deepcopy(official)
    centered.ref_align = "centered"
    x = torch.randn(1, 64, 20, 20)
    ref = centered(x)[2]
    assert ref[0, 0, 0, 0].tolist() == [-1.0, -1.0] and ref[0, 0, -1, -1].tolist() == [1.0, 1.0]
    assert (official(x)[0] - centered(x)[0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="ref_align"):
        DAttentionBaseline(**SPEC, ref_align="middle")


def test_fixed_pe_only_at_q_size():
    m = DAttentionBaseline(**{**SPEC, "fixed_pe": True})
    assert m(torch.randn(1, 64, 20, 20)).shape == (1, 64, 20, 20)
    with pytest.raises(ValueError, match="fixed_pe"):
        m(torch.randn(1, 64, 16, 16))


def test_no_off_any_size():
    m = DAttentionBaseline(**{**SPEC, "no_off": True}).train()
    x = torch.randn(2, 64, 9, 7)
    m(x).mean().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_onnx_dynamic_export_is_correct():
    ort = pytest.importorskip("onnxruntime")
    m = randomize(DAttentionBaseline(**SPEC)).eval()
    f = io.BytesIO()
    torch.onnx.export(m, (torch.randn(1, 64, 12, 10),), f, opset_version=17, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {2: "h", 3: "w"}})
    sess = ort.InferenceSession(f.getvalue())
    for hw in [(12, 10), (9, 15)]:
        x = torch.randn(1, 64, *hw)
        assert_close(torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]), m(x), rel=1e-4)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("traced_hw", [(2, 2), (12, 10)])
def test_one_traced_graph_is_right_across_the_one_cell_key_grid(traced_hw):
    """Traced where the key grid is 1 cell wide (2x2 -> Hk = Wk = 1) or wider: the graph must not bake
    the single-cell branch (or the wider one) in; dynamic ONNX and TorchScript at 1x1, 2x5, 6x4, 9x15."""
    ort = pytest.importorskip("onnxruntime")
    m = randomize(DAttentionBaseline(**SPEC), seed=3).eval()
    x0 = torch.randn(1, 64, *traced_hw)
    with torch.no_grad():
        ts = torch.jit.trace(m, x0, check_trace=False)
    f = io.BytesIO()
    torch.onnx.export(m, (x0,), f, opset_version=REGISTRY["DAttentionBaseline"].min_opset, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    for hw in [(1, 1), (2, 5), (6, 4), (9, 15)]:
        x = torch.randn(2, 64, *hw)
        with torch.no_grad():
            want = m(x)
            assert_close(ts(x), want, rel=1e-5)
        assert_close(torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]), want, rel=1e-4)


def test_axis_coords_single_point_and_official_spacing():
    assert torch.equal(axis_coords(1, torch.float32, "cpu", "official"), torch.zeros(1))
    assert torch.allclose(axis_coords(3, torch.float32, "cpu", "official"), torch.tensor([-0.5, 0.5, 1.5]))
    assert torch.allclose(axis_coords(3, torch.float32, "cpu", "pixel"), torch.tensor([-1.0, 0.0, 1.0]))


@pytest.mark.parametrize("changes", [{}, {"dwc_pe": True}, {"log_cpb": True}, {"fixed_pe": True},
                                     {"no_off": True}, {"stride": 1, "ksize": 5}])
def test_flops_formula_matches_counter(changes):
    m = DAttentionBaseline(**{**SPEC, **changes})
    shape = (2, 64, 20, 20)
    assert op_flop_rules(m), "the grid_sample rule comes from the registration"
    assert REGISTRY["DAttentionBaseline"].flops(m, shape) == count_flops(m, torch.randn(shape), op_flop_rules(m))
    if not changes:  # spec section 1: FlopCounterMode 37,145,600 plus 2,662,400 for the grid_sample taps
        assert REGISTRY["DAttentionBaseline"].flops(m, shape) == 37145600 + 2662400


def build(c1, args=()):
    spec = REGISTRY["DAttentionBaseline"]
    built = spec.build(LayerContext(10, "row", [c1], list(args), 1, 1.0, 1.0, 80, None, "s"))
    return spec.cls(*built.args, **built.kwargs)


def test_yaml_rule_every_width():
    spec = REGISTRY["DAttentionBaseline"]
    for c1 in range(16, 1281, 8):  # the rule at every width; modules for a few
        kw = spec.build(LayerContext(10, "row", [c1], [], 1, 1.0, 1.0, 80, None, "s")).kwargs
        assert kw["n_heads"] * kw["n_head_channels"] == c1 and kw["n_heads"] % kw["n_groups"] == 0
    for c1 in (16, 72, 1280):
        assert build(c1).nc == c1
    assert build(64, [None, None, 4]).n_groups == 4
    with pytest.raises(ModelConfigError, match="n_heads=6"):
        build(64, [None, None, 6])
    with pytest.raises(ModelConfigError, match="n_head_channels"):
        build(64, [None, None, 8, 16])


def test_model_dat_yaml_trains():
    from models.yolo import Model
    model = Model("yolov5n_DAT.yaml")
    assert isinstance(model.model[10], DAttentionBaseline) and model.model[10].nc == 256
    out = model(torch.randn(2, 3, 96, 64))
    sum(o.mean() for o in out).backward()
    assert all(p.grad is not None for p in model.model[10].parameters())


VARIANTS = [{}, {"dwc_pe": True}, {"log_cpb": True}, {"fixed_pe": True, "q_size": (12, 10)}, {"no_off": True},
            {"stride": 1, "ksize": 5}, {"use_pe": False}]


def both_formulations(m, x):
    """(output, input grad, {param: grad}) for the explicit and the SDPA formulation, same weights."""
    runs = []
    for explicit in (True, False):
        m.explicit_attention = explicit
        m.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        y = m(xg)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(5)))
        runs.append((y.detach(), xg.grad, {n: p.grad for n, p in m.named_parameters() if p.requires_grad}))
    return runs


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("changes", VARIANTS)
def test_sdpa_blocks_equal_explicit_attention(monkeypatch, changes, train):
    """In blocks of 7 queries (several per map; checkpointed in training): output, input and every parameter
    gradient as the explicit whole-matrix formulation, to 1e-5."""
    import models.attention.dat as dat
    monkeypatch.setattr(dat, "QUERY_BLOCK_ELEMENTS", 2 * 4 * 7 * 30)  # batch x heads x 7 queries x 30 keys
    m = randomize(DAttentionBaseline(**{**SPEC, **changes})).train(train)
    (y0, dx0, g0), (y1, dx1, g1) = both_formulations(m, torch.randn(2, 64, 12, 10))
    assert_close(y1, y0)
    assert_close(dx1, dx0)
    largest = max(g.abs().max() for g in g0.values())
    for name, want in g0.items():
        if name == "proj_k.bias":  # adds q.b to every key of a query: softmax-invariant, zero up to rounding
            assert g1[name].abs().max() < 1e-6 * largest and want.abs().max() < 1e-6 * largest
        else:
            assert_close(g1[name], want)


def test_sdpa_with_dropout_in_training_keeps_the_explicit_path():
    m = tuple_block(attn_drop=0.5).train()
    calls = []
    m._sdpa_attention = lambda *a: calls.append(a)  # would break the forward if it were taken
    m(torch.randn(1, 64, 8, 8))
    assert not calls
