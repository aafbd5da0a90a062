"""Which shard an item lands in: by its key's hash among a fixed number of shards per group (split), fixed the
first time a run folder is planned and kept in its `layout.json` (written with the run's record). So a clip
always lands in the same shard, whatever `--splits` or `--limit` select, and a clip added or removed changes
only its own shard.

Shards are named `<group>-<bucket:05d>` (`train-00042`). A later run adds groups it has not seen (a test split
that arrived later) and never renumbers those it has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence, TypeVar

from pipeline.engine.record import RecordFile, json_text

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Layout:
    shard_size: int  # the mean number of items per shard the layout was made for
    buckets: dict[str, int]  # group → number of shards

    def assign(self, items: Iterable[T], *, group, key) -> dict[str, list[T]]:
        """Shard name → its items (in the order given), for the shards that have any; in name order. An item's
        shard is `<group>-<bucket>`, the bucket from a hash of its key (BLAKE2b, 8 bytes, big-endian, modulo the
        group's shards): it never depends on which other items are listed."""
        names = {g: [f"{g}-{bucket:05d}" for bucket in range(n)] for g, n in self.buckets.items()}
        blake2b, shards = hashlib.blake2b, {}
        for item in items:
            g = group(item)
            bucket = int.from_bytes(blake2b(key(item).encode(), digest_size=8).digest(), "big") % self.buckets[g]
            shards.setdefault(names[g][bucket], []).append(item)
        return dict(sorted(shards.items()))


def load_layout(folder: Path, counts: Counter[str], shard_size: int) -> Layout:
    """The layout of the run folder: as recorded (read, never written: see `layout_record`), extended by the
    groups in `counts` it lacks (each gets ceil(count / shard_size) shards)."""
    path = Path(folder) / "layout.json"
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        recorded = {"shard_size": shard_size, "buckets": {}}
    layout = Layout(recorded["shard_size"], dict(recorded["buckets"]))
    if shard_size != layout.shard_size:
        log.warning("%s: shards keep the layout this run folder was made with (%d clips per shard); "
                    "--shard-size %d applies to new run folders only (--tag)", folder, layout.shard_size, shard_size)
    layout.buckets.update(new_buckets({group: n for group, n in counts.items() if group not in layout.buckets},
                                      layout.shard_size))
    grown = [g for g, n in counts.items() if n > 2 * layout.shard_size * layout.buckets[g]]
    if grown:
        log.warning("%s: split(s) %s now hold over twice the clips the layout was made for; shards stay correct "
                    "but large (a new run folder, --tag, lays them out afresh)", folder, ", ".join(grown))
    return layout


def layout_record(folder: Path, layout: Layout) -> RecordFile:
    """`layout.json` as part of the run's record: the groups recorded stay as they are, ours are added (merged
    under the file's lock, so concurrent runs that add groups agree)."""
    def merge(current: str | None) -> str:
        recorded = json.loads(current) if current else {"shard_size": layout.shard_size, "buckets": {}}
        buckets = {**layout.buckets, **recorded["buckets"]}
        clash = {g for g, n in recorded["buckets"].items() if layout.buckets.get(g, n) != n}
        if clash:
            log.error("%s: groups %s were laid out by another run meanwhile with other shard counts",
                      folder, ", ".join(sorted(clash)))
        return json_text({"shard_size": recorded["shard_size"], "buckets": dict(sorted(buckets.items()))})

    return RecordFile(Path(folder) / "layout.json", merge=merge)


def new_buckets(counts: Mapping[str, int], shard_size: int) -> dict[str, int]:
    """The shards a new layout gives each group: ceil(count / shard_size), at least one."""
    return {group: max(1, math.ceil(n / shard_size)) for group, n in counts.items()}


def select(shards: dict[str, Sequence[T]], *, groups: Sequence[str] | None = None, limit: int | None = None,
           group_of=lambda name: name.rpartition("-")[0]) -> list[str]:
    """The shard names a run works on: those of `groups` (all if None), then, with `limit`, the first ones in
    name order until they hold at least `limit` items. Whole shards: selection never shrinks one."""
    names = [name for name in shards if groups is None or group_of(name) in groups]
    if limit is None:
        return names
    chosen, count = [], 0
    for name in names:
        if count >= limit:
            break
        chosen.append(name)
        count += len(shards[name])
    return chosen
