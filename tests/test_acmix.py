"""ACmix: the official bug fixes, FLOPs, keys, gradients.

Official numbers (output and input gradient, stride 1 and 2): tests/test_official_vectors.py, vectors made by
running the official code. Where the official code fails (maps not larger than the padding, kernel_conv != 3,
dilation > 1) there are no official numbers; there the fix is compared with the official-style unfold
formulation in benchmarks/reference/acmix.py patched as the fix documents.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from benchmarks.reference.acmix import RefACmix
from models.attention._local_attention import local_attention, reflect_index
from models.attention.acmix import ACmix, acmix_flops, position_grid
from models.registry import REGISTRY
from utils.flops import count_flops

OFFICIAL = Path(__file__).resolve().parent / "data" / "official"  # vectors made by the official code


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _randomised_ref(*args, **kwargs):
    """The unfold formulation with every parameter moved off its init (for the fixes the official code lacks)."""
    torch.manual_seed(0)
    ref = RefACmix(*args, **kwargs)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return ref


def _ours_from(ref, *args, **kwargs):
    m = ACmix(*args, **kwargs)
    m.load_state_dict(ref.state_dict(), strict=True)
    return m


def _randomised(*args, seed=0, **kwargs):
    """Ours with every parameter moved off its init."""
    torch.manual_seed(seed)
    m = ACmix(*args, **kwargs)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def _close(a, b, rel=1e-5):
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * b.abs().max().item())


# (in, out, kernel_att, head, kernel_conv, stride), (B, H, W): spec configs first, then more official-supported ones
CONFIGS = [((64, 64, 7, 4, 3, 1), (2, 20, 20)), ((64, 64, 7, 4, 3, 2), (2, 20, 20)),
           ((32, 48, 5, 8, 3, 1), (1, 13, 17)), ((16, 32, 7, 2, 3, 2), (2, 8, 12)), ((24, 24, 3, 3, 3, 1), (1, 4, 9))]


def test_conv_p_bias_gets_no_gradient():
    """conv_p.bias cancels in q.(pe_q - pe_n) (the official output does not depend on it either), so its true
    gradient is 0; every other parameter's gradient is checked against finite differences below."""
    m = _randomised(16, 16).train()
    m(torch.randn(2, 16, 9, 11)).square().mean().backward()
    assert m.conv_p.bias.grad.abs().max() < 1e-5 * m.conv_p.weight.grad.abs().max()


@pytest.mark.parametrize("stride", [1, 2])
def test_parameter_gradients_equal_finite_differences(stride):
    """Float64 gradcheck of the whole block w.r.t. every parameter and the input (the attention's backward is
    hand-written, see models/attention/_local_attention.py)."""
    m = _randomised(4, 4, kernel_att=3, head=2, stride=stride).double()
    params = [p for p in m.parameters()]
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        return torch.func.functional_call(m, {n: p for (n, _), p in zip(m.named_parameters(), ps)}, (x,))

    assert torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_() for p in params]))


def test_state_dict_keys_shapes_and_params_match_spec():
    sd = ACmix(64, 64).state_dict()
    expected = {"rate1": (1,), "rate2": (1,), "conv1.weight": (64, 64, 1, 1), "conv1.bias": (64,),
                "conv2.weight": (64, 64, 1, 1), "conv2.bias": (64,), "conv3.weight": (64, 64, 1, 1),
                "conv3.bias": (64,), "conv_p.weight": (16, 2, 1, 1), "conv_p.bias": (16,),
                "fc.weight": (9, 12, 1, 1), "dep_conv.weight": (64, 9, 3, 3)}
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    official = torch.load(OFFICIAL / "acmix_stride2.pt", weights_only=True)["state_dict"]
    assert list(ACmix(16, 16, stride=2).state_dict()) == list(official)  # same keys and order as official
    for cin, cout, head, kc in [(64, 64, 4, 3), (32, 48, 8, 5), (128, 128, 4, 1)]:
        hd = cout // head
        formula = 3 * (cin * cout + cout) + 3 * hd + 3 * head * kc ** 2 + cout * kc ** 4 + 2
        assert sum(p.numel() for p in ACmix(cin, cout, head=head, kernel_conv=kc).parameters()) == formula
    assert formula != 17_822 and sum(p.numel() for p in ACmix(64, 64).parameters()) == 17_822


def test_init_rates_and_shift_kernel():
    m = ACmix(32, 32, kernel_conv=5)
    assert m.rate1.item() == 0.5 and m.rate2.item() == 0.5
    w = m.dep_conv.weight  # (32, 25, 5, 5): slot i is a one-hot at (i // 5, i % 5) for every output channel
    assert w.sum().item() == 32 * 25
    for i in (0, 7, 24):
        assert w[:, i, i // 5, i % 5].eq(1).all()
    assert m.dep_conv.bias is None


def test_rates_and_all_parameters_get_gradients():
    m = ACmix(16, 16).train()
    m(torch.randn(2, 16, 9, 11)).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.rate1.grad.abs().item() > 0 and m.rate2.grad.abs().item() > 0


# ----------------------------------------------------------------------------- official bugs, fixed

def test_reflect_index_equals_reflection_pad_and_numpy_reflect():
    for n in range(1, 9):
        for pad in range(0, 10):
            idx = reflect_index(n, pad)
            want = np.pad(np.arange(n), pad, mode="reflect") if n > 1 else np.zeros(n + 2 * pad, dtype=int)
            assert idx.tolist() == want.tolist(), (n, pad)
            if pad < n:  # where torch's ReflectionPad2d runs, the same indices
                src = torch.arange(float(n)).view(1, 1, 1, n)
                assert nn.ReflectionPad1d(pad)(src.view(1, 1, n)).view(-1).long().tolist() == idx.tolist()


class _GeneralReflect(nn.Module):
    """Reflection padding that also works when pad >= size (the documented fallback)."""

    def __init__(self, pad):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        rows = reflect_index(x.shape[-2], self.pad)
        cols = reflect_index(x.shape[-1], self.pad)
        return x[..., rows, :][..., cols]


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 3), (1, 6), (3, 2), (2, 8)])
def test_small_maps_run_and_follow_the_documented_reflection(hw):
    """The official ReflectionPad2d fails for sides <= pad; ours reflects repeatedly (= reference with that pad)."""
    ref = _randomised_ref(16, 16).eval()
    ours = _ours_from(ref, 16, 16).eval()
    x = torch.randn(2, 16, *hw)
    with pytest.raises(RuntimeError):
        ref(x)
    ref.pad_att = _GeneralReflect(3)
    with torch.no_grad():
        _close(ours(x), ref(x))


@pytest.mark.parametrize("hw", [(21, 21), (13, 17), (7, 5), (1, 3), (5, 1)])
def test_stride2_odd_sizes_give_ceil_and_equal_subsampled_stride1(hw):
    """Official stride 2 fails on odd sizes; ours gives ceil(H/2) and equals stride 1 sampled at [::2, ::2]."""
    ours1 = _randomised(16, 16).eval()
    ours2 = _ours_from(ours1, 16, 16, stride=2).eval()
    x = torch.randn(1, 16, *hw)
    with torch.no_grad():
        y2 = ours2(x)
        assert y2.shape[-2:] == (math.ceil(hw[0] / 2), math.ceil(hw[1] / 2))
        _close(y2, ours1(x)[..., ::2, ::2])


@pytest.mark.parametrize("kc", [1, 5])
def test_kernel_conv_other_than_3(kc):
    """Official padding 1 is hard-coded (fails for kc != 3); ours pads kc // 2 = reference with that padding."""
    ref = _randomised_ref(16, 16, kernel_conv=kc).eval()
    ours = _ours_from(ref, 16, 16, kernel_conv=kc).eval()
    x = torch.randn(2, 16, 10, 12)
    with pytest.raises(RuntimeError):
        ref(x)
    ref.dep_conv.padding = (kc // 2, kc // 2)
    with torch.no_grad():
        _close(ours(x), ref(x))


def test_dilation_uses_a_dilated_window():
    """Official dilation > 1 grows the pad but not the unfold (fails); ours = reference with a dilated unfold."""
    ref = _randomised_ref(16, 16, kernel_att=5, dilation=2).eval()
    ours = _ours_from(ref, 16, 16, kernel_att=5, dilation=2).eval()
    x = torch.randn(1, 16, 12, 14)
    with pytest.raises(RuntimeError):
        ref(x)
    ref.unfold = nn.Unfold(kernel_size=5, dilation=2, padding=0, stride=1)
    with torch.no_grad():
        _close(ours(x), ref(x))
        assert ours(torch.randn(1, 16, 3, 4)).shape == (1, 16, 3, 4)  # pad 4 > side: reflection repeats


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_and_bfloat16(dtype):
    """Official `.half()` fails in conv_p (float32 grid); ours builds the grid in x's dtype."""
    torch.manual_seed(0)
    m = ACmix(32, 32).eval()
    x = torch.randn(2, 32, 9, 7)
    with torch.no_grad():
        want = m(x)
        got = m.to(dtype)(x.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05 * want.abs().max().item())
    assert position_grid(5, 4, x.to(dtype)).dtype == dtype


def test_cpu_autocast_bfloat16_forward_and_backward():
    m = ACmix(16, 16).train()
    x = torch.randn(1, 16, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)  # fp32 like the official: the fp32 rates promote the bf16 branches
    want = m(x)
    torch.testing.assert_close(y.float(), want, rtol=0.05, atol=0.05 * want.abs().max().item())
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all() and m.conv1.weight.grad is not None


def test_position_grid_matches_linspace():
    for n in (1, 2, 5, 20, 80, 160):
        g = position_grid(n, n + 1, torch.empty(0))
        torch.testing.assert_close(g[0, 0, 0], torch.linspace(-1, 1, n + 1), rtol=0, atol=3e-7)
        torch.testing.assert_close(g[0, 1, :, 0], torch.linspace(-1, 1, n), rtol=0, atol=3e-7)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="divisible by head"):
        ACmix(30, 30, head=4)
    with pytest.raises(ValueError, match="odd"):
        ACmix(16, 16, kernel_att=6)


# ----------------------------------------------------------------------------- the hand-written backward

@pytest.mark.parametrize("hw,kernel,stride,dilation", [((5, 6), 3, 1, 1), ((5, 7), 3, 2, 1), ((6, 5), 3, 1, 2),
                                                        ((2, 3), 5, 1, 1), ((4, 4), 3, 3, 2)])
def test_local_attention_gradcheck(hw, kernel, stride, dilation):
    torch.manual_seed(0)
    h, w = hw
    ho, wo = math.ceil(h / stride), math.ceil(w / stride)
    q = torch.randn(ho, wo, 2, 2, dtype=torch.float64, requires_grad=True)
    k = torch.randn(h, w, 2, 2, dtype=torch.float64, requires_grad=True)
    v = torch.randn(h, w, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: local_attention(a, b, c, kernel, stride, dilation), (q, k, v))


# ----------------------------------------------------------------------------- FLOPs

@pytest.mark.parametrize("cfg,shape", [((64, 64), (2, 64, 20, 20)), ((64, 64, 7, 4, 3, 2), (2, 64, 20, 20)),
                                       ((32, 48, 5, 8, 5, 2), (1, 32, 13, 17)), ((16, 16), (1, 16, 1, 1))])
def test_flops_formula_equals_flop_counter(cfg, shape):
    m = ACmix(*cfg)
    assert REGISTRY["ACmix"].flops is acmix_flops
    assert acmix_flops(m, shape) == count_flops(m, torch.randn(shape))


def test_flops_match_spec_numbers():
    """Spec table: FlopCounterMode-visible 30,745,600 + missed attention 10,035,200 (s=1); 24,524,800 + 2,508,800."""
    assert acmix_flops(ACmix(64, 64), (2, 64, 20, 20)) == 30_745_600 + 10_035_200
    assert acmix_flops(ACmix(64, 64, stride=2), (2, 64, 20, 20)) == 24_524_800 + 2_508_800


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # sizes are traced as constants: static export
def test_onnx_export_opset12_matches(tmp_path):
    """YOLOv5's default exporter settings (TorchScript exporter, opset 12, static shapes) on stride 2, odd size."""
    ort = pytest.importorskip("onnxruntime")
    m = ACmix(16, 16, stride=2).eval()
    x = torch.randn(1, 16, 13, 17)
    path = tmp_path / "acmix.onnx"
    torch.onnx.export(m, x, str(path), opset_version=12, dynamo=False)
    sess = ort.InferenceSession(str(path))
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        _close(torch.from_numpy(y), m(x))


@pytest.mark.parametrize("cfg,bhw", CONFIGS + [((16, 16, 3, 2, 3, 1, 2), (2, 9, 11))])  # + dilation 2
def test_export_path_equals_fast_path(cfg, bhw):
    """The traceable attention (used when tracing/exporting) equals the eager fast path, 1e-5 relative."""
    ours = _randomised(*cfg).eval()
    x = torch.randn(bhw[0], cfg[0], *bhw[1:])
    b, _, h, w = x.shape
    with torch.no_grad():
        qkv = nn.functional.conv2d(x, torch.cat((ours.conv1.weight, ours.conv2.weight, ours.conv3.weight)),
                                   torch.cat((ours.conv1.bias, ours.conv2.bias, ours.conv3.bias)))
        _close(ours._attention_traceable(qkv, b, h, w), ours._attention(qkv, b, h, w))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("traced_hw", [(2, 2), (8, 8)])
def test_one_traced_graph_is_right_at_every_size(traced_hw, stride):
    """Dynamic ONNX and TorchScript traced at one size (2x2: padding 3 beyond the side; 8x8: ordinary)
    reproduce eager at others, tiny maps included (the reflection is gathered, not F.pad)."""
    ort = pytest.importorskip("onnxruntime")
    import io

    m = _randomised(16, 16, 7, 4, 3, stride).eval()
    x0 = torch.randn(1, 16, *traced_hw)
    with torch.no_grad():
        ts = torch.jit.trace(m, x0, check_trace=False)
    f = io.BytesIO()
    torch.onnx.export(m, (x0,), f, opset_version=17, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    for hw in [(1, 1), (2, 3), (8, 8), (13, 17)]:
        x = torch.randn(2, 16, *hw)
        with torch.no_grad():
            want = m(x)
            _close(ts(x), want)
        _close(torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]), want, rel=1e-4)


def test_yaml_rule_keeps_channels_and_checks_head():
    from models.registry import LayerContext, ModelConfigError
    spec = REGISTRY["ACmix"]
    ctx = LayerContext(18, "[-1, 1, ACmix, [256, 256, 7, 8]]", [128], [256, 256, 7, 8], 1, 0.5, 0.33, 80, None)
    built = spec.build(ctx)
    assert built.args == [128, 128, 7, 8] and built.c2 == 128
    bad = LayerContext(18, "[-1, 1, ACmix, [None, None, 7, 5]]", [128], [None, None, 7, 5], 1, 0.5, 0.33, 80, None)
    with pytest.raises(ModelConfigError, match="layer 18.*head=5.*128"):
        spec.build(bad)
    kw = LayerContext(3, "[-1, 1, ACmix, [{head: 3}]]", [64], [{"head": 3}], 1, 1.0, 1.0, 80, None)
    with pytest.raises(ModelConfigError, match="head=3"):
        spec.build(kw)
