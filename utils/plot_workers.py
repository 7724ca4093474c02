"""Draw figures in worker processes while the caller goes on (validation plots).

A validation ends with five matplotlib figures (confusion matrix, PR/F1/P/R curves) and starts six batch
mosaics on the way. Drawing is single-threaded Python holding the GIL, so threads cannot overlap it with
anything: at the end of a val run on 2 cores it was ~4 s of one core while the other idled. PlotWorkers
forks a small pool early (its processes import matplotlib while the main process loads the model and runs
the first batches), then each plot is a task: the main process only pickles the arrays (a few MB) and
continues, and join() waits for what is left.

Only on Linux (fork is cheap and safe there for code that never calls into torch's thread pool, which
plotting does not); elsewhere, or with processes=0, every task runs at once in the caller, as before.
A failing plot is logged as a warning and never fails the validation it illustrates: an exception in the
plot, arguments that cannot be sent, or a worker that dies or hangs (join() waits at most `timeout_s` for
all of them, then stops the pool) each leave one warning line naming the file.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time

from utils.log import LOGGER


def _warm_up() -> None:
    """Pool initializer: the imports every plot needs, done while the parent is busy with other work."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401

    import utils.eval.metric_plots  # noqa: F401
    import utils.plots  # noqa: F401


def _run(fn, args, kwargs) -> str | None:
    """Run one plot; a failure comes back as a one-line message."""
    try:
        fn(*args, **kwargs)
        return None
    except Exception as e:  # a plot must never fail the validation it illustrates
        return f"WARNING: {_target(fn, args)} not written ({type(e).__name__}: {e})"


def _target(fn, args) -> str:
    """What a task writes, for its warning: its first path argument, else the function's name."""
    return next((str(a) for a in args if isinstance(a, os.PathLike)), getattr(fn, "__name__", "plot"))


def fork_available() -> bool:
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


class PlotWorkers:
    """submit(fn, *args) runs fn in a worker process (or in place, see the module doc); join() waits for all.

    fn must be a module-level function (it is sent by name) and its arguments picklable (numpy arrays, paths).
    Use as a context manager, or call join()/close() yourself: the pool is shut down either way.
    """

    def __init__(self, processes: int = 2, timeout_s: float = 300.0, warm_up: bool = True):
        """warm_up: import matplotlib and the plot modules in each worker at once (False: on first use)."""
        self.pool, self.pending, self.timeout_s = None, [], timeout_s
        processes = min(processes, os.cpu_count() or 1)
        if processes > 0 and fork_available():
            try:
                self.pool = multiprocessing.get_context("fork").Pool(processes, initializer=_warm_up if warm_up else None)
            except OSError as e:  # no fork allowed (sandbox, process limit): plot in place
                LOGGER.debug(f"plot workers unavailable ({e}); plotting in the main process")

    def submit(self, fn, *args, **kwargs) -> None:
        if self.pool is None:
            self._report(_run(fn, args, kwargs))
        else:
            self.pending.append((_target(fn, args), self.pool.apply_async(_run, (fn, args, kwargs))))

    def join(self) -> None:
        """Wait for every submitted plot (their warnings are logged here), then shut the pool down."""
        deadline = time.monotonic() + self.timeout_s
        try:
            for target, result in self.pending:
                try:  # a task lost with its worker never answers: hence the deadline
                    self._report(result.get(max(deadline - time.monotonic(), 0.01)))
                except multiprocessing.TimeoutError:
                    self._report(f"WARNING: {target} not written (its plot worker did not finish in {self.timeout_s:g} s)")
                except Exception as e:  # e.g. an argument that cannot be pickled
                    self._report(f"WARNING: {target} not written ({type(e).__name__}: {e})")
        finally:
            self.pending.clear()
            self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()  # after join()'s results nothing is left running; on an error, stop at once
            self.pool.join()
            self.pool = None

    @staticmethod
    def _report(message: str | None) -> None:
        if message:
            LOGGER.warning(message)

    def __enter__(self) -> PlotWorkers:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.join()
        else:
            self.close()
