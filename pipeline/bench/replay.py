"""A segmenter that hands back masks a run already made, by frame position, in place of a model: the masks stage
with it does everything but the segmenter's work (decode, packing, tracking, the tables, writing), so its
frames/s bounds from above what the host side of the stage keeps up with (`make bench`'s `host_frames_per_s`):
the segmenter's own host work (launching, post-processing, making RLE strings) is not in it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from pipeline.decode import FrameBatch, FrameMemory
from pipeline.masks.store import iter_shard
from pipeline.masks.tables import ShardFiles
from pipeline.segment import FrameMasks, SegmenterSpec
from pipeline.segment.base import Launched, Ready

BACKEND = "pipeline.bench.replay:ReplaySegmenter"


def replay_spec(spec: SegmenterSpec, shard: Path) -> SegmenterSpec:
    """The spec that replays a mask shard's first clip, on the device `spec` names (the feeder runs as it would for
    it: on CUDA with a batch launched ahead, its frames decoded into pinned memory, tracking on a thread behind)."""
    return SegmenterSpec(backend=BACKEND, model=str(shard), device=spec.device)


class ReplaySegmenter:
    """Each frame gets the masks that the first clip of the mask shard `spec.model` has at the frame's position in
    its clip (cyclically, over the frames its clips table counts; a frame's index there is its position, as where
    every frame is decoded, the bench's way), as RLE strings, which is how YOLO's device path hands them over on
    CUDA; where no clip of the shard has masks, none."""

    def __init__(self, spec: SegmenterSpec) -> None:
        self.spec = spec
        shard = Path(spec.model)
        statuses = pq.read_table(ShardFiles(shard.parent, shard.stem).clips,
                                 columns=["clip_id", "frames", "height", "width"]).to_pylist()
        clip = next(iter_shard(shard), None)  # the first clip with masks, if any clip has them
        wanted = clip.clip_id if clip is not None else None  # else the first clip with frames
        first = next((row for row in statuses if row["clip_id"] == wanted or wanted is None and row["frames"]), None)
        if first is None or not first["frames"]:
            raise ValueError(f"{spec.model}: no clip's frames to replay")
        self.size = (first["height"], first["width"])
        self.names = dict(zip(clip.cls.tolist(), clip.table.column("class_name").to_pylist())) if clip else {}
        rles = clip.table.column("rle").to_pylist() if clip else []
        self.frames: list[FrameMasks] = []
        for position in range(first["frames"]):
            if clip is None:
                self.frames.append(FrameMasks.empty(*self.size))
                continue
            rows = np.flatnonzero(clip.frame_index == position)
            self.frames.append(FrameMasks(xyxy=clip.xyxy[rows], conf=clip.conf[rows].astype(np.float32),
                                          cls=clip.cls[rows].astype(np.int16), rles=tuple(rles[k] for k in rows),
                                          size=self.size))

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        return self._replayed([batch])

    def launch(self, pieces: list[FrameBatch], *, capacity: int = 0) -> Launched:
        """As YOLO's (the feeder then holds a batch launched), with the masks at once."""
        return Ready(self._replayed(pieces))

    def frame_memory(self, budget: Callable[[int], int]) -> FrameMemory | None:
        """As YOLO's: pinned memory within `budget` (and the other open feeders') on CUDA."""
        if self.spec.device.startswith("cuda"):
            from pipeline.segment.transfer import frame_memory

            return frame_memory(budget)
        return None

    def _replayed(self, pieces: list[FrameBatch]) -> list[FrameMasks]:
        """The stored masks of the pieces' frames, by position."""
        first = pieces[0]
        if (first.height, first.width) != self.size:
            raise ValueError(f"{self.spec.model}: masks of {self.size[1]}x{self.size[0]} cannot be replayed on "
                             f"frames of {first.width}x{first.height}")
        return [self.frames[position % len(self.frames)] for piece in pieces for position in piece.positions.tolist()]

    def provenance(self) -> dict[str, str]:
        return {"model": f"replay of {self.spec.model}"}
