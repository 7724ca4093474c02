"""One error policy: bad input ends in one `ERROR:` line naming the thing and the fix, exit status 2, no traceback
(YOLOV5_TRACEBACK=1 shows it); the checks behind each message, tested directly."""
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_script
from models.registry import ModelConfigError
from models.yolo import Model, check_input_channels
from utils.checkpoint import CheckpointError, NotResumableError, check_resumable, load_checkpoint, make_checkpoint, \
    save_checkpoint
from utils.cli import EXIT_USER_ERROR, InputError, UserError, run_cli
from utils.data.shapes import NAMES, generate_shapes
from utils.train.checks import check_batch_size, check_optimizer_state
from utils.train.hyp import HypError, load_hyp
from utils.train.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
TINY = {"nc": len(NAMES), "depth_multiple": 0.33, "width_multiple": 0.25, "anchors": [[10, 13, 16, 30, 33, 23]],
        "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "C3", [64]], [-1, 1, "Conv", [128, 3, 2]]],
        "head": [[[-1], 1, "Detect", ["nc", "anchors"]]]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny dataset yaml, a weights file that fits it, an image and a hyp file to break."""
    d = tmp_path_factory.mktemp("cli")
    root = generate_shapes(d / "shapes", n_train=2, n_val=2, imgsz=64, seed=0)
    data = d / "tiny_shapes.yaml"  # not the demo name: the demo switches to Adam
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}))
    weights = save_checkpoint(make_checkpoint(Model(deepcopy(TINY)), half=False), d / "tiny.pt")
    image = next((root / "images" / "val").glob("*.jpg"))
    return {"dir": d, "data": data, "weights": weights, "image": image}


def assert_one_line(r, *needles):
    """Exit 2, exactly one ERROR line holding every needle, and no traceback anywhere."""
    assert r.rc == EXIT_USER_ERROR, (r.rc, r.stderr[-3000:])
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert len(r.error_lines) == 1, r.stderr[-3000:]
    for n in needles:
        assert str(n) in r.error_lines[0], r.error_lines[0]


def train_args(files, tmp_path, *extra):
    return ["--data", files["data"], "--cfg", "yolov5n.yaml", "--img", 64, "--epochs", 1, "--workers", 0,
            "--project", tmp_path, "--noplots", *extra]


# ----------------------------------------------------------------------------- the CLIs

def test_resume_of_an_official_checkpoint(official_weights, tmp_path):
    r = run_script("train.py", "--resume", official_weights, "--project", tmp_path)
    assert_one_line(r, official_weights, "not a resumable last.pt of this project", "--weights")


@pytest.mark.parametrize("script", ["val.py", "detect.py"])
def test_image_size_zero(files, tmp_path, script):
    src = ["--data", files["data"]] if script == "val.py" else ["--source", files["image"]]
    r = run_script(script, "--weights", files["weights"], *src, "--img", 0, "--project", tmp_path)
    assert_one_line(r, "--imgsz", "must be positive")


@pytest.mark.parametrize("batch,says", [(0, "must be at least 1"), (-2, "must be at least 1")])
def test_batch_size_zero_and_negative(files, tmp_path, batch, says):  # -1 is AutoBatch (tests/test_autobatch.py)
    r = run_script("train.py", *train_args(files, tmp_path, "--batch-size", batch))
    assert_one_line(r, f"--batch-size {batch}", says)


def test_hyp_missing_a_key(files, tmp_path):
    hyp = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-low.yaml").read_text())
    del hyp["box"]
    f = tmp_path / "nobox.yaml"
    f.write_text(yaml.safe_dump(hyp))
    r = run_script("train.py", *train_args(files, tmp_path, "--hyp", f))
    assert_one_line(r, f, "missing 'box'")


def test_hyp_syntax_error_names_file_and_line(files, tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("lr0: 0.01\nlrf: 0.01\nmomentum: [0.937\nbox: 0.05\n")
    r = run_script("train.py", *train_args(files, tmp_path, "--hyp", f))
    assert_one_line(r, f"{f}:4:", "not valid YAML")


def test_one_channel_model_on_rgb_images(files, tmp_path):
    cfg = tmp_path / "gray.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "ch": 1}))
    r = run_script("train.py", *train_args(files, tmp_path)[:2], "--cfg", cfg, *train_args(files, tmp_path)[4:])
    assert_one_line(r, "gray.yaml has ch: 1", "set ch: 3")


def _wrong_optimizer_last_pt(files, tmp_path) -> Path:
    """A last.pt in a run folder (opt.yaml, hyp.yaml) whose optimizer state was made for another head (nc=2 instead of 6)."""
    import train
    opt = train.fill_defaults(train.parse_opt(argv=[str(a) for a in train_args(files, tmp_path, "--epochs", 2)]))
    opt_dict = {k: str(v) if isinstance(v, Path) else v for k, v in vars(opt).items()}
    other = Model({**deepcopy(TINY), "nc": 2})
    sgd = build_optimizer(other, "SGD")
    other.train()
    sum(o.sum() for o in other(torch.rand(1, 3, 64, 64))).backward()
    sgd.step()  # momentum buffers of the nc=2 head's shapes
    run = tmp_path / "exp"
    (run / "weights").mkdir(parents=True)
    (run / "opt.yaml").write_text(yaml.safe_dump(opt_dict))
    (run / "hyp.yaml").write_text((ROOT / "data/hyps/hyp.scratch-low.yaml").read_text())  # a run folder has both
    ck = make_checkpoint(Model(deepcopy(TINY)), epoch=0, opt=opt_dict, optimizer=sgd.state_dict(), half=False)
    return save_checkpoint(ck, run / "weights" / "last.pt")


def test_resume_with_an_optimizer_state_of_another_shape(files, tmp_path):
    last = _wrong_optimizer_last_pt(files, tmp_path)
    r = run_script("train.py", "--resume", last)
    assert_one_line(r, last, "optimizer state does not fit", "of parameter")


def test_traceback_on_request(files, tmp_path):
    r = run_script("train.py", *train_args(files, tmp_path, "--batch-size", 0), env={"YOLOV5_TRACEBACK": "1"})
    assert r.rc not in (0, EXIT_USER_ERROR) and "Traceback" in r.stderr and "InputError" in r.stderr


def test_export_bad_image_size_is_one_line(files, tmp_path):
    r = run_script("export.py", "--weights", files["weights"], "--img", 0, "--include", "onnx", "--out-dir", tmp_path)
    assert_one_line(r, "--imgsz", "positive")


# ----------------------------------------------------------------------------- run_cli itself

def test_run_cli_prints_user_errors_in_one_line(capsys, monkeypatch):
    monkeypatch.delenv("YOLOV5_TRACEBACK", raising=False)

    def bad():
        raise InputError("--thing 3: too\nmany   lines")

    with pytest.raises(SystemExit) as e:
        run_cli(bad)
    assert e.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err == "ERROR: --thing 3: too many lines\n"
    with pytest.raises(FileNotFoundError):  # the traceback, on request
        monkeypatch.setenv("YOLOV5_TRACEBACK", "1")
        run_cli(lambda: open("/nonexistent/x"))


def test_run_cli_lets_bugs_through(monkeypatch):
    monkeypatch.delenv("YOLOV5_TRACEBACK", raising=False)
    with pytest.raises(ZeroDivisionError):
        run_cli(lambda: 1 / 0)
    with pytest.raises(ValueError):  # a plain ValueError is not known to be the user's
        run_cli(lambda: int("x"))
    assert run_cli(lambda a, b=0: a + b, 2, b=3) == 5


def test_error_types_are_user_errors():
    for t in (CheckpointError, ModelConfigError, HypError, NotResumableError):
        assert issubclass(t, UserError)
    assert issubclass(NotResumableError, ValueError) and issubclass(ModelConfigError, ValueError)


# ----------------------------------------------------------------------------- the checks

def test_check_batch_size():
    assert check_batch_size(16) == 16 and check_batch_size(8, world_size=2) == 8
    assert check_batch_size(-1) == -1  # AutoBatch
    with pytest.raises(InputError, match="AutoBatch.*single process"):
        check_batch_size(-1, world_size=2)
    for bad, says in [(0, "at least 1"), (-2, "at least 1"), (-3, "at least 1"), (7.5, "whole number"),
                      (True, "whole number")]:
        with pytest.raises(InputError, match=says):
            check_batch_size(bad)
    with pytest.raises(InputError, match="multiple of the 2"):
        check_batch_size(7, world_size=2)


def test_load_hyp(tmp_path):
    good = load_hyp(ROOT / "data/hyps/hyp.scratch-low.yaml")
    assert good["box"] == 0.05 and load_hyp(dict(good)) == good
    f = tmp_path / "h.yaml"
    for change, says in [({"box": "big"}, "box: 'big' must be a finite non-negative number"),
                         ({"fliplr": 1.5}, "fliplr: 1.5 is a probability"), ({"lr0": 0}, "lr0: 0 must be above 0"),
                         ({"mosaic": True}, "mosaic: True")]:
        f.write_text(yaml.safe_dump({**good, **change}))
        with pytest.raises(HypError, match=f"{f}: {says}".replace("(", r"\(").replace(".", r"\.")):
            load_hyp(f)
    f.write_text(yaml.safe_dump({k: v for k, v in good.items() if k not in ("box", "mixup")}))
    with pytest.raises(HypError, match=r"missing 'box', 'mixup'; add them"):
        load_hyp(f)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_hyp(tmp_path / "nope.yaml")


def test_check_input_channels():
    model = Model({**deepcopy(TINY), "ch": 1})
    with pytest.raises(ModelConfigError, match="ch: 1.*have 3"):
        check_input_channels(model, 3)
    check_input_channels(model, 1)
    check_input_channels(Model(deepcopy(TINY)), 3)


def _stepped_sgd(model):
    opt = build_optimizer(model, "SGD")
    model.train()
    sum(o.sum() for o in model(torch.rand(1, 3, 64, 64))).backward()
    opt.step()
    return opt


def test_check_optimizer_state_prevents_the_crash_inside_sgd():
    six, two = Model(deepcopy(TINY)), Model({**deepcopy(TINY), "nc": 2})
    wrong = _stepped_sgd(two).state_dict()
    fresh = build_optimizer(six, "SGD")
    with pytest.raises(CheckpointError, match=r"last\.pt: .*'momentum_buffer' of parameter \d+ has shape"):
        check_optimizer_state(fresh, wrong, "last.pt")
    fresh.load_state_dict(wrong)  # what happened without the check: torch accepts it...
    six.train()
    sum(o.sum() for o in six(torch.rand(1, 3, 64, 64))).backward()
    with pytest.raises(RuntimeError):  # ...and the first step fails inside SGD
        fresh.step()


def test_check_optimizer_state_accepts_its_own_and_names_other_mismatches():
    model = Model(deepcopy(TINY))
    own = _stepped_sgd(model).state_dict()
    assert check_optimizer_state(build_optimizer(model, "SGD"), own, "a.pt") is own
    adam = build_optimizer(model, "Adam")
    with pytest.raises(CheckpointError, match="saved by SGD, this run uses Adam"):
        check_optimizer_state(adam, own, "a.pt")
    bigger = Model({**deepcopy(TINY), "backbone": TINY["backbone"] + [[-1, 1, "Conv", [128, 1, 1]]]})
    with pytest.raises(CheckpointError, match=r"parameter group \d has \d+ parameters saved"):
        check_optimizer_state(build_optimizer(bigger, "SGD"), own, "a.pt")
    with pytest.raises(CheckpointError, match="not an optimizer state"):
        check_optimizer_state(adam, {"weights": 1}, "a.pt")


def test_check_resumable(tmp_path, official_weights):
    with pytest.raises(NotResumableError, match="official YOLOv5 checkpoint, not a resumable last.pt"):
        check_resumable(load_checkpoint(official_weights))
    stripped = save_checkpoint(make_checkpoint(Model(deepcopy(TINY))), tmp_path / "best.pt")
    with pytest.raises(NotResumableError, match="nothing to resume"):
        check_resumable(load_checkpoint(stripped))
    model = Model(deepcopy(TINY))
    ok = save_checkpoint(make_checkpoint(model, epoch=0, opt={"epochs": 2}, optimizer=_stepped_sgd(model)),
                         tmp_path / "last.pt")
    assert check_resumable(load_checkpoint(ok))["epoch"] == 0
