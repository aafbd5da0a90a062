"""The records that cross stage boundaries: a clip to process and its status row."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Status values of a clip row. `ok` means decoded and segmented; the others name why not.
OK = "ok"
MISSING = "missing"  # listed in the annotations, not on disk
DECODE_ERROR = "decode_error"  # the container or stream could not be decoded
EMPTY = "empty"  # opened, but holds no video frames
STATUSES = (OK, MISSING, DECODE_ERROR, EMPTY)


@dataclass(frozen=True, kw_only=True)
class ClipRecord:
    """One video of a dataset, as a reader lists it."""

    clip_id: str  # unique within the dataset, safe as a file name
    path: Path
    split: str
    label: str | None = None  # None where the split is unlabelled (Kinetics test)
    label_index: int | None = None


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
        clip = asdict(self.clip)
        clip["path"] = str(self.clip.path)
        fields = {k: v for k, v in asdict(self).items() if k != "clip"}
        return {**clip, **fields}


def path_name(text: str | None) -> str:
    """A label as a folder name safe on every platform and in space-separated lists: runs of anything but
    letters, digits, '-' and '.' become '_' ("passing American football (in game)" → "passing_American_football_in_game")."""
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", text or "").strip("_.")
    return name or "_unlabelled"
