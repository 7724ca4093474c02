"""A tiny callback hub: the trainer and the validator announce events (`callbacks.run("on_fit_epoch_end",
values, epoch)`), and whatever registered for them acts. The training loggers (results.csv, TensorBoard,
plots) hang on it from utils/train/loggers.py, so the training loop carries no logging code.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

HOOKS = (  # YOLOv5's hook names; the trainer and the validator announce the ones they reach
    "on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start", "on_train_epoch_start",
    "on_train_batch_start", "optimizer_step", "on_before_zero_grad", "on_train_batch_end", "on_train_epoch_end",
    "on_val_start", "on_val_batch_start", "on_val_image_end", "on_val_batch_end", "on_val_end",
    "on_fit_epoch_end", "on_model_save", "on_train_end", "on_params_update", "teardown",
)


class Callbacks:
    def __init__(self):
        self._hooks: dict[str, list[Callable]] = defaultdict(list)

    def register_action(self, hook: str, callback: Callable) -> None:
        if hook not in HOOKS:
            raise ValueError(f"unknown callback hook {hook!r}; known: {', '.join(HOOKS)}")
        self._hooks[hook].append(callback)

    def run(self, hook: str, *args, **kwargs) -> None:
        for cb in self._hooks.get(hook, []):
            cb(*args, **kwargs)
