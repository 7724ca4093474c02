"""The Callbacks API as YOLOv5's: register_action(hook, name, callback), get_registered_actions, run; and a
user's logger that sees the hooks a tiny training run fires."""
import threading

import pytest

from utils.callbacks import HOOKS, Callbacks
from utils.data.shapes import NAMES, generate_shapes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_actions_are_named_dicts_run_in_registration_order():
    cb, seen = Callbacks(), []
    cb.register_action("on_train_start", "first", lambda *a, **k: seen.append(("first", a, k)))
    cb.register_action("on_train_start", name="second", callback=lambda *a, **k: seen.append(("second", a, k)))
    cb.register_action("on_train_start", callback=lambda *a, **k: seen.append(("anon", a, k)))
    cb.run("on_train_start", 1, x=2)
    assert seen == [("first", (1,), {"x": 2}), ("second", (1,), {"x": 2}), ("anon", (1,), {"x": 2})]
    actions = cb.get_registered_actions("on_train_start")
    assert [a["name"] for a in actions] == ["first", "second", ""] and set(actions[0]) == {"name", "callback"}
    everything = cb.get_registered_actions()
    assert list(everything) == list(HOOKS) and everything["on_train_start"] is actions
    assert everything["on_val_end"] == []
    cb.run("on_val_end")  # a hook nobody registered for: nothing happens


def test_unknown_hooks_and_uncallable_callbacks_are_refused():
    cb = Callbacks()
    with pytest.raises(AssertionError, match="hook 'on_epoch_end' not found"):
        cb.register_action("on_epoch_end", callback=print)
    with pytest.raises(AssertionError, match="not found"):
        cb.run("on_epoch_end")
    with pytest.raises(AssertionError, match="not found"):
        cb.get_registered_actions("nope")
    with pytest.raises(AssertionError, match="not callable.*use callback="):  # the pre-YOLOv5 call shape
        cb.register_action("on_train_start", print)
    with pytest.raises(AssertionError, match="not callable"):
        cb.register_action("on_train_start", "name", callback=3)
    assert cb.get_registered_actions("on_train_start") == []


def test_thread_runs_the_callback_off_the_calling_thread():
    cb, got, done = Callbacks(), [], threading.Event()

    def record(v):
        got.append((v, threading.current_thread() is threading.main_thread()))
        done.set()
    cb.register_action("teardown", "t", record)
    cb.run("teardown", 7, thread=True)
    assert done.wait(10) and got == [(7, False)]


def test_copy_is_independent():
    cb = Callbacks()
    cb.register_action("on_train_end", "a", print)
    new = cb.copy()
    new.register_action("on_train_end", "b", print)
    assert [a["name"] for a in cb.get_registered_actions("on_train_end")] == ["a"]
    assert [a["name"] for a in new.get_registered_actions("on_train_end")] == ["a", "b"]


class RecordingLogger:
    """What a user's logger integration does: one action per hook, recording the hook and its arguments."""

    def __init__(self):
        self.calls = []

    def attach(self, cb: Callbacks) -> Callbacks:
        for hook in HOOKS:
            cb.register_action(hook, name=f"recorder.{hook}",
                               callback=lambda *a, _h=hook, **k: self.calls.append((_h, a, k)))
        return cb


def test_a_user_logger_sees_every_hook_a_tiny_training_run_fires(tmp_path):
    import train
    root = generate_shapes(tmp_path / "shapes", n_train=4, n_val=2, imgsz=64, seed=1)
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}
    logger = RecordingLogger()
    train.run(callbacks=logger.attach(Callbacks()), data=data, epochs=2, imgsz=64, batch_size=2, workers=0,
              cfg="yolov5n.yaml", noautoanchor=True, noplots=True, noval=True, project=str(tmp_path), name="cb")
    fired = [h for h, _, _ in logger.calls]
    # the run's phases, in order: pretraining, training, per-epoch fit (validated at the last epoch), the end
    order = ["on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start", "on_train_epoch_start",
             "on_train_batch_end", "on_train_epoch_end", "on_fit_epoch_end", "on_model_save", "on_val_start",
             "on_val_batch_start", "on_val_image_end", "on_val_batch_end", "on_val_end", "on_train_end"]
    assert set(fired) == set(order)
    firsts = sorted(order, key=fired.index)
    assert firsts[:7] == order[:7] and fired[-1] == "on_train_end"
    assert fired.count("on_train_epoch_start") == fired.count("on_fit_epoch_end") == 2
    assert fired.count("on_train_batch_end") == 4  # 2 epochs x 2 batches
    assert fired.count("on_val_start") == 2  # --noval: the final epoch, then best.pt at the end
    fits = [a for h, a, _ in logger.calls if h == "on_fit_epoch_end"]
    assert [epoch for _, epoch in fits] == [0, 1] and len(fits[0][0]) == 13  # results.csv's columns
    assert fits[0][0][3:10] == [0.0] * 7 and any(v != 0 for v in fits[1][0][3:10])  # epoch 0 not validated
    saves = [a for h, a, _ in logger.calls if h == "on_model_save"]
    assert [s[1:3] for s in saves] == [(0, False), (1, True)] and saves[0][0] == tmp_path / "cb" / "weights" / "last.pt"
    assert (tmp_path / "cb" / "results.csv").is_file()  # the project's own loggers still ran beside the user's
