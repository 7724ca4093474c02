"""Pretrained transfer into yamls that insert layers: every base tensor lands in its (shifted) layer."""
import re
from copy import deepcopy

import pytest
import torch

from models.config import MODELS_DIR, load_model_yaml
from models.yolo import Model
from utils.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from models.load import pretrained_model
from utils.train.transfer import align_layers, transfer_weights


def insert_rows(yaml: dict, inserts: dict[int, list]) -> dict:
    """Insert rows at the given new indices (ascending), shifting every absolute `from` index behind them."""
    d = deepcopy(yaml)
    rows = list(d["backbone"]) + list(d["head"])
    n_backbone = len(d["backbone"])
    for at in sorted(inserts):
        for row in rows[at:]:
            f = row[0]
            row[0] = (f + 1 if f >= at else f) if isinstance(f, int) else [x + 1 if x >= at else x for x in f]
        rows.insert(at, list(inserts[at]))
        n_backbone += at < n_backbone
    d["backbone"], d["head"] = rows[:n_backbone], rows[n_backbone:]
    return d


@pytest.fixture(scope="module")
def official(official_weights):
    return load_checkpoint(official_weights)


def _remapped(key: str, layer_map: dict) -> str:
    i, rest = re.match(r"model\.(\d+)\.(.+)", key).groups()
    return f"model.{layer_map[int(i)]}.{rest}"


def test_identity_inserts_transfer_everything(official):
    at = (3, 5, 10, 18)
    yaml = insert_rows(official["yaml"], {i: [-1, 1, "nn.Identity", []] for i in at})
    model = Model(yaml)
    sd = official["state_dict"]
    naive = sum(k in model.state_dict() and model.state_dict()[k].shape == v.shape for k, v in sd.items())
    report = transfer_weights(model, sd, official["yaml"], source="yolov5n.pt")
    assert str(report) == f"Transferred {len(sd)}/{len(sd)} items from yolov5n.pt"
    assert report.missing == [] and report.unused == {}
    assert naive < len(sd)  # the plain name+shape intersection would not have found them all
    expected = {i: i + sum(a <= i + k for k, a in enumerate(at)) for i in range(25)}  # each insert shifts later layers
    assert report.layer_map == expected
    own = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(own[_remapped(k, report.layer_map)], v.float()), k
    shapes_only = transfer_weights(model, sd, None, verbose=False)  # no checkpoint yaml: align on shapes alone
    assert shapes_only.transferred == len(sd)
    with_params = {int(k.split(".")[1]) for k in sd}
    assert {i: shapes_only.layer_map[i] for i in with_params} == {i: expected[i] for i in with_params}


def test_inserted_layers_with_parameters_keep_their_init(official):
    yaml = insert_rows(official["yaml"], {4: [-1, 1, "nn.BatchNorm2d", []], 12: [-1, 1, "nn.BatchNorm2d", []]})
    model = Model(yaml)
    report = transfer_weights(model, official["state_dict"], official["yaml"], verbose=False)
    assert report.transferred == len(official["state_dict"]) and report.total == len(official["state_dict"]) + 10
    assert sorted({k.split(".")[1] for k in report.missing}) == ["12", "4"]
    own = model.state_dict()
    for k, v in official["state_dict"].items():
        assert torch.equal(own[_remapped(k, report.layer_map)], v.float()), k


def test_other_nc_skips_head_convs_with_reasons(official):
    model = Model(official["yaml"], nc=3)
    report = transfer_weights(model, official["state_dict"], official["yaml"], verbose=False)
    head = [k for k in official["state_dict"] if k.startswith("model.24.m.")]
    assert len(head) == 6
    assert report.transferred == len(official["state_dict"]) - 6 and report.total == len(official["state_dict"])
    assert sorted(report.unused) == sorted(head) and all("shape" in why for why in report.unused.values())
    assert sorted(report.missing) == sorted(head)
    assert torch.equal(model.state_dict()["model.24.anchors"], official["state_dict"]["model.24.anchors"].float())
    excluded = transfer_weights(model, official["state_dict"], official["yaml"], exclude=["anchor"], verbose=False)
    assert excluded.unused["model.24.anchors"] == "excluded"


def test_align_keeps_order_around_insertions():
    def sig(module, *shapes):
        return (module, 1, "[]"), tuple((f"p{i}", s) for i, s in enumerate(shapes))

    old = [sig("Conv", (1,)), sig("C3"), sig("Conv", (2,)), sig("Detect", (5,))]
    new = [old[0], sig("CBAM", (9,)), old[1], old[2], sig("Detect", (7,))]
    assert align_layers(old, new) == {0: 0, 1: 2, 2: 3, 3: 4}  # the Detect pair is matched by type


def test_other_scale_aligns_layer_by_layer(official):
    """yolov5n -> yolov5s: widths differ, so nothing but shape-free tensors may move, and never across layers."""
    model = Model(load_model_yaml("yolov5s.yaml"))
    report = transfer_weights(model, official["state_dict"], official["yaml"], verbose=False)
    assert report.layer_map == {i: i for i in range(25)}
    moved = [k for k in official["state_dict"] if k not in report.unused]
    assert report.transferred == len(moved) > 0
    # width-free tensors only: BN counters, anchors, and the Detect biases (na * (nc + 5) at every scale)
    assert all(re.fullmatch(r"model\.\d+\..*num_batches_tracked|model\.24\.(anchors|m\.\d\.bias)", k) for k in moved)


def test_pretrained_model_from_our_file(tmp_path, official):
    sd = official["state_dict"]
    f = save_checkpoint({"format": FORMAT, "model": sd, "yaml": official["yaml"], "names": official["names"]},
                        tmp_path / "base.pt")
    target, report = pretrained_model(f, insert_rows(official["yaml"], {10: [-1, 1, "nn.Identity", []]}), verbose=False)
    assert str(report) == f"Transferred {len(sd)}/{len(sd)} items from {f}"
    assert torch.equal(target.state_dict()["model.11.conv.weight"], sd["model.10.conv.weight"].float())


def test_triplet_attention_yaml_if_present(official):
    if not (MODELS_DIR / "yolov5_TripletAttention.yaml").is_file():
        pytest.skip("models/yolov5_TripletAttention.yaml is not written yet")
    model = Model(load_model_yaml("yolov5n_TripletAttention.yaml"))
    report = transfer_weights(model, official["state_dict"], official["yaml"], verbose=False)
    assert report.transferred == len(official["state_dict"]) and report.unused == {}
    own = model.state_dict()
    for k, v in official["state_dict"].items():
        assert torch.equal(own[_remapped(k, report.layer_map)], v.float()), k
