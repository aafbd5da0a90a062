"""`make list` (`python -m pipeline list`): the masks stage's listing as a dry run. It reads the dataset exactly as
`masks` does (`list_clips`, the same reader options) and says what a run would work on, writing nothing: clips
per split, the classes, entries merged or left out, conflicts, listed files that are not on disk, and the
shards a new run folder would plan. Only the first few clips of each kind are named, so it reads the same for
ten clips or 260k.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets import DATASETS, ReaderOptions, list_clips
from pipeline.datasets.common import on_disk
from pipeline.datasets.repeats import MERGED
from pipeline.datasets.sample import DONE_MARKER
from pipeline.engine.layout import new_buckets
from pipeline.errors import InputError
from pipeline.records import ClipRecord

EXAMPLES = 5  # clips named per kind (conflicts, missing files)


@dataclass(frozen=True, kw_only=True)
class ListingCheck:
    """What `list` found: the listing's counts and the clips a masks run could not process."""

    dataset: str
    root: Path  # the dataset folder (or list file) read
    clips: dict[str, int]  # split → clips, in split order
    unlabelled: dict[str, int]  # split → clips without a label (a Kinetics test split)
    classes: tuple[str, ...]
    label_indices: tuple[int, int] | None  # lowest and highest label index listed (labels that are indices)
    skipped: dict[str, int]  # reason → entries left out, duplicates merged among them
    conflicts: list[ClipRecord]
    missing: list[ClipRecord]
    shard_size: int
    shards: dict[str, int]  # split → shards a new run folder plans
    splits: tuple[str, ...] | None  # the splits a run would process (None: all)

    def lines(self, examples: int = EXAMPLES) -> list[str]:
        total = sum(self.clips.values())
        lines = [f"list {self.dataset} ({self.root}): {_count(total, 'clip')} in {_count(len(self.clips), 'split')}"]
        for split, count in self.clips.items():
            unlabelled = f" ({self.unlabelled[split]} unlabelled)" if self.unlabelled.get(split) else ""
            lines.append(f"  {split}: {_count(count, 'clip')}{unlabelled}, {_count(self.shards[split], 'shard')}")
        lines.append(f"  classes: {self.class_summary()}")
        lines.append(f"  duplicate entries merged: {self.skipped.get(MERGED, 0)}")
        lines += [f"  left out ({reason}): {count}" for reason, count in self.skipped.items() if reason != MERGED]
        lines += _named("conflicts (listed twice; not processed)", self.conflicts, examples,
                        lambda clip: f"{clip.clip_id}: {clip.conflict}")
        lines += _named("missing files (listed, not on disk; recorded as `missing`)", self.missing, examples,
                        lambda clip: f"{clip.clip_id}: {clip.path}"
                                     + (f" (listed at {clip.source})" if clip.source and clip.source != str(clip.path) else ""))
        planned = sum(self.shards.values())
        chosen = sum(n for split, n in self.shards.items() if not self.splits or split in self.splits)
        selected = f"; SPLITS={','.join(self.splits)} runs {chosen} of them" if self.splits else ""
        lines.append(f"  shards: {planned} in a new run folder ({_count(self.shard_size, 'clip')} per shard){selected}")
        return lines

    def class_summary(self) -> str:
        if self.classes:
            first, last = self.classes[0], self.classes[-1]
            span = f"0 {first}" if len(self.classes) == 1 else f"0 {first} … {len(self.classes) - 1} {last}"
            return f"{len(self.classes)} ({span})"
        if self.label_indices is not None:
            return "no names; the labels are indices {} … {}".format(*self.label_indices)
        return "none (no clip is labelled)"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _named(what: str, clips: list[ClipRecord], examples: int, describe) -> list[str]:
    lines = [f"  {what}: {len(clips)}"] + [f"    {describe(clip)}" for clip in clips[:examples]]
    if len(clips) > examples:
        lines.append(f"    … and {len(clips) - examples} more")
    return lines


def check_listing(dataset: str, root: Path | None, out: Path, *, options: ReaderOptions = ReaderOptions(),
                  splits: tuple[str, ...] | None = None, shard_size: int | None = None) -> ListingCheck:
    """List `dataset` as the masks stage would, and check it; writes nothing. Bad input raises InputError."""
    if dataset == "sample":  # made by its first masks run; list only looks
        folder = Path(root or DATASETS["sample"].default_root(out))
        if not (folder / DONE_MARKER).is_file():
            raise InputError(f"{folder}: no sample dataset there yet; `make masks DATASET=sample` generates it")
    listing = list_clips(dataset, root, out, None, options)  # the whole dataset, as masks lists it
    listing.require_splits(dataset, splits)
    counts = Counter(clip.split for clip in listing.clips)
    shard_size = shard_size or DATASETS[dataset].shard_size
    present = on_disk([clip.path for clip in listing.clips])
    indices = [clip.label_index for clip in listing.clips if clip.label_index is not None]
    return ListingCheck(
        dataset=dataset,
        root=Path(root or DATASETS[dataset].default_root(out)),  # list_clips needs one or the other
        clips=dict(sorted(counts.items())),
        unlabelled=dict(Counter(clip.split for clip in listing.clips if clip.label is None)),
        classes=listing.classes,
        label_indices=(min(indices), max(indices)) if indices else None,
        skipped=dict(listing.skipped),
        conflicts=[clip for clip in listing.clips if clip.conflict],
        missing=[clip for clip, found in zip(listing.clips, present) if not found and not clip.conflict],
        shard_size=shard_size,
        shards=new_buckets(dict(sorted(counts.items())), shard_size),
        splits=splits,
    )
