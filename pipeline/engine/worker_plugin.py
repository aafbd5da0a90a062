"""The Dask worker plugin that keeps a stop from outside from counting against clips."""

from __future__ import annotations

import logging
import os
import signal
import threading

from distributed import WorkerPlugin

from pipeline.engine.claims import release_in_flight
from pipeline.executor import LOCAL_WORKER

log = logging.getLogger(__name__)


class ReleaseOnClose(WorkerPlugin):
    """When its worker is stopped while on a shard (SIGTERM from the batch system at walltime or preemption,
    retired before its walltime, the cluster shutting down), the tries in flight are taken back before the
    process goes: not the clips' fault. A worker killed outright (SIGKILL, the OOM killer, a crash it
    caused) runs no code, so its tries stay counted."""

    name = "pipeline-release-tries"
    # Registered once per scheduler: another client registering it again (a second driver on a shared scheduler,
    # each stage of one invocation) would make every worker tear this one down first, which takes back the tries
    # in flight there as if the worker were closing.
    idempotent = True

    def setup(self, worker: object) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if os.environ.get(LOCAL_WORKER):  # a worker of a cluster the driver started: Ctrl-C is the driver's
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: object) -> None:
            _release("SIGTERM")
            if callable(previous):
                previous(signum, frame)
            else:  # the default: die of the signal, as before
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_sigterm)

    def teardown(self, worker: object) -> None:
        _release("worker closing")


def _release(why: str) -> None:
    released = release_in_flight()
    if released:
        log.warning("%s: %d clip tr%s in flight released, not counted against the clips", why, released,
                    "y" if released == 1 else "ies")
