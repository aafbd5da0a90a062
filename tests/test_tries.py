"""Tries on disk: a try is counted as it starts, taken back when the machine or a stop is to blame, and a try
shared with other items' counts against none of them but sends each to be tried alone."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.engine import tries as tries_module
from pipeline.engine.claims import Tries, release_in_flight
from pipeline.engine.failures import InfrastructureError, Interrupted
from pipeline.engine.journal import TryCount, read_tries
from pipeline.engine.journal import events as journal_events
from pipeline.engine.records import ShardStats, ShardTask
from pipeline.engine.shard import run_shard
from pipeline.engine.worker_plugin import ReleaseOnClose
from tests.toy_stage import Item, Outcome, ToyWork


@pytest.fixture(autouse=True)
def nothing_left_in_flight():
    """The tries a test leaves in flight (as a dying worker would) are this process's until released."""
    yield
    release_in_flight()


def on_disk(path) -> dict[str, TryCount]:
    return read_tries(path)


def test_a_try_alone_counts_as_it_starts_and_a_death_stays_counted(tmp_path):
    path = tmp_path / ".s_tries.json"
    tries = Tries(path, max_tries=2)
    tries.begin("a")
    assert on_disk(path)["a"] == TryCount(tries=1, failures=1, machine=0, error=None)
    again = Tries(path, max_tries=2)  # the worker died: a fresh process reads what it left
    assert not again.clean("a") and again.verdict("a") is None
    again.begin("a")
    assert again.verdict("a") is not None and "died each time" in again.verdict("a")


def test_a_shared_try_counts_no_death_or_machine_error_but_its_own_error(tmp_path):
    path = tmp_path / ".s_tries.json"
    tries = Tries(path, max_tries=1)
    for key in "abc":
        tries.begin(key, shared=True)
    assert {k: (v.tries, v.failures, v.shared) for k, v in on_disk(path).items()} == \
        dict.fromkeys("abc", (1, 0, True))
    fresh = Tries(path, max_tries=1)  # the worker died while on all three
    assert [(fresh.clean(k), fresh.verdict(k)) for k in "abc"] == [(False, None)] * 3  # alone next, not given up

    tries.succeeded("a")
    tries.failed("b", ValueError("its own"))  # the shared work told the items apart: counted
    tries.abandon()  # c: taken back
    entries = on_disk(path)
    assert (entries["a"].failures, entries["a"].shared, tries.clean("a")) == (0, False, True)
    assert (entries["b"].failures, entries["b"].error) == (1, "ValueError: its own")
    assert "given up" not in str(tries.verdict("c")) and tries.verdict("c") is None
    assert (entries["c"].tries, entries["c"].failures, entries["c"].shared) == (0, 0, True)
    assert tries.verdict("b").startswith("gave up after 1 tries: ValueError: its own")


def test_machine_errors_and_stops_take_the_try_back(tmp_path):
    path = tmp_path / ".s_tries.json"
    tries = Tries(path, max_tries=3)
    tries.begin("alone")
    with pytest.raises(InfrastructureError):
        tries.failed("alone", MemoryError("out of host memory"))
    tries.begin("shared", shared=True)
    with pytest.raises(InfrastructureError):
        tries.failed("shared", MemoryError("out of host memory"))
    entries = on_disk(path)
    assert (entries["alone"].tries, entries["alone"].failures, entries["alone"].machine) == (0, 0, 1)
    assert (entries["shared"].tries, entries["shared"].failures, entries["shared"].machine) == (0, 0, 0)
    tries.begin("alone")
    tries.begin("shared", shared=True)
    assert release_in_flight() == 2  # a worker closing: both taken back, each as it was counted
    entries = on_disk(path)
    assert (entries["alone"].tries, entries["alone"].failures) == (0, 0)
    assert (entries["shared"].tries, entries["shared"].failures, entries["shared"].shared) == (0, 0, True)



@dataclass(frozen=True)
class FileStage:
    """Each item reads the file of its key: "bad" raises, "stop" is a Ctrl-C, anything else is ok. Every try is
    logged to `tried`."""

    src: Path
    tried: Path

    def open(self, task: ShardTask, commit) -> "FileWork":
        return FileWork(self)


@dataclass
class FileWork(ToyWork):
    stage: FileStage

    def process(self, item: Item) -> Outcome:
        with open(self.stage.tried, "a") as log:
            log.write(item.key)
        text = (self.stage.src / item.key).read_text()
        if text == "bad":
            raise ValueError(f"{item.key} is corrupt")
        if text == "stop":
            raise KeyboardInterrupt
        return Outcome("ok")


def test_tries_at_an_item_made_from_other_inputs_count_no_more(tmp_path):
    """A run cut short leaves the shard's journal, and the next run's tries count on from it. But where an item's
    file was replaced, or the stage's settings changed, meanwhile, its tries were at something else: the fixed
    clip is tried again, not given up on the old one's failures, while an unchanged one stays given up."""
    src, out, tried = tmp_path / "src", tmp_path / "out", tmp_path / "tried"
    src.mkdir(), out.mkdir()

    def run(fingerprint: str = "f", *, overwrite: bool = False) -> ShardStats:
        items = tuple(Item(key) for key in "acs")  # s stops the runs that are to be cut short
        before = tried.read_text() if tried.exists() else ""
        try:
            return run_shard(ShardTask(stage=FileStage(src, tried), name="s", folder=out, items=items, max_tries=2,
                                       identity={item.key: (src / item.key).read_text() for item in items},
                                       fingerprint=fingerprint, overwrite=overwrite))
        finally:
            run.tried = tried.read_text()[len(before):]

    for key, text in {"a": "bad", "c": "bad", "s": "stop"}.items():
        (src / key).write_text(text)
    with pytest.raises(KeyboardInterrupt):
        run()
    assert run.tried == "aaccs"  # a and c given up after 2 tries each, then the run stopped at s
    (src / "a").write_text("fixed")
    with pytest.raises(KeyboardInterrupt):
        run()
    assert run.tried == "as"  # a tried again: its file is another one; c not: the same file, given up
    (src / "s").write_text("ok")
    stats = run()
    assert run.tried == "as" and stats.by_status == {"ok": 2, "failed": 1}  # (a's ok was not committed)
    assert stats.retried == {"a": 2, "c": 2}
    assert "gave up after 2 tries: ValueError: c is corrupt" in stats.failed["c"]

    (src / "s").write_text("stop")
    with pytest.raises(KeyboardInterrupt):
        run(overwrite=True)
    assert run.tried == "accs"
    (src / "s").write_text("ok")
    stats = run("other settings", overwrite=True)
    assert run.tried == "accs"  # c tried again under the new settings (and a, whose ok was not committed)
    assert stats.by_status == {"ok": 2, "failed": 1} and stats.retried == {"c": 2}  # a's earlier try: not counted


@dataclass
class Limits:
    memory_limit: int | None


@dataclass
class Worker:
    """What the worker plugin reads of a Dask worker: its memory manager's limit."""

    memory_manager: Limits


@pytest.fixture
def worker_process(monkeypatch):
    """This process as a Dask worker's own: the plugin's signal handlers undone after the test, and the process
    not left stopping (a worker process that is stopping exits)."""
    monkeypatch.setattr(tries_module, "_STOPPING", threading.Event())
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # what the plugin passes the signal on to
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def events(path) -> list[tuple[str, str]]:
    return [(event["ev"], event["key"]) for event in journal_events(path.read_bytes())]


def test_a_closing_worker_takes_its_tries_back_and_counts_none_its_threads_still_start_or_fail(tmp_path,
                                                                                               worker_process):
    """Dask tears the plugin down as the worker closes, then waits for the task's thread, which goes on with the
    shard until the process is killed: a try it begins or fails after the teardown must count against nothing."""
    path = tmp_path / ".s_tries.json"
    tries, plugin, worker = Tries(path, max_tries=1), ReleaseOnClose(), Worker(Limits(None))
    plugin.setup(worker)
    tries.begin("a")
    plugin.teardown(worker)
    with pytest.raises(Interrupted, match="b: not tried: this worker is stopping"):
        tries.begin("b")
    with pytest.raises(Interrupted, match="a: ValueError: broken pipe, while this worker was stopping"):
        tries.failed("a", ValueError("broken pipe"))  # the try it was on, failing as the process goes
    assert events(path) == [("begin", "a"), ("back", "a")]
    assert Tries(path, max_tries=1).verdict("a") is None and on_disk(path)["a"].failures == 0


@pytest.mark.parametrize("limit, counted", [(1, True), (1 << 60, False)])
def test_a_worker_stopped_past_its_memory_limit_counts_a_machine_error_and_a_walltime_stop_nothing(
        tmp_path, worker_process, limit, counted):
    """Dask's nanny stops a worker past its memory limit with SIGTERM, as a batch system does at walltime: the
    first is the clip's doing as much as a device out of memory is (given up after as many in a row), the second
    is not (here a limit of 1 byte is passed, one of an exbibyte is not)."""
    path = tmp_path / ".s_tries.json"
    for attempt in range(2):  # two worker processes, each stopped while on the clip
        tries_module._STOPPING.clear()
        tries, plugin, worker = Tries(path, max_tries=2), ReleaseOnClose(), Worker(Limits(limit))
        assert tries.verdict("a") is None
        plugin.setup(worker)
        tries.begin("a")
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    kinds = [kind for kind, _ in events(path)]
    assert kinds == ["begin", "back", "machine"] * 2 if counted else ["begin", "back"] * 2
    verdict = Tries(path, max_tries=2).verdict("a")
    if counted:
        assert "gave up after 2 device, memory or disk errors in a row" in verdict and "MemoryError" in verdict
    else:
        assert verdict is None


def test_a_memory_stop_with_several_tries_in_flight_charges_none(tmp_path, worker_process):
    """Threads of one worker on two shards: which one took the memory is not known, so neither counts."""
    plugin, worker = ReleaseOnClose(), Worker(Limits(1))
    first, second = Tries(tmp_path / ".a_tries.json", max_tries=1), Tries(tmp_path / ".b_tries.json", max_tries=1)
    plugin.setup(worker)
    first.begin("a")
    second.begin("b")
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert events(first.path) == [("begin", "a"), ("back", "a")]
    assert events(second.path) == [("begin", "b"), ("back", "b")]


def test_a_try_that_begins_as_the_worker_is_told_to_stop_is_taken_back(tmp_path, worker_process, monkeypatch):
    """The stop comes from another thread while the try's first line is being written: the release may have
    missed it, so it takes itself back."""
    path = tmp_path / ".s_tries.json"
    tries = Tries(path, max_tries=1)
    append = tries._journal.append

    def stopped_while_writing(event):
        append(event)
        if event["ev"] == "begin":
            release_in_flight(stopping=True)  # before the try is in flight: nothing to release yet

    monkeypatch.setattr(tries._journal, "append", stopped_while_writing)
    with pytest.raises(Interrupted, match="a: not tried: this worker is stopping"):
        tries.begin("a")
    assert events(path) == [("begin", "a"), ("back", "a")] and on_disk(path)["a"].failures == 0
