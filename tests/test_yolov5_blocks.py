"""YOLOv5's blocks beyond the core (models/blocks/: Ghost, CrossConv, C3x, C3SPP, C3TR) against facts from the
official code: state_dict keys and shapes, parameter and module counts, constructor signatures and output
shapes (tests/data/official_module_keys.json, v6.1 commit 3752807c0b8af03d42de478fbcbf338ec4546a6c and v7.0
commit 915bbf294bb74c859f0b41f1c23bc395014ea679 for C3x), v6.1's parse_model rules for them, and an official
C3TR output (tests/data/c3tr_v61_reference.pt, made by v6.1's own C3TR).
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import models.common as common
from models.registry import REGISTRY, ModelConfigError
from models.yolo import Model

DATA = Path(__file__).resolve().parent / "data"
FACTS = json.loads((DATA / "official_module_keys.json").read_text())["modules"]
NOT_HERE = {"MixConv2d", "Sum", "DWConvTranspose2d"}  # experimental modules no official yaml names
CASES = sorted(k for k, v in FACTS.items() if not k.startswith("nn.") and v["class"] not in NOT_HERE)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _build(case: str) -> nn.Module:
    fact = FACTS[case]
    torch.manual_seed(0)
    return getattr(common, fact["class"])(*fact["args"], **fact["kwargs"]).eval()


def _module_count(m: nn.Module, release: str) -> int:
    """len(list(m.modules())): v6.1 gives each Conv its own SiLU (our summaries follow v6.1); v7.0's Conv shares
    one class-level SiLU, which modules() yields once."""
    n = len(list(m.modules()))
    silus = sum(isinstance(x, nn.SiLU) for x in m.modules())
    return n if release == "v6.1" else n - silus + min(silus, 1)


@pytest.mark.parametrize("case", CASES)
def test_structure_matches_official(case):
    fact, m = FACTS[case], _build(case)
    assert {k: list(v.shape) for k, v in m.state_dict().items()} == fact["state_dict"]
    assert sum(p.numel() for p in m.parameters()) == fact["params"]
    assert _module_count(m, fact["release"]) == fact["num_modules"], "module count (the summary's 'layers')"
    assert str(inspect.signature(type(m).__init__)) == fact["signature"]
    x = torch.randn(fact["input_shape"])
    with torch.no_grad():
        assert list(m(x).shape) == fact["output_shape"]


def test_official_blocks_are_registered_and_the_rest_is_not():
    for name in ("GhostConv", "GhostBottleneck", "C3Ghost", "C3SPP", "CrossConv", "C3x", "C3TR", "SPP", "Focus"):
        assert name in REGISTRY, name
    assert not NOT_HERE & set(REGISTRY)  # when one is added, its official facts above start to be checked


# ----------------------------------------------------------------------------- C3TR numerics

@pytest.fixture(scope="module")
def reference():
    ref = torch.load(DATA / "c3tr_v61_reference.pt", weights_only=True)
    assert "3752807c0b8af03d42de478fbcbf338ec4546a6c" in ref["source"]
    return ref


@pytest.mark.parametrize("variant", ["fresh", "bn_randomized"])
def test_c3tr_loads_the_official_state_dict_strict_and_matches_its_output(reference, variant):
    ref = reference if variant == "fresh" else reference["bn_randomized"]
    m = common.C3TR(32, 32, 1).eval()  # standalone BN: torch's eps 1e-5, as the reference
    m.load_state_dict(ref["state_dict"], strict=True)
    with torch.no_grad():
        y = m(reference["input"])
    assert (y - ref["output"]).abs().max().item() <= 1e-5


def test_c3tr_draws_its_weights_in_v61_order(reference):
    """Seeded like the reference, C3TR(32, 32, 1) is bit-identical to v6.1's: the same modules built in the same
    order (C3's Bottlenecks first, then replaced by the TransformerBlock)."""
    torch.manual_seed(0)
    sd = common.C3TR(32, 32, 1).state_dict()
    assert all(torch.equal(sd[k], v) for k, v in reference["state_dict"].items())


def test_c3tr_in_a_model_gets_yolov5_batchnorm_settings():
    """Unlike the other attention blocks, C3TR is YOLOv5's own: the model's BN re-init (eps 1e-3, momentum
    0.03) applies to it as in v6.1, so official transformer checkpoints give the official numbers."""
    model = Model("yolov5n_C3TR.yaml")
    c3tr = next(m for m in model.model if m.type == "C3TR")
    bns = [m for m in c3tr.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all((bn.eps, bn.momentum) == (1e-3, 0.03) for bn in bns)
    assert REGISTRY["C3TR"].attention and REGISTRY["C3TR"].yolo_init


def test_c3tr_hidden_width_must_divide_by_its_heads():
    d = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": [[10, 13, 16, 30, 33, 23]],
         "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "C3TR", [16, True, 1, 0.375]]],
         "head": [[[1], 1, "Detect", ["nc", "anchors"]]]}
    with pytest.raises(ModelConfigError, match=r"layer 1.*C3TR's hidden width int\(16 \* 0.375\) = 6 .* 4 attention heads"):
        Model(d)


# ----------------------------------------------------------------------------- v6.1's parse_model rules

def _layer(row: list, c_in: int = 32, depth: float = 0.33):
    d = {"nc": 2, "depth_multiple": depth, "width_multiple": 1.0, "anchors": [[10, 13, 16, 30, 33, 23]],
         "backbone": [[-1, 1, "Conv", [c_in, 3, 2]], row], "head": [[[1], 1, "Detect", ["nc", "anchors"]]]}
    return Model(d).model[1]


def test_c3x_takes_the_yaml_repeats_inside():
    m = _layer([-1, 9, "C3x", [32]])
    assert isinstance(m, common.C3x) and len(m.m) == 3 and all(isinstance(x, common.CrossConv) for x in m.m)


def test_c3spp_follows_v61_odd_rule():
    """v6.1 leaves C3SPP out of the repeat-inside set: `[c2, k]` maps to C3SPP(c1, c2, k), and a yaml n of 9 at
    depth 0.33 stacks 3 whole C3SPP modules, each with one SPP inside (kept for official yamls' sake)."""
    m = _layer([-1, 9, "C3SPP", [32, [3, 5]]])
    assert isinstance(m, nn.Sequential) and len(m) == 3
    assert all(isinstance(x, common.C3SPP) and isinstance(x.m, common.SPP) and len(x.m.m) == 2 for x in m)


def test_ghost_and_crossconv_stack_copies_like_conv():
    m = _layer([-1, 2, "GhostBottleneck", [32, 3, 1]], depth=1.0)
    assert isinstance(m, nn.Sequential) and len(m) == 2 and "0.conv.0.cv1.conv.weight" in m.state_dict()
    m = _layer([-1, 1, "CrossConv", [32, 3, 1, 1, 1.0, True]])
    assert isinstance(m, common.CrossConv) and m.add


def test_yolov3_tiny_torch_layers_pass_through():
    """nn.ZeroPad2d([0, 1, 0, 1]) + nn.MaxPool2d(2, 1, 0) keep the size, as in yolov3-tiny's P5."""
    pad = _layer([-1, 1, "nn.ZeroPad2d", [[0, 1, 0, 1]]])
    assert isinstance(pad, nn.ZeroPad2d) and pad.padding == (0, 1, 0, 1)
    pool = _layer([-1, 1, "nn.MaxPool2d", [2, 1, 0]])
    x = torch.randn(1, 8, 5, 5)
    assert pool(pad(x)).shape == x.shape
