"""Where a stage's run stands, read from its shard folder alone by anyone who sees it, writing nothing: shards
done (stats current per the plan), claimed now (asked of the lock without taking it) and by whom, failed and
remaining; clips by status; the rate over the last minutes and the time left; the most frequent errors.

One listing of the folder, the stats read on a thread pool, and only the journals and locks of shards not
done are looked at, so a run of thousands of shards is read in a second or two.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.engine.claims import claim_held, claim_holder
from pipeline.engine.journal import Activity, events, journal_path
from pipeline.engine.records import ShardStats, made_with_counts
from pipeline.errors import InputError
from pipeline.records import FAILED

WINDOW = 300.0  # seconds of activity the rate is taken over
SHOWN = 5  # claimed shards, failed shards and errors listed, at most


@dataclass(frozen=True, kw_only=True)
class Claim:
    """A shard being computed now."""

    shard: str
    holder: str  # host:pid, as the claim wrote it
    since: float  # when it was claimed (the lock file's modification time)
    finished: int  # items finished so far, per its journal
    moved: float | None  # the journal's last event


@dataclass(kw_only=True)
class StageStatus:
    """One stage's shard folder, as found at `now`."""

    name: str
    folder: Path
    now: float
    planned: int | None  # shards in the plan (None: no plan yet; it is written when the first shard commits)
    done: int = 0
    claimed: list[Claim] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # shard → why (its journal's last error, or the summary)
    items: dict[str, int] = field(default_factory=dict)  # done shard → its items
    by_status: dict[str, int] = field(default_factory=dict)  # the items of the done shards
    in_flight: int = 0  # items finished in claimed shards
    total: float | None = None  # items in the whole plan, where known or estimated
    estimated: bool = False  # `total` from the mean items of the done shards
    frames_per_s: float = 0.0  # over `span` seconds of the last WINDOW
    items_per_s: float = 0.0
    span: float = 0.0
    last: float | None = None  # the latest activity seen (a commit, a journal event)
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (count, error, an item) by count
    made_with: dict[str, dict[str, int]] = field(default_factory=dict)  # what ran the done shards, counted
    warnings: list[str] = field(default_factory=list)  # what the stage says of them (a masks run: its machines)

    @property
    def remaining(self) -> int | None:
        """Shards neither done, claimed nor failed (None: no plan yet)."""
        if self.planned is None:
            return None
        return max(0, self.planned - self.done - len(self.claimed) - len(self.failed))

    @property
    def left(self) -> float | None:
        """Items not done yet (estimated where the plan does not say how many it holds)."""
        return None if self.total is None else max(0.0, self.total - sum(self.by_status.values()) - self.in_flight)

    @property
    def eta(self) -> float | None:
        left = self.left
        if left is None or (left and not self.items_per_s):
            return None
        return left / self.items_per_s if left else 0.0


def stage_status(name: str, folder: Path, *, total: int | None = None, now: float | None = None) -> StageStatus:
    """The status of the shards in `folder` (a masks run, or a render variant's status folder). `total`: the
    items the whole plan holds, where the caller knows it."""
    folder, now = Path(folder), time.time() if now is None else now
    try:
        with os.scandir(folder) as found:
            entries = {entry.name: entry for entry in found}
    except FileNotFoundError:
        entries = {}
    plan = read_plan(folder)
    shards = sorted(plan) if plan is not None else _shards_found(entries)
    status = StageStatus(name=name, folder=folder, now=now, planned=None if plan is None else len(plan))
    stats = _read_stats([folder / f"{shard}_stats.json" for shard in shards if f"{shard}_stats.json" in entries])
    errors: Counter[str] = Counter()
    examples: dict[str, str] = {}
    done_frames = done_items = 0.0
    for shard in shards:
        found = stats.get(shard)
        if found is None or (plan is not None and found[0].plan != plan[shard]):
            continue
        shard_stats, mtime = found
        status.done += 1
        status.items[shard] = len(shard_stats.items)
        for key, n in shard_stats.by_status.items():
            status.by_status[key] = status.by_status.get(key, 0) + n
        share = _share(mtime - shard_stats.seconds, mtime, now)  # of its work, done in the window
        done_frames += share * shard_stats.frames
        done_items += share * len(shard_stats.items)
        status.last = max(status.last or 0.0, mtime)
        if shard_stats.problems is not None:
            problems = [(p["key"], p["status"], p["error"]) for p in shard_stats.problems]
        else:  # stats from before the lists
            problems = [(key, FAILED, error) for key, error in shard_stats.failed.items()]
        for key, state, error in problems:
            if error:
                _count(errors, examples, f"{state}: {error}", key)
    status.made_with = made_with_counts(stats[shard][0] for shard in status.items)
    summary_failed = _summary_failed(folder)
    journal_frames = journal_items = 0
    for shard in shards:
        if shard in status.items:
            continue
        marker = folder / f"{shard}_stats.json"
        journal = journal_path(marker)
        activity = _activity(journal) if journal.name in entries else None
        lock = entries.get(f".{marker.name}.lock")
        if activity is not None:
            for t, frames in activity.finished.values():
                if t >= now - WINDOW:
                    journal_items, journal_frames = journal_items + 1, journal_frames + frames
            for error in activity.errors:
                _count(errors, examples, error, shard)
            status.last = max(status.last or 0.0, activity.last or 0.0)
        since = lock.stat().st_mtime if lock is not None else 0.0
        # a claim is asked about where it may be held: a journal, or a claim taken lately (None: cannot tell)
        if lock is not None and (activity is not None or since >= now - WINDOW) and claim_held(marker) is not False:
            finished = len(activity.finished) if activity else 0
            status.claimed.append(Claim(shard=shard, holder=claim_holder(marker), since=since, finished=finished,
                                        moved=activity.last if activity else None))
            status.in_flight += finished
        elif shard in summary_failed or (activity is not None and activity.errors):
            status.failed[shard] = summary_failed.get(shard) or activity.errors[-1]
    _rates(status, done_frames + journal_frames, done_items + journal_items, stats, now)
    _totals(status, total)
    status.errors = [(n, error, examples[error]) for error, n in errors.most_common(SHOWN)]
    return status


def read_plan(folder: Path) -> dict[str, str] | None:
    """The folder's plan: shard → the plan digest its stats must carry to be current (None: no plan yet)."""
    path = Path(folder) / "plan.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a plan ({exc}); rerun the stage's command to write it again") from None


def _shards_found(names) -> list[str]:
    """Without a plan: the shards that left a done marker, a journal or a claim in the folder."""
    found = set()
    for name in names:
        for prefix, suffix in (("", "_stats.json"), (".", "_tries.json"), (".", "_stats.json.lock")):
            if name.startswith(prefix) and name.endswith(suffix) and (prefix or not name.startswith(".")):
                found.add(name[len(prefix):-len(suffix)])
    return sorted(found)


def _read_stats(paths: list[Path]) -> dict[str, tuple[ShardStats, float]]:
    """Shard → (its stats, their modification time). The files are read on threads, a few hundred each (on
    network storage each read waits on the server), and parsed here (parsing holds the interpreter anyway)."""
    def read(chunk: list[Path]) -> list[tuple[Path, bytes, float]]:
        found = []
        for path in chunk:
            try:
                with open(path, "rb") as f:
                    found.append((path, f.read(), os.fstat(f.fileno()).st_mtime))
            except FileNotFoundError:  # recomputed meanwhile
                pass
        return found

    stats = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for found in pool.map(read, [paths[i:i + 256] for i in range(0, len(paths), 256)]):
            for path, data, mtime in found:
                parsed = ShardStats.parse(data)
                if parsed is not None:
                    stats[path.name.removesuffix("_stats.json")] = (parsed, mtime)
    return stats


def _activity(path: Path) -> Activity | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # committed meanwhile
        return None
    activity = Activity()
    for event in events(data):
        activity.add(event)
    return activity


def _summary_failed(folder: Path) -> dict[str, str]:
    """The shards the last run that computed something here reported failed (its summary.json)."""
    try:
        return dict(json.loads((folder / "summary.json").read_text()).get("failed_shards") or {})
    except (FileNotFoundError, ValueError):
        return {}


def _share(start: float, end: float, now: float) -> float:
    """How much of [start, end] lies within the last WINDOW seconds before `now`."""
    if end <= start:
        return 1.0 if now - WINDOW <= end <= now else 0.0
    return max(0.0, min(end, now) - max(start, now - WINDOW)) / (end - start)


def _rates(status: StageStatus, frames: float, items: float, stats: dict, now: float) -> None:
    """Rates over the part of the window that saw work: from the first work in it (a shard started then) to
    now, or, with no shard claimed (the run ended), to the last thing it did."""
    starts = [mtime - s.seconds for s, mtime in stats.values() if mtime >= now - WINDOW]
    starts += [claim.since for claim in status.claimed]
    if not items or not starts:
        return
    end = now if status.claimed else min(now, status.last or now)
    status.span = max(1.0, end - max(now - WINDOW, min(starts)))
    status.frames_per_s, status.items_per_s = frames / status.span, items / status.span


def _totals(status: StageStatus, total: int | None) -> None:
    if total is not None or status.planned is None:
        status.total = total
    elif status.done:
        status.total = sum(status.items.values()) / status.done * status.planned
        status.estimated = status.done < status.planned


_PATH = re.compile(r"(?:[\w.~-]*/)+[\w.%~-]*")


def _count(errors: Counter, examples: dict[str, str], error: str, example: str) -> None:
    """Errors counted by their text with paths left out (a missing file's error names its file). Most errors
    start with the file they are about: that head is cut without a regular expression (hundreds of thousands
    of missing clips' errors are counted in a second)."""
    state, _, message = error.partition(": ")
    head, sep, rest = message.partition(": ")
    if sep and head.startswith("/") and " " not in head and "/" not in rest:
        text = f"{state}: …: {rest}"
    else:
        text = _PATH.sub("…", error)
    errors[text] += 1
    examples.setdefault(text, example)
