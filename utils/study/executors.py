"""Where a study's runs execute: one after another in this machine's processes, or as Ray tasks.

Both give each finished run to `on_done(job, result)` as it finishes (result: task.run_training's dict), so
the study writes the same files either way. With Ray the run folders must be on a filesystem the workers and
this process share (one machine, or a cluster with a shared mount at the same path), and so must the repo,
the dataset and the weights: a task runs the same `python <repo>/train.py ...` command line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from utils.study import task as task_module
from utils.study.task import run_training

EXECUTORS = ("local", "ray")


@dataclass
class Job:
    variant: str
    seed: int
    run_dir: Path
    cmd: list = field(default_factory=list)
    resume: bool = False


def run_local(jobs: list[Job], on_done: Callable) -> None:
    """One run at a time, each a subprocess with the whole machine."""
    for job in jobs:
        on_done(job, run_training(job.cmd, str(job.run_dir)))


def _failed(err: Exception) -> dict:
    return {"returncode": -1, "seconds": math.nan, "host": "", "error": f"ray task failed: {type(err).__name__}: "
                                                                        f"{str(err).splitlines()[0][:250]}"}


def run_ray(jobs: list[Job], on_done: Callable, address: str | None = None, cpus_per_run: float = 1,
            gpus_per_run: float = 0) -> None:
    """Every run as a Ray task with cpus_per_run CPUs and gpus_per_run GPUs. Connects to `address` (an existing
    cluster), or uses the Ray instance this process already started, or starts a local one for the study."""
    import ray
    from ray import cloudpickle

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
    cloudpickle.register_pickle_by_value(task_module)  # workers need not import this project
    remote = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(run_training)
    threads = {"OMP_NUM_THREADS": str(max(1, int(cpus_per_run)))}  # a run uses the CPUs it reserved, no more
    pending = {remote.remote(job.cmd, str(job.run_dir), threads): job for job in jobs}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # noqa: BLE001  (a lost worker or node: the run is recorded as failed)
                    result = _failed(e)
                on_done(job, result)
    finally:
        for ref in pending:  # interrupted: stop what is still running (its last.pt resumes next time)
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
