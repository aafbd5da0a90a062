"""What feeding a GPU changes in the process around the feeder (masks/feed.py): the interpreter's switch
interval while it runs, and the device's memory cache handed back after a batch runs out of it."""

from __future__ import annotations

import contextlib
import sys
import threading

SWITCH_INTERVAL = 0.0005  # s: the interpreter's switch interval while feeding a GPU (Python's default: 0.005)

_switching = {"users": 0, "before": 0.0}  # feeders inside `switching`, and the interval to put back
_switching_lock = threading.Lock()


@contextlib.contextmanager
def switching(often: bool):
    """With `often`, the interpreter switches threads every SWITCH_INTERVAL: a decoder thread that needs the lock
    back (after each call into PyAV) then waits 0.5 ms for a busy inference thread, not 5 ms. Measured on a CPU
    with the inference thread's Python always busy, threads then decoded 7-10× more frames, the busy thread
    doing 10% less (docs/PERFORMANCE.md, `python -m pipeline.bench decoding`). Feeders inside it at once share
    it; the last one out puts the interval back."""
    if not often:
        yield
        return
    with _switching_lock:
        if not _switching["users"]:
            _switching["before"] = sys.getswitchinterval()
            sys.setswitchinterval(SWITCH_INTERVAL)
        _switching["users"] += 1
    try:
        yield
    finally:
        with _switching_lock:
            _switching["users"] -= 1
            if not _switching["users"]:
                sys.setswitchinterval(_switching["before"])


def free_device_cache() -> None:
    """Hand cached blocks back to the device (after running out of its memory), where torch is in use."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
