"""Per-item tries of a shard, counted in its journal (`engine.journal`), so a clip that keeps failing (or
killing its worker) is recorded with its error and given up after N tries instead of blocking the run, while
what is not the clip's fault (the machine, a stop from outside) never counts against it."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from pipeline.engine.failures import InfrastructureError, Interrupted, is_infrastructure
from pipeline.engine.journal import (
    BACK,
    BEGIN,
    FAILED,
    GAVE_UP,
    MACHINE,
    MADE,
    OK,
    Journal,
    TryCount,
    apply,
    read_tries,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class Tries:
    """How often each item of a shard was started, how many of those tries in a row did not finish, and the
    last error; kept in the shard's journal (`journal.Journal`, `.<shard>_tries.json`), one line appended as
    a try begins and one as it ends, so tries cut short by a killed worker or run count too. An item that
    finished once and is redone (its shard was cut short later) starts its count of failures again.

    Only the item's own errors count. A device, memory or disk error (failures.is_infrastructure) and a stop
    from outside (SIGTERM in this process: Interrupted; a Dask worker closing: `release_in_flight`) take the try
    back: the item is not to blame, and the process gives the shard up. An item that meets such an error on
    `max_tries` tries in a row, each in a fresh process, is given up as its own problem at its next try, before
    it touches the machine again. Tries count only at the item as it is now: each event says what the item was
    made from (`made`, ShardTask.made_from), and those of an item made from something else are not replayed.
    """

    def __init__(self, path: Path, max_tries: int, made: Mapping[str, str] | None = None) -> None:
        self.path, self.max_tries = Path(path), max_tries
        self._made = made or {}  # item key → what it is made from: each event says it, replays match it
        # a worker closing releases tries from another thread; reentrant, for a second Ctrl-C whose handler
        # (engine.signals) takes tries back while this thread is inside one of these methods
        self._lock = threading.RLock()
        self._journal = Journal(self.path)
        self._entries = read_tries(self.path, made)

    def run(self, key: str, attempt: Callable[[], T], give_up: Callable[[str], T]) -> T:
        """`attempt()` until it returns, at most `max_tries` failures in a row over all runs; then `give_up(error)`.
        The journal has the frames of what either returns (its `frames`), for the progress shown."""
        while True:
            verdict = self.verdict(key)
            if verdict is not None:
                outcome = give_up(verdict)
                self.gave_up(key, verdict, frames=getattr(outcome, "frames", 0))
                return outcome
            self.begin(key)
            try:
                result = attempt()
            except (Interrupted, KeyboardInterrupt):
                self.take_back(key)
                raise
            except Exception as exc:
                self.failed(key, exc)  # raises for a machine error
                continue
            self.succeeded(key, frames=getattr(result, "frames", 0))
            return result

    def verdict(self, key: str) -> str | None:
        """Why the item is to be given up without another try, or None."""
        entry = self._entry(key)
        if entry.failures >= self.max_tries:
            error = entry.error or "its worker died each time (killed, out of memory, or crashed)"
            log.error("%s: giving up after %d tries: %s", key, entry.failures, error)
            return f"gave up after {entry.failures} tries: {error}"
        if entry.machine >= self.max_tries:  # on as many fresh processes: the clip's own doing
            log.error("%s: giving up after %d device, memory or disk errors in a row: %s", key, entry.machine,
                      entry.error)
            return (f"gave up after {entry.machine} device, memory or disk errors in a row, each in a "
                    f"fresh process: {entry.error}")
        return None

    def clean(self, key: str) -> bool:
        """No try of the item has failed, died, met a machine error, or been cut short while shared, since it
        last finished: it may share a process with other items' tries."""
        entry = self._entries.get(key)
        return entry is None or not (entry.failures or entry.machine or entry.shared)

    def begin(self, key: str, *, shared: bool = False) -> None:
        """Count a try, in flight until `succeeded` or `failed`; a try whose worker dies stays counted as a
        failure. A `shared` try (the item is one of several in flight in one process) is not: a death or machine
        error then may be another item's doing, so it only marks the item to be tried alone next."""
        with self._lock:
            if _STOPPING.is_set():  # the worker is closing: what it still starts would be cut short, uncounted
                raise Interrupted(f"{key}: not tried: this worker is stopping")
            self._record({"ev": BEGIN, "key": key, "shared": shared})
            _IN_FLIGHT[(id(self), key)] = (self, key, shared)
        if _STOPPING.is_set():  # it began as the process was told to stop, maybe after the tries were released
            self.take_back(key)
            raise Interrupted(f"{key}: not tried: this worker is stopping")

    def succeeded(self, key: str, *, frames: int = 0) -> None:
        with self._lock:
            _IN_FLIGHT.pop((id(self), key), None)
            self._record({"ev": OK, "key": key, "frames": frames})

    def gave_up(self, key: str, error: str, *, frames: int = 0) -> None:
        """The item was given up (its outcome is settled, as failed), for the progress shown."""
        with self._lock:
            self._record({"ev": GAVE_UP, "key": key, "error": error, "frames": frames})

    def failed(self, key: str, exc: Exception) -> None:
        """The try raised: the item's own failure, recorded; or the machine's (device, memory, disk), taken back,
        counted apart (unless the try was shared), and raised as InfrastructureError (this process is done with
        the shard)."""
        error = f"{type(exc).__name__}: {exc}"
        if _STOPPING.is_set():  # what fails while the worker closes is not the item's doing
            self.take_back(key)
            raise Interrupted(f"{key}: {error}, while this worker was stopping") from exc
        if is_infrastructure(exc):
            self.take_back(key, machine_error=error)
            raise InfrastructureError(f"{key}: {error}") from exc
        with self._lock:
            record = _IN_FLIGHT.pop((id(self), key), None)
            # raised by the item's own work (the shared work tells items apart): counted now
            self._record({"ev": FAILED, "key": key, "error": error, "counted": record is not None and record[2]})
        log.warning("%s: try %d of %d failed: %s", key, self._entry(key).failures, self.max_tries, error)

    def abandon(self) -> None:
        """Take back every try of this shard still in flight (the work on several items at once stopped);
        shared ones stay marked, so each of those items is tried alone next."""
        with self._lock:
            pending = [key for tries, key, _ in list(_IN_FLIGHT.values()) if tries is self]
        for key in pending:
            self.take_back(key)

    def take_back(self, key: str, *, machine_error: str | None = None) -> None:
        """Uncount the try in flight on `key` (once, whoever calls first). With `machine_error` (the machine
        failed it), a try made alone also counts as a machine error: in a row, over workers and runs, those give
        the item up (`verdict`)."""
        with self._lock:
            record = _IN_FLIGHT.pop((id(self), key), None)
            if record is not None:
                self._record({"ev": BACK, "key": key, "shared": record[2]})  # a shared try counted no failure
                if machine_error is not None and not record[2]:
                    self._record({"ev": MACHINE, "key": key, "error": machine_error})

    def retried(self) -> dict[str, int]:
        """Item key → tries, for the items that needed more than one."""
        return {key: entry.tries for key, entry in sorted(self._entries.items()) if entry.tries > 1}

    def counts(self) -> dict[str, TryCount]:
        """Item key → its tries, as the journal has them now."""
        with self._lock:
            return {key: dataclasses.replace(entry) for key, entry in self._entries.items()}

    def open(self) -> None:
        """The journal exists from now on, until the shard commits (see Journal.open)."""
        with self._lock:
            self._journal.open()

    def clear(self) -> None:
        """The shard committed: its journal goes."""
        with self._lock:
            self._journal.remove()

    def close(self) -> None:
        with self._lock:
            self._journal.close()

    def _entry(self, key: str) -> TryCount:
        return self._entries.get(key) or TryCount()

    def _record(self, event: dict) -> None:
        if event["key"] in self._made:
            event = {**event, MADE: self._made[event["key"]]}
        self._journal.append(event)  # first: what is not on disk did not happen
        apply(self._entries, event)


_IN_FLIGHT: dict[tuple[int, str], tuple[Tries, str, bool]] = {}  # the tries this process is making now
_STOPPING = threading.Event()  # this process is going (its Dask worker closing): no try begins or counts


def release_in_flight(*, stopping: bool = False, machine_error: str | None = None) -> int:
    """Take back every try this process is making now (it is being stopped from outside); returns how many.
    `stopping`: the process is going, and the threads still on a shard are not told: from now on no try begins
    and none fails (each raises Interrupted, uncounted), so what is cut short when it exits counts against no
    item. `machine_error`: the machine stopped it (Dask's nanny, past the worker's memory limit); where the
    process was making one try, made alone, it counts as a machine error, so an item that does it every time is
    given up. With several in flight (threads of one worker on other shards) none is to blame: none counts."""
    if stopping:
        _STOPPING.set()
    pending = list(_IN_FLIGHT.values())
    for tries, key, _ in pending:
        tries.take_back(key, machine_error=machine_error if len(pending) == 1 else None)
    return len(pending)
