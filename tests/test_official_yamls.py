"""Every model yaml YOLOv5 v6.1 ships (models/*.yaml and models/hub/*.yaml, 22 models) builds here with the
official counts, trains a step, and, when an official checkout is at hand, its very files build through our
parser with the same counts.

The official figures (tests/data/official_v61_counts.json) come from running v6.1's own code, commit
3752807c0b8af03d42de478fbcbf338ec4546a6c: parameters, modules (v6.1's summary "layers": one SiLU per Conv),
state_dict entries, per-layer parameters, strides, and the same after fusing. Counts are taken from the layers
built on the meta device (shapes only, no memory or init time: the x/P7 models hold up to 144 M parameters);
strides, anchors and a training step come from real builds of cheap models and of the large architectures at
scale n (same rows, smaller multiples).
"""
from __future__ import annotations

import json
import os
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import yaml

from models.common import Conv
from models.config import load_model_yaml, resolve_cfg
from models.yolo import Model, parse_model

ROOT = Path(__file__).resolve().parents[1]
DATA = json.loads((ROOT / "tests" / "data" / "official_v61_counts.json").read_text())
OFFICIAL = DATA["models"]  # "yolov5n.yaml", "hub/yolov5-p2.yaml", ... as users name them
NAMES = sorted(OFFICIAL)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _meta_counts(cfg) -> dict:
    """Counts of the layers parse_model builds for `cfg` (a name or a dict), before and after fusing."""
    d = load_model_yaml(cfg) if not isinstance(cfg, dict) else cfg
    with torch.device("meta"):
        layers, _ = parse_model(deepcopy(d), ch=[3])
        out = {"params": _params(layers), "modules": len(list(layers.modules())) + 1,  # + the Model itself
               "state_dict_entries": len(layers.state_dict()), "num_layers": len(layers),
               "layer_params": [_params(m) for m in layers]}
        for m in layers.modules():  # what Model.fuse() does
            if isinstance(m, Conv):
                m.fuse_bn()
    out.update(fused_params=_params(layers), fused_modules=len(list(layers.modules())) + 1,
               fused_state_dict_entries=len(layers.state_dict()))
    return out


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


COUNT_KEYS = ("params", "modules", "state_dict_entries", "num_layers", "layer_params", "fused_params",
              "fused_modules", "fused_state_dict_entries")


def test_the_22_official_names_all_resolve():
    assert len(NAMES) == 22 and DATA["source"].startswith("ultralytics/yolov5 v6.1, commit 3752807c")
    for name in NAMES:
        path, scale = resolve_cfg(name)
        assert path.is_file(), name
        if name.startswith("hub/yolov5") and name.endswith("6.yaml") and "-" not in name:  # yolov5{n,s,m,l,x}6
            assert (path.name, scale) == ("yolov5-P6.yaml", name[len("hub/yolov5")])


def test_hub_names_resolve_without_the_folder_and_letter_case_is_exact():
    models = ROOT / "models"
    assert resolve_cfg("yolov5-p2.yaml") == (models / "hub" / "yolov5-p2.yaml", None)
    assert resolve_cfg("yolov5-p6.yaml")[0] == models / "hub" / "yolov5-p6.yaml"  # the AutoAnchor scale-l model
    assert resolve_cfg("yolov5-P6.yaml")[0] == models / "yolov5-P6.yaml"  # the P6 family's scales file
    assert resolve_cfg("yolov5n6_DAT.yaml") == (models / "yolov5-P6_DAT.yaml", "n")


@pytest.mark.parametrize("name", NAMES)
def test_counts_match_official(name):
    want = OFFICIAL[name]
    got = _meta_counts(name)
    assert {k: got[k] for k in COUNT_KEYS} == {k: want[k] for k in COUNT_KEYS}


def test_official_counts_are_what_a_real_build_reports():
    """The meta-device count is the real model's: checked on yolov5s-transformer (C3TR), built for real."""
    model = Model("hub/yolov5s-transformer.yaml").eval()
    want = OFFICIAL["hub/yolov5s-transformer.yaml"]
    assert (_params(model), len(list(model.modules())), len(model.state_dict())) == \
        (want["params"], want["modules"], want["state_dict_entries"])
    model.fuse(flops=False)
    assert (_params(model), len(list(model.modules()))) == (want["fused_params"], want["fused_modules"])


# Real builds: the cheap models as they are, the large architectures with the rows as written and scale-n
# multiples; (h, w) a multiple of the deepest stride with every output map at least 2x2.
REAL = [("yolov5n.yaml", None, (64, 96)), ("hub/yolov5n6.yaml", None, (128, 192)),
        ("hub/yolov5-p34.yaml", None, (64, 96)), ("hub/yolov3-tiny.yaml", None, (64, 96)),
        ("hub/yolov5s-ghost.yaml", None, (64, 96)), ("hub/yolov5s-transformer.yaml", None, (64, 96)),
        ("hub/yolov5-p2.yaml", "n", (64, 96)), ("hub/yolov5-p6.yaml", "n", (128, 192)),
        ("hub/yolov5-p7.yaml", "n", (256, 384)), ("hub/yolov5-bifpn.yaml", "n", (64, 96)),
        ("hub/yolov5-fpn.yaml", "n", (64, 96)), ("hub/yolov3.yaml", "n", (64, 96)),
        ("hub/yolov3-spp.yaml", "n", (64, 96))]


def _real_model(name: str, scale: str | None) -> Model:
    torch.manual_seed(0)
    if scale is None:
        return Model(name)
    d = load_model_yaml(name)
    d["depth_multiple"], d["width_multiple"] = 0.33, 0.25
    return Model(d)


@pytest.mark.parametrize("name,scale,hw", REAL, ids=[r[0] for r in REAL])
def test_builds_with_official_strides_and_trains_a_step(name, scale, hw):
    model = _real_model(name, scale).train()
    strides = OFFICIAL[name]["stride"]
    assert model.stride.tolist() == strides
    h, w = hw
    outs = model(torch.randn(1, 3, h, w))
    assert [tuple(o.shape[1:4]) for o in outs] == [(3, h // int(s), w // int(s)) for s in strides]
    sum((o * o).mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: no or non-finite gradient for {missing[:5]}"


@pytest.mark.parametrize("name", ["hub/yolov5n6.yaml", "hub/yolov3-tiny.yaml"])
def test_anchors_as_official(name):
    """The yaml's pixel anchors, stored per level in grid units (pixels / stride) as v6.1 stores them.
    (The `anchors: 3` placeholders of p2/p34/p6/p7 are not compared: our order check follows v7.0's mean-area
    rule, which flips those meaningless placeholders where v6.1 kept them; AutoAnchor replaces them anyway.)"""
    det = Model(name).model[-1]
    pixels = (det.anchors * det.stride.view(-1, 1, 1)).view(len(det.stride), -1).tolist()
    assert pixels == [[float(v) for v in a] for a in OFFICIAL[name]["anchors"]]


def test_yolov5s_c3tr_is_the_official_transformer_model():
    """Our attention placement yolov5s_C3TR.yaml and the hub file describe the same network (rows and counts)."""
    ours, hub = load_model_yaml("yolov5s_C3TR.yaml"), load_model_yaml("hub/yolov5s-transformer.yaml")
    assert ours["backbone"] + ours["head"] == hub["backbone"] + hub["head"]
    assert _meta_counts("yolov5s_C3TR.yaml")["params"] == OFFICIAL["hub/yolov5s-transformer.yaml"]["params"]


def test_p6_family_rows_equal_the_hub_p6_model():
    """yolov5l6 (our scales file) and hub/yolov5-p6.yaml are the same layers, as in v6.1 (anchors differ)."""
    a, b = load_model_yaml("yolov5l6.yaml"), load_model_yaml("hub/yolov5-p6.yaml")
    assert a["backbone"] + a["head"] == b["backbone"] + b["head"]
    assert (a["depth_multiple"], a["width_multiple"]) == (b["depth_multiple"], b["width_multiple"]) == (1.0, 1.0)


# ----------------------------------------------------------------------------- the official files themselves

def _official_checkout() -> Path | None:
    env = os.getenv("YOLOV5_OFFICIAL_V61")
    for cand in ([Path(env)] if env else []) + [ROOT.parent / "yolov5-v6.1"]:
        if (cand / "models" / "yolov5s.yaml").is_file() and (cand / "models" / "hub").is_dir():
            return cand
    return None


@pytest.fixture(scope="module")
def official_dir() -> Path:
    d = _official_checkout()
    if d is None:
        pytest.skip("no YOLOv5 v6.1 checkout (set YOLOV5_OFFICIAL_V61 or put yolov5-v6.1 beside the repo)")
    return d


def test_official_checkout_has_the_22_models(official_dir):
    files = {str(p.relative_to(official_dir / "models")) for p in (official_dir / "models").rglob("*.yaml")}
    assert files - {"hub/anchors.yaml"} == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_official_file_builds_through_our_parser(name, official_dir):
    """The official file itself (loaded by path) builds with the official counts, and ours has the same rows,
    multiples and anchors: both describe one architecture."""
    path = official_dir / "models" / name
    official = load_model_yaml(path)
    got = _meta_counts(official)
    assert {k: got[k] for k in COUNT_KEYS} == {k: OFFICIAL[name][k] for k in COUNT_KEYS}
    ours = load_model_yaml(name)
    for key in ("nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head"):
        assert ours[key] == official[key], f"{name}: {key} differs from the official file"
    raw = yaml.safe_load(path.read_text())
    assert raw["backbone"] + raw["head"] == official["backbone"] + official["head"]
