"""Kinetics-400/600/700 reader: the CVDF layout (annotation CSVs + flat split folders) or class folders.

CVDF:          <root>/annotations/{train,val,test}.csv   label,youtube_id,time_start,time_end,split
               (`validate.csv` is read as val; test CSVs may lack the label column)
               <root>/{train,val,test}/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4   (nested folders too)
Class folders: <root>/<split>/<label>/<file>.mp4   (used when there is no annotations/ folder)
Label index: position of the label in the sorted class names (the mmaction2 convention). For a subset of
Kinetics-400, OFFICIAL_INDICES=1 (ReaderOptions.official_indices, applied by `list_clips`) gives each label its
index among the official 400 classes instead, and the whole list as the classes (see classes.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pipeline.datasets.common import (
    VIDEO_SUFFIXES,
    Listing,
    ReaderOptions,
    bulk_columns,
    csv_records,
    index_videos,
    need_dir,
    safe_id,
    sorted_index,
)
from pipeline.datasets.errors import DatasetError
from pipeline.records import ClipRecord

SPLITS = ("train", "val", "test")
CSV_NAMES = {"train": ("train.csv",), "val": ("val.csv", "validate.csv"), "test": ("test.csv",)}


def list_kinetics(root: Path, options: ReaderOptions = ReaderOptions()) -> Listing:
    root = need_dir(Path(root), "dataset folder", "pass DATA_ROOT=/path/to/kinetics (--root)")
    if (root / "annotations").is_dir():
        listing = _from_csvs(root)
    else:
        entries = _from_class_folders(root)
        classes, index = sorted_index(label for _, _, label, _, _ in entries)
        listing = Listing(clips=[ClipRecord(clip_id=clip_id, path=path, split=split, label=label,
                                            label_index=index.get(label), source=source)
                                 for split, clip_id, label, path, source in entries], classes=classes)
    if not listing.clips:
        raise DatasetError(
            f"{root}: no clips found; expected annotations/{{train,val,test}}.csv with train/ val/ test/ "
            "video folders, or <split>/<label>/<video> class folders"
        )
    return listing


def clip_name(youtube_id: str, start: int, end: int) -> str:
    """The file stem the Kinetics downloaders give a clip (and Mimetics reuses)."""
    return f"{youtube_id}_{start:06d}_{end:06d}"


def _from_csvs(root: Path) -> Listing:
    """The CVDF layout: every CSV read first (the classes are the sorted labels of all of them), then each row
    made a clip in one pass (at Kinetics scale each pass over the rows costs a few tenths of a second)."""
    read = []
    for split in SPLITS:
        csv_path = next((root / "annotations" / name for name in CSV_NAMES[split] if (root / "annotations" / name).is_file()), None)
        if csv_path is not None:
            read.append((split, csv_path, read_kinetics_csv(csv_path)))
    classes, index = sorted_index(label for _, _, rows in read for _, label, *_ in rows)
    clips = []
    for split, csv_path, rows in read:
        videos, folder, csv_path = index_videos(root / split), str(root / split), str(csv_path)
        for line, label, youtube_id, start, end in rows:
            clip_id = f"{youtube_id}_{start:06d}_{end:06d}"  # clip_name, inlined: once per row
            clips.append(ClipRecord(clip_id=clip_id, path=videos.get(clip_id) or f"{folder}/{clip_id}.mp4",
                                    split=split, label=label, label_index=index.get(label),
                                    source=f"{csv_path}:{line}"))  # a missing file becomes a status row
    return Listing(clips=clips, classes=classes)


def read_kinetics_csv(csv_path: Path) -> list[tuple[int, str | None, str, int, int]]:
    """(line, label or None, youtube_id, time_start, time_end) of each row; errors name the file and the line
    where the record starts. Parsed in bulk (pyarrow) where the file is plain one-line records; any file the
    bulk parse cannot vouch for, or a bad row, is read again record by record, for the exact error."""
    table = bulk_columns(csv_path, ("youtube_id", "time_start", "time_end"), optional=("label",))
    if table is not None:
        try:
            return [_row(csv_path, line, label, youtube_id, start, end)
                    for line, label, youtube_id, start, end in zip(table.lines, table.columns["label"],
                                                                   table.columns["youtube_id"],
                                                                   table.columns["time_start"],
                                                                   table.columns["time_end"])]
        except DatasetError:
            pass  # read again below: the error then names the line exactly as the record reader does
    return list(_read_records(csv_path))


def _row(csv_path: Path, line: int, label: str | None, youtube_id: str, start: str, end: str
         ) -> tuple[int, str | None, str, int, int]:
    try:
        start_s, end_s = int(float(start)), int(float(end))
    except ValueError:
        raise DatasetError(f"{csv_path}:{line}: time_start/time_end must be numbers") from None
    youtube_id = youtube_id.strip()
    if not youtube_id or "/" in youtube_id or "\\" in youtube_id or youtube_id.startswith("."):
        raise DatasetError(f"{csv_path}:{line}: bad youtube_id {youtube_id!r}")
    return line, (label or "").strip() or None, youtube_id, start_s, end_s


def _read_records(csv_path: Path) -> Iterator[tuple[int, str | None, str, int, int]]:
    records = csv_records(csv_path, header=True)
    _, header = next(records, (1, []))
    missing = {"youtube_id", "time_start", "time_end"} - set(header)
    if missing:
        raise DatasetError(f"{csv_path}:1: header lacks {sorted(missing)}; expected label,youtube_id,time_start,time_end")
    for line, fields in records:
        row = dict(zip(header, fields))
        yield _row(csv_path, line, row.get("label"), row["youtube_id"], row["time_start"], row["time_end"])


def _from_class_folders(root: Path) -> list[tuple[str, str, str | None, Path, str]]:
    entries = []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for label_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for video in sorted(label_dir.iterdir()):
                if video.suffix.lower() in VIDEO_SUFFIXES:
                    entries.append((split, safe_id(video.stem), label_dir.name, video, str(video)))
    return entries
