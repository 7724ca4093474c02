"""Every fact about a block lives in its registration and is read from there: min ONNX opset (export checks),
FLOP rules for ops torch's counter lacks (Model.info, count_flops), the reference (--list-blocks); and the
shared adapt pieces (bind_arguments, needs_units) name the layer and the argument."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models.common  # noqa: F401  (registers every block)
from models.attention.dat import DAttentionBaseline
from models.registry import (REGISTRY, LayerContext, ModelConfigError, bind_arguments, op_flop_rules, opset_needs,
                             register, same_channels, unregister)
from models.yolo import Model
from utils.export_checks import ExportError, check_opset
from utils.flops import count_flops

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TOY_RULE_FLOPS = 7_000_000_000  # what the toy rule says one grid_sample costs: big enough to see in GFLOPs


class _SamplerToy(nn.Module):
    """grid_sample, which torch's FlopCounterMode counts as 0 without a rule."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        return F.grid_sample(x, x[:, :2].permute(0, 2, 3, 1).tanh(), align_corners=False)


def _toy_rule(*shapes, out_shape=None, **kwargs) -> int:
    return TOY_RULE_FLOPS


@pytest.fixture
def toy_model():
    """toy_model(**facts): a yaml model with _SamplerToy at layer 1, registered with `facts`."""
    def build(**facts):
        unregister("_SamplerToy")
        register("_SamplerToy", build=same_channels(1), attention=True, **facts)(_SamplerToy)
        d = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": [[10, 13, 16, 30]],
             "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "_SamplerToy", []]],
             "head": [[[1], 1, "Detect", ["nc", "anchors"]]]}
        return Model(d).eval()
    try:
        yield build
    finally:
        unregister("_SamplerToy")


def _gflops(summary: str) -> float:
    return float(re.search(r"([\d.]+) GFLOPs", summary).group(1))


def test_op_flop_rule_is_read_from_the_registration(toy_model):
    x = torch.zeros(1, 3, 64, 64)
    plain = toy_model()
    assert op_flop_rules(plain) == {}
    without = count_flops(plain, x)
    assert _gflops(plain.info(imgsz=64)) == round(without / 1e9, 1) == 0.0
    ruled = toy_model(op_flops={torch.ops.aten.grid_sampler_2d: _toy_rule})
    assert set(op_flop_rules(ruled)) == {torch.ops.aten.grid_sampler_2d}
    assert count_flops(ruled, x, op_flop_rules(ruled)) == without + TOY_RULE_FLOPS
    assert _gflops(ruled.info(imgsz=64)) == round((without + TOY_RULE_FLOPS) / 1e9, 1)  # Model.info passes them


def test_real_blocks_declare_their_op_rules():
    sdpa_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # SDPA's CPU kernel, uncounted by torch
    assert set(REGISTRY["DAttentionBaseline"].op_flops) == {torch.ops.aten.grid_sampler_2d, sdpa_cpu}
    assert set(REGISTRY["DLKA"].op_flops) == {torch.ops.torchvision.deform_conv2d}
    for name in ("CascadedGroupAttention", "LocalWindowAttention", "MSDA", "Sea_Attention"):
        assert set(REGISTRY[name].op_flops) == {sdpa_cpu}, name
    nested = nn.Sequential(nn.Conv2d(8, 8, 1), DAttentionBaseline(n_heads=2, n_head_channels=4, n_groups=2))
    assert set(op_flop_rules(nested)) == {torch.ops.aten.grid_sampler_2d, sdpa_cpu}  # found by class, also nested


def test_opset_needs_come_from_registrations_and_name_the_layer():
    dlka = Model("yolov5n_DLKA.yaml")
    needs = opset_needs(dlka)  # deformable_LKA inside the DLKA layer is covered by the layer's own entry
    assert len(needs) == 1 and needs[0][0].startswith("model.") and needs[0][2] == 16
    with pytest.raises(ExportError, match=rf"layer {needs[0][0].split('.')[1]} \(DLKA\): "
                                          r"deformable_LKA_Attention needs opset >= 16"):
        check_opset(dlka, 12, needs)
    check_opset(dlka, 16, needs)  # enough: no error
    plain = nn.Sequential(nn.Identity(), DAttentionBaseline(n_heads=2, n_head_channels=4, n_groups=2))
    assert opset_needs(plain) == [("1", "DAttentionBaseline", 16)]
    with pytest.raises(ExportError, match=r"1: DAttentionBaseline needs opset >= 16"):
        check_opset(plain, 11, opset_needs(plain))
    assert opset_needs(Model("yolov5n_SE.yaml")) == []


def test_every_attention_block_names_its_paper_and_official_code():
    for name, spec in REGISTRY.items():
        if spec.attention:
            ref = spec.reference
            assert ref is not None and ref.paper and ref.code and ref.differs, name
            assert spec.family != "yolov5", name


def test_list_blocks_prints_the_registered_facts(capsys):
    from models.yolo import main
    main(["--list-blocks"])
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(REGISTRY)
    assert rows["DAttentionBaseline"].split()[1:3] == ["dat", "16+"] and "LeapLabTHU/DAT" in rows["DAttentionBaseline"]
    assert rows["SE"].split()[1:3] == ["se", "-"] and "Hu et al." in rows["SE"]


# ----------------------------------------------------------------------------- shared adapt pieces

def _ctx(args, c=64):
    return LayerContext(7, f"[-1, 1, X, {args}]", [c], list(args), 1, 1.0, 1.0, 80, None)


@pytest.mark.parametrize("name,second", [("DAttentionBaseline", "kv_size"), ("LocalWindowAttention", "key_dim")])
def test_bind_arguments_errors_name_layer_and_argument(name, second):
    """`second` is the block's second constructor argument."""
    cls = REGISTRY[name].cls
    by_position = bind_arguments(_ctx([]), cls, [64, 5], {})
    assert list(by_position.values()) == [64, 5] and by_position[second] == 5
    assert bind_arguments(_ctx([]), cls, [64], {second: 5}) == by_position
    with pytest.raises(ModelConfigError, match=rf"layer 7.*{name} has no argument 'heads'"):
        bind_arguments(_ctx([]), cls, [], {"heads": 4})
    with pytest.raises(ModelConfigError, match=rf"layer 7.*{name} argument '{second}' given both by position and"):
        bind_arguments(_ctx([]), cls, [1, 2], {second: 3})
    with pytest.raises(ModelConfigError, match=rf"layer 7.*{name} takes at most \d+ positional"):
        bind_arguments(_ctx([]), cls, [None] * 20, {})
    with pytest.raises(ModelConfigError, match=rf"layer 7.*{name} has no argument 'no_such'"):  # via the yaml rule
        REGISTRY[name].build(_ctx([{"no_such": 1}]))


def test_dat_keyword_only_arguments_bind_by_name_only():
    assert bind_arguments(_ctx([]), DAttentionBaseline, [], {"ref_align": "centered"}) == {"ref_align": "centered"}
    with pytest.raises(ModelConfigError, match="at most 15 positional"):  # ref_align is keyword-only
        bind_arguments(_ctx([]), DAttentionBaseline, [None] * 16, {})


@pytest.mark.parametrize("name,c,args,message", [
    ("SE", 16, [None, 32], "SE reduction=32 leaves no squeeze channels for 16 input channels"),
    ("SE", 16, [None, 0], "SE reduction=0 must be a positive integer"),
    ("CBAM", 8, [None, {"reduction_ratio": 16}], "CBAM reduction_ratio=16 leaves no hidden units for 8 input"),
    ("CPCA", 16, [None, None, 32], "CPCA channelAttention_reduce=32 leaves no hidden units for 16 input"),
    ("RepBlock", 16, [None, None, "4"], "CPCA channelAttention_reduce='4' must be a positive integer"),
    ("CAB", 16, [None, 32], "CAB compress_ratio=32 leaves no channels for 16 input channels"),
    ("CAB", 32, [None, 3, 64], "CAB squeeze_factor=64 leaves no channels for 32 input channels"),
])
def test_reductions_must_leave_a_unit(name, c, args, message):
    with pytest.raises(ModelConfigError, match=rf"layer 7, row .*: {re.escape(message)}"):
        REGISTRY[name].build(_ctx(args, c))


def test_se_explicit_squeeze_channels_replace_the_reduction():
    built = REGISTRY["SE"].build(_ctx([None, 32, 4], 16))  # reduction 32 alone leaves none; squeeze 4 is given
    assert REGISTRY["SE"].cls(*built.args, **built.kwargs).fc1.out_channels == 4
