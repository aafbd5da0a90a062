"""A segmenter for tests: keys the grey levels of the sample's shape clips, so its masks are the exact truth."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

from pipeline.datasets.sample import OBJECT_VALUE, PERSON_VALUE
from pipeline.decode import FrameBatch
from pipeline.segment.base import FrameMasks, Ready, SegmenterSpec, resize_masks

BOX = 1


class LumaKeySegmenter:
    """Person = near-white pixels, box = mid-grey pixels; one instance each when present."""

    names = {0: "person", BOX: "box"}

    def __init__(self, spec: SegmenterSpec) -> None:
        self.spec = spec

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        out = []
        for frame in batch.frames.astype(np.int16):
            grey = frame.mean(axis=2)
            person = grey > (PERSON_VALUE + OBJECT_VALUE) / 2
            box = np.abs(grey - OBJECT_VALUE) < 32
            found = [(m, c) for m, c in ((person, 0), (box, BOX)) if m.any()]
            if not found:
                out.append(FrameMasks.empty(batch.height, batch.width))
                continue
            masks = resize_masks(np.stack([m for m, _ in found]), batch.height, batch.width)
            out.append(FrameMasks.from_masks(masks, np.ones(len(found)), [c for _, c in found]))
        return out

    def provenance(self) -> dict[str, str]:
        return {"model": "luma key (tests)"}


def bright(batch: FrameBatch) -> bool:
    """Whether the batch holds a bright frame (one of a bright clip's, whatever other clips share the batch)."""
    return bool((batch.frames.reshape(len(batch), -1).mean(axis=1) > 100).any())


class FailingSegmenter(LumaKeySegmenter):
    """Raises on any batch holding a bright clip's frames: a model crash in the middle of a shard."""

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        if bright(batch):
            raise RuntimeError("injected model failure")
        return super().segment(batch)


class SlowLumaSegmenter(LumaKeySegmenter):
    """The luma key, sleeping FAULT_SLEEP seconds per batch; where FAULT_MARKS names a folder, it first leaves
    a file there named by its process id (holding its SLURM job id, if any), so a fault test knows which
    process is mid-shard and can kill it."""

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        if os.environ.get("FAULT_MARKS"):
            Path(os.environ["FAULT_MARKS"], str(os.getpid())).write_text(os.environ.get("SLURM_JOB_ID", ""))
        time.sleep(float(os.environ.get("FAULT_SLEEP", "0")))
        return super().segment(batch)


class WorkerKillingSegmenter(LumaKeySegmenter):
    """Kills its own process (SIGKILL) on any batch holding a bright clip's frames: a clip that crashes its
    worker every time (a decoder segfault, the kernel's OOM killer). Only for runs on worker processes."""

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        if bright(batch):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().segment(batch)


class MemoryGrowingSegmenter(LumaKeySegmenter):
    """On any batch holding a bright clip's frames, takes memory (and writes it) until its worker is stopped: a
    clip that takes every worker past its memory limit. Only for runs on worker processes with a limit."""

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        held = []
        while bright(batch):  # 1 GB/s: the nanny (every 100 ms) finds it past the limit, and its SIGTERM handled
            held.append(np.ones(50 << 20, np.uint8))  # before the next look, which would SIGKILL it
            time.sleep(0.05)
        return super().segment(batch)


class BoxSegmenter(LumaKeySegmenter):
    """One person per frame, the middle quarter of it, without looking at the pixels: masks at the source size
    for the cost of the pipeline around the model (the memory test on 4K video)."""

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        mask = np.zeros((1, batch.height, batch.width), bool)
        mask[:, batch.height // 4 : 3 * batch.height // 4, batch.width // 4 : 3 * batch.width // 4] = True
        return [FrameMasks.from_masks(mask, np.ones(1), [0]) for _ in range(len(batch))]


class DeviceErrorOnceSegmenter(LumaKeySegmenter):
    """Raises what a broken GPU raises (torch's RuntimeError "CUDA error: …"; a MemoryError with
    FAULT_KIND=memory) on its first batch after the file FAULT_ONCE names appears, removing the file."""

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        flag = Path(os.environ.get("FAULT_ONCE", "/nonexistent"))
        if flag.exists():
            flag.unlink()
            if os.environ.get("FAULT_KIND") == "memory":
                raise MemoryError("out of host memory")
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().segment(batch)


class MemoryHogSegmenter(LumaKeySegmenter):
    """Runs out of memory on any batch holding a bright clip's frames, every time and on any machine: a clip
    that is its own problem although what it raises looks like the machine's."""

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        if bright(batch):
            raise MemoryError("out of host memory")
        return super().segment(batch)


class Launching:
    """Another segmenter with `launch`, as a GPU segmenter has: its masks are made when taken (or at launch,
    `eager`, so that its errors are raised there), from the pieces as they are then (a GPU reads them after the
    launch); `events` records launches and results in order."""

    def __init__(self, inner, *, eager: bool = False) -> None:
        self.inner, self.names, self.eager, self.events = inner, inner.names, eager, []
        self.buffers, self.in_buffers = [], 0  # arrays handed out for frames, and launches whose pieces are in them

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        return self.inner.segment(batch)

    def frame_memory(self, budget):
        def memory(shape: tuple[int, ...]) -> np.ndarray:
            self.buffers.append(np.full(shape, 7, dtype=np.uint8))  # what a decoder does not write stays 7
            return self.buffers[-1]

        return memory

    def launch(self, pieces: list[FrameBatch], *, capacity: int = 0):
        self.events.append("launch")
        self.in_buffers += all(any(np.shares_memory(piece.frames, buffer) for buffer in self.buffers)
                               for piece in pieces)
        if self.eager:
            return Ready(self.inner.segment(FrameBatch.concat(pieces, capacity=capacity)))
        return Later(self, pieces, capacity)

    def provenance(self) -> dict[str, str]:
        return self.inner.provenance()


class Later:
    def __init__(self, owner: Launching, pieces: list[FrameBatch], capacity: int) -> None:
        self.owner, self.pieces, self.capacity = owner, pieces, capacity

    def result(self) -> list[FrameMasks]:
        self.owner.events.append("result")
        return self.owner.inner.segment(FrameBatch.concat(self.pieces, capacity=self.capacity))
