"""Clip ids that annotation files list more than once (ignoring case: renders are files named by id).

A word-for-word repeat of an entry (same id, split, label, label index, meta and path; real Kinetics CSV exports
hold them) is dropped and counted. An entry that differs keeps the first one by reader order, marked as a
conflict that names every entry, so that the masks stage writes it as a `conflict` row instead of stopping.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.records import ClipRecord

log = logging.getLogger(__name__)

MERGED = "duplicate entries merged"  # the Listing.skipped reason for dropped word-for-word repeats
_DETAILS = ("label_index", "meta", "path")  # shown only when split and label do not tell the entries apart


@dataclass
class Merged:
    """One clip id: the record kept (its `conflict` set when other entries differ), and its dropped repeats."""

    clip: ClipRecord
    repeats: list[ClipRecord] = field(default_factory=list)


def merge_repeats(clips: list[ClipRecord]) -> list[Merged]:
    """Each clip id once (ignoring case), in the order the reader first listed it."""
    groups: dict[str, list[ClipRecord]] = {}
    for clip in clips:
        groups.setdefault(clip.clip_id.casefold(), []).append(clip)
    merged = []
    for group in groups.values():
        if len(group) == 1:  # nearly every clip
            merged.append(Merged(group[0]))
            continue
        first, rest = group[0], group[1:]
        others = [clip for clip in rest if clip != first]  # ClipRecord equality ignores `source`
        kept = replace(first, conflict=conflict_message([first, *others])) if others else first
        merged.append(Merged(kept, [clip for clip in rest if clip == first]))
    return merged


def conflict_message(entries: list[ClipRecord]) -> str:
    """`listed twice: <source> (split …, label …) and <source> (…)`; with the ids when they differ in case, and
    the label index, meta or path when split and label are the same in every entry."""
    first = entries[0]

    def differ(name: str) -> bool:
        return any(getattr(clip, name) != getattr(first, name) for clip in entries)

    show_id = differ("clip_id")
    details = [] if differ("split") or differ("label") else [name for name in _DETAILS if differ(name)]

    def describe(clip: ClipRecord) -> str:
        parts = [f"id {clip.clip_id!r}"] if show_id else []
        parts += [f"split {clip.split}", f"label {clip.label!r}" if clip.label is not None else "no label"]
        parts += [f"{name.replace('_', ' ')} {getattr(clip, name)}" for name in details
                  if not (name == "path" and clip.source == str(clip.path))]  # folder readers: source is the path
        return f"{clip.source or clip.path} ({', '.join(parts)})"

    described = [describe(clip) for clip in entries]
    times = "twice" if len(entries) == 2 else f"{len(entries)} times"
    return f"listed {times}: {', '.join(described[:-1])} and {described[-1]}"


def log_repeats(root: Path, merged: list[Merged]) -> int:
    """One warning for the dropped repeats and one for the conflicts among `merged`; returns the repeats dropped."""
    repeated = [item for item in merged if item.repeats]
    dropped = sum(len(item.repeats) for item in repeated)
    if repeated:
        example = repeated[0]
        log.warning("%s: %d duplicate entr%s merged (listed again word for word), e.g. clip %s at %s and %s",
                    root, dropped, "y" if dropped == 1 else "ies", example.clip.clip_id,
                    example.clip.source or example.clip.path, example.repeats[0].source or example.repeats[0].path)
    conflicts = [item.clip for item in merged if item.clip.conflict]
    if conflicts:
        log.warning("%s: %d clip id%s listed again with another split, label or path; each is kept once as a "
                    "conflict and not processed, e.g. clip %s %s", root, len(conflicts),
                    "" if len(conflicts) == 1 else "s", conflicts[0].clip_id, conflicts[0].conflict)
    return dropped
