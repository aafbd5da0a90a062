"""What lets restarts, retries and concurrent runs share one output folder: an exclusive claim per shard (and
who holds it, asked without taking it), stale temporary files cleared under it; the per-clip count of tries
kept beside the shard is `engine.tries`.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import logging
import os
import shutil
import socket
import struct
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.engine.journal import journal_path
from pipeline.engine.tries import Tries, release_in_flight  # noqa: F401 - imported from here before

log = logging.getLogger(__name__)


CLAIM_WAIT = 600.0  # seconds a run waits for another holder of a shard's claim before giving the shard up here


class ShardBusy(Exception):
    """Another process (another run, or a worker Dask still believes lost) holds the shard's claim."""


@contextmanager
def claim(marker: Path, *, wait: float | None = None) -> Iterator[None]:
    """Hold the shard whose done marker is `marker` for the block, waiting up to `wait` seconds (CLAIM_WAIT) for
    another holder to let go (then ShardBusy; a run that gets it counts the shard done if the holder commits it
    before that run ends).

    The claim is a POSIX record lock on a hidden `.<marker>.lock` file beside it: the kernel releases it when
    its holder exits or is killed (SIGKILL, a lost node), and NFS propagates it through its lock manager, so a
    stale claim never blocks a rerun. Waiting covers a holder that is finishing the shard anyway (a second run
    on the same folder, or a retired worker's thread that Dask has already rescheduled); the caller then finds
    the shard done. While held, the temporary files a killed writer left for the shard are removed (hidden
    names that start with the shard's name: see atomic.temp_name). A search per shard of a folder of 30k files
    was most of a shard's overhead at Kinetics scale, so a process lists each folder's temporary files once and
    searches again only where the shard's journal says a writer of it was cut short since.
    """
    marker = Path(marker)
    marker.parent.mkdir(parents=True, exist_ok=True)
    lock_path = marker.with_name(f".{marker.name}.lock")
    shard = marker.name.removesuffix("_stats.json")
    wait = CLAIM_WAIT if wait is None else wait
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
            remove_stale_temps(_stale_temps(marker.parent, shard, fresh=journal_path(marker).exists()))
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


def claim_held(marker: Path) -> bool | None:
    """Whether a process holds the claim on the shard of `marker` now, asked without taking it: F_GETLK on a
    read-only descriptor (nothing is written; on NFS the lock manager answers for every client). None where
    the filesystem cannot say."""
    try:
        fd = os.open(Path(marker).with_name(f".{Path(marker).name}.lock"), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:  # struct flock on Linux: type, whence, start, len (whole file), pid
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        return struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))[0] != fcntl.F_UNLCK
    except OSError:
        return None
    finally:
        os.close(fd)


def claim_holder(marker: Path) -> str:
    """The `host:pid` that last claimed the shard of `marker`, as it wrote it in the lock file."""
    return _holder(Path(marker).with_name(f".{Path(marker).name}.lock"))


_TEMPS: dict[Path, set[str]] = {}  # folder → its temporary files' names, as this process first listed them


def _stale_temps(folder: Path, shard: str, *, fresh: bool) -> list[Path]:
    """The temporary files of `shard` in `folder`: listed now (`fresh`), or from this process's first listing."""
    with _THREAD_LOCKS_GUARD:
        names = _TEMPS.get(folder)
        if names is None or fresh:
            with os.scandir(folder) as entries:
                names = _TEMPS[folder] = {e.name for e in entries if e.name.startswith(".") and ".tmp-" in e.name}
        stale = [name for name in names if fnmatch.fnmatchcase(name, f".{shard}[._]*.tmp-*")]
        names.difference_update(stale)
    return [folder / name for name in stale]


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


def worker_name() -> str:
    """host:pid of this process, as stats files record who computed a shard."""
    return f"{socket.gethostname()}:{os.getpid()}"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
