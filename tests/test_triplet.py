"""TripletAttention: both key sets against the official vector, BN settings, FLOPs.

Official numbers: tests/test_official_vectors.py (vectors made by running the official code)."""
from pathlib import Path

import pytest
import torch

from models.attention.triplet import TripletAttention, triplet_flops
from models.registry import REGISTRY
from utils.flops import count_flops

GATES = {"ChannelGateH": "cw", "ChannelGateW": "hc", "SpatialGate": "hw"}
OFFICIAL = Path(__file__).resolve().parent / "data" / "official" / "triplet_attention.pt"  # made by the official code


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _to_refactored_names(sd):
    out = {}
    for k, v in sd.items():
        for old, new in GATES.items():
            k = k.replace(f"{old}.spatial.", f"{new}.conv.")
        out[k] = v
    return out


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


def test_refactored_key_names_load_strict():
    """The official state_dict renamed to the root variant's keys loads and gives the official output."""
    official = torch.load(OFFICIAL, weights_only=True)
    new_sd = _to_refactored_names(official["state_dict"])
    assert any(k.startswith("cw.conv.") for k in new_sd)
    ours = TripletAttention()
    ours.load_state_dict(new_sd, strict=True)
    with torch.no_grad():  # stored numbers from another run: equal to float rounding, not bit for bit
        torch.testing.assert_close(ours.eval()(official["input"]), official["output"], rtol=1e-5, atol=1e-6)
    # nested under a prefix (as inside a YOLO model) the renaming still applies
    outer = torch.nn.Sequential(torch.nn.Identity(), TripletAttention())
    outer.load_state_dict({f"1.{k}": v for k, v in new_sd.items()}, strict=True)
    spatial_free = {k: v for k, v in new_sd.items() if not k.startswith("hw.")}
    TripletAttention(no_spatial=True).load_state_dict(spatial_free, strict=True)
    with pytest.raises(RuntimeError):  # a wrong name is still an error with strict=True
        TripletAttention().load_state_dict({**new_sd, "xx.conv.weight": torch.zeros(1)})


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
