"""Frames to the device and results back without the host waiting where it need not: pinned staging buffers
copied on a side stream, copies to the host queued into pinned memory with an event, and a side stream for work
that may run beside the model's."""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def pinned_frames(pieces: list[np.ndarray]) -> np.ndarray:
    """The pieces' frames, one after the other, in one uint8 array in pinned host memory: it crosses to the GPU
    without a staging copy (`Staging.copy`). They are copied in one torch call, which lets go of the interpreter
    lock once: numpy's concatenate lets go and takes it back for each piece, and each time it may wait a switch
    interval for a busy thread (docs/PERFORMANCE.md). The array's block goes back to torch's pinned-memory cache
    when it is dropped, with no event to wait for (torch records none for a copy from an array it did not hand
    out): the array must live until its copy to the GPU is done, as a batch's does until its masks are taken
    (which wait for it), or until the feeder that launched it is gone."""
    out = torch.empty((sum(map(len, pieces)), *pieces[0].shape[1:]), dtype=torch.uint8, pin_memory=True)
    torch.cat([torch.from_numpy(piece) for piece in pieces], out=out)
    return out.numpy()


class Staging:
    """Frames to a CUDA device, copied on a side stream (the model's stream waits for the copy, the host does
    not). Frames already in pinned memory (`pinned_frames`) go as they are; others through two pinned buffers in
    turn, each reused once its last copy is done."""

    def __init__(self, device: torch.device, slots: int = 2) -> None:
        self.device, self.stream = device, torch.cuda.Stream(device)
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.done: list[torch.cuda.Event | None] = [None] * slots
        self.turn = 0
        self.waits = 0  # times a buffer's last copy was not done when it was needed again (the host waited)
        self.staged = 0  # batches copied into a buffer first (their frames were not pinned)

    def copy(self, frames: np.ndarray) -> torch.Tensor:
        host, slot = torch.from_numpy(frames), None
        if not host.is_pinned():
            host, slot = self._staged(frames)
        with torch.cuda.stream(self.stream):
            pixels = host.to(self.device, non_blocking=True)
            if slot is not None:
                self.done[slot] = torch.cuda.Event()
                self.done[slot].record(self.stream)
        main = torch.cuda.current_stream(self.device)
        main.wait_stream(self.stream)
        pixels.record_stream(main)
        return pixels

    def _staged(self, frames: np.ndarray) -> tuple[torch.Tensor, int]:
        """The frames copied into the next pinned buffer (once its last copy to the device is done), and which."""
        slot, self.turn = self.turn, (self.turn + 1) % len(self.buffers)
        if self.done[slot] is not None and not self.done[slot].query():
            self.done[slot].synchronize()  # two batches back: done by now unless the host runs ahead of the GPU
            self.waits += 1
        if self.buffers[slot] is None or self.buffers[slot].numel() < frames.size:
            self.buffers[slot] = torch.empty(frames.size, dtype=torch.uint8, pin_memory=True)
        host = self.buffers[slot][:frames.size].view(frames.shape)
        host.numpy()[...] = frames
        self.staged += 1
        return host, slot


class HostCopy:
    """A device tensor's copy to the host, queued: on CUDA into pinned memory, with an event recorded after it on
    the current stream (so `done` also marks everything queued before it); elsewhere made at once."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.done: torch.cuda.Event | None = None
        if tensor.device.type != "cuda":
            self.host = tensor.cpu()
            return
        self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        self.host.copy_(tensor, non_blocking=True)
        self.done = torch.cuda.Event()
        self.done.record()

    def numpy(self) -> np.ndarray:
        """The copy, once it is on the host (a wait for the device, on CUDA)."""
        if self.done is not None:
            self.done.synchronize()
        return self.host.numpy()


@contextlib.contextmanager
def side_stream(stream: torch.cuda.Stream | None, *, after: torch.cuda.Event | None):
    """Work queued inside runs on `stream` once `after` has happened (None: the current stream, as it is). The
    caller keeps the tensors it reads alive until that work is done (it waits for its results)."""
    if stream is None:
        yield
        return
    if after is not None:
        stream.wait_event(after)
    with torch.cuda.stream(stream):
        yield


def gathered(pieces: list[np.ndarray], *, pinned: bool) -> np.ndarray:
    """The pieces' frames in one array: in pinned memory (`pinned_frames`), or in ordinary memory."""
    return pinned_frames(pieces) if pinned else np.concatenate(pieces)


def index_to_device(order: np.ndarray, device: torch.device) -> torch.Tensor:
    """An index array to the device without the host waiting for it (pinned, on CUDA)."""
    tensor = torch.from_numpy(order)
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
