"""A run's problems named: every item that is not `ok`, as `problems.csv` beside its shards, and the summary's
first few. The rows come from each committed shard's stats (and the shards that failed in this run)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable

from pipeline.engine.record import write_if_changed
from pipeline.engine.records import Problem
from pipeline.records import FAILED

PROBLEMS_CSV = "problems.csv"
COLUMNS = ("clip_id", "split", "status", "error", "shard", "source")
SHARD_FAILED = "shard_failed"  # an item of a shard that failed as a whole in this run: not done, rerun


def ordered(problems: Iterable[Problem]) -> list[Problem]:
    """Items given up first, then whole shards that failed, then the rest by status; each by key."""
    rank = {FAILED: 0, SHARD_FAILED: 1}
    return sorted(problems, key=lambda p: (rank.get(p.status, 2), p.status, p.key))


def problems_text(problems: Iterable[Problem]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for p in ordered(problems):
        writer.writerow((p.key, p.split, p.status, p.error, p.shard, p.source))
    return out.getvalue()


def write_problems(folder: Path, problems: Iterable[Problem]) -> Path:
    """`<folder>/problems.csv` (header only when there are none); unchanged content is not rewritten."""
    path = Path(folder) / PROBLEMS_CSV
    write_if_changed(path, problems_text(problems))
    return path


def read_problems(path: Path) -> list[Problem] | None:
    """The rows of a problems.csv, in its order; None where there is none (runs from before the lists)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [Problem(key=row["clip_id"], status=row["status"], error=row["error"], split=row["split"],
                            shard=row["shard"], source=row["source"]) for row in csv.DictReader(f)]
    except FileNotFoundError:
        return None


def problem_line(problem: Problem) -> str:
    where = f" ({problem.source})" if problem.source else ""
    error = f": {problem.error}" if problem.error else ""
    return f"{problem.key} [{problem.split}] {problem.status}{error}{where}"


def stored_statuses(table: Path) -> dict[str, tuple[str, str | None]]:
    """Item key → (status, error) from a committed status table (its `clip_id`, `status` and `error` columns):
    what a stage's `stored_outcomes` reads for stats written before they listed their problems."""
    import pyarrow.parquet as pq

    rows = pq.read_table(table, columns=["clip_id", "status", "error"]).to_pydict()
    return {key: (status, error) for key, status, error in zip(rows["clip_id"], rows["status"], rows["error"])}
