"""One thread runs every model computation of the process: loading, persona swaps, decoding.

    from chatbot import model_thread
    reply = model_thread.run(decoding.decode, model, tokenizer, jobs)   # waits, returns or raises
    future = model_thread.submit(fn, *args)                             # concurrent.futures.Future

Why: torch's CPU kernels run on OpenMP (GNU libgomp), and every thread that starts a parallel
region gets its own team of worker threads. The chat streams a reply from a worker thread (a
fresh one per reply, Gradio's pool, the API server's batcher) while the model was loaded in the
main thread: two teams on 2 cores, more OpenMP threads than CPUs, and libgomp then stops its
workers from spinning between the thousands of small parallel regions of a decoding step. On
2 cores a 4-candidate reply of the default model took 2.2-2.3 s in such a thread against 1.7-1.8 s
in the thread that had loaded the model. With one thread for all of it there is one team.

Callers already on the model thread run their function at once (no deadlock on nested calls).
Locks that make a swap and a reply atomic are taken by the callers, never on the model thread.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_ident: list[int] = []  # the model thread's id, once it has started


def _mark() -> None:
    _ident.append(threading.get_ident())


_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model", initializer=_mark)


def on_model_thread() -> bool:
    """Whether the caller is the model thread."""
    return bool(_ident) and threading.get_ident() == _ident[0]


def submit(fn: Callable[..., T], *args: Any, **kwargs: Any) -> "Future[T]":
    """Run ``fn(*args, **kwargs)`` on the model thread; its Future (done at once on the model thread)."""
    if on_model_thread():
        done: Future = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as e:  # the caller gets it from result(), as from the pool
            done.set_exception(e)
        return done
    return _POOL.submit(fn, *args, **kwargs)


def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the model thread: its result, or its exception raised here."""
    if on_model_thread():
        return fn(*args, **kwargs)
    return _POOL.submit(fn, *args, **kwargs).result()
