"""Mimetics reader: mimed actions of 50 Kinetics-400 classes, for evaluation only (split `test`).

<root>/mimetics_v1.0.csv             label,youtube_id,time_start,time_end   (the one CSV in <root>; or DATA_ROOT=the CSV)
<root>/**/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4   (Kinetics-style names, flat or in class folders)
Label index: the position in the official Kinetics-400 class list (torchvision's, see classes.py; what a
Kinetics-400 model outputs). CLASS_LIST (--class-list) overrides it with the class list of the model under
test (a Kinetics-600/700 one, say): a text file with one class per line in index order (mmaction2's
label_map_k400.txt), or a Kinetics annotation CSV (index = position in the sorted class names).
The manifests also carry the Mimetics-local index (position among the sorted Mimetics classes) as
meta.mimetics_index.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.datasets.classes import official_classes
from pipeline.datasets.common import Listing, ReaderOptions, index_videos, numbered_lines, sorted_index
from pipeline.datasets.errors import DatasetError
from pipeline.datasets.kinetics import clip_name, read_kinetics_csv
from pipeline.records import ClipRecord

SPLIT = "test"

log = logging.getLogger(__name__)


def list_mimetics(root: Path, options: ReaderOptions = ReaderOptions()) -> Listing:
    csv_path = annotation_csv(Path(root))
    if options.class_list is None:
        classes, where = official_classes("kinetics400"), "the official Kinetics-400 class list (torchvision)"
        log.info("mimetics: label indices from %s; CLASS_LIST (--class-list) gives another model's", where)
    else:
        classes, where = read_class_list(Path(options.class_list)), f"the class list {options.class_list}"
    kinetics_index = {name: i for i, name in enumerate(classes)}
    rows = list(read_kinetics_csv(csv_path))
    for line, label, *_ in rows:
        if label is None:
            raise DatasetError(f"{csv_path}:{line}: Mimetics clips must have a label")
        if label not in kinetics_index:
            raise DatasetError(f"{csv_path}:{line}: label {label!r} is not in {where}"
                               + ("; pass the model's class list as CLASS_LIST (--class-list)" if options.class_list is None else ""))
    _, local_index = sorted_index(label for _, label, *_ in rows)
    videos = index_videos(options.videos or csv_path.parent)
    clips = []
    for line, label, youtube_id, start, end in rows:
        clip_id = clip_name(youtube_id, start, end)
        path = videos.get(clip_id) or f"{csv_path.parent}/{label}/{clip_id}.mp4"  # a missing file: a status row
        clips.append(ClipRecord(clip_id=clip_id, path=path, split=SPLIT, label=label, label_index=kinetics_index[label],
                                meta={"mimetics_index": local_index[label]}, source=f"{csv_path}:{line}"))
    return Listing(clips=clips, classes=classes)


def annotation_csv(root: Path) -> Path:
    """DATA_ROOT itself when it is a CSV file, else the one CSV file directly inside it."""
    if root.is_file():
        return root
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; pass DATA_ROOT=/path/to/mimetics (--root)")
    found = sorted(root.glob("*.csv"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise DatasetError(f"{root}: expected one annotation CSV (mimetics_v1.0.csv), found {names}; "
                           "pass DATA_ROOT=/path/to/the.csv")
    return found[0]


def read_class_list(path: Path) -> tuple[str, ...]:
    """Class names in index order, from a one-per-line text file or a Kinetics annotation CSV."""
    if path.suffix.lower() == ".csv":
        classes, _ = sorted_index(label for _, label, *_ in read_kinetics_csv(path))
        if not classes:
            raise DatasetError(f"{path}: no labels in this Kinetics annotation CSV")
        return classes
    classes, seen = [], {}
    for line, text in numbered_lines(path, "class list"):
        if line != len(classes) + 1:
            raise DatasetError(f"{path}:{len(classes) + 1}: blank line; the line order gives the index, so none may be empty")
        if text in seen:
            raise DatasetError(f"{path}:{line}: class {text!r} already on line {seen[text]}")
        seen[text] = line
        classes.append(text)
    if not classes:
        raise DatasetError(f"{path}: the class list is empty")
    return tuple(classes)
