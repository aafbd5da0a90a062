"""The mask cache: Parquet shard schemas, an atomic shard writer, and readers for one clip or a whole shard.

A run folder holds, per shard, `shard-NNNNN.parquet` (one row per clip, frame and instance),
`shard-NNNNN.clips.parquet` (one status row per clip) and `shard-NNNNN_stats.json`, written last:
a shard without its stats file is not done and readers ignore it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import rle
from pipeline.atomic import temp_name
from pipeline.decode import FrameBatch
from pipeline.errors import InputError
from pipeline.records import ClipStatus
from pipeline.segment.base import FrameMasks
from pipeline.tracking import IouTracker

log = logging.getLogger(__name__)

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
        pa.field("status", pa.string(), nullable=False),  # ok, missing, decode_error, empty
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


def shard_paths(run_dir: Path, shard: str) -> tuple[Path, Path, Path]:
    """(masks, clips, stats) paths of a shard."""
    return run_dir / f"{shard}.parquet", run_dir / f"{shard}.clips.parquet", run_dir / f"{shard}_stats.json"


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
            counts = rle.encode(found.masks)
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
    """Writes a shard to temporary files, one row group per clip; `commit` renames them into place."""

    def __init__(self, run_dir: Path, shard: str, metadata: dict[str, str]) -> None:
        self.masks_path, self.clips_path, _ = shard_paths(run_dir, shard)
        self.metadata = metadata
        self._tmp = temp_name(self.masks_path)
        self._writer = pq.ParquetWriter(self._tmp, MASK_SCHEMA.with_metadata(metadata), compression="zstd", **STORAGE)

    def write(self, rows: ClipRows) -> None:
        if len(rows):
            self._writer.write_table(rows.table())

    def commit(self, statuses: list[ClipStatus]) -> None:
        self._writer.close()
        clips_tmp = temp_name(self.clips_path)
        table = pa.Table.from_pylist([s.row() for s in statuses], schema=CLIP_SCHEMA.with_metadata(self.metadata))
        pq.write_table(table, clips_tmp, compression="zstd")
        self._tmp.replace(self.masks_path)
        clips_tmp.replace(self.clips_path)

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class ClipMasks:
    """All stored instances of one clip, with named accessors; masks decode on demand."""

    clip_id: str
    height: int
    width: int
    table: pa.Table  # rows of MASK_SCHEMA for this clip, ordered by frame then instance

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> np.ndarray:
        return self.table.column(name).to_numpy()

    @cached_property
    def frame_index(self) -> np.ndarray:
        return self.column("frame_index")

    @cached_property
    def instance_id(self) -> np.ndarray:
        return self.column("instance_id")

    @cached_property
    def cls(self) -> np.ndarray:
        return self.column("class_id")

    @cached_property
    def conf(self) -> np.ndarray:
        return self.column("score")

    @cached_property
    def xyxy(self) -> np.ndarray:
        return np.asarray(self.table.column("bbox").to_pylist(), dtype=np.float32).reshape(-1, 4)

    def masks(self) -> np.ndarray:
        """Every instance decoded: (rows, H, W) bool, in row order."""
        out = np.zeros((len(self), self.height, self.width), dtype=bool)
        for k, counts in enumerate(self.table.column("rle").to_pylist()):
            out[k] = rle.decode(counts, self.height, self.width)
        return out

    def frame_mask(self, frame_index: int, class_ids: set[int] | None = None) -> np.ndarray:
        """Union of a frame's instances (optionally of some classes only) as an (H, W) bool mask."""
        union = np.zeros((self.height, self.width), dtype=bool)
        rows = np.flatnonzero(self.frame_index == frame_index)
        counts, classes = self.table.column("rle"), self.cls
        for row in rows:
            if class_ids is None or int(classes[row]) in class_ids:
                union |= rle.decode(counts[int(row)].as_py(), self.height, self.width)
        return union


def done_shards(run_dir: Path) -> list[str]:
    """Names of the shards of a run folder that are complete (their stats file exists)."""
    return sorted(p.name.removesuffix("_stats.json") for p in Path(run_dir).glob("shard-*_stats.json"))


def read_clips(run_dir: Path) -> pa.Table:
    """The status rows of every complete shard of a run folder, with a `shard` column."""
    tables = []
    for shard in done_shards(run_dir):
        table = pq.read_table(shard_paths(Path(run_dir), shard)[1])
        tables.append(table.append_column("shard", pa.array([shard] * table.num_rows, pa.string())))
    if not tables:
        return CLIP_SCHEMA.empty_table().append_column("shard", pa.array([], pa.string()))
    return pa.concat_tables(tables, promote_options="default")  # shards from before a column was added: nulls


def load_clip_masks(run_dir: Path, clip_id: str) -> ClipMasks:
    """One clip's masks from a run folder; KeyError if no complete shard holds the clip."""
    clips = read_clips(run_dir)
    found = clips.filter(pc.equal(clips.column("clip_id"), clip_id))
    if found.num_rows == 0:
        raise KeyError(f"clip {clip_id!r} is in no complete shard of {run_dir}")
    row = found.slice(0, 1).to_pylist()[0]
    return read_clip_masks(run_dir, row["shard"], clip_id, row["height"], row["width"])


def read_clip_masks(run_dir: Path, shard: str, clip_id: str, height: int, width: int) -> ClipMasks:
    """One clip's masks when its shard is known (reads only that clip's rows)."""
    masks_path = shard_paths(Path(run_dir), shard)[0]
    table = pq.read_table(masks_path, filters=[("clip_id", "=", clip_id)], schema=MASK_SCHEMA)
    return ClipMasks(clip_id, height, width, table)


def iter_shard(masks_path: Path) -> Iterator[ClipMasks]:
    """Iterate a shard's masks file clip by clip (clips with no instances are not in this file)."""
    table = pq.read_table(masks_path, schema=MASK_SCHEMA)
    clip_ids = table.column("clip_id").to_numpy(zero_copy_only=False)
    if len(clip_ids) == 0:
        return
    starts = np.flatnonzero(np.r_[True, clip_ids[1:] != clip_ids[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(clip_ids)]):
        part = table.slice(int(start), int(end - start))
        yield ClipMasks(str(clip_ids[start]), int(part["height"][0].as_py()), int(part["width"][0].as_py()), part)


def find_run(out: Path, dataset: str, tag: str | None = None) -> Path:
    """The masks run folder of a dataset: `tag` if given, else the run whose masks stage was started last
    (so `make all` renders what its masks step just made, also after settings changed)."""
    base = Path(out) / "masks" / dataset
    if tag:
        run_dir = base / tag
        if not (run_dir / "run.json").is_file():
            raise InputError(f"{run_dir}: no masks run there; run `make masks DATASET={dataset}` or pick MASKS= from "
                             f"{', '.join(_runs(base)) or 'none'}")
        return run_dir
    runs = _runs(base)
    if not runs:
        raise InputError(f"{base}: no masks yet; run `make masks DATASET={dataset}` first")
    newest = max(runs, key=lambda run: ((base / run / "run.json").stat().st_mtime_ns, run))
    if len(runs) > 1:
        log.warning("%s holds %d masks runs (%s); using the latest, %s; choose another with MASKS=<run> (--masks)",
                    base, len(runs), ", ".join(runs), newest)
    return base / newest


def _runs(base: Path) -> list[str]:
    return sorted(p.parent.name for p in base.glob("*/run.json")) if base.is_dir() else []


def run_info(run_dir: Path) -> dict:
    """What made a masks run: its run.json (config, fingerprint) plus the provenance stored in its shards."""
    info = json.loads((Path(run_dir) / "run.json").read_text())
    shards = done_shards(run_dir)
    if shards:
        metadata = pq.read_schema(shard_paths(Path(run_dir), shards[0])[1]).metadata or {}
        info["provenance"] = {k.decode(): v.decode() for k, v in metadata.items()}
    return info
