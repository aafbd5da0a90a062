"""A segmenter for tests: keys the grey levels of the sample's shape clips, so its masks are the exact truth."""

from __future__ import annotations

import numpy as np

from pipeline.datasets.sample import OBJECT_VALUE, PERSON_VALUE
from pipeline.decode import FrameBatch
from pipeline.segment.base import FrameMasks, SegmenterSpec, resize_masks

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


class FailingSegmenter(LumaKeySegmenter):
    """Raises on any clip whose frames are bright on average: a model crash in the middle of a shard."""

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        if batch.frames.mean() > 100:
            raise RuntimeError("injected model failure")
        return super().segment(batch)
