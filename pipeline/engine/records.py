"""The engine's records: a shard to compute (ShardTask), what a stage plugs in (ShardStage, ShardWork), and the
stats a committed shard leaves as its done marker (ShardStats)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, Iterable, Mapping, Protocol, Sequence, TypeVar

from pipeline.atomic import write_json

STATS_VERSION = 2
MARKER_SUFFIX = "_stats.json"  # a shard's stats, written last: its done marker


class Item(Protocol):
    """One unit of a shard (a clip): `key` is unique within the stage's output. An item may also have a
    `split` and a `source` (where its input is listed: `file:line`, or the video), which name it in problems."""

    @property
    def key(self) -> str: ...


class Outcome(Protocol):
    """What one item came to: its status row, as the stage writes it."""

    status: str
    error: str | None
    frames: int


I = TypeVar("I", bound=Item)
O = TypeVar("O", bound=Outcome)


class ShardWork(Protocol[I, O]):
    """A stage's work on one shard, opened on the worker under the shard's claim."""

    def process(self, item: I) -> O:
        """One try at one item; raising counts as a failed try (unless the machine is to blame)."""
        ...

    def give_up(self, item: I, error: str) -> O:
        """The outcome of an item given up after its tries (status `failed`, with the error)."""
        ...

    def keep(self, outcome: O) -> None:
        """Called with each item's final outcome, outside its tries: write what it produced (a full disk
        there fails the shard, not the item)."""
        ...

    def finish(self, outcomes: list[O], commit: "Commit") -> dict[str, Any]:  # noqa: F821
        """Write the shard's files (through `commit.stage`); returns the stage's own totals for its stats."""
        ...

    def abort(self) -> None:
        """Release what `open` took (files being written); the commit removes staged files itself."""
        ...


class ShardStage(Protocol):
    """What a stage plugs into the engine: a picklable settings object that opens the work on one shard. It may
    also have `made_with() -> dict`: the settings that ran the shard without shaping its outputs (device,
    batch, decoders), kept in the shard's stats rather than in the run's record; and
    `stored_outcomes(task) -> {key: (status, error)}`, read from a committed shard's status rows (for stats
    written before they listed their problems)."""

    def open(self, task: "ShardTask", commit: "Commit") -> ShardWork:  # noqa: F821
        ...


@dataclass(frozen=True, kw_only=True)
class ShardTask(Generic[I]):
    """One shard to compute: its items, where its files go, and what it is made from."""

    stage: ShardStage
    name: str  # e.g. `train-00042`: stable, whatever the run selects
    folder: Path  # absolute; holds the shard's table files and its stats (the done marker)
    items: tuple[I, ...]
    identity: Mapping[str, str]  # item key → digest of what the item is made from (listing, file, partner…)
    upstream: Mapping[str, str] = field(default_factory=dict)  # upstream shard → digest of its committed files
    fingerprint: str  # the stage's settings
    max_tries: int = 3
    overwrite: bool = False  # recompute even when done
    retry_failed: bool = False  # a done shard holding failed items is not done

    @property
    def marker(self) -> Path:
        return self.folder / f"{self.name}{MARKER_SUFFIX}"

    def plan_digest(self) -> str:
        """One digest of everything the shard's outputs are made from; its stats record it, and a shard is
        current only while the plan of the latest run still gives the same."""
        blob = json.dumps([self.fingerprint, sorted(self.identity.items()), sorted(self.upstream.items())])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def made_from(self) -> dict[str, str]:
        """Item key → one digest of what that item's outcome is made from (its identity, the stage's settings and
        the shard's upstream): the tries its journal holds count only while this stays the same."""
        upstream = sorted(self.upstream.items())
        return {key: hashlib.sha256(json.dumps([self.fingerprint, identity, upstream]).encode()).hexdigest()[:16]
                for key, identity in self.identity.items()}


@dataclass(frozen=True, kw_only=True)
class Problem:
    """An item whose outcome is not `ok`: one row of a run's problems.csv."""

    key: str
    status: str
    error: str = ""
    split: str = ""
    shard: str = ""
    source: str = ""  # where the input lists the item (`annotations/train.csv:12`), or its video

    @classmethod
    def of(cls, item: Item, status: str, error: str | None, shard: str) -> "Problem":
        return cls(key=item.key, status=status, error=error or "", shard=shard,
                   split=str(getattr(item, "split", "") or ""), source=str(getattr(item, "source", "") or ""))


@dataclass(kw_only=True)
class ShardStats:
    """The done marker of a committed shard, written last."""

    shard: str
    plan: str  # ShardTask.plan_digest() of the task that made it
    fingerprint: str
    items: dict[str, str]  # item key → identity digest
    upstream: dict[str, str]
    outputs: dict[str, dict[str, Any]]  # file (relative to the shard's folder) → {"sha256", "bytes"}
    digest: str  # over every output's sha256: what the next stage's done check compares
    by_status: dict[str, int]
    retried: dict[str, int]  # item key → tries, where more than one
    failed: dict[str, str]  # item key → error, for the items given up after their tries
    frames: int
    seconds: float
    worker: str  # host:pid
    peak_rss_mb: float
    totals: dict[str, Any] = field(default_factory=dict)  # the stage's own (masks: instances)
    problems: list[Problem | dict] | None = None  # items not `ok`, as made or as read (None: stats from before)
    made_with: dict[str, Any] = field(default_factory=dict)  # what ran the shard without shaping it (device, batch)
    version: int = STATS_VERSION

    def problem_records(self) -> list[Problem] | None:
        """The problems as records (kept as read until asked: making 260k of them costs a second)."""
        if self.problems is None:
            return None
        return [p if isinstance(p, Problem) else Problem(**p) for p in self.problems]

    def write(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> "ShardStats | None":
        """The stats at `path`, or None when absent, unreadable, or from an older layout."""
        try:
            return cls.parse(Path(path).read_bytes())
        except FileNotFoundError:
            return None

    @classmethod
    def parse(cls, text: str | bytes) -> "ShardStats | None":
        """Stats from a stats file's content, or None when unreadable or from an older layout."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return None
        if data.get("version") != STATS_VERSION:
            return None
        return cls(**data)


def outputs_digest(outputs: Mapping[str, Mapping[str, Any]]) -> str:
    blob = json.dumps(sorted((name, entry["sha256"]) for name, entry in outputs.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def count_statuses(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return dict(sorted(counts.items()))


def made_with_counts(current: Iterable[ShardStats]) -> dict[str, dict[str, int]]:
    """What ran these shards: each made_with setting's values, by the number of shards."""
    counts: dict[str, Counter[str]] = {}
    for stats in current:
        for key, value in stats.made_with.items():
            counts.setdefault(key, Counter())[str(value)] += 1
    return {key: dict(sorted(values.items())) for key, values in counts.items()}
