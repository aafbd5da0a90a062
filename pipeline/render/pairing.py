"""Action-swap pairing (HAT): which clip's background each clip's people are pasted onto.

Only clips whose mean person coverage lies in a range (5–50% of the frame by default) take part, on either
side. Each clip A gets a partner B from the same split with a different label, drawn from a generator seeded
by (seed, A's id): the same clips and seed always give the same pairs, and one clip's draw does not depend
on the order the others are processed in.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.masks import MasksRun, StoredClip
from pipeline.render.regions import RegionMasks
from pipeline.render.variants import MaskOptions

PAIR_RANGE = (0.05, 0.5)


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
               low: float = PAIR_RANGE[0], high: float = PAIR_RANGE[1]) -> dict[str, StoredClip]:
    """Clip id → partner for every eligible clip that has an eligible partner with another label."""
    by_split: dict[str, list[StoredClip]] = defaultdict(list)
    for clip in sorted(clips, key=lambda c: c.clip_id):
        if clip.label is not None and low <= coverage.get(clip.clip_id, -1.0) <= high:
            by_split[clip.split].append(clip)
    pairs = {}
    for pool in by_split.values():
        for clip in pool:
            rng = np.random.default_rng([seed, zlib.crc32(clip.clip_id.encode())])
            start = int(rng.integers(len(pool)))
            partner = _first_other_label(pool, start, clip.label)
            if partner is not None:
                pairs[clip.clip_id] = partner
    return pairs


def _first_other_label(pool: list[StoredClip], start: int, label: str) -> StoredClip | None:
    """The first clip at or after `start` (wrapping round) whose label differs."""
    for offset in range(len(pool)):
        candidate = pool[(start + offset) % len(pool)]
        if candidate.label != label:
            return candidate
    return None
