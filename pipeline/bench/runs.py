"""The scale bench's measuring tools: a CLI command in a subprocess (wall seconds, peak RSS), the shards a run
committed (from their stats), the time its real clips took beyond the machinery, and the machine."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.engine.records import ShardStats
from pipeline.machine import cpu_model

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, kw_only=True)
class Timed:
    """One command's run: exit status, wall seconds, and the peak RSS of it or any of its children."""

    args: tuple[str, ...]
    rc: int
    seconds: float
    peak_rss_mb: float
    log: Path

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def figures(self) -> dict:
        return {"seconds": round(self.seconds, 2), "peak_rss_mb": round(self.peak_rss_mb, 1)}


# The command runs under a small parent that reports its peak: on Linux a child's peak RSS starts at that of the
# process it was forked from (the high-water mark is copied at fork and kept through exec), so a child of this
# process would carry the bench's own memory into every figure.
PEAK_PARENT = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
               "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
               "sys.exit(code)")


def run_cli(args: list[str], log: Path, *, module: str = "pipeline") -> Timed:
    """`python -m <module> ARGS` in a subprocess of this interpreter, output to `log`; its peak RSS counts its
    own and its children's (Dask workers: the largest one)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    log.parent.mkdir(parents=True, exist_ok=True)
    peak = log.with_suffix(".peak_kib")
    with open(log, "w") as out:
        started = time.perf_counter()
        rc = subprocess.call([sys.executable, "-I", "-c", PEAK_PARENT, str(peak), sys.executable, "-m", module, *args],
                             stdout=out, stderr=subprocess.STDOUT, env=env)
        seconds = time.perf_counter() - started
    return Timed(args=tuple(args), rc=rc, seconds=seconds, peak_rss_mb=int(peak.read_text()) / 1024, log=log)


def committed(folder: Path) -> dict[Path, ShardStats]:
    """Every shard's stats under `folder` (a run's shards, a render's status tables), by path."""
    found = {path: ShardStats.read(path) for path in folder.rglob("*_stats.json")} if folder.is_dir() else {}
    return {path: stats for path, stats in found.items() if stats is not None}


@dataclass(frozen=True, kw_only=True)
class Computed:
    """The shards a run committed: how many, their clips, the frames of the real ones among them, and the
    seconds their shards took beyond the median shard without frames (what the real clips cost)."""

    shards: int
    clips: int
    real_clips: int
    frames: int
    real_excess_s: float

    @classmethod
    def between(cls, before: dict[Path, ShardStats], after: dict[Path, ShardStats]) -> "Computed":
        new = [stats for path, stats in after.items() if path not in before]
        bare = [stats.seconds for stats in new if not stats.frames]
        typical = statistics.median(bare) if bare else 0.0
        real = [stats for stats in new if stats.frames]
        return cls(shards=len(new), clips=sum(len(stats.items) for stats in new),
                   real_clips=sum(stats.by_status.get("ok", 0) + stats.by_status.get("partial", 0) for stats in new),
                   frames=sum(stats.frames for stats in new),
                   real_excess_s=round(sum(max(0.0, stats.seconds - typical) for stats in real), 3))


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": git_commit()}


def git_commit() -> str | None:
    """HEAD of the checkout the bench runs from, `+dirty` when it has changes; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")
