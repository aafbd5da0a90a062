"""Generic readers for videos that come with no official annotation files: class folders, or a list file.

folder: <root>/<split>/<class>/<video>   when every top-level folder is a split name (train, val, validation, test)
        <root>/<class>/<video>           otherwise; the split is then `all`
        Any container PyAV reads (.mp4 .mkv .webm .avi .mov …); deeper folders belong to their class.
list:   DATA_ROOT=<file>, one clip per line: `path label [split]`
        .csv files are read as CSV (an optional `path,label,split` header; quote labels holding commas);
        other files are split on whitespace with shell quoting ("riding a bike"); `#` starts a comment.
        Relative paths are relative to the list's folder, or to --videos / VIDEO_DIR. The split defaults to `all`.
Label index = position in the sorted class names, except in a list whose labels are all whole numbers
(an mmaction2 list): those are the indices. Clip id = the video's path below the split folder (folder) or
below the base folder (list), without suffix, folders joined by '__'.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from pipeline.datasets.common import (
    VIDEO_SUFFIXES,
    Listing,
    ReaderOptions,
    csv_records,
    find_videos,
    need_dir,
    numbered_lines,
    path_id,
    sorted_index,
)
from pipeline.datasets.errors import DatasetError
from pipeline.records import ClipRecord

SPLIT_NAMES = ("train", "val", "validation", "test")
DEFAULT_SPLIT = "all"


def list_folder(root: Path, options: ReaderOptions = ReaderOptions()) -> Listing:
    root = need_dir(Path(root), "video folder", "pass DATA_ROOT=/path/to/videos (--root)")
    top = sorted(p.name for p in root.iterdir() if p.is_dir())
    named = [name for name in top if name in SPLIT_NAMES]
    if named and len(named) != len(top):
        raise DatasetError(f"{root}: mixes split folders ({', '.join(named)}) with class folders "
                           f"({', '.join(n for n in top if n not in SPLIT_NAMES)}); use one layout")
    split_dirs = [(name, root / name) for name in named] if named else [(DEFAULT_SPLIT, root)]
    entries, loose = [], 0
    for split, split_dir in split_dirs:
        for video in find_videos(split_dir):
            relative = video.relative_to(split_dir)
            if len(relative.parts) < 2:
                loose += 1  # a video with no class folder
                continue
            entries.append((split, relative, video))
    classes, index = sorted_index(relative.parts[0] for _, relative, _ in entries)
    clips = [ClipRecord(clip_id=path_id(relative), path=video, split=split, label=relative.parts[0],
                        label_index=index[relative.parts[0]], source=str(video))
             for split, relative, video in entries]
    return Listing(clips=clips, classes=classes, skipped={"videos outside class folders": loose} if loose else {})


def list_file(root: Path, options: ReaderOptions = ReaderOptions()) -> Listing:
    path = Path(root)
    if not path.is_file():
        raise DatasetError(f"{path}: list file not found; pass DATA_ROOT=/path/to/list.txt (a file of `path label [split]`)")
    base = options.videos or path.parent
    rows = list(_csv_rows(path) if path.suffix.lower() == ".csv" else _text_rows(path))
    if not rows:
        raise DatasetError(f"{path}: the list is empty")
    numeric = all(label.isdigit() for _, _, label, _ in rows)
    classes, index = ((), {}) if numeric else sorted_index(label for _, _, label, _ in rows)
    clips = []
    for line, video, label, split in rows:
        video_path = Path(video) if Path(video).is_absolute() else base / video
        try:
            relative = video_path.relative_to(base)
        except ValueError:
            relative = Path(*video_path.parts[1:])  # an absolute path elsewhere: its whole path names it
        clips.append(ClipRecord(clip_id=path_id(relative), path=video_path, split=split, label=label,
                                label_index=int(label) if numeric else index[label], source=f"{path}:{line}"))
    return Listing(clips=clips, classes=classes)


def _text_rows(path: Path):
    for line, text in numbered_lines(path, "list file"):
        try:
            fields = shlex.split(text, comments=True)
        except ValueError as exc:
            raise DatasetError(f"{path}:{line}: {exc}") from None
        if fields:
            yield _row(path, line, fields)


def _csv_rows(path: Path):
    for line, fields in csv_records(path):
        fields = [field.strip() for field in fields]
        if not any(fields) or (line == 1 and fields[0].lower() == "path"):
            continue
        yield _row(path, line, fields)


def _row(path: Path, line: int, fields: list[str]) -> tuple[int, str, str, str]:
    if len(fields) not in (2, 3) or not all(fields):
        raise DatasetError(f"{path}:{line}: expected `path label [split]`, got {len(fields)} field(s): {fields}")
    video, label, split = fields[0], fields[1], fields[2] if len(fields) == 3 else DEFAULT_SPLIT
    if Path(label).suffix.lower() in VIDEO_SUFFIXES:
        raise DatasetError(f"{path}:{line}: label {label!r} looks like a video file; quote paths that hold spaces")
    if any(part == ".." for part in Path(video).parts):
        raise DatasetError(f"{path}:{line}: {video!r} climbs out of the base folder with '..'; give an absolute path")
    return line, video, label, split
