"""What every dataset reader shares: its options, its result, safe clip ids, video lookup, annotation lines."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Iterator

from pipeline.datasets.errors import DatasetError
from pipeline.datasets.repeats import MERGED, log_repeats, merge_repeats
from pipeline.records import ClipRecord

# Containers PyAV reads that datasets ship in; other files in a video folder are ignored.
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
                            ".3gp", ".ogv", ".ts"})
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


@dataclass(frozen=True, kw_only=True)
class ReaderOptions:
    """Reader settings beyond the root folder; each reader uses the ones it documents."""

    split_id: int | None = None  # ucf101, hmdb51: official split 1, 2 or 3 (None: 1)
    videos: Path | None = None  # ssv2, ucf101, hmdb51, list: the folder holding the videos, when not the usual one
    class_list: Path | None = None  # mimetics: the Kinetics class list that gives label indices (None: Kinetics-400's)
    official_indices: bool = False  # kinetics400: label index = position in the official 400 classes (classes.py)


@dataclass(frozen=True, kw_only=True)
class Listing:
    """A reader's result: the clips, and the dataset's class names in label-index order."""

    clips: list[ClipRecord]
    classes: tuple[str, ...] = ()
    skipped: dict[str, int] = field(default_factory=dict)  # reason → count of entries deliberately left out

    def require_splits(self, name: str, splits: tuple[str, ...] | None) -> None:
        """DatasetError naming the asked-for splits (`--splits`) the listing does not have, and those it has."""
        known = {clip.split for clip in self.clips}
        if splits and not set(splits) <= known:
            raise DatasetError(f"{name}: no split(s) {', '.join(sorted(set(splits) - known))}; the dataset has "
                               f"{', '.join(sorted(known))} (--splits)")


_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+|\.{2,}")


def safe_id(text: str) -> str:
    """A clip id safe as a file name on every platform and in space-separated lists: runs of anything but
    letters, digits, '.', '_' and '-' become '_', as do '..' and a leading '.'; Windows device names get a
    trailing '_'. Ids that are already safe (Kinetics, SSv2, UCF101) are unchanged."""
    if not (_SAFE.fullmatch(text) and ".." not in text):
        text = _UNSAFE_RUN.sub("_", text)
        text = "_" + text[1:] if text.startswith(".") else text
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text += "_"
    return text or "_"


def path_id(relative: Path) -> str:
    """The clip id of a video known only by its path: the path without suffix, folders joined by '__'."""
    return safe_id("__".join(relative.with_suffix("").parts))


def index_videos(folder: Path) -> dict[str, str]:
    """File stem → path (text: a Path per file costs microseconds, at Kinetics scale seconds) for every video
    under `folder` (flat or nested); the first in sorted order wins."""
    found: dict[str, str] = {}
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        for name in sorted(files):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in VIDEO_SUFFIXES and stem not in found:
                found[stem] = os.path.join(directory, name)
    return found


def on_disk(paths: list) -> list[bool]:
    """Whether each path is a file (or a link to one), listing each folder once instead of a stat per clip."""
    folders: dict[str, set[str]] = {}

    def files_in(folder: str) -> set[str] | None:
        try:
            with os.scandir(folder or ".") as entries:
                return {entry.name for entry in entries if entry.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            return set()
        except OSError:  # there but not listable (no read permission, a network error): a stat per file
            return None

    found = []
    for path in paths:
        path = path if isinstance(path, str) else os.fspath(path)
        folder, _, name = path.rpartition(os.sep)
        if not folder and path[:1] == os.sep:  # a file at the root
            folder = os.sep
        if folder not in folders:
            folders[folder] = files_in(folder)
        names = folders[folder]
        found.append(os.path.isfile(path) if names is None else name in names)
    return found


def find_videos(folder: Path) -> list[Path]:
    """Every video under `folder`, sorted by path."""
    return sorted(Path(d) / name for d, _, files in os.walk(folder) for name in files
                  if os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES)


def numbered_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of each non-empty line; a missing file is a DatasetError naming `what`."""
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    with open(path, encoding="utf-8", errors="replace", newline=None) as f:  # CRLF files (UCF101) read the same
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield number, line.strip()


def csv_records(path: Path, *, header: bool = False) -> Iterator[tuple[int, list[str]]]:
    """(line the record starts on, its fields) of each non-blank record of a CSV file. csv's own `line_num` is the
    line where a record ends, so a quote left open, which runs on over the lines after it, would be reported
    lines later: a field holding a line break is a DatasetError naming the line its record starts on. With
    `header`, the first record is the header and every other must have as many fields."""
    with open(path, newline="", encoding="utf-8") as f:
        reader, start, width = csv.reader(f), 1, None
        try:
            for fields in reader:
                if any("\n" in field or "\r" in field for field in fields):
                    raise DatasetError(f"{path}:{start}: this record runs on to line {reader.line_num} "
                                       "(unterminated quote?)")
                if fields and header and width is None:
                    width = len(fields)
                elif fields and width is not None and len(fields) != width:
                    raise DatasetError(f"{path}:{start}: expected {width} fields as in the header, got {len(fields)}")
                if fields:
                    yield start, fields
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DatasetError(f"{path}:{start}: {exc}") from None


@dataclass(frozen=True)
class Columns:
    """Some columns of a CSV file read in bulk, as text, with the line each row is on."""

    lines: list[int]
    columns: dict[str, list[str | None]]  # an optional column the file lacks is all None


def bulk_columns(path: Path, required: tuple[str, ...], *, optional: tuple[str, ...] = ()) -> Columns | None:
    """The columns of a CSV file with a header, parsed in bulk by pyarrow: every value as text, as the csv module
    reads it. None where the bulk parse cannot vouch for its result (a required column missing, a blank line, a
    record that runs over lines, a row of another width, anything pyarrow refuses): the caller then reads the
    file record by record (`csv_records`), which names the line of the problem."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines or any(not line.strip(b"\r") for line in lines):
        return None
    try:
        header = next(csv.reader([lines[0].decode("utf-8").rstrip("\r")]))
        if len(set(header)) != len(header) or not set(required) <= set(header):
            return None
        table = pacsv.read_csv(pa.py_buffer(data), convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header}, strings_can_be_null=False,
            include_columns=[name for name in (*required, *optional) if name in header]))
    except (pa.ArrowInvalid, UnicodeDecodeError, csv.Error):
        return None
    if table.num_rows != len(lines) - 1 or b"\r" in data.replace(b"\r\n", b""):  # a record over several lines
        return None  # (quoted), or a bare carriage return: the record reader says where
    return Columns(lines=list(range(2, table.num_rows + 2)),
                   columns={name: table.column(name).to_pylist() if name in header else [None] * table.num_rows
                            for name in (*required, *optional)})


def need_dir(path: Path, what: str, hint: str = "") -> Path:
    """`path` if it is a folder; else a DatasetError `<path>: <what> not found; <hint>`."""
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} not found" + (f"; {hint}" if hint else ""))
    return path


def check_split_id(split_id: int | None, dataset: str) -> int:
    split_id = 1 if split_id is None else split_id
    if split_id not in (1, 2, 3):
        raise DatasetError(f"{dataset} has official splits 1, 2 and 3, not {split_id} (SPLIT_ID / --split-id)")
    return split_id


def sorted_index(labels) -> tuple[tuple[str, ...], dict[str, int]]:
    """Class names sorted (the mmaction2 convention for Kinetics, HMDB51, folders) and name → index."""
    classes = tuple(sorted({label for label in labels if label is not None}))
    return classes, {label: i for i, label in enumerate(classes)}


def is_safe_id(text: str) -> bool:
    """Whether `safe_id` leaves `text` as it is (checked for every clip of a listing: kept cheap)."""
    if not _SAFE.fullmatch(text) or ".." in text:
        return False
    head = text.split(".", 1)[0]
    return len(head) > 4 or head.upper() not in _WINDOWS_RESERVED


def finish(listing: Listing, splits: tuple[str, ...] | None, root: Path) -> Listing:
    """Check that splits and ids are safe, merge ids listed more than once (see repeats.py), keep the requested
    splits and sort by clip id. Dropped word-for-word repeats are counted in `skipped`."""
    safe_splits: set[str] = set()
    for clip in listing.clips:
        if clip.split not in safe_splits:
            if not is_safe_id(clip.split) or clip.split.startswith("."):
                raise DatasetError(f"{clip.source or clip.path}: split name {clip.split!r} is not safe as a folder "
                                   "name")
            safe_splits.add(clip.split)
        if not is_safe_id(clip.clip_id):
            raise DatasetError(f"{clip.source or clip.path}: clip id {clip.clip_id!r} is not safe as a file name")
    if len({clip.clip_id.casefold() for clip in listing.clips}) == len(listing.clips):  # no id twice: nothing to merge
        kept, dropped = [clip for clip in listing.clips if not splits or clip.split in splits], 0
    else:
        merged = [item for item in merge_repeats(listing.clips) if not splits or item.clip.split in splits]
        kept, dropped = [item.clip for item in merged], log_repeats(root, merged)
    if not kept:
        found = sorted({clip.split for clip in listing.clips})
        raise DatasetError(f"{root}: no clips in split(s) {', '.join(splits or ())}; the dataset has: {', '.join(found)}"
                           if listing.clips else f"{root}: no clips found")
    skipped = {**listing.skipped, MERGED: dropped} if dropped else listing.skipped
    return Listing(clips=sorted(kept, key=attrgetter("clip_id")), classes=listing.classes, skipped=skipped)
