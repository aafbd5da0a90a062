"""Kinetics-400/600/700 reader: the CVDF layout (annotation CSVs + flat split folders) or class folders.

CVDF:          <root>/annotations/{train,val,test}.csv   label,youtube_id,time_start,time_end,split
               <root>/{train,val,test}/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4
Class folders: <root>/<split>/<label>/<file>.mp4   (used when there is no annotations/ folder)
Label index: position of the label in the sorted class names (the mmaction2 convention).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pipeline.datasets.errors import DatasetError
from pipeline.records import ClipRecord

SPLITS = ("train", "val", "test")
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov"}


def list_kinetics(root: Path, splits: tuple[str, ...] | None = None) -> list[ClipRecord]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; pass DATA_ROOT=/path/to/kinetics (--root)")
    if (root / "annotations").is_dir():
        entries = _from_csvs(root)
    else:
        entries = _from_class_folders(root)
    if not entries:
        raise DatasetError(
            f"{root}: no clips found; expected annotations/{{train,val,test}}.csv with train/ val/ test/ "
            "video folders, or <split>/<label>/<video> class folders"
        )
    labels = sorted({label for _, _, label, _ in entries if label is not None})
    index = {label: i for i, label in enumerate(labels)}
    clips, seen = [], {}
    for split, clip_id, label, path in entries:
        if splits and split not in splits:
            continue
        if clip_id in seen:
            raise DatasetError(f"clip id {clip_id!r} is listed twice ({seen[clip_id]} and {path}); ids must be unique")
        seen[clip_id] = path
        clips.append(ClipRecord(clip_id=clip_id, path=path, split=split, label=label, label_index=index.get(label)))
    return clips


def _from_csvs(root: Path) -> list[tuple[str, str, str | None, Path]]:
    entries = []
    for split in SPLITS:
        csv_path = root / "annotations" / f"{split}.csv"
        if not csv_path.is_file():
            continue
        videos = _index_videos(root / split)
        for label, youtube_id, start, end in _read_csv(csv_path):
            clip_id = f"{youtube_id}_{start:06d}_{end:06d}"
            path = videos.get(clip_id, root / split / f"{clip_id}.mp4")  # a missing file becomes a status row
            entries.append((split, clip_id, label, path))
    return entries


def _read_csv(csv_path: Path):
    """Yield (label or None, youtube_id, time_start, time_end); errors name the file and line."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"youtube_id", "time_start", "time_end"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{csv_path}:1: header lacks {sorted(missing)}; expected label,youtube_id,time_start,time_end,split")
        for row in reader:
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                raise DatasetError(f"{csv_path}:{reader.line_num}: time_start/time_end must be numbers") from None
            youtube_id = (row["youtube_id"] or "").strip()
            if not youtube_id or "/" in youtube_id or youtube_id.startswith("."):
                raise DatasetError(f"{csv_path}:{reader.line_num}: bad youtube_id {youtube_id!r}")
            label = (row.get("label") or "").strip() or None
            yield label, youtube_id, start, end


def _from_class_folders(root: Path) -> list[tuple[str, str, str | None, Path]]:
    entries = []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for label_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for video in sorted(label_dir.iterdir()):
                if video.suffix.lower() in VIDEO_SUFFIXES:
                    entries.append((split, video.stem, label_dir.name, video))
    return entries


def _index_videos(folder: Path) -> dict[str, Path]:
    """Map file stem → path for every video under `folder` (flat or nested), listed once."""
    found = {}
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()  # deterministic choice if a stem appears twice
        for name in sorted(files):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in VIDEO_SUFFIXES:
                found.setdefault(stem, Path(directory) / name)
    return found
