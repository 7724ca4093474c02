"""TripletAttention: bit-equality with the official-style reference, both key sets, BN settings, FLOPs."""
import pytest
import torch

from benchmarks.reference.triplet import RefTripletAttention
from models.attention.triplet import TripletAttention, triplet_flops
from models.registry import REGISTRY
from utils.flops import count_flops

GATES = {"ChannelGateH": "cw", "ChannelGateW": "hc", "SpatialGate": "hw"}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _randomised_ref(no_spatial=False):
    """Reference with conv weights, BN affine and running stats all moved off their init."""
    torch.manual_seed(0)
    ref = RefTripletAttention(64, no_spatial=no_spatial)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ref.train()
    for _ in range(3):
        ref(torch.randn(2, 64, 9, 11) * 2 + 1)
    return ref


def _to_refactored_names(sd):
    out = {}
    for k, v in sd.items():
        for old, new in GATES.items():
            k = k.replace(f"{old}.spatial.", f"{new}.conv.")
        out[k] = v
    return out


@pytest.mark.parametrize("no_spatial", [False, True])
@pytest.mark.parametrize("shape", [(2, 64, 20, 20), (1, 64, 13, 17), (2, 64, 1, 1), (1, 64, 7, 5), (2, 64, 3, 30)])
def test_bit_equal_to_reference_eval(no_spatial, shape):
    ref = _randomised_ref(no_spatial).eval()
    ours = TripletAttention(64, no_spatial=no_spatial)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


def test_train_mode_output_grads_and_running_stats_match():
    ref = _randomised_ref()
    ours = TripletAttention(64)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 64, 10, 12)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yo = ref(xr), ours(xo)
    torch.testing.assert_close(yo, yr, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(yr)
    yr.backward(g)
    yo.backward(g)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)  # momentum 0.01 updates included


def test_state_dict_keys_shapes_and_param_count_from_spec():
    for c in (8, 64, 1280):
        sd = TripletAttention(c).state_dict()
        assert len(sd) == 18
        for gate in GATES:
            p = f"{gate}.spatial."
            assert tuple(sd[p + "conv.weight"].shape) == (1, 2, 7, 7)
            for k in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
                assert tuple(sd[p + k].shape) == (1,)
            assert sd[p + "bn.num_batches_tracked"].dtype == torch.int64 and sd[p + "bn.num_batches_tracked"].dim() == 0
        assert sum(p.numel() for p in TripletAttention(c).parameters()) == 3 * (98 + 2)
    assert set(TripletAttention(64, no_spatial=True).state_dict()) == {k for k in sd if not k.startswith("Spatial")}


@pytest.mark.parametrize("no_spatial", [False, True])
def test_refactored_key_names_load_strict(no_spatial):
    ref = _randomised_ref(no_spatial).eval()
    new_sd = _to_refactored_names(ref.state_dict())
    assert any(k.startswith("cw.conv.") for k in new_sd)
    ours = TripletAttention(no_spatial=no_spatial)
    ours.load_state_dict(new_sd, strict=True)
    x = torch.randn(1, 16, 6, 9)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), ref(x))
    # nested under a prefix (as inside a YOLO model) the renaming still applies
    outer = torch.nn.Sequential(torch.nn.Identity(), TripletAttention(no_spatial=no_spatial))
    outer.load_state_dict({f"1.{k}": v for k, v in new_sd.items()}, strict=True)
    with pytest.raises(RuntimeError):  # a wrong name is still an error with strict=True
        TripletAttention(no_spatial=no_spatial).load_state_dict({**new_sd, "xx.conv.weight": torch.zeros(1)})


def test_official_bn_settings_kept_inside_a_yolo_model():
    from models.yolo import Model
    model = Model("yolov5n_TripletAttention.yaml")
    block = model.model[3]
    assert isinstance(block, TripletAttention) and block.type == "TripletAttention"
    bns = [m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 3 and all(bn.eps == 1e-5 and bn.momentum == 0.01 for bn in bns)
    assert model.model[4].bn.eps == 1e-3  # the YOLO convs around it still get v6.1's init


@pytest.mark.parametrize("no_spatial", [False, True])
@pytest.mark.parametrize("shape", [(2, 64, 20, 20), (1, 32, 13, 17), (1, 8, 1, 1)])
def test_flops_formula_equals_flop_counter(no_spatial, shape):
    m = TripletAttention(shape[1], no_spatial=no_spatial)
    assert REGISTRY["TripletAttention"].flops is triplet_flops
    assert triplet_flops(m, shape) == count_flops(m, torch.randn(shape))


def test_flops_match_spec_number():
    assert triplet_flops(TripletAttention(64), (2, 64, 20, 20)) == 1_160_320
