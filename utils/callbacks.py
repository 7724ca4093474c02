"""YOLOv5's Callbacks API: the trainer and the validator announce events (`callbacks.run("on_fit_epoch_end",
values, epoch)`) and whatever registered for them acts. The training loggers (results.csv, TensorBoard, plots)
hang on it from utils/train/loggers.py, so the training loop carries no logging code; a user's logger plugs in
the same way:

    cb = Callbacks()
    cb.register_action("on_fit_epoch_end", name="my_logger", callback=lambda values, epoch: ...)
    train.run(callbacks=cb, data=...)

The arguments each hook receives here (YOLOv5's differ between versions; these are this project's):
    on_pretrain_routine_start()                      on_pretrain_routine_end(labels, names)
    on_train_start()                                 on_train_epoch_start(epoch)
    on_train_batch_end(ni, imgs, targets, paths)     on_train_epoch_end(epoch)
    on_val_start()  on_val_batch_start()  on_val_image_end(pred, predn, path, names, im)
    on_val_batch_end(batch_i, im, targets, paths, shapes, preds)   on_val_end()
    on_fit_epoch_end(values, epoch)  (values: results.csv's columns after `epoch`)
    on_model_save(last, epoch, final_epoch, best_fitness, fitness)   on_train_end()
The trainer does not fire on_train_batch_start, optimizer_step, on_before_zero_grad, on_params_update and
teardown; they are accepted so that registering for them works as in YOLOv5.
"""
from __future__ import annotations

import threading
from typing import Callable

HOOKS = (  # YOLOv5's hook names, in its order
    "on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start", "on_train_epoch_start",
    "on_train_batch_start", "optimizer_step", "on_before_zero_grad", "on_train_batch_end", "on_train_epoch_end",
    "on_val_start", "on_val_batch_start", "on_val_image_end", "on_val_batch_end", "on_val_end",
    "on_fit_epoch_end", "on_model_save", "on_train_end", "on_params_update", "teardown",
)


class Callbacks:
    """Actions per hook, each stored as {'name': ..., 'callback': ...} and run in registration order."""

    def __init__(self):
        self._callbacks: dict[str, list[dict]] = {hook: [] for hook in HOOKS}

    def _check_hook(self, hook: str) -> None:
        if hook not in self._callbacks:
            raise AssertionError(f"hook '{hook}' not found in callbacks; known hooks: {', '.join(HOOKS)}")

    def register_action(self, hook: str, name: str = "", callback: Callable | None = None) -> None:
        """Add `callback` to `hook` under `name` (for later reference). As YOLOv5 the callback is the third
        argument: register_action(hook, name, callback) or register_action(hook, callback=fn)."""
        self._check_hook(hook)
        if not callable(callback):
            hint = " (a callable was passed as the name: use callback=...)" if callable(name) else ""
            raise AssertionError(f"callback '{callback}' for hook '{hook}' is not callable{hint}")
        self._callbacks[hook].append({"name": name, "callback": callback})

    def get_registered_actions(self, hook: str | None = None):
        """The actions of one hook (a list), or of every hook (the {hook: list} dict itself)."""
        if hook:
            self._check_hook(hook)
            return self._callbacks[hook]
        return self._callbacks

    def run(self, hook: str, *args, thread: bool = False, **kwargs) -> None:
        """Call every action of `hook` with these arguments, in registration order (thread=True: each in a
        daemon thread, as YOLOv5 v7.0)."""
        self._check_hook(hook)
        for action in self._callbacks[hook]:
            if thread:
                threading.Thread(target=action["callback"], args=args, kwargs=kwargs, daemon=True).start()
            else:
                action["callback"](*args, **kwargs)

    def copy(self) -> "Callbacks":
        """A new hub with the same actions (the lists copied: registering on one leaves the other as it was)."""
        new = Callbacks()
        for hook, actions in self._callbacks.items():
            new._callbacks[hook] = [dict(a) for a in actions]
        return new
