"""A shard's tries journal: two small appends per clip that succeeds (no rewrite, no rename), replayed as the
counts the tries make, a torn last line skipped."""

from __future__ import annotations

import os

from pipeline.engine.journal import TryCount, read_tries
from pipeline.engine.tries import Tries, release_in_flight
from pipeline.executor import ExecOptions
from pipeline.masks import run_masks
from tests.test_masks_stage import config
from tests.test_progress import many_clips


def test_a_shard_of_n_clips_that_succeed_appends_2n_lines_and_renames_nothing(tmp_path, monkeypatch):
    root = many_clips(tmp_path / "k400", 12)
    journals: set[int] = set()
    calls = {"open": 0, "write": 0, "rename": 0, "lines": 0}
    real_open, real_write, real_replace, real_rename = os.open, os.write, os.replace, os.rename

    def counted_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if str(path).endswith("_tries.json"):
            journals.add(fd)
            calls["open"] += 1
        return fd

    def counted_write(fd, data):
        if fd in journals:
            calls["write"] += 1
            calls["lines"] += bytes(data).count(b"\n")
        return real_write(fd, data)

    def counted(kind, real):
        def rename(src, dst, *args, **kwargs):
            calls[kind] += "_tries.json" in str(dst) or "_tries.json" in str(src)
            return real(src, dst, *args, **kwargs)
        return rename

    monkeypatch.setattr(os, "open", counted_open)
    monkeypatch.setattr(os, "write", counted_write)
    monkeypatch.setattr(os, "replace", counted("rename", real_replace))
    monkeypatch.setattr(os, "rename", counted("rename", real_rename))
    summary = run_masks(config(root, tmp_path / "out", shard_size=64, execution=ExecOptions(workers=0)), progress=False)
    assert (summary.computed, summary.by_status) == (1, {"ok": 12})
    assert calls == {"open": 1, "write": 24, "rename": 0, "lines": 24}  # begun and succeeded, per clip
    assert not list(tmp_path.rglob(".*_tries.json")), "the journal goes when the shard commits"


def test_a_torn_last_line_is_skipped_and_the_next_writer_starts_a_new_one(tmp_path):
    path = tmp_path / ".s_tries.json"
    tries = Tries(path, max_tries=3)
    tries.begin("a")
    tries.close()
    with open(path, "ab") as f:
        f.write(b'{"ev":"begin","key":"a","sha')  # the process was killed in the middle of this write
    again = Tries(path, max_tries=3)  # its replay skips the torn line
    assert again.counts()["a"] == TryCount(tries=1, failures=1)
    again.begin("a")
    again.close()
    assert read_tries(path)["a"] == TryCount(tries=2, failures=2)
    assert path.read_bytes().count(b"\n") == 3  # the first line, the torn one ended, and the new one
    release_in_flight()


def test_a_tries_file_of_the_earlier_format_keeps_its_counts(tmp_path):
    """A run cut short before the upgrade left the whole-object tries file: its counts carry over."""
    path = tmp_path / ".s_tries.json"
    path.write_text('{\n  "a": {\n    "error": "ValueError: bad", "failures": 2, "machine": 0, "shared": true, '
                    '"tries": 2\n  }\n}\n')
    tries = Tries(path, max_tries=3)
    assert not tries.clean("a") and tries.verdict("a") is None
    tries.begin("a")
    tries.close()
    assert read_tries(path)["a"] == TryCount(tries=3, failures=3, shared=True)
    assert Tries(path, max_tries=3).verdict("a") is not None
    release_in_flight()
