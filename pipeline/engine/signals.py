"""Stops from outside: Ctrl-C and SIGTERM become `Interrupted` in the main thread, so the tries in flight are
taken back (not the clips' fault), nothing partial stays visible, and the command says in one line how far it
got; a second signal while stopping ends the process at once."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from pipeline.engine.claims import release_in_flight
from pipeline.engine.failures import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """For the block, in this process's main thread, turn Ctrl-C (SIGINT) and SIGTERM into `Interrupted`, so
    the item being worked on is released, uncounted, and nothing partial stays visible. A second signal while
    stopping ends the process at once (exit 128 + signal), saying so in one line. The handlers there were
    before come back after the block. Elsewhere, or for a signal that already has a handler of its own (a
    Dask worker's), nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # multiprocessing's resource tracker (started by the first Dask worker) outlives a second Ctrl-C and would
    # say so in two lines of warning while it cleans up; it still cleans up
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker")
    stopping: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if stopping:
            _stop_now(signum)
        stopping.append(signum)
        raise Interrupted(f"stopped by {signal.Signals(signum).name} (pid {os.getpid()})", signum=signum)

    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    ours = [signum for signum, was in previous.items() if was in (signal.SIG_DFL, signal.default_int_handler, None)]
    for signum in ours:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum in ours:
            signal.signal(signum, previous[signum])


def _stop_now(signum: int) -> None:
    """The second signal: take back this process's tries in flight, stop its worker processes, and exit."""
    release_in_flight()
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            child.terminate()
    except Exception:  # noqa: BLE001 - exiting anyway
        pass
    os.write(2, f"\ninterrupted again ({signal.Signals(signum).name}): stopped at once\n".encode())  # below a bar
    os._exit(128 + signum)
