"""Random access to the mask cache by clip id, without scanning shards.

The masks stage writes one Parquet row group per clip, with min/max statistics on `clip_id`. So the footers
alone say which row group of which shard holds a clip: `MasksIndex` reads the current shards' clips tables
(status rows, small) and masks-file footers once, on first use, and then reads one clip's masks as its own row
group(s). The masks files are checked (size and mtime) on every read: a shard recomputed since the index was
built is an error, never stale masks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.masks import ClipMasks, MasksRun, StoredClip


@dataclass(frozen=True, kw_only=True)
class MasksLocation:
    """Where one clip's masks are: its shard's masks file, the row groups that hold them, and the file's state
    when the index was built."""

    path: Path
    row_groups: tuple[int, ...]
    state: tuple[int, int]  # (size, mtime_ns)


class MasksIndex:
    """Clip id → status row and masks location in one masks run; picklable (DataLoader workers)."""

    def __init__(self, run: MasksRun) -> None:
        self.folder = run.folder
        table = run.table()
        self.clips: dict[str, StoredClip] = {row["clip_id"]: StoredClip.from_row(row, row["shard"])
                                             for row in table.to_pylist()}
        # degrees the source turns upright (decoders outside this package may not apply it)
        self.rotation = dict(zip(table.column("clip_id").to_pylist(), table.column("rotation").to_pylist()))
        self.locations: dict[str, MasksLocation] = {}
        by_shard: dict[str, list[str]] = {}
        for clip in self.clips.values():
            by_shard.setdefault(clip.shard, []).append(clip.clip_id)
        for shard in run.shards:
            path = run.files(shard).masks
            state = _state(path)
            metadata = pq.ParquetFile(path).metadata
            column = metadata.schema.to_arrow_schema().get_field_index("clip_id")
            groups: dict[str, list[int]] = {}
            for group in range(metadata.num_row_groups):
                stats = metadata.row_group(group).column(column).statistics
                if stats is None or not stats.has_min_max or stats.min != stats.max:
                    raise InputError(f"{path}: row group {group} holds more than one clip (or no statistics); this "
                                     "masks file was not written by the masks stage; recompute it (`make masks`)")
                groups.setdefault(stats.min, []).append(group)
            for clip_id in by_shard.get(shard, ()):  # every clip of the shard, those without instances too
                self.locations[clip_id] = MasksLocation(path=path, row_groups=tuple(groups.get(clip_id, ())), state=state)

    def __len__(self) -> int:
        return len(self.clips)

    def clip(self, clip_id: str) -> StoredClip:
        try:
            return self.clips[clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is in no current shard of {self.folder}") from None

    def masks(self, clip_id: str) -> ClipMasks | None:
        """One clip's stored instances (None: it has none), read as its own row groups only."""
        clip = self.clip(clip_id)
        where = self.locations[clip_id]
        if _state(where.path) != where.state:
            raise InputError(f"{where.path}: changed since this loader's index was built (the masks were recomputed); "
                             "build the loader again")
        if not where.row_groups:
            return None
        table = pq.ParquetFile(where.path).read_row_groups(list(where.row_groups))
        return ClipMasks(clip_id, clip.height, clip.width, table)


def _state(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns
