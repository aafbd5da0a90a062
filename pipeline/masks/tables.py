"""The mask cache's tables: the Parquet schemas of a shard's mask rows and status rows, the rows of one clip
as they are gathered, and the writer of one shard (its files staged through the engine's Commit).

A run folder holds, per shard, `<shard>.parquet` (one row per clip, frame and instance),
`<shard>.clips.parquet` (one status row per clip) and `<shard>_stats.json`, written last: a shard without its
stats file is not done and readers ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.decode import FrameBatch
from pipeline.engine import Commit
from pipeline.records import ClipStatus
from pipeline.segment.base import FrameMasks
from pipeline.tracking import IouTracker

MASK_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),  # position in the native decode order
        pa.field("time", pa.float64(), nullable=False),  # presentation time, seconds
        pa.field("instance_id", pa.int32(), nullable=False),  # track id: the same across the clip's frames
        pa.field("class_id", pa.int16(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),  # x1, y1, x2, y2 pixels
        pa.field("rle", pa.binary(), nullable=False),  # COCO compressed RLE counts (pycocotools)
        pa.field("height", pa.int32(), nullable=False),  # mask size = source frame display size
        pa.field("width", pa.int32(), nullable=False),
    ]
)

# Min/max statistics only where a reader filters (clip, frame, instance, class): per row group, the RLE column's
# would hold two whole masks in the footer. Dictionaries only for the repeated strings. Together ~12% smaller.
STORAGE = {
    "write_statistics": ["clip_id", "frame_index", "instance_id", "class_id"],
    "use_dictionary": ["clip_id", "class_name"],
}

CLIP_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("label_index", pa.int32()),
        pa.field("meta", pa.string()),  # JSON object of dataset extras (SSv2 template/placeholders, Mimetics index)
        pa.field("status", pa.string(), nullable=False),  # records.STATUSES: ok, partial, missing, decode_error, …
        pa.field("error", pa.string()),
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("duration", pa.float64(), nullable=False),
        pa.field("rotation", pa.int16(), nullable=False),
        pa.field("instances", pa.int64(), nullable=False),
    ]
)


@dataclass(frozen=True)
class ShardFiles:
    """The files of one masks shard in a run folder."""

    folder: Path
    name: str

    @property
    def masks(self) -> Path:
        return self.folder / f"{self.name}.parquet"

    @property
    def clips(self) -> Path:
        return self.folder / f"{self.name}.clips.parquet"

    @property
    def stats(self) -> Path:
        return self.folder / f"{self.name}_stats.json"


class ClipRows:
    """Mask rows of one clip, gathered batch by batch; nothing reaches a shard until the clip is complete."""

    def __init__(self, clip_id: str, names: dict[int, str], tracker: IouTracker | None = None) -> None:
        self.clip_id, self.names = clip_id, names
        self.tracker = tracker or IouTracker()
        self.columns: dict[str, list] = {name: [] for name in MASK_SCHEMA.names}

    def __len__(self) -> int:
        return len(self.columns["clip_id"])

    def add(self, batch: FrameBatch, results: list[FrameMasks]) -> None:
        columns = self.columns
        for frame_index, time, found in zip(batch.indices.tolist(), batch.times.tolist(), results):
            count = len(found)
            counts = found.rle()
            columns["clip_id"] += [self.clip_id] * count
            columns["frame_index"] += [frame_index] * count
            columns["time"] += [time] * count
            columns["instance_id"] += self.tracker.assign(found.cls, counts, batch.height, batch.width)
            columns["class_id"] += found.cls.tolist()
            columns["class_name"] += [self.names.get(c, str(c)) for c in found.cls.tolist()]
            columns["score"] += found.conf.tolist()
            columns["bbox"] += found.xyxy.tolist()
            columns["rle"] += counts
            columns["height"] += [batch.height] * count
            columns["width"] += [batch.width] * count

    def table(self) -> pa.Table:
        return pa.table(self.columns, schema=MASK_SCHEMA)


class ShardWriter:
    """Writes a shard's mask rows as each clip completes (one row group per clip) and its status rows at the
    end, both to the temporary names a Commit gives; the Commit renames them into place."""

    def __init__(self, files: ShardFiles, commit: Commit, metadata: dict[str, str]) -> None:
        self.files, self.commit, self.metadata = files, commit, metadata
        self._writer = pq.ParquetWriter(commit.stage(files.masks), MASK_SCHEMA.with_metadata(metadata),
                                        compression="zstd", **STORAGE)

    def write(self, rows: ClipRows) -> None:
        if len(rows):
            self._writer.write_table(rows.table())

    def finish(self, statuses: list[ClipStatus]) -> None:
        self._writer.close()
        table = pa.Table.from_pylist([s.row() for s in statuses], schema=CLIP_SCHEMA.with_metadata(self.metadata))
        pq.write_table(table, self.commit.stage(self.files.clips), compression="zstd")

    def abort(self) -> None:
        self._writer.close()
