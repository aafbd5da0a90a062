"""The records that cross stage boundaries: a clip to process, its status row, and its render row."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

# Status values of a clip row. `ok` means decoded and segmented; the others name why not.
OK = "ok"
MISSING = "missing"  # listed in the annotations, not on disk
DECODE_ERROR = "decode_error"  # the container or stream could not be decoded
EMPTY = "empty"  # opened, but holds no video frames
FAILED = "failed"  # raised (or killed its worker) on every one of its tries; the error says what happened
PARTIAL = "partial"  # decoded only in part (a truncated file): the frames that decoded are segmented and usable
CONFLICT = "conflict"  # listed twice with different labels or splits; the error names both entries
STATUSES = (OK, PARTIAL, MISSING, DECODE_ERROR, EMPTY, FAILED, CONFLICT)
USABLE = (OK, PARTIAL)  # statuses whose masks (and renders) hold frames


@dataclass(frozen=True, kw_only=True)
class ClipRecord:
    """One video of a dataset, as a reader lists it."""

    clip_id: str  # unique within the dataset, safe as a file name
    path: str  # the video (a Path given is kept as its text: at Kinetics scale a Path per clip costs seconds)
    split: str
    label: str | None = None  # None where the split is unlabelled (Kinetics test); the original text
    label_index: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False)  # dataset extras (SSv2 placeholders, …)
    source: str = field(default="", compare=False)  # where the reader found it: `file:line`, or the video path
    conflict: str | None = None  # listed again with another label/split: names both entries; the clip is not processed

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            object.__setattr__(self, "path", os.fspath(self.path))

    @property
    def key(self) -> str:
        return self.clip_id

    def meta_json(self) -> str | None:
        """`meta` as the JSON text stored in the clip tables and manifests (keys sorted), or None when empty."""
        return json.dumps(self.meta, sort_keys=True, ensure_ascii=False) if self.meta else None

    def listing_digest(self) -> str:
        return listing_digest(self.split, self.label, self.label_index, self.meta_json(), self.conflict)


def listing_digest(split: str, label: str | None, label_index: int | None, meta: str | None,
                   conflict: str | None = None) -> str:
    """A short hash of what a clip's rows take from the dataset listing. Stats files keep it per clip, so a
    relabelled clip (new annotations, another class list) makes the shards that hold it not done."""
    blob = json.dumps([split, label, label_index, meta] + ([conflict] if conflict else []), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(kw_only=True)
class ClipStatus:
    """The outcome of one clip in the masks stage; one row of a shard's clips table."""

    clip: ClipRecord
    status: str
    error: str | None = None
    frames: int = 0  # frames segmented (after --fps resampling)
    fps: float = 0.0  # native average frame rate
    width: int = 0  # display width, rotation applied
    height: int = 0
    duration: float = 0.0  # seconds
    rotation: int = 0  # degrees counter-clockwise applied to decoded frames
    instances: int = 0  # mask rows written for the clip

    def row(self) -> dict[str, Any]:
        """The clip's listing and its outcome, flat (by field: `asdict` deep-copies, a tenth of a ms a clip)."""
        clip = {name: getattr(self.clip, name) for name in CLIP_FIELDS}
        clip["meta"] = self.clip.meta_json()
        return {**clip, **{name: getattr(self, name) for name in STATUS_FIELDS}}


CLIP_FIELDS = tuple(name for name in ClipRecord.__dataclass_fields__)
STATUS_FIELDS = tuple(name for name in ClipStatus.__dataclass_fields__ if name != "clip")


def path_name(text: str | None) -> str:
    """A label as a folder name safe on every platform and in space-separated lists: runs of anything but
    letters, digits, '-' and '.' become '_' ("passing American football (in game)" → "passing_American_football_in_game")."""
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", text or "").strip("_.")
    return name or "_unlabelled"


@dataclass(kw_only=True)
class RenderRow:
    """One clip's outcome in one variant and format: a row of RENDER_SCHEMA."""

    clip_id: str
    split: str
    label: str | None
    label_index: int | None
    meta: str | None
    variant: str
    format: str
    status: str
    error: str | None = None
    path: str | None = None
    frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    person_coverage: list[float] = field(default_factory=list)
    object_coverage: list[float] = field(default_factory=list)
    pair_clip_id: str | None = None
    pair_label: str | None = None
    pair_label_index: int | None = None
    masks_shard: str = ""
    source_clip_id: str | None = None
    background: int | None = None
