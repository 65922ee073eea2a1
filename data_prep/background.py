"""Run the slow output writers (pyarrow, matplotlib) in a second process.

Importing ``pyarrow`` and ``matplotlib`` costs about half a CPU-second and
building the dataset and the chart another 1-2 s on a million-message export.
None of it needs the main process: a forked worker imports them while the main
process parses and cleans (the other core), then writes ``report.png`` and
``dataset/`` from files and small arguments::

    with BackgroundWriter(enabled=True) as bg:   # forks now, imports in the worker
        ...                                      # parse, clean, build pairs
        bg.submit(write_report, tmp, stats, lengths)
        bg.wait()                                # re-raises the worker's error here

With ``enabled=False`` (small inputs, platforms without fork) each job runs
inline at ``submit``: same files, same errors.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from concurrent.futures import Future, ProcessPoolExecutor


def warm_up() -> None:
    """Import what the writers need (runs in the worker while the main process works)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import pyarrow.json  # noqa: F401

    from data_prep.report import _korean_font

    _korean_font()  # font_manager builds its font list on first use


class BackgroundWriter:
    """One forked worker process for the write jobs, in submit order; inline when disabled."""

    def __init__(self, enabled: bool = True, first: tuple[Callable[[], Any], ...] = ()):
        """``first``: warm-up jobs the worker runs before its own (what the caller needs soonest)."""
        self._pool: ProcessPoolExecutor | None = None
        self._jobs: list[Future] = []
        if not enabled:
            return
        import multiprocessing  # here: prepare's start-up (--help, small runs) does not pay for it
        from concurrent.futures import ProcessPoolExecutor

        # fork only: the worker inherits the loaded modules (no re-import of the caller's
        # __main__, as spawn would do); forked before any progress-bar thread exists
        if "fork" in multiprocessing.get_all_start_methods():
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
            self._jobs += [self._pool.submit(fn) for fn in (*first, warm_up)]

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` (arguments are pickled) or, when disabled, run it now."""
        if self._pool is None:
            fn(*args)
        else:
            self._jobs.append(self._pool.submit(fn, *args))

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``'s result: computed in the worker after the jobs queued before it (a job
        there can have loaded what ``fn`` needs), or inline when disabled."""
        return self.start(fn, *args)()

    def start(self, fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        """Queue ``fn(*args)`` like :meth:`call` but return at once: the returned function waits
        for the result (raising the worker's error). Disabled: computed now."""
        if self._pool is None:
            result = fn(*args)
            return lambda: result
        return self._pool.submit(fn, *args).result

    def wait(self) -> None:
        """Block until every job is done; the first failure is raised here."""
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BackgroundWriter", "warm_up"]
