"""Action-swap pairing (HAT): which clip's background each clip's people are pasted onto.

Only clips whose mean person coverage lies in a range (5–50% of the frame by default) take part, on either
side. Each clip A gets a partner B from the same split, drawn from a generator seeded by (seed, A's id): the
same clips and seed always give the same pairs, and one clip's draw does not depend on the order the others are
processed in. HAT's four modes say which partners qualify: `rand` any other class, `same` A's own class (another
clip), `close` a class related to A's, `far` a class neither A's nor related to it. The relations come from a CSV
file of rows `class, related class, related class, …` (a cell may also hold several names split by `;`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.errors import InputError
from pipeline.masks import MasksRun, StoredClip
from pipeline.render.kinds import MaskOptions
from pipeline.render.regions import RegionMasks

log = logging.getLogger(__name__)

PAIR_RANGE = (0.05, 0.5)
Relations = dict[str, frozenset[str]]


@dataclass(frozen=True, kw_only=True)
class CoverageTask:
    """The person coverage of the usable clips of one masks shard, under a variant's mask options."""

    masks_dir: Path
    shard: str
    clips: tuple[StoredClip, ...]
    options: MaskOptions


def shard_coverage(task: CoverageTask) -> dict[str, float]:
    """Mean person coverage of each usable clip of one masks shard (frames without people count as 0)."""
    stored = MasksRun(task.masks_dir).shard_masks(task.shard)
    coverage = {}
    for clip in task.clips:
        if not clip.usable or not clip.frames:
            continue
        found = stored.get(clip.clip_id)
        if found is None:
            coverage[clip.clip_id] = 0.0
            continue
        regions = RegionMasks(found, clip.height, clip.width, task.options)
        frames = sorted(set(found.frame_index.tolist()))
        coverage[clip.clip_id] = float(sum(regions.person_coverage(frames)) / clip.frames)
    return coverage


def pair_clips(clips: list[StoredClip], coverage: dict[str, float], *, seed: int,
               low: float = PAIR_RANGE[0], high: float = PAIR_RANGE[1], mode: str = "rand",
               relations: Relations | None = None) -> dict[str, StoredClip]:
    """Clip id → partner for every eligible clip that has an eligible partner of the kind `mode` asks for."""
    by_split: dict[str, list[StoredClip]] = defaultdict(list)
    for clip in sorted(clips, key=lambda c: c.clip_id):
        if clip.label is not None and low <= coverage.get(clip.clip_id, -1.0) <= high:
            by_split[clip.split].append(clip)
    pairs = {}
    for pool in by_split.values():
        for clip in pool:
            rng = np.random.default_rng([seed, zlib.crc32(clip.clip_id.encode())])
            start = int(rng.integers(len(pool)))
            partner = _first(pool, start, _accepts(clip, mode, relations or {}))
            if partner is not None:
                pairs[clip.clip_id] = partner
    return pairs


WIDEN = "widen it with PAIR_COVERAGE=LOW,HIGH (--pair-coverage)"
PARTNERS = {"rand": "a clip of another class", "same": "another clip of its class",
            "close": "a clip of a related class (SWAP_RELATIONS, --swap-relations)", "far": "a clip of an unrelated class"}


def unpaired_reason(clips: list[StoredClip], coverage: dict[str, float], *, low: float = PAIR_RANGE[0],
                    high: float = PAIR_RANGE[1], mode: str = "rand") -> str | None:
    """Why `pair_clips` paired no clip, naming the flag that would change it; None where no clip was measured
    (nothing usable: no swap variant's failure of its own)."""
    measured = [clip for clip in clips if clip.clip_id in coverage]
    labelled = [clip for clip in measured if clip.label is not None]
    span = f"{100 * low:g}–{100 * high:g}%"
    if not measured:
        return None
    if not labelled:
        return f"none of the {len(measured)} clips has a label, and partners are chosen by label"
    inside = [clip for clip in labelled if low <= coverage[clip.clip_id] <= high]
    if not inside:
        median = 100 * float(np.median([coverage[clip.clip_id] for clip in labelled]))
        return f"person coverage of the {len(labelled)} clips is outside {span} (median {median:.0f}%); {WIDEN}"
    return (f"none of the {len(inside)} clips with person coverage in {span} has {PARTNERS[mode]} in its split "
            f"within that range; {WIDEN}")


def _accepts(clip: StoredClip, mode: str, relations: Relations) -> Callable[[StoredClip], bool]:
    related = relations.get(clip.label, frozenset())
    if mode == "same":
        return lambda other: other.label == clip.label and other.clip_id != clip.clip_id
    if mode == "close":
        return lambda other: other.label in related and other.label != clip.label
    if mode == "far":
        return lambda other: other.label != clip.label and other.label not in related
    return lambda other: other.label != clip.label


def _first(pool: list[StoredClip], start: int, accept: Callable[[StoredClip], bool]) -> StoredClip | None:
    """The first clip at or after `start` (wrapping round) that `accept`s."""
    for offset in range(len(pool)):
        candidate = pool[(start + offset) % len(pool)]
        if accept(candidate):
            return candidate
    return None


def read_relations(path: Path, labels: set[str] | None = None) -> Relations:
    """Class → related classes from a CSV file. Names the dataset does not have are reported (a relations file
    for all of Kinetics serves a subset too); a file that names none of its classes is an error."""
    relations: dict[str, set[str]] = defaultdict(set)
    unknown: list[str] = []
    try:
        with open(path, newline="") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                names = [name.strip() for cell in row for name in cell.split(";") if name.strip()]
                if not names or names[0].startswith("#") or (line == 1 and names[0].lower() == "class"):
                    continue
                if len(names) < 2:
                    raise InputError(f"{path}:{line}: expected `class, related class, …`, got {','.join(row)!r}")
                relations[names[0]].update(names[1:])
                unknown += [f"{path}:{line}: {n!r}" for n in names if labels is not None and n not in labels]
    except FileNotFoundError:
        raise InputError(f"{path}: class relations file not found") from None
    if not relations:
        raise InputError(f"{path}: no class relations in it; rows are `class, related class, …`")
    if labels is not None and unknown:
        if all(name not in labels for name in relations):
            raise InputError(f"{path}: names none of the dataset's classes (first: {unknown[0]})")
        log.warning("%s: %d name(s) not among the dataset's classes, ignored (first: %s)", path, len(unknown), unknown[0])
    return {name: frozenset(related) for name, related in sorted(relations.items())}


def relations_digest(relations: Relations) -> str:
    """The relations' content, for the fingerprint of close / far swap variants."""
    data = json.dumps({name: sorted(related) for name, related in relations.items()}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]
