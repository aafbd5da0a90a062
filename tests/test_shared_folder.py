"""One shard folder over several runs: what another run commits meanwhile is in this run's problems.csv, and
what a writer cut short left is removed by the next, in the same process too."""

from __future__ import annotations

import csv
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from pipeline.engine.records import ShardTask
from pipeline.engine.run import run_stage
from pipeline.engine.shard import run_shard
from pipeline.executor import ExecOptions
from tests.toy_stage import Item, Outcome, ToyWork

MEANWHILE: list = []  # what another driver does while this run's first item is processed


class Work(ToyWork):
    def __init__(self, failing: frozenset[str]) -> None:
        self.failing = failing

    def process(self, item: Item) -> Outcome:
        while MEANWHILE:
            MEANWHILE.pop()()
        return Outcome("failed", "boom") if item.key in self.failing else Outcome("ok")


@dataclass(frozen=True)
class Stage:
    failing: frozenset[str] = frozenset()
    cut_short: bool = False  # the writer stops after making its temporary file (as a killed one would)
    writes: str | None = None  # a file of the shard the writer makes

    def open(self, task: ShardTask, commit) -> Work:
        if self.writes:
            commit.stage(task.folder / f"{task.name}_{self.writes}").write_bytes(b"written")
        if self.cut_short:
            raise KeyboardInterrupt
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


def test_a_writer_cut_short_before_its_first_try_leaves_nothing_for_the_next(tmp_path):
    run_shard(shard(tmp_path, "train-0", ["a"], Stage()))  # the folder's temporary files listed in this process
    try:
        run_shard(shard(tmp_path, "train-1", ["b"], Stage(cut_short=True, writes="old.parquet")))
    except KeyboardInterrupt:
        pass
    assert [p.name for p in tmp_path.glob(".train-1*.tmp-*")], "the cut-short writer left its temporary file"
    run_shard(shard(tmp_path, "train-1", ["b"], Stage(writes="new.parquet")))  # (a writer staging another file)
    assert not list(tmp_path.glob(".*.tmp-*")) and (tmp_path / "train-1_new.parquet").read_bytes() == b"written"


@pytest.mark.parametrize("case", ["same", "then redone", "other settings", "overwrite"])
def test_a_shard_busy_here_that_its_holder_commits_before_the_run_ends_counts_as_done(tmp_path, monkeypatch, case):
    """… where the holder made it from what this run would (not from other settings), and this run was not asked
    to redo it (the holder's work may have begun before the run did), and its stats are still there as the run
    sums up ("then redone": a third run has removed them, to redo it)."""
    from pipeline.engine import claims, run

    monkeypatch.setattr(claims, "CLAIM_WAIT", 0.3)
    plan = [shard(tmp_path, "train-0", ["a"], Stage()), shard(tmp_path, "train-1", ["b"], Stage())]
    if case == "overwrite":
        plan = [replace(task, overwrite=True) for task in plan]
    let_go, held = threading.Event(), threading.Event()

    def holder() -> None:  # another run's thread, on train-0 for longer than this run waits
        with claims.claim(plan[0].marker):
            held.set()
            let_go.wait(10)

    other = threading.Thread(target=holder)
    other.start()
    held.wait(10)

    def commit_it() -> None:  # … that lets go and commits train-0 while this run is on train-1
        let_go.set()
        other.join()
        run_shard(replace(plan[0], fingerprint="g") if case == "other settings" else plan[0])

    MEANWHILE.append(commit_it)
    if case == "then redone":
        refreshed = run.refreshed
        monkeypatch.setattr(run, "refreshed", lambda *args: plan[0].marker.unlink() or refreshed(*args))
    summary = run_stage("toy", tmp_path, plan, plan, options=ExecOptions(workers=0), progress=False)
    assert not MEANWHILE and summary.computed == 1
    if case != "same":
        assert list(summary.failed_shards) == ["train-0"] and summary.committed_meanwhile == {}
        assert summary.failed_shards["train-0"].endswith("then removed again") == (case == "then redone")
        assert [(clip, status) for clip, status, _ in problems(tmp_path)] == [("a", "shard_failed")]
        return
    assert summary.failed_shards == {}
    assert list(summary.committed_meanwhile) == ["train-0"] and "ShardBusy" in summary.committed_meanwhile["train-0"]
    assert summary.by_status == {"ok": 2} and problems(tmp_path) == []
    assert "1 committed meanwhile (their tasks failed here), 0 failed" in summary.lines()[1]


def test_a_shard_busy_here_for_the_whole_run_is_failed(tmp_path, monkeypatch):
    from pipeline.engine import claims

    monkeypatch.setattr(claims, "CLAIM_WAIT", 0.3)
    plan = [shard(tmp_path, "train-0", ["a"], Stage()), shard(tmp_path, "train-1", ["b"], Stage())]
    with claims.claim(plan[0].marker):
        summary = run_stage("toy", tmp_path, plan, plan,
                            options=ExecOptions(workers=0), progress=False)  # held outside the run: busy
    assert list(summary.failed_shards) == ["train-0"] and summary.committed_meanwhile == {}
    assert [(clip, status) for clip, status, _ in problems(tmp_path)] == [("a", "shard_failed")]
