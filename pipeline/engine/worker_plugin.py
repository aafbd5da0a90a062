"""The Dask worker plugin that keeps a stop from outside from counting against clips, and a stop for memory from
being taken for one."""

from __future__ import annotations

import logging
import os
import signal
import threading

from distributed import WorkerPlugin

from pipeline.engine.claims import release_in_flight
from pipeline.executor import LOCAL_WORKER

log = logging.getLogger(__name__)

# A SIGTERM is Dask's nanny's memory stop where this process's memory is at least this share of the point at which
# the nanny sends it (the limit's `distributed.worker.memory.terminate` fraction): a little below it, as the item's
# thread may have let go of some since the nanny measured, and well above the 80% at which Dask pauses a worker
# (where a walltime stop may find one).
NEAR_TERMINATE = 0.98


class ReleaseOnClose(WorkerPlugin):
    """When its worker is stopped while on a shard (SIGTERM from the batch system at walltime or preemption,
    retired before its walltime, the cluster shutting down), the tries in flight are taken back before the
    process goes: not the clips' fault. From then on no try begins or counts in this process (its threads are
    not told to stop, and what they start would be cut short when it exits). A worker killed outright (SIGKILL,
    the OOM killer, a crash it caused) runs no code, so its tries stay counted. Nor is a SIGTERM from Dask's own
    nanny, sent once the worker is past its memory limit, a stop from outside: the worker's one try, made alone,
    then counts as a machine error, so a clip that takes every worker past its memory is given up after as many
    tries (with several tries in flight, none is to blame)."""

    name = "pipeline-release-tries"
    # Registered once per scheduler: another client registering it again (a second driver on a shared scheduler,
    # each stage of one invocation) would make every worker tear this one down first, which takes back the tries
    # in flight there as if the worker were closing.
    idempotent = True

    _own_process = False  # set up in a worker process of its own (not threads of the driver's)

    def setup(self, worker: object) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._own_process = True
        if os.environ.get(LOCAL_WORKER):  # a worker of a cluster the driver started: Ctrl-C is the driver's
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: object) -> None:
            _release("SIGTERM", stopping=True, machine_error=past_memory_limit(worker))
            if callable(previous):
                previous(signum, frame)
            else:  # the default: die of the signal, as before
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_sigterm)

    def teardown(self, worker: object) -> None:
        _release("worker closing", stopping=self._own_process)


def past_memory_limit(worker: object) -> str | None:
    """Why the nanny stopped this worker, where its memory is near the share of the limit at which the nanny does
    (None where it is not, or where the worker has no limit)."""
    import dask
    import psutil

    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    fraction = dask.config.get("distributed.worker.memory.terminate", default=False)
    if not limit or not fraction:
        return None
    used = psutil.Process().memory_info().rss
    if used < NEAR_TERMINATE * fraction * limit:
        return None
    return (f"MemoryError: the worker's memory passed {fraction:.0%} of its limit ({used / 2**30:.1f} of "
            f"{limit / 2**30:.1f} GiB) and Dask stopped it")


def _release(why: str, **how: object) -> None:
    released = release_in_flight(**how)
    if released:
        log.warning("%s: %d clip tr%s in flight released, %s", why, released, "y" if released == 1 else "ies",
                    "counted as the machine's errors" if how.get("machine_error") else "not counted against the clips")
