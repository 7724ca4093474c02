"""train.run end to end at tiny sizes: artifacts, stripped checkpoints, resume equivalence, transfer, freeze, NaN guard."""
import csv
from pathlib import Path

import pytest
import torch
import yaml

import engine.trainer.epoch
import engine.trainer.optimization
import train
from engine.trainer import freeze_layers
from utils.callbacks import Callbacks
from utils.checkpoint import load_checkpoint
from utils.data.dataset import DEFAULT_HYP
from utils.data.shapes import NAMES, generate_shapes

TINY = dict(imgsz=64, batch_size=4, workers=0, cfg="yolov5n.yaml", weights="", noautoanchor=True, seed=3)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = generate_shapes(tmp_path_factory.mktemp("data") / "shapes", n_train=8, n_val=4, imgsz=64, seed=1)
    return {"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}


def rows(csv_path):
    with open(csv_path) as f:
        return [[c.strip() for c in r] for r in csv.reader(f)]


def test_default_run_smoke_artifacts_and_stripped_weights(tiny_data, tmp_path):
    opts = {k: v for k, v in TINY.items() if k not in ("cfg", "weights")}  # the embedded default model, from scratch
    results = train.run(data=tiny_data, epochs=1, project=str(tmp_path), name="exp", **opts)
    assert len(results) == 7 and all(isinstance(x, float) for x in results)
    d = tmp_path / "exp"
    for f in ("results.csv", "results.png", "hyp.yaml", "opt.yaml", "labels.jpg", "train_batch0.jpg",
              "weights/last.pt", "weights/best.pt"):
        assert (d / f).is_file(), f
    assert list(d.glob("events.out.tfevents.*"))
    table = rows(d / "results.csv")
    assert table[0][:2] == ["epoch", "train/box_loss"] and table[0][-1] == "x/lr2" and len(table) == 2
    first_line = (d / "results.csv").read_text().splitlines()[0]
    assert first_line.startswith(" " * 15 + "epoch,")  # '%20s,' fields
    ck = load_checkpoint(d / "weights" / "best.pt")
    assert ck["optimizer"] is None and ck["ema"] is None and ck["epoch"] == -1
    assert all(v.dtype == torch.float16 for v in ck["state_dict"].values() if v.is_floating_point())
    assert ck["yaml"]["yaml_file"] == train.default_cfg()
    saved = yaml.safe_load((d / "opt.yaml").read_text())
    assert saved["weights"] == "" and saved["optimizer"] == "SGD"  # not the demo data: the general defaults


def test_defaults_train_the_demo_from_scratch_without_shared_files():
    opt = train.fill_defaults(train.parse_opt(argv=[]))
    assert opt.weights == "" and opt.cfg == train.default_cfg()
    assert Path(opt.data).name == "shapes.yaml" and Path(opt.hyp).name == "hyp.shapes-demo.yaml"
    assert Path(opt.data).is_file() and Path(opt.hyp).is_file()
    # the demo's own settings (the README's first command: ~3 min on 2 cores)
    assert (opt.imgsz, opt.epochs, opt.optimizer, opt.noval) == (128, 22, "Adam", True)
    assert "shared" not in {*Path(opt.data).parts, *Path(opt.hyp).parts}
    assert train.fill_defaults(train.parse_opt(argv=["--no-noval", "--img", "96"])).noval is False


@pytest.mark.parametrize("data", ["coco128.yaml", "data/shapes.yaml"])  # the demo's own set, named: YOLOv5's too
def test_with_data_given_every_default_is_yolov5s(data):
    other = train.fill_defaults(train.parse_opt(argv=["--data", data, "--weights", "x.pt"]))
    assert other.cfg is None and other.data == data
    assert (other.imgsz, other.epochs, other.optimizer, other.noval) == (640, 300, "SGD", False)
    assert Path(other.hyp).name == "hyp.scratch-low.yaml" and Path(other.hyp).is_file()
    given = train.fill_defaults(train.parse_opt(argv=["--data", data, "--img", "320", "--epochs", "5", "--optimizer",
                                                      "AdamW", "--hyp", "hyp.scratch-high.yaml", "--noval"]))
    assert (given.imgsz, given.epochs, given.optimizer, given.hyp, given.noval) == \
        (320, 5, "AdamW", "hyp.scratch-high.yaml", True)
    assert given.cfg == train.default_cfg()  # the model default does not depend on the data


def test_run_keywords_count_as_given():
    opt = train.parse_opt(True, argv=[])
    assert (opt.data, opt.imgsz, opt.epochs, opt.optimizer, opt.hyp, opt.noval) == (None,) * 6
    opt.data, opt.epochs = {"names": ["a"]}, 3  # what train.run(data=..., epochs=3) sets
    train.fill_defaults(opt)
    assert (opt.imgsz, opt.epochs, opt.optimizer) == (640, 3, "SGD")


def test_hyp_is_settled_once_and_is_what_the_loss_and_checkpoints_use(tiny_data, tmp_path, monkeypatch):
    """hyp.yaml keeps the file's values (reusable as --hyp, as YOLOv5); the loss and the checkpoints get one
    dict settled from them before training (v6.1's gains, smoothing and decay) that nothing rewrites after."""
    made = []

    class Recording(engine.trainer.optimization.ComputeLoss):
        def __init__(self, model, hyp):
            super().__init__(model, hyp)
            made.append((hyp, dict(hyp)))  # the dict itself, and a copy of it as it was at the start
    monkeypatch.setattr(engine.trainer.optimization, "ComputeLoss", Recording)
    opts = {**TINY, "batch_size": 6, "imgsz": 96, "label_smoothing": 0.1}
    train.run(data=tiny_data, epochs=1, project=str(tmp_path), name="hyp", noplots=True, **opts)
    source = yaml.safe_load((tmp_path / "hyp" / "hyp.yaml").read_text())
    assert source == yaml.safe_load(DEFAULT_HYP.read_text())  # not the demo data: the default hyp file, as is
    nc, nl, accumulate = len(NAMES), 3, round(64 / 6)
    want = {**source, "box": source["box"] * 3 / nl, "cls": source["cls"] * nc / 80 * 3 / nl,
            "obj": source["obj"] * (96 / 640) ** 2 * 3 / nl, "label_smoothing": 0.1,
            "weight_decay": source["weight_decay"] * 6 * accumulate / 64}
    assert len(made) == 1, "one loss, built once"
    used, at_start = made[0]
    assert used == pytest.approx(want) and used == at_start  # unchanged through training
    assert load_checkpoint(tmp_path / "hyp" / "weights" / "last.pt")["hyp"] == used


class CrashAfterFirstSave(RuntimeError):
    pass


def crash_after_epoch0():
    cb = Callbacks()

    def crash(last, epoch, *args):
        if epoch == 0:
            raise CrashAfterFirstSave
    cb.register_action("on_model_save", callback=crash)
    return cb


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_identical_weights_and_metrics(tiny_data, tmp_path, workers):
    """1 epoch + resume + 1 epoch == 2 epochs, also with persistent augmenting workers."""
    common = dict(data=tiny_data, epochs=2, project=str(tmp_path), noplots=True, **{**TINY, "workers": workers})
    train.run(name="straight", **common)
    with pytest.raises(CrashAfterFirstSave):
        train.run(name="crashed", callbacks=crash_after_epoch0(), **common)
    last = tmp_path / "crashed" / "weights" / "last.pt"
    mid = load_checkpoint(last)
    assert mid["epoch"] == 0 and mid["optimizer"] is not None and mid["ema"] is not None
    train.run(resume=str(last))
    a = load_checkpoint(tmp_path / "straight" / "weights" / "last.pt")["state_dict"]
    b = load_checkpoint(last)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = rows(tmp_path / "straight" / "results.csv"), rows(tmp_path / "crashed" / "results.csv")
    assert len(ra) == len(rb) == 3 and ra == rb


def test_resume_of_finished_run_is_refused(tiny_data, tmp_path):
    train.run(data=tiny_data, epochs=1, project=str(tmp_path), name="done", noplots=True, noval=True, **TINY)
    with pytest.raises(ValueError, match="nothing to resume"):
        train.run(resume=str(tmp_path / "done" / "weights" / "last.pt"))


def test_transfer_from_official_weights(official_weights, caplog):
    from models.load import pretrained_model
    model, _ = pretrained_model(str(official_weights), "yolov5n.yaml", nc=6, exclude=["anchor"])
    official = load_checkpoint(official_weights)["state_dict"]
    own = model.state_dict()
    same = [k for k in own if k in official and official[k].shape == own[k].shape and "anchor" not in k]
    assert len(same) == len(own) - 3 * 2 - 1  # all but the 3 Detect convs (nc differs) and the anchors
    for k in same:
        torch.testing.assert_close(own[k], official[k].to(own[k].dtype))
    assert f"Transferred {len(same)}/{len(own)} items" in caplog.text


def test_freeze_layers():
    from models.yolo import Model
    model = Model("yolov5n.yaml", nc=2)
    frozen = freeze_layers(model, [3])
    assert frozen and all(k.split(".")[1] in {"0", "1", "2"} for k in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.split(".")[1] not in {"0", "1", "2"})
    assert {k.split(".")[1] for k in freeze_layers(model, [0, 5])} == {"0", "5"}


def test_non_finite_loss_is_skipped_then_stops(tiny_data, tmp_path, monkeypatch, caplog):
    class NanLoss(engine.trainer.optimization.ComputeLoss):
        def __call__(self, preds, targets):
            loss, items = super().__call__(preds, targets)
            return loss * float("nan"), items
    monkeypatch.setattr(engine.trainer.optimization, "ComputeLoss", NanLoss)
    monkeypatch.setattr(engine.trainer.epoch, "MAX_BAD_STEPS", 2)
    with pytest.raises(FloatingPointError, match="epoch 0 batch 1"):
        train.run(data=tiny_data, epochs=1, project=str(tmp_path), name="nan", noplots=True, **TINY)
    assert not (tmp_path / "nan" / "weights" / "last.pt").exists()  # no poisoned weights were saved


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError, match="epochz"):
        train.run(epochz=3)


def test_trainer_seeds_are_distinct_functions_of_their_parts():
    """One seed per (run seed, epoch, rank) and one for the initial weights, all from utils' one helper:
    no two coincide (derive_seed ignores trailing zeros, so the purpose tags must keep them apart)."""
    from engine.trainer.seeds import epoch_seed, model_init_seed
    from utils.torch_utils import derive_seed, derive_seeds

    epochs = {(s, e, r): epoch_seed(s, e, r) for s in (0, 1, 3) for e in range(4) for r in (0, 1)}
    inits = {s: model_init_seed(s) for s in (0, 1, 3)}
    assert len(set(epochs.values()) | set(inits.values())) == len(epochs) + len(inits)
    assert epoch_seed(3, 2, -1) == epoch_seed(3, 2, 0) == epochs[3, 2, 0]  # a single process is rank 0
    assert derive_seeds(3, 2, 7, n=2)[0] == derive_seed(3, 2, 7) != derive_seeds(3, 2, 7, n=2)[1]
