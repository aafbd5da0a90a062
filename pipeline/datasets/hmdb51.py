"""HMDB51 reader, one of the three official splits (--split-id / SPLIT_ID, default 1).

<root>/<class>/<name>.avi                                  (the unpacked class archives; or --videos / VIDEO_DIR)
<root>/testTrainMulti_7030_splits/<class>_test_split<N>.txt   `<name>.avi <tag>`: 1 train, 2 test, 0 unused
Unused entries (tag 0) are left out of the listing and counted. Label index = position in the sorted class
names. Video names hold spaces, parentheses, '#', '&', '!' …: clip ids replace those with '_' (the path and
the original name are kept).
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.datasets.common import Listing, ReaderOptions, check_split_id, need_dir, numbered_lines, safe_id
from pipeline.datasets.errors import DatasetError
from pipeline.records import ClipRecord

SPLITS_FOLDER = "testTrainMulti_7030_splits"
TAGS = {"1": "train", "2": "test", "0": None}
_LINE = re.compile(r"^(?P<name>.+\.\w+)\s+(?P<tag>\S+)$")


def list_hmdb51(root: Path, options: ReaderOptions = ReaderOptions()) -> Listing:
    root = need_dir(Path(root), "dataset folder", "pass DATA_ROOT=/path/to/hmdb51 (--root)")
    split_id = check_split_id(options.split_id, "hmdb51")
    folder = need_dir(root / SPLITS_FOLDER, f"HMDB51 split folder ({SPLITS_FOLDER}/)")
    files = {path.name[: -len(f"_test_split{split_id}.txt")]: path for path in folder.glob(f"*_test_split{split_id}.txt")}
    if not files:
        raise DatasetError(f"{folder}: no <class>_test_split{split_id}.txt files")
    classes = tuple(sorted(files))
    video_dir = options.videos or root
    clips, unused = [], 0
    for index, label in enumerate(classes):
        path = files[label]
        for line, text in numbered_lines(path, "HMDB51 split file"):
            match = _LINE.match(text)
            if not match or match["tag"] not in TAGS:
                raise DatasetError(f"{path}:{line}: expected `<video>.avi <0|1|2>`, got {text!r}")
            split = TAGS[match["tag"]]
            if split is None:
                unused += 1
                continue
            name = match["name"]
            clips.append(ClipRecord(clip_id=safe_id(Path(name).stem), path=video_dir / label / name, split=split,
                                    label=label, label_index=index, meta={"video": name}, source=f"{path}:{line}"))
    return Listing(clips=clips, classes=classes, skipped={f"unused in split {split_id}": unused} if unused else {})
