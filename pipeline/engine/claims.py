"""What lets restarts, retries and concurrent runs share one output folder: an exclusive claim per shard, and
a per-clip count of tries kept beside the shard, so a clip that keeps failing (or killing its worker) is
recorded with its error and given up after N tries instead of blocking the run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from pipeline.atomic import write_json
from pipeline.engine.failures import InfrastructureError, Interrupted, is_infrastructure

log = logging.getLogger(__name__)

T = TypeVar("T")


class ShardBusy(Exception):
    """Another process (another run, or a worker Dask still believes lost) holds the shard's claim."""


@contextmanager
def claim(marker: Path, *, wait: float = 600.0) -> Iterator[None]:
    """Hold the shard whose done marker is `marker` for the block, waiting up to `wait` seconds for another
    holder to let go (then ShardBusy).

    The claim is a POSIX record lock on a hidden `.<marker>.lock` file beside it: the kernel releases it when
    its holder exits or is killed (SIGKILL, a lost node), and NFS propagates it through its lock manager, so a
    stale claim never blocks a rerun. Waiting covers a holder that is finishing the shard anyway (a second run
    on the same folder, or a retired worker's thread that Dask has already rescheduled); the caller then finds
    the shard done. While held, the temporary files a killed writer left for the shard are removed (hidden
    names that start with the shard's name: see atomic.temp_name).
    """
    marker = Path(marker)
    marker.parent.mkdir(parents=True, exist_ok=True)
    lock_path = marker.with_name(f".{marker.name}.lock")
    shard = marker.name.removesuffix("_stats.json")
    deadline = time.monotonic() + wait
    # A POSIX lock belongs to the whole process, and closing any descriptor of its file drops it: so threads of
    # one process take turns on a lock of their own first, and only the one holding it opens the file.
    own = _thread_lock(str(lock_path))
    if not own.acquire(timeout=wait):
        raise ShardBusy(f"{shard}: being computed by another thread of this process for over {wait:.0f}s")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while not _try_lock(fd):
                if time.monotonic() >= deadline:
                    raise ShardBusy(f"{shard}: being computed by another process ({_holder(lock_path)}) for over "
                                    f"{wait:.0f}s; rerun when it has finished")
                time.sleep(min(1.0, wait / 10))
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode(), 0)
            remove_stale_temps(marker.parent.glob(f".{shard}[._]*.tmp-*"))
            yield
        finally:
            os.close(fd)  # releases the lock
    finally:
        own.release()


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(name: str) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(name, threading.Lock())


def _try_lock(fd: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        return False


def claimed_elsewhere(folder: Path) -> bool:
    """Whether another process holds a claim on anything in `folder` (a concurrent run at work there)."""
    for lock_path in Path(folder).glob(".*.lock"):
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except OSError:
            continue
        try:
            if not _try_lock(fd):
                return True
        finally:
            os.close(fd)  # releases the lock, if it was taken here
    return False


def remove_stale_temps(stale_files: Iterable[Path]) -> None:
    """Delete temporary files or folders a writer that did not finish left behind."""
    for stale in list(stale_files):
        log.info("removing %s, left by a writer that did not finish", stale)
        shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink(missing_ok=True)


def temps_of(path: Path) -> Iterator[Path]:
    """The temporary siblings (`.<name>.tmp-*`, see atomic.temp_name) of one output path."""
    return Path(path).parent.glob(f".{Path(path).name}.tmp-*")


def _holder(lock_path: Path) -> str:
    try:
        return lock_path.read_text().strip() or "unknown holder"
    except OSError:
        return "unknown holder"


class Tries:
    """How often each item of a shard was started, how many of those tries in a row did not finish, and the
    last error; on disk (`.<shard>_tries.json`), rewritten atomically around every try, so tries cut short by a
    killed worker or run count too. An item that finished once and is redone (its shard was cut short later)
    starts its count of failures again.

    Only the item's own errors count. A device, memory or disk error (failures.is_infrastructure) and a stop
    from outside (SIGTERM in this process: Interrupted; a Dask worker closing: `release_in_flight`) take the try
    back: the item is not to blame, and the process gives the shard up. An item that meets such an error on
    `max_tries` tries in a row, each in a fresh process, is given up as its own problem at its next try, before
    it touches the machine again.
    """

    def __init__(self, path: Path, max_tries: int) -> None:
        self.path, self.max_tries = Path(path), max_tries
        # a worker closing releases tries from another thread; reentrant, for a second Ctrl-C whose handler
        # (engine.signals) takes tries back while this thread is inside one of these methods
        self._lock = threading.RLock()
        try:
            self._entries: dict[str, dict] = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self._entries = {}

    def run(self, key: str, attempt: Callable[[], T], give_up: Callable[[str], T]) -> T:
        """`attempt()` until it returns, at most `max_tries` failures in a row over all runs; then `give_up(error)`."""
        while True:
            verdict = self.verdict(key)
            if verdict is not None:
                return give_up(verdict)
            self.begin(key)
            try:
                result = attempt()
            except (Interrupted, KeyboardInterrupt):
                self.take_back(self._entry(key))
                raise
            except Exception as exc:
                self.failed(key, exc)  # raises for a machine error
                continue
            self.succeeded(key)
            return result

    def verdict(self, key: str) -> str | None:
        """Why the item is to be given up without another try, or None."""
        entry = self._entry(key)
        if entry["failures"] >= self.max_tries:
            error = entry["error"] or "its worker died each time (killed, out of memory, or crashed)"
            log.error("%s: giving up after %d tries: %s", key, entry["failures"], error)
            return f"gave up after {entry['failures']} tries: {error}"
        if entry["machine"] >= self.max_tries:  # on as many fresh processes: the clip's own doing
            log.error("%s: giving up after %d device, memory or disk errors in a row: %s", key, entry["machine"],
                      entry["error"])
            return (f"gave up after {entry['machine']} device, memory or disk errors in a row, each in a "
                    f"fresh process: {entry['error']}")
        return None

    def clean(self, key: str) -> bool:
        """No try of the item has failed, died, met a machine error, or been cut short while shared, since it
        last finished: it may share a process with other items' tries."""
        entry = self._entries.get(key)
        return entry is None or not (entry["failures"] or entry.get("machine") or entry.get("shared"))

    def begin(self, key: str, *, shared: bool = False) -> None:
        """Count a try, in flight until `succeeded` or `failed`; a try whose worker dies stays counted as a
        failure. A `shared` try (the item is one of several in flight in one process) is not: a death or machine
        error then may be another item's doing, so it only marks the item to be tried alone next."""
        entry = self._entry(key)
        with self._lock:
            entry["tries"] += 1
            if shared:
                entry["shared"] = True  # until it finishes: not clean, so its next try is alone
            else:
                entry["failures"] += 1
            entry["error"] = None
            self._save()
            _IN_FLIGHT[id(entry)] = (self, entry, shared)

    def succeeded(self, key: str) -> None:
        entry = self._entry(key)
        with self._lock:
            _IN_FLIGHT.pop(id(entry), None)
            entry["failures"] = entry["machine"] = 0
            entry.pop("shared", None)
            self._save()

    def failed(self, key: str, exc: Exception) -> None:
        """The try raised: the item's own failure, recorded; or the machine's (device, memory, disk), taken back,
        counted apart (unless the try was shared), and raised as InfrastructureError (this process is done with
        the shard)."""
        entry = self._entry(key)
        error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            record = _IN_FLIGHT.get(id(entry))
        shared = record is not None and record[2]
        if is_infrastructure(exc):
            self.take_back(entry)
            if not shared:
                with self._lock:
                    entry["machine"] += 1  # in a row, over workers and runs
                    entry["error"] = error
                    self._save()
            raise InfrastructureError(f"{key}: {error}") from exc
        with self._lock:
            record = _IN_FLIGHT.pop(id(entry), None)
            if record is not None and record[2]:  # raised by the item's own work (the shared work tells items
                entry["failures"] += 1  # apart): counted
            entry["error"] = error
            self._save()
        log.warning("%s: try %d of %d failed: %s", key, entry["failures"], self.max_tries, error)

    def abandon(self) -> None:
        """Take back every try of this shard still in flight (the work on several items at once stopped);
        shared ones stay marked, so each of those items is tried alone next."""
        with self._lock:
            pending = [entry for tries, entry, _ in _IN_FLIGHT.values() if tries is self]
        for entry in pending:
            self.take_back(entry)

    def _entry(self, key: str) -> dict:
        entry = self._entries.setdefault(key, {"tries": 0, "failures": 0, "machine": 0, "error": None})
        entry.setdefault("machine", 0)
        return entry

    def take_back(self, entry: dict) -> None:
        """Uncount the try in flight on `entry` (once, whoever calls first)."""
        with self._lock:
            record = _IN_FLIGHT.pop(id(entry), None)
            if record is None:
                return
            entry["tries"] -= 1
            if not record[2]:  # a shared try counted no failure
                entry["failures"] -= 1
            self._save()

    def retried(self) -> dict[str, int]:
        """Item key → tries, for the items that needed more than one."""
        return {key: entry["tries"] for key, entry in sorted(self._entries.items()) if entry["tries"] > 1}

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def _save(self) -> None:
        write_json(self.path, self._entries)


_IN_FLIGHT: dict[int, tuple[Tries, dict, bool]] = {}  # the tries this process is making now, by entry


def release_in_flight() -> int:
    """Take back every try this process is making now (it is being stopped from outside); returns how many."""
    pending = list(_IN_FLIGHT.values())
    for tries, entry, _ in pending:
        tries.take_back(entry)
    return len(pending)


def tries_path(marker: Path) -> Path:
    """Where the tries of the shard whose done marker is `marker` are kept."""
    return Path(marker).with_name(f".{Path(marker).name.removesuffix('_stats.json')}_tries.json")


def worker_name() -> str:
    """host:pid of this process, as stats files record who computed a shard."""
    return f"{socket.gethostname()}:{os.getpid()}"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
