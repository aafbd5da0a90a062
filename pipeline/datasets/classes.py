"""Official class lists that need no download, and label indices taken from them.

Kinetics-400: torchvision (a dependency) carries its 400 class names in the official order (sorted, the order of
mmaction2's label_map_k400.txt) as `R3D_18_Weights.DEFAULT.meta["categories"]`, in its code, not fetched.
Kinetics-600/700 have no such offline source: CLASS_LIST (--class-list) stays the way to give their lists.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

from pipeline.datasets.common import Listing
from pipeline.datasets.errors import DatasetError

log = logging.getLogger(__name__)

OFFLINE = ("kinetics400",)  # the datasets whose official class list is available without a download
_SORTED = (" (without it, its label indices are the positions among the sorted labels listed: the official ones "
           "when every class is present)")


def official_classes(dataset: str) -> tuple[str, ...] | None:
    """`dataset`'s official class names in label-index order, or None where none is available offline."""
    return _kinetics400() if dataset == "kinetics400" else None


@functools.cache
def _kinetics400() -> tuple[str, ...]:
    from torchvision.models.video import R3D_18_Weights  # imported only when asked: importing torchvision is slow

    classes = tuple(R3D_18_Weights.DEFAULT.meta["categories"])
    if len(classes) != 400 or list(classes) != sorted(set(classes)):
        raise DatasetError(f"{R3D_18_Weights.__module__}: expected the 400 sorted Kinetics-400 class names, found "
                           f"{len(classes)}; this torchvision changed them")
    return classes


def require_official(dataset: str) -> tuple[str, ...]:
    """`dataset`'s official class list for OFFICIAL_INDICES=1, or a DatasetError saying it has none offline."""
    classes = official_classes(dataset)
    if classes is None:
        hint = {"kinetics600": _SORTED, "kinetics700": _SORTED,
                "mimetics": " (it takes Kinetics-400's official indices already)"}.get(dataset, "")
        raise DatasetError(f"{dataset}: OFFICIAL_INDICES=1 (--official-indices) needs an official class list "
                           f"available offline, which only {', '.join(OFFLINE)} has; drop it for {dataset}{hint}")
    return classes


def warn_unofficial_indices(listing: Listing, dataset: str) -> None:
    """One warning where a Kinetics-400 listing has fewer than its 400 classes and no official indices: its label
    indices are then positions among the labels listed, which a model trained on all 400 would misread."""
    if dataset == "kinetics400" and 0 < len(listing.classes) < 400:
        count = len(listing.classes)
        log.warning("kinetics400: %d of the 400 classes listed; label indices are 0..%d in sorted order. For a model "
                    "trained on all 400 classes, set OFFICIAL_INDICES=1 (--official-indices)", count, count - 1)


def with_official_indices(listing: Listing, dataset: str) -> Listing:
    """`listing` with each label's index in `dataset`'s official class list, and that whole list as its classes
    (so a subset's label map still has every class). A label the list lacks is a DatasetError naming its entry."""
    classes = require_official(dataset)
    index = {name: i for i, name in enumerate(classes)}
    for clip in listing.clips:
        if clip.label is not None and clip.label not in index:
            raise DatasetError(f"{clip.source or clip.path}: label {clip.label!r} is not in the official {dataset} "
                               "class list (torchvision); correct the label, or drop OFFICIAL_INDICES=1 "
                               "(--official-indices) to index the sorted labels found")
    log.info("%s: label indices from the official class list (%d classes, torchvision)", dataset, len(classes))
    clips = [dataclasses.replace(clip, label_index=None if clip.label is None else index[clip.label])
             for clip in listing.clips]
    return dataclasses.replace(listing, clips=clips, classes=classes)
