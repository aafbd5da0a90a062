"""Reading the mask cache: a run folder (MasksRun) serves only its current shards (committed, and made from
what its latest plan says), each clip at most once; ClipMasks gives one clip's instances with named accessors.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline import rle
from pipeline.engine import ShardStats, current_shards
from pipeline.errors import InputError
from pipeline.masks.tables import CLIP_SCHEMA, MASK_SCHEMA, ShardFiles
from pipeline.records import USABLE

log = logging.getLogger(__name__)


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


@dataclass(frozen=True, kw_only=True)
class StoredClip:
    """A clip's status row as a masks run stored it, and the shard that holds its masks."""

    clip_id: str
    path: str  # the source video (a Path given is kept as its text, as in ClipRecord)
    split: str
    label: str | None
    label_index: int | None
    meta: str | None  # JSON of the dataset's extras
    status: str
    error: str | None
    frames: int
    fps: float
    width: int
    height: int
    shard: str

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            object.__setattr__(self, "path", os.fspath(self.path))

    @property
    def usable(self) -> bool:
        """Decoded (wholly or in part) and segmented: its masks can be rendered."""
        return self.status in USABLE

    @classmethod
    def from_row(cls, row: dict, shard: str) -> "StoredClip":
        return cls(**{name: row[name] for name in cls.__dataclass_fields__ if name != "shard"}, shard=shard)


class MasksRun:
    """A masks run folder as the later stages read it."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        try:
            self.info = json.loads((self.folder / "run.json").read_text())
        except FileNotFoundError:
            raise InputError(f"{self.folder}: no masks run there (run.json missing)") from None

    @property
    def tag(self) -> str:
        return self.folder.name

    @property
    def fingerprint(self) -> str:
        return self.info["fingerprint"]

    @property
    def decode_fps(self) -> float | None:
        return self.info["config"]["decode"]["fps"]

    @property
    def classes(self) -> list[str]:
        return list(self.info.get("classes") or ())

    @cached_property
    def shards(self) -> dict[str, ShardStats]:
        """The current shards: committed and made from what the run's latest plan says (name → stats)."""
        current, other = current_shards(self.folder)
        if other:
            log.warning("%s: %d of %d shards not computed or out of date (e.g. %s); `make masks` with the same "
                        "settings brings them in", self.folder, len(other), len(current) + len(other), other[0])
        return current

    def files(self, shard: str) -> ShardFiles:
        return ShardFiles(self.folder, shard)

    def table(self) -> pa.Table:
        """The status rows of the current shards, with a `shard` column; a clip in two shards is an error. The
        shards' files are read together (thousands of small files, one at a time, cost twice as long)."""
        if not self.shards:
            return CLIP_SCHEMA.empty_table().append_column("shard", pa.array([], pa.string()))
        batches, shards = [], []
        shard_of = {os.fspath(self.files(shard).clips): shard for shard in self.shards}
        dataset = ds.dataset(list(shard_of), format="parquet", schema=CLIP_SCHEMA)
        for tagged in dataset.scanner().scan_batches():
            batches.append(tagged.record_batch)
            shards.append(pa.array([shard_of[tagged.fragment.path]] * tagged.record_batch.num_rows, pa.string()))
        table = pa.Table.from_batches(batches, schema=CLIP_SCHEMA)
        table = table.append_column("shard", pa.concat_arrays(shards) if shards else pa.array([], pa.string()))
        table = table.sort_by("clip_id")
        ids = table.column("clip_id").to_pylist()
        twice = next((i for i in range(1, len(ids)) if ids[i] == ids[i - 1]), None)
        if twice is not None:
            shards = table.column("shard")
            raise InputError(f"{self.folder}: clip {ids[twice]} is in two shards ({shards[twice - 1]} and "
                             f"{shards[twice]}); the run folder was changed by hand: recompute it (--overwrite)")
        return table

    def clips(self) -> list[StoredClip]:
        """Every clip of the current shards, in clip-id order (read by column: a dict per row costs seconds at
        Kinetics scale)."""
        columns = self.table().to_pydict()
        names = list(StoredClip.__dataclass_fields__)
        return [StoredClip(**dict(zip(names, values))) for values in zip(*(columns[name] for name in names))]

    def provenance(self, shard: str) -> dict[str, str]:
        """The provenance a shard's files carry (segmenter, weights and their hashes, settings)."""
        metadata = pq.read_schema(self.files(shard).clips).metadata or {}
        return {k.decode(): v.decode() for k, v in metadata.items()}

    def shard_masks(self, shard: str) -> dict[str, ClipMasks]:
        """Clip id → masks, for every clip of a shard that has any."""
        return {clip.clip_id: clip for clip in iter_shard(self.files(shard).masks)}

    def clip_masks(self, clip: StoredClip) -> ClipMasks:
        """One clip's masks (only its rows are read)."""
        table = pq.read_table(self.files(clip.shard).masks, filters=[("clip_id", "=", clip.clip_id)], schema=MASK_SCHEMA)
        return ClipMasks(clip.clip_id, clip.height, clip.width, table)


def read_clips(run_dir: Path) -> pa.Table:
    """The status rows of every current shard of a run folder, with a `shard` column."""
    return MasksRun(run_dir).table()


def load_clip_masks(run_dir: Path, clip_id: str) -> ClipMasks:
    """One clip's masks from a run folder; KeyError if no current shard holds the clip."""
    run = MasksRun(run_dir)
    found = [clip for clip in run.clips() if clip.clip_id == clip_id]
    if not found:
        raise KeyError(f"clip {clip_id!r} is in no current shard of {run_dir}")
    return run.clip_masks(found[0])


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


def find_run(out: Path, dataset: str, tag: str | None = None, *, make_args: str | None = None) -> MasksRun:
    """The masks run of a dataset: `tag` if given, else, of the runs with committed shards, the one whose masks
    stage was started last (so `make all` renders what its masks step just made). `make_args` is how the user
    names the dataset to make (`DATASET=ucf101 SPLIT_ID=1`), for the hint."""
    base = Path(out).absolute() / "masks" / dataset  # absolute: tasks carry it to workers in other folders
    hint = f"run `make masks {make_args or f'DATASET={dataset}'}`"
    runs = sorted(p.parent.name for p in base.glob("*/plan.json")) if base.is_dir() else []
    if tag:
        if tag not in runs:
            raise InputError(f"{base / tag}: no masks run there; {hint} or pick MASKS= from {', '.join(runs) or 'none'}")
        return MasksRun(base / tag)
    ready = [run for run in runs if any(base.glob(f"{run}/*_stats.json"))]
    if not ready:
        raise InputError(f"{base}: no masks yet; {hint} first")
    newest = max(ready, key=lambda run: ((base / run / "plan.json").stat().st_mtime_ns, run))
    if len(ready) > 1:
        log.warning("%s holds %d masks runs (%s); using the latest, %s; choose another with MASKS=<run> (--masks)",
                    base, len(ready), ", ".join(ready), newest)
    return MasksRun(base / newest)
