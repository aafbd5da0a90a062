"""Which classes a zero-shot scorer chooses among (its label space): the dataset's own (its label map; for
Mimetics, its 50 mimed classes, by the local index its reader keeps), or the 400 Kinetics classes (a Mimetics
clip scored as a Kinetics-400 model would). The classes go to `scorer.json` beside the predictions, and
`evaluate` matches each clip to them by its label's name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from pipeline.datasets.classes import official_classes
from pipeline.errors import InputError
from pipeline.masks import StoredClip

LABEL_SPACES = ("dataset", "kinetics400")
MIMETICS = "mimetics"


@dataclass(frozen=True, kw_only=True)
class LabelSpace:
    name: str
    classes: tuple[str, ...]


def label_space(choice: str | None, *, dataset: str, label_map: list[str], clips: Iterable[StoredClip]) -> LabelSpace:
    """The classes for `choice` (None: the dataset's own); InputError when a listed clip's label is not one of
    them (the label space does not fit the dataset)."""
    clips = [clip for clip in clips if clip.label]
    choice = choice or "dataset"
    if choice == "kinetics400":
        space = LabelSpace(name="kinetics400", classes=tuple(official_classes("kinetics400")))
    elif choice != "dataset":
        raise InputError(f"label space {choice!r}: expected one of {', '.join(LABEL_SPACES)}")
    elif dataset == MIMETICS:
        space = LabelSpace(name=MIMETICS, classes=mimetics_classes(clips))
    else:
        space = LabelSpace(name=dataset, classes=tuple(label_map))
    known = set(space.classes)
    stray = next((clip for clip in clips if clip.label not in known), None)
    if stray is not None:
        raise InputError(f"label space {space.name} ({len(space.classes)} classes) does not fit {dataset}: clip "
                         f"{stray.clip_id} is labelled {stray.label!r}, not one of its classes")
    return space


def mimetics_classes(clips: list[StoredClip]) -> tuple[str, ...]:
    """Mimetics' own classes in its local index order (`meta.mimetics_index`, kept by its reader)."""
    by_index: dict[int, str] = {}
    for clip in clips:
        index = json.loads(clip.meta or "{}").get("mimetics_index")
        if index is None or by_index.setdefault(index, clip.label) != clip.label:
            raise InputError(f"clip {clip.clip_id}: no consistent Mimetics index in its listing ({clip.meta}); list "
                             "the dataset again with the mimetics reader")
    if sorted(by_index) != list(range(len(by_index))):
        raise InputError(f"the Mimetics clips' local indices are not 0..{len(by_index) - 1}; list the dataset again")
    return tuple(by_index[i] for i in range(len(by_index)))
