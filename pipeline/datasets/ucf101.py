"""UCF101 reader, one of the three official splits (--split-id / SPLIT_ID, default 1).

<root>/UCF-101/<Class>/v_<Class>_gXX_cYY.avi                 (or any folder given as --videos / VIDEO_DIR)
<root>/ucfTrainTestlist/classInd.txt                        `1 ApplyEyeMakeup` … (1-based)
<root>/ucfTrainTestlist/trainlist0N.txt                     `ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`
<root>/ucfTrainTestlist/testlist0N.txt                      `ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi`
Label indices are 0-based (classInd − 1). The class of a test entry is its folder; folder names are matched
without regard to case (the release names files v_HandStandPushups_… in folder HandstandPushups).
Group and clip numbers go to the clip's meta, for group-aware analyses.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.datasets.common import Listing, ReaderOptions, check_split_id, need_dir, numbered_lines, safe_id
from pipeline.datasets.errors import DatasetError
from pipeline.records import ClipRecord

_GROUP_CLIP = re.compile(r"_g(\d+)_c(\d+)$")


def list_ucf101(root: Path, options: ReaderOptions = ReaderOptions()) -> Listing:
    root = need_dir(Path(root), "dataset folder", "pass DATA_ROOT=/path/to/ucf101 (--root)")
    split_id = check_split_id(options.split_id, "ucf101")
    lists = need_dir(root / "ucfTrainTestlist", "UCF101 split folder (ucfTrainTestlist/)")
    video_dir = need_dir(options.videos or root / "UCF-101", "UCF101 video folder", "pass VIDEO_DIR=/path/to/UCF-101 (--videos)")
    classes = read_class_index(lists / "classInd.txt")
    by_folder = {name.casefold(): i for i, name in enumerate(classes)}
    clips = []
    for split, list_name in (("train", f"trainlist0{split_id}.txt"), ("test", f"testlist0{split_id}.txt")):
        path = lists / list_name
        for line, text in numbered_lines(path, f"UCF101 {split} list of split {split_id}"):
            where = f"{path}:{line}"
            relative, *rest = text.split()
            folder = Path(relative).parent.name.casefold()
            if folder not in by_folder or len(Path(relative).parts) != 2:
                raise DatasetError(f"{where}: {relative!r} is not <Class>/<video> with a class of classInd.txt")
            index = by_folder[folder]
            if rest and (len(rest) != 1 or not rest[0].isdigit() or int(rest[0]) - 1 != index):
                raise DatasetError(f"{where}: label {' '.join(rest)!r} does not match folder {classes[index]!r} "
                                   f"(classInd.txt gives {index + 1})")
            stem = Path(relative).stem
            match = _GROUP_CLIP.search(stem)
            meta = {"group": int(match[1]), "clip": int(match[2])} if match else {}
            clips.append(ClipRecord(clip_id=safe_id(stem), path=video_dir / relative, split=split,
                                    label=classes[index], label_index=index, meta=meta, source=where))
    return Listing(clips=clips, classes=classes)


def read_class_index(path: Path) -> tuple[str, ...]:
    """classInd.txt: `N Name` lines, N = 1..101 once each; returns names in 0-based index order."""
    by_index: dict[int, str] = {}
    for line, text in numbered_lines(path, "UCF101 class index (classInd.txt)"):
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{path}:{line}: expected `<index> <ClassName>`, got {text!r}")
        index = int(parts[0])
        if index in by_index:
            raise DatasetError(f"{path}:{line}: index {index} already given to {by_index[index]!r}")
        by_index[index] = parts[1]
    if not by_index or sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise DatasetError(f"{path}: indices must run 1..{len(by_index)} (1-based) once each")
    return tuple(by_index[i] for i in range(1, len(by_index) + 1))
