"""Progress per clip: each shard's journal (its tries, one appended line per event) is what the driver's bar
reads, so the bar moves as clips finish, in this process and on Dask workers; log lines print above the bar."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import tqdm

from pipeline.datasets.sample import shape_clip, write_video
from pipeline.engine.journal import JournalWatch, journal_path
from pipeline.engine.tries import Tries
from pipeline.executor import ExecOptions
from pipeline.masks import run_masks
from pipeline.progress import ShardProgress
from pipeline.segment import SegmenterSpec
from tests.conftest import write_kinetics_csv
from tests.segmenters import LumaKeySegmenter
from tests.test_masks_stage import config

GATE = "PROGRESS_GATE"
FAILING = "tests.segmenters:FailingSegmenter"


class GatedSegmenter(LumaKeySegmenter):
    """The luma key; its third model call (the third clip's: each clip fits one batch; PROGRESS_GATE_AT says
    another) waits, up to a minute, for the file PROGRESS_GATE names. The test makes that file when the bar has
    moved by single clips, so the shard cannot finish before the bar showed clip progress, or the bar never
    does."""

    calls = 0

    def segment(self, batch):
        GatedSegmenter.calls += 1
        if GatedSegmenter.calls == int(os.environ.get("PROGRESS_GATE_AT", "3")):
            deadline = time.monotonic() + 60
            while not Path(os.environ[GATE]).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return super().segment(batch)


def many_clips(root: Path, n: int) -> Path:
    """A Kinetics-layout tree of `n` small shape clips of 8 frames, all in train."""
    rows = []
    for i in range(n):
        frames, _, _ = shape_clip(8, 48, 32, seed=i)
        write_video(root / "train" / f"clip{i:03d}_000000_000010.mp4", frames, 8, lossless=True)
        rows.append(("juggling balls" if i % 2 else "skipping rope", f"clip{i:03d}", 0, 10))
    write_kinetics_csv(root, "train", rows)
    return root


@pytest.fixture
def watched_bar(monkeypatch, tmp_path):
    """Every tqdm bar records the counts it shows; one strictly between its start and its total (a shard
    part done) makes the gate file."""
    shown: list[tuple[int, int, int]] = []
    gate = tmp_path / "gate"
    monkeypatch.setenv(GATE, str(gate))

    class Watched(tqdm.tqdm):
        def update(self, n=1):
            result = super().update(n)
            shown.append((self.initial, self.n, self.total))
            if self.initial < self.n < self.total:
                gate.touch()
            return result

    monkeypatch.setattr(tqdm, "tqdm", Watched)
    return shown, gate


@pytest.mark.parametrize("workers", [0, 1])
def test_the_bar_moves_per_clip_before_the_shard_finishes(tmp_path, watched_bar, workers):
    shown, gate = watched_bar
    root = many_clips(tmp_path / "k400", 40)
    GatedSegmenter.calls = 0
    spec = SegmenterSpec(backend="tests.test_progress:GatedSegmenter")
    summary = run_masks(config(root, tmp_path / "out", segmenter=spec, shard_size=64,
                               execution=ExecOptions(workers=workers)), progress=True)
    assert (summary.computed, summary.by_status) == (1, {"ok": 40})  # one shard of 40 clips
    assert gate.exists(), f"the bar moved only when the shard finished: {shown}"
    partial = [n for initial, n, total in shown if 0 < n < 40]
    assert partial and shown[-1][1:] == (40, 40), shown  # clip by clip, then settled by the shard's result


def test_a_shard_counts_once_and_never_past_its_clips(tmp_path):
    """Its journal says more clips finished than it has (run twice: a worker died, the shard went elsewhere),
    then its result arrives: the bar ends at the total, and a late look at the journal changes nothing."""
    a = SimpleNamespace(name="a", items=range(4))
    b = SimpleNamespace(name="b", items=range(3))
    done = SimpleNamespace(name="done", items=range(5))
    journal = {"a": (2, 20), "b": (1, 10)}
    with ShardProgress([done, a, b], [a, b], enabled=True, watch=lambda: journal, interval=3600) as bar:
        assert bar.done == 5
        bar.refresh()
        assert bar.done == 5 + 2 + 1
        journal["a"] = (7, 70)  # more than its 4
        bar.refresh()
        assert bar.done == 5 + 4 + 1
        journal["a"] = (1, 10)  # a view that went back (a journal begun anew) never takes clips off
        bar.refresh()
        assert bar.done == 5 + 4 + 1
        bar(a, 40)
        bar(b, 30)
        bar.refresh()
        assert bar.done == 12


def test_the_watch_reads_clips_finished_since_it_began_from_the_journals(tmp_path):
    marker = tmp_path / "train-00000_stats.json"
    task = SimpleNamespace(name="train-00000", marker=marker)
    earlier = Tries(journal_path(marker), max_tries=3)  # a run cut short left its journal
    earlier.run("x", lambda: SimpleNamespace(frames=9), lambda error: None)
    earlier.close()
    watch = JournalWatch([task])
    assert watch() == {}, "what the earlier run finished is redone, not progress"
    tries = Tries(journal_path(marker), max_tries=3)
    tries.run("x", lambda: SimpleNamespace(frames=9), lambda error: None)
    tries.begin("y")
    assert watch() == {"train-00000": (1, 9)}
    assert watch() == {}  # nothing new
    tries.succeeded("y", frames=5)
    assert watch() == {"train-00000": (2, 14)}
    tries.close()


def test_log_lines_print_above_the_bar(capsys):
    """A warning while the bar shows (a clip that does not decode) is a line of its own, not glued to the bar."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.root.addHandler(handler)
    try:
        task = SimpleNamespace(name="a", items=range(4))
        with ShardProgress([task], [task], enabled=True) as bar:
            bar(task, 10)
            logging.getLogger("pipeline.test").warning("clip7: decode error")
    finally:
        logging.root.removeHandler(handler)
    err = capsys.readouterr().err
    (line,) = [line for line in err.split("\n") if "decode error" in line]
    assert line.split("\r")[-1].replace("\x1b[A", "") == "WARNING clip7: decode error", repr(err)  # cursor up


def test_warnings_of_local_workers_print_above_the_bar_too(shapes_dataset, tmp_path, capfd):
    """A Dask worker of a cluster started here shares the terminal: its warnings (a clip's failed try) come to
    this process's log, which prints them above the bar."""
    from tests.test_masks_stage import add_bright_clip

    root, _ = shapes_dataset
    add_bright_clip(root)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("driver: %(levelname)s %(message)s"))
    logging.root.addHandler(handler)
    try:
        summary = run_masks(config(root, tmp_path / "out", segmenter=SegmenterSpec(backend=FAILING),
                                   execution=ExecOptions(workers=1, max_tries=1)), progress=True)
    finally:
        logging.root.removeHandler(handler)
    assert summary.by_status == {"failed": 1, "ok": 5}
    err = capfd.readouterr().err
    lines = [line.split("\r")[-1].replace("\x1b[A", "") for line in err.split("\n")
             if "injected model failure" in line]
    assert "driver: WARNING zzbright_000000_000010: try 1 of 1 failed: RuntimeError: injected model failure" in lines, err
