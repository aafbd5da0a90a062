"""Shard planning and the done check: stable shards of sorted clip ids, done when their stats file says so."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import MasksConfig
from pipeline.maskstore import shard_paths
from pipeline.records import FAILED, ClipRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ShardTask:
    """One unit of work: a named group of clips and where its outputs go."""

    name: str
    clips: tuple[ClipRecord, ...]
    run_dir: Path
    config: MasksConfig

    @property
    def stats_path(self) -> Path:
        return shard_paths(self.run_dir, self.name)[2]


def plan_shards(clips: list[ClipRecord], config: MasksConfig) -> list[ShardTask]:
    """Chunk the clips, sorted by id, into shards named by position: the same data gives the same shards,
    and a run limited to the first N clips reuses the full run's leading shards."""
    ordered = sorted(clips, key=lambda clip: clip.clip_id)
    size = config.shard_size
    return [
        ShardTask(name=f"shard-{i // size:05d}", clips=tuple(ordered[i : i + size]), run_dir=config.run_dir(), config=config)
        for i in range(0, len(ordered), size)
    ]


def read_stats(task: ShardTask) -> dict | None:
    try:
        return json.loads(task.stats_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_done(task: ShardTask) -> bool:
    """True when the shard's stats file exists, was written under the same settings, and covers these clips
    as the dataset lists them now (same split, label, index and meta); with `retry_failed`, also when none of
    its clips was given up as failed."""
    stats = read_stats(task)
    if stats is None or stats.get("fingerprint") != task.config.fingerprint():
        return False
    if task.config.retry_failed and stats.get("by_status", {}).get(FAILED):
        return False
    if not {clip.clip_id for clip in task.clips} <= set(stats.get("clip_ids", ())):
        return False
    listed = stats.get("listing")
    if listed is None:  # written before listings were recorded
        return True
    changed = [clip.clip_id for clip in task.clips if listed.get(clip.clip_id) != clip.listing_digest()]
    if changed:
        log.info("%s: %d clip(s) relabelled since it was computed (e.g. %s); recomputing", task.name, len(changed), changed[0])
    return not changed
