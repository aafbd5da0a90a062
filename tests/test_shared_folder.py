"""Two runs sharing one shard folder: what the other run commits meanwhile is in this run's problems.csv."""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.engine.records import ShardTask
from pipeline.engine.run import run_stage
from pipeline.engine.shard import run_shard
from pipeline.executor import ExecOptions

MEANWHILE: list = []  # what another driver does while this run's first item is processed


@dataclass(frozen=True)
class Item:
    key: str
    split: str = "train"


@dataclass
class Outcome:
    status: str
    error: str | None = None
    frames: int = 1


class Work:
    def __init__(self, failing: frozenset[str]) -> None:
        self.failing = failing

    def process(self, item: Item) -> Outcome:
        while MEANWHILE:
            MEANWHILE.pop()()
        return Outcome("failed", "boom") if item.key in self.failing else Outcome("ok")

    def give_up(self, item: Item, error: str) -> Outcome:
        return Outcome("failed", error)

    def keep(self, outcome: Outcome) -> None:
        pass

    def finish(self, outcomes, commit) -> dict:
        return {}

    def abort(self) -> None:
        pass


@dataclass(frozen=True)
class Stage:
    failing: frozenset[str] = frozenset()

    def open(self, task: ShardTask, commit) -> Work:
        return Work(self.failing)


def shard(folder: Path, name: str, keys: list[str], stage: Stage) -> ShardTask:
    items = tuple(Item(key) for key in keys)
    return ShardTask(stage=stage, name=name, folder=folder, items=items, identity={i.key: i.key for i in items},
                     fingerprint="f", max_tries=1)


def problems(folder: Path) -> list[tuple[str, str, str]]:
    with open(folder / "problems.csv", newline="") as f:
        return [(row["clip_id"], row["status"], row["shard"]) for row in csv.DictReader(f)]


def test_a_shard_another_run_commits_or_redoes_meanwhile_is_listed_as_it_is_now(tmp_path):
    failing = Stage(failing=frozenset({"bad1", "bad2"}))
    plan = [shard(tmp_path, "train-0", ["a", "b"], failing), shard(tmp_path, "val-0", ["bad1", "c"], failing),
            shard(tmp_path, "val-1", ["bad2"], failing)]
    run_shard(plan[2])  # committed before this run: its problem read when the run begins
    MEANWHILE.append(lambda: run_shard(plan[1]))  # another driver (SPLITS=val) commits val-0 meanwhile
    MEANWHILE.append(lambda: run_shard(replace(shard(tmp_path, "val-1", ["bad2"], Stage()), overwrite=True)))  # and redoes
    summary = run_stage("toy", tmp_path, plan, [plan[0]], options=ExecOptions(workers=0), progress=False)
    assert not MEANWHILE and summary.computed == 1
    assert problems(tmp_path) == [("bad1", "failed", "val-0")]  # val-1's old problem not written back
