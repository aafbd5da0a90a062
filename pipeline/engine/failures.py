"""Failure classes. Only an error raised by an item's own data counts as one of its tries; a broken device, a
full memory or disk, or a stop from outside (SIGTERM: walltime, preemption) never turns a good item into
`failed`: the shard is given up whole, untouched, and redone by the next run or another worker. (An item that
meets a device or memory error on every one of `max_tries` machines in a row is its own problem: see Tries.)
"""

from __future__ import annotations

import errno
import logging
import re
import signal

log = logging.getLogger(__name__)

# What a broken or exhausted device says (torch raises plain RuntimeErrors for most of these).
_DEVICE_MESSAGES = re.compile(
    r"CUDA error|CUDA out of memory|out of memory|CUBLAS_STATUS|CUDNN_STATUS|cuDNN error|NCCL error|"
    r"device-side assert|illegal memory access|ECC error|no CUDA-capable device|CUDA driver",
    re.IGNORECASE,
)
_DEVICE_OOM = re.compile(r"CUDA out of memory|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED|"
                         r"HIP out of memory|MPS backend out of memory", re.IGNORECASE)
_DEVICE_TYPES = {"OutOfMemoryError", "AcceleratorError", "CudaError"}  # torch.cuda.OutOfMemoryError, …

INFRASTRUCTURE_EXIT = 75  # a worker's exit code after a device error (EX_TEMPFAIL): its nanny starts a fresh one


class InfrastructureError(RuntimeError):
    """The machine failed the item, not its data: the shard is given up and redone elsewhere or later."""


class Interrupted(KeyboardInterrupt):
    """This process was asked to stop (Ctrl-C, SIGTERM) while working; what it was doing is not the item's
    fault. `signum` is the signal (the exit code is 128 + signum). A KeyboardInterrupt, so callers that stop on
    Ctrl-C stop on it."""

    def __init__(self, message: str, *, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signal.SIGINT if signum is None else signum


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}  # full disk, quota, read-only, I/O error
_PROCESS_ERRNOS = {errno.EMFILE, errno.ENFILE}  # out of file handles: the process's, not the clip's


def is_infrastructure(exc: BaseException) -> bool:
    """A device error, memory exhausted on the device or the host, a disk that cannot take the output, or a
    process out of file handles or threads."""
    if isinstance(exc, (MemoryError, InfrastructureError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS | _PROCESS_ERRNOS:
        return True
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):  # out of threads
        return True
    if any(cls.__name__ in _DEVICE_TYPES for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and bool(_DEVICE_MESSAGES.search(str(exc)))


def is_device_out_of_memory(exc: BaseException) -> bool:
    """The device's memory ran out (not the host's): a smaller batch may fit."""
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and bool(_DEVICE_OOM.search(str(exc)))


def in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False

