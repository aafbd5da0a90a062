"""Frames to the device and results back without the host waiting where it need not: frames decoded into pinned
memory (or staged there) copied on a side stream, copies to the host queued into pinned memory with an event, and
a side stream for work that may run beside the model's."""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import weakref
from typing import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)


class PinnedFrames:
    """Pinned memory for decoded frames, one count for the process (torch's pinned cache is the process's): each
    feeder on CUDA takes a share (`frame_memory`), called from its decoder threads, and each piece crosses to the
    GPU as it is (`Staging.copy`); past the budget, ordinary memory, whose batches are staged. torch rounds each
    pinned block up to a power of two and keeps a freed one cached for requests of its own rounded size only. The
    blocks in use are the ones handed out here and still alive, and the cached ones those freed here and not taken
    again, both counted here as torch rounds them (torch's own count of blocks in use did not fall when a block was
    freed, on an H200 with torch 2.11: docs/PERFORMANCE.md; other pinned memory, staging buffers and copies of
    results, is not the frames' budget). Both are measured against the largest budget an open share asked for (a
    clip of smaller frames, or a shard's retries alone beside its clips together, do not shrink it; a share is
    closed with its shard): a piece is pinned while the blocks in use and its own fit in four fifths of it; a new
    block that takes them and the cached ones past that hands the cached ones back (torch never gives them to this
    piece), if they are a fifth of the budget or more. Cached blocks are handed back at most once for each fifth of
    it freed and not reused, as far as this count knows: other pinned memory (staging buffers, copies of results)
    may take a block counted here as cached, and then a hand-back may come sooner. A share made while no frames
    are pinned (a shard starting) hands back all that torch keeps cached: earlier shards' frames of sizes it may
    never take again, staging buffers outgrown, copies of results. Where torch keeps no pinned-memory statistics (it
    may not count what it pins), nothing is pinned. A pinned array is safe to drop once its copy to the GPU is
    done, as a piece is once its batch's masks are taken (which wait for the copy), or once the feeder that
    launched it is gone."""

    def __init__(self) -> None:
        torch.cuda.init()  # torch keeps no pinned-memory statistics before CUDA is started
        self.emptied = 0  # times cached blocks were handed back as new ones crowded them
        self._in_use = 0  # bytes of the blocks handed out and alive, rounded as torch rounds them
        self._cached: collections.Counter[int] = collections.Counter()  # blocks freed and not taken again, by size
        self._freed: collections.deque[int] = collections.deque()  # blocks freed since last counted (a finalizer
        # only appends, which needs no lock: it may run in any thread, this one too, while the lock is held)
        self._shares: weakref.WeakSet[FramesShare] = weakref.WeakSet()  # the open ones, whose budgets hold (one
        # dropped without being closed holds until it is collected)
        self._lock = threading.Lock()
        self.counted = pinned_bytes() is not None  # whether this torch counts pinned memory at all
        if not self.counted:
            log.warning("this torch keeps no pinned-memory statistics: frames are decoded into ordinary memory and "
                        "staged for the GPU (a torch with torch.cuda.host_memory_stats pins them)")

    def share(self, budget: Callable[[int], int]) -> "FramesShare":
        """A feeder's memory for its decoders' frames, within `budget(frame_bytes)` bytes and every open share's;
        close it when the feeder is done."""
        share = FramesShare(self, budget)
        with self._lock:
            self._count_freed()
            if self.counted and not self._in_use:  # no frames pinned: what torch keeps cached goes back
                empty_pinned_cache()
                self._cached.clear()
            self._shares.add(share)
        return share

    def close(self, share: "FramesShare") -> None:
        """`share`'s budget no longer holds (its pieces still alive are counted until freed)."""
        with self._lock:
            self._shares.discard(share)

    @property
    def in_use(self) -> int:
        """Bytes of the pinned blocks handed out here and still alive."""
        with self._lock:
            self._count_freed()
            return self._in_use

    @property
    def cached(self) -> int:
        """Bytes of the blocks freed here and not taken again (torch keeps them, unless handed back)."""
        with self._lock:
            self._count_freed()
            return self._cached_bytes()

    def take(self, shape: tuple[int, ...], share: "FramesShare") -> np.ndarray | None:
        """A pinned array of `shape` for `share`, or None where the budget has no room (the share counts it)."""
        block = 1 << (int(np.prod(shape)) - 1).bit_length()  # what torch pins for it
        frame_bytes = int(np.prod(shape[1:]))
        with self._lock:
            self._count_freed()
            if frame_bytes not in share.seen:
                share.seen.add(frame_bytes)
                share.largest = max(share.largest, share.budget(frame_bytes))
            largest = max((open_share.largest for open_share in self._shares), default=0)
            room = largest * 4 // 5
            if not self.counted or self._in_use + block > room:  # the blocks in use and this one do not fit
                share.ordinary += 1
                return None
            array = torch.empty(shape, dtype=torch.uint8, pin_memory=True).numpy()  # a cached block, if free
            self._in_use += block
            if self._cached[block]:
                self._cached[block] -= 1  # taken again
            elif self._in_use + self._cached_bytes() > room:  # cached ones count
                if self._cached_bytes() >= largest // 5:
                    empty_pinned_cache()  # cached blocks of other sizes (never this one's): handed back
                    self._cached.clear()
                    self.emptied += 1
            weakref.finalize(array, self._freed.append, block).atexit = False  # views keep the array
            return array

    def _cached_bytes(self) -> int:
        return sum(size * n for size, n in self._cached.items())

    def _count_freed(self) -> None:
        """The blocks freed since last counted: no longer in use, cached (with the lock held)."""
        while self._freed:
            block = self._freed.popleft()
            self._in_use -= block
            self._cached[block] += 1


class FramesShare:
    """One feeder's memory for its decoders' frames (a FrameMemory): the process's `PinnedFrames` where they have
    room, ordinary memory past it, the pieces given ordinary memory counted as its own."""

    def __init__(self, frames: PinnedFrames, budget: Callable[[int], int]) -> None:
        self.frames, self.budget = frames, budget
        self.seen: set[int] = set()  # the frame sizes whose budget was asked for (changed with the frames' lock)
        self.largest = 0  # the largest of those budgets (with the frames' lock)
        self.ordinary = 0  # pieces given ordinary memory (no room, or no statistics to tell; with the frames' lock)

    def __call__(self, shape: tuple[int, ...]) -> np.ndarray:
        array = self.frames.take(shape, self)
        return array if array is not None else np.empty(shape, dtype=np.uint8)

    def close(self) -> None:
        self.frames.close(self)


_process_frames: PinnedFrames | None = None  # the count of the process's pinned frames, made at first use
_process_lock = threading.Lock()


def frame_memory(budget: Callable[[int], int]) -> FramesShare:
    """A CUDA feeder's memory for its decoders' frames (`Segmenter.frame_memory`): a share of the process's one
    `PinnedFrames`, whichever segmenter the feeder feeds."""
    global _process_frames
    with _process_lock:
        if _process_frames is None:
            _process_frames = PinnedFrames()
        return _process_frames.share(budget)


def pinned_bytes() -> int | None:
    """Bytes of all the pinned blocks torch holds (in use or cached), rounded as it rounds them; None where torch
    does not count them (then no frames are pinned)."""
    stats = getattr(torch.cuda, "host_memory_stats", None)
    counted = stats() if stats is not None else {}
    return counted.get("allocated_bytes.current")


def empty_pinned_cache() -> None:
    """Hand the pinned blocks torch keeps cached back to the system (cudaFreeHost waits for copies still reading a
    block): torch reuses a freed block only for requests of its own size rounded to a power of two."""
    empty = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
    empty = empty or getattr(torch._C, "_host_emptyCache", None)  # torch before `empty_host_cache`
    if empty is not None:
        empty()


class Staging:
    """Frames to a CUDA device, copied on a side stream (the model's stream waits for the copy, the host does
    not). Pieces in pinned memory (`PinnedFrames`) are copied each to its rows as they are; otherwise the pieces
    are first put together in one of two pinned buffers, used in turn, each reused once its last copy is done."""

    def __init__(self, device: torch.device, slots: int = 2) -> None:
        self.device, self.stream = device, torch.cuda.Stream(device)
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.done: list[torch.cuda.Event | None] = [None] * slots
        self.turn = 0
        self.waits = 0  # times a buffer's last copy was not done when it was needed again (the host waited)
        self.staged = 0  # batches copied into a buffer first (some of their frames were not pinned)

    def copy(self, pieces: list[np.ndarray], rows: int = 0) -> torch.Tensor:
        """The pieces' frames, one after the other, on the device, then black frames up to `rows`."""
        hosts = [torch.from_numpy(piece) for piece in pieces]
        count, slot = sum(map(len, hosts)), None
        if not all(host.is_pinned() for host in hosts):
            staged, slot = self._staged(pieces, count)
            hosts = [staged]
        with torch.cuda.stream(self.stream):
            pixels = torch.empty((max(rows, count), *hosts[0].shape[1:]), dtype=torch.uint8, device=self.device)
            offset = 0
            for host in hosts:
                pixels[offset:offset + len(host)].copy_(host, non_blocking=True)
                offset += len(host)
            pixels[count:].zero_()
            if slot is not None:
                self.done[slot] = torch.cuda.Event()
                self.done[slot].record(self.stream)
        main = torch.cuda.current_stream(self.device)
        main.wait_stream(self.stream)
        pixels.record_stream(main)
        return pixels

    def _staged(self, pieces: list[np.ndarray], count: int) -> tuple[torch.Tensor, int]:
        """The pieces copied into the next pinned buffer (once its last copy to the device is done), and which."""
        slot, self.turn = self.turn, (self.turn + 1) % len(self.buffers)
        if self.done[slot] is not None and not self.done[slot].query():
            self.done[slot].synchronize()  # two batches back: done by now unless the host runs ahead of the GPU
            self.waits += 1
        shape = (count, *pieces[0].shape[1:])
        size = int(np.prod(shape))
        if self.buffers[slot] is None or self.buffers[slot].numel() < size:
            self.buffers[slot] = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        host = self.buffers[slot][:size].view(shape)
        np.concatenate(pieces, out=host.numpy())
        self.staged += 1
        return host, slot


class HostCopy:
    """A device tensor's copy to the host, queued: on CUDA into pinned memory, with an event recorded after it on
    the current stream of the tensor's device (so `done` also marks everything queued before it there, whichever
    device is current); elsewhere made at once."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.done: torch.cuda.Event | None = None
        if tensor.device.type != "cuda":
            self.host = tensor.cpu()
            return
        self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        self.host.copy_(tensor, non_blocking=True)
        self.done = torch.cuda.Event()
        self.done.record(torch.cuda.current_stream(tensor.device))  # the copy's stream, not the current device's

    def numpy(self) -> np.ndarray:
        """The copy, once it is on the host (a wait for the device, on CUDA)."""
        if self.done is not None:
            self.done.synchronize()
        return self.host.numpy()


@contextlib.contextmanager
def side_stream(stream: torch.cuda.Stream | None, *, after: torch.cuda.Event | None):
    """Work queued inside runs on `stream` once `after` has happened (None: the current stream, as it is). The
    caller keeps the tensors it reads alive until that work is done (it waits for its results). If the work
    raises part way, the stream that was current waits for what was queued on `stream` before the error goes
    on: the tensors it read, made on that stream and dropped with the error, are not given to that stream's next
    work while `stream` may still read them (torch's allocator reuses a block at once on the stream it was made
    on)."""
    if stream is None:
        yield
        return
    if after is not None:
        stream.wait_event(after)
    outer = torch.cuda.current_stream(stream.device)
    try:
        with torch.cuda.stream(stream):
            yield
    except BaseException as error:
        try:
            outer.wait_stream(stream)
        except Exception:  # noqa: BLE001 - a context the error broke: the error itself goes on, not this one
            log.debug("could not make the stream wait after %r", error, exc_info=True)
        raise


def index_to_device(order: np.ndarray, device: torch.device) -> torch.Tensor:
    """An index array to the device without the host waiting for it (pinned, on CUDA)."""
    tensor = torch.from_numpy(order)
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
