"""The parts of a toy stage for tests of the shard engine: items, their outcomes, and a work whose items all
succeed and whose shard writes nothing (a test overrides what it needs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    key: str
    split: str = "train"


@dataclass
class Outcome:
    status: str
    error: str | None = None
    frames: int = 1


class ToyWork:
    def process(self, item: Item) -> Outcome:
        return Outcome("ok")

    def give_up(self, item: Item, error: str) -> Outcome:
        return Outcome("failed", error, 0)

    def keep(self, outcome: Outcome) -> None:
        pass

    def finish(self, outcomes, commit) -> dict:
        return {}

    def abort(self) -> None:
        pass
