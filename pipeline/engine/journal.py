"""A shard's journal: what happened to its items' tries, one append-only file per shard being computed, kept
beside its done marker as `.<shard>_tries.json` until the shard commits.

The name is the one the tries file always had, but the content is JSON Lines: each event (a try begun, shared
or not; succeeded, with the item's frames; failed, with its error; a machine error; taken back; given up) is
one line, appended with a single `os.write` on an O_APPEND descriptor. Nothing is rewritten or renamed: an item
that succeeds at its first try costs two small writes. Each event says what its item was made from (`made`):
a run cut short, then the clip's file replaced or the settings changed, leaves tries that were at something
else, and a replay leaves them out. `tries.Tries` replays the lines when it opens; the
driver's progress bar (`JournalWatch`) and `pipeline status` read the same lines, from any machine that sees
the folder. A process killed in the middle of a write leaves a torn last line: reading skips it, and the next
writer starts on a line of its own.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

BEGIN, OK, FAILED, MACHINE, BACK, GAVE_UP = "begin", "ok", "failed", "machine", "back", "gave_up"
FINISHED = (OK, GAVE_UP)  # the item's outcome is settled
MADE = "made"  # an event's field: what its item was made from (ShardTask.made_from)
_SAID = {FAILED: "try failed", MACHINE: "machine error", GAVE_UP: "failed"}  # how errors are named, by event


def journal_path(marker: Path) -> Path:
    """Where the journal of the shard whose done marker is `marker` is kept."""
    return Path(marker).with_name(f".{Path(marker).name.removesuffix('_stats.json')}_tries.json")


@dataclass(kw_only=True)
class TryCount:
    """One item's tries as the journal has them."""

    tries: int = 0  # tries started and not taken back
    failures: int = 0  # tries in a row that did not finish (raised, or their process died), counted as they start
    machine: int = 0  # device, memory or disk errors in a row, each a try taken back
    error: str | None = None  # the last one's
    shared: bool = False  # a try shared with other items' since it last finished: to be tried alone


def apply(counts: dict[str, TryCount], event: Mapping) -> None:
    """One event into the items' counts: how `Tries` changes them, and how a replay finds them again."""
    entry = counts.setdefault(event["key"], TryCount())
    kind = event["ev"]
    if kind == BEGIN:
        entry.tries += 1
        if event.get("shared"):
            entry.shared = True  # a death or machine error then is maybe another item's doing: not counted
        else:
            entry.failures += 1  # until it finishes: a try whose process dies stays counted
        entry.error = None
    elif kind == OK:
        entry.failures = entry.machine = 0
        entry.shared = False
    elif kind == FAILED:
        entry.failures += bool(event.get("counted"))  # a shared try that failed by itself counts now
        entry.error = event["error"]
    elif kind == MACHINE:
        entry.machine += 1
        entry.error = event["error"]
    elif kind == BACK:
        entry.tries -= 1
        entry.failures -= not event.get("shared")


class Journal:
    """Appends events to one journal file, opened before the shard's writer starts (or at the first event) and
    kept open."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._torn = False

    def open(self) -> None:
        """Create the journal, if not there, before the shard's writer makes any file: a journal that outlives
        its writer says that a temporary file of the shard may be left (claims.py searches only then)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(self._fd).st_size
            self._torn = bool(size) and os.pread(self._fd, 1, size - 1) != b"\n"  # a writer killed mid-line

    def append(self, event: Mapping) -> None:
        line = (json.dumps({**event, "t": round(time.time(), 3)}, separators=(",", ":")) + "\n").encode()
        self.open()
        if self._torn:  # start a new line
            line, self._torn = b"\n" + line, False
        written = os.write(self._fd, line)
        while written < len(line):  # a short write (a filesystem nearly full) is finished, not left torn
            written += os.write(self._fd, line[written:])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def events(data: bytes) -> Iterator[dict]:
    """The events of whole lines of a journal; a torn line (its writer killed mid-write) is skipped."""
    for line in data.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "ev" in event and "key" in event:
            yield event


def read_tries(path: Path, made: Mapping[str, str] | None = None) -> dict[str, TryCount]:
    """Item key → its tries, replayed from the shard's journal (empty where there is none). With `made` (item key
    → what it is made from, `ShardTask.made_from`), an event recorded for an item made from something else (its
    file replaced, the settings or the upstream changed since a run that was cut short) is left out: those tries
    were not at this item. Events written before events said so count."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return {}
    counts, start = _earlier_format(data)
    for event in events(data[start:]):
        if made is None or MADE not in event or event[MADE] == made.get(event["key"]):
            apply(counts, event)
    return counts


def _earlier_format(data: bytes) -> tuple[dict[str, TryCount], int]:
    """The tries file of an earlier version (one JSON object, rewritten whole) that a run cut short left: its
    counts, and where the lines appended since begin."""
    if not data.startswith((b"{\n", b"{}")):
        return {}, 0
    text = data.decode(errors="replace")
    try:
        entries, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return {}, 0
    fields = TryCount.__dataclass_fields__
    counts = {key: TryCount(**{k: v for k, v in entry.items() if k in fields}) for key, entry in entries.items()}
    return counts, len(text[:end].encode())


@dataclass(kw_only=True)
class Activity:
    """What a journal says about a shard's progress: the items finished (succeeded or given up) with their
    frames and when, the errors met, and when it last moved."""

    finished: dict[str, tuple[float, int]] = field(default_factory=dict)  # item key → (time, frames)
    errors: list[str] = field(default_factory=list)  # each failed try's, machine error's, item given up's
    given_up: int = 0
    first: float | None = None  # the times of its first and last events
    last: float | None = None

    def add(self, event: Mapping) -> None:
        t = float(event.get("t", 0.0))
        self.first = t if self.first is None else min(self.first, t)
        self.last = t if self.last is None else max(self.last, t)
        if event["ev"] in FINISHED:
            self.finished[event["key"]] = (t, int(event.get("frames", 0)))
        if event["ev"] in _SAID and event.get("error"):
            self.errors.append(f"{_SAID[event['ev']]}: {event['error']}")
        self.given_up += event["ev"] == GAVE_UP

    @property
    def frames(self) -> int:
        return sum(frames for _, frames in self.finished.values())


class JournalTail:
    """A journal read as it grows: only the bytes added since the last read, whole lines only."""

    def __init__(self, path: Path, *, from_end: bool = False) -> None:
        self.path = Path(path)
        self.activity = Activity()
        self._inode, self._offset = None, 0
        if from_end:  # what an earlier run wrote is not this one's progress
            try:
                stat = self.path.stat()
                self._inode, self._offset = stat.st_ino, stat.st_size
            except FileNotFoundError:
                pass

    def read(self) -> bool:
        """Take in what was appended since; returns whether anything was."""
        try:
            with open(self.path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                if inode != self._inode:  # a journal begun anew (the shard committed, and is computed again)
                    self._inode, self._offset = inode, 0
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return False
        whole = data[:data.rfind(b"\n") + 1]  # a line still being written is read next time
        self._offset += len(whole)
        for event in events(whole):
            self.activity.add(event)
        return bool(whole)


class JournalWatch:
    """The driver's view of the shards it runs: items finished and their frames per shard, from the journals
    that exist now (one listing of each shard folder per call, and only the journals that grew are read).
    Items finished before the watch began (a run cut short earlier) are not counted: they are redone."""

    def __init__(self, tasks: Sequence) -> None:
        self._tails: dict[Path, dict[str, tuple[str, JournalTail]]] = {}  # folder → journal → (shard, tail)
        paths = {task.name: journal_path(task.marker) for task in tasks}
        existing = {path for folder in {p.parent for p in paths.values()} for path in _journals(folder)}
        for shard, path in paths.items():
            tail = JournalTail(path, from_end=path in existing)
            self._tails.setdefault(path.parent, {})[path.name] = (shard, tail)

    def __call__(self) -> dict[str, tuple[int, int]]:
        """Shard name → (items finished, their frames) since the watch began, for the shards that moved."""
        moved = {}
        for folder, tails in self._tails.items():
            for name in [path.name for path in _journals(folder) if path.name in tails]:
                shard, tail = tails[name]
                if tail.read():
                    moved[shard] = (len(tail.activity.finished), tail.activity.frames)
        return moved


def _journals(folder: Path) -> list[Path]:
    """The journals in a shard folder now (one listing)."""
    try:
        with os.scandir(folder) as entries:
            return [Path(entry.path) for entry in entries if entry.name.endswith("_tries.json")]
    except FileNotFoundError:
        return []
