"""A packed batch as the feeder gives it to the segmenter (masks/feed.py): launched, failed at launch, or to be
run when its masks are taken; its pieces put in one array only when asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.decode import FrameBatch
from pipeline.segment import FrameMasks
from pipeline.segment.base import Launched

Packed = list[tuple[Any, FrameBatch]]  # (the clip each piece is of, a FedClip; the piece), in batch order


def taken(started: "Started") -> list[FrameMasks]:
    """A started batch's results (or its launch's error, raised), which it then no longer holds: what a launch
    kept on the device is free before a batch out of memory runs again in halves."""
    launched, error = started.launched, started.error
    started.launched = started.error = None
    if error is not None:
        try:
            raise error
        finally:
            del error  # else this frame, held by the error's traceback, would hold the error: a cycle
    return launched.result()


@dataclass(eq=False, kw_only=True)
class Started:
    """A packed batch given to the segmenter: launched (its masks on their way), failed at launch, or neither (a
    segmenter without `launch`, run when the batch is completed)."""

    live: Packed
    capacity: int  # the batch's size as the segmenter runs it (`Feeder.capacity`)
    launched: Launched | None = None
    error: Exception | None = None
    whole: FrameBatch | None = field(default=None, repr=False)  # the pieces as one batch, once asked for (`batch`)

    @classmethod
    def of(cls, batch: FrameBatch) -> "Started":
        """A batch already in one array, not yet run."""
        return cls(live=[], capacity=batch.capacity, whole=batch)

    @property
    def batch(self) -> FrameBatch:
        """The pieces' frames as one batch at the capacity: put together only when asked for, which a launched
        batch never is unless it runs out of device memory (its pieces cross to the device as they are)."""
        if self.whole is None:
            self.whole = FrameBatch.concat([piece for _, piece in self.live], capacity=self.capacity)
        return self.whole
