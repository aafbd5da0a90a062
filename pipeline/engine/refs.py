"""What travels in the Dask task graph: a reference to a shard, not the shard. Every shard's items and
identities (260k clips: tens of MB) would otherwise be sent through the scheduler inside the graph. The driver
writes the shards it runs to one Parquet file on the shared storage the outputs are on (a row group per few
shards, sorted by name); a worker reads its shard's row group, and refuses a task that is not the one planned.
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
import pickle
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.engine.records import ShardStats, ShardTask
from pipeline.engine.shard import run_shard_task

log = logging.getLogger(__name__)

ROWS_PER_GROUP = 16  # shards per row group: what a worker reads to find its own


@dataclass(frozen=True)
class ShardRef:
    """A planned shard as a task carries it: where its task is written, its name and its plan digest."""

    inputs: Path
    name: str
    plan: str


def inputs_path(folder: Path) -> Path:
    """This process's task file in `folder` (hidden; removed when its run ends, or by a later run if the run
    that wrote it is gone)."""
    return Path(folder) / f".tasks-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.parquet"


def write_inputs(tasks: Sequence[ShardTask], path: Path) -> list[ShardRef]:
    """Write `tasks` to `path`; returns their references, in the order given."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(path.parent)
    ordered = sorted(tasks, key=lambda task: task.name)
    digests = [task.plan_digest() for task in ordered]
    table = pa.table({"name": [task.name for task in ordered], "plan": digests,
                      "task": [pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL) for task in ordered]})
    tmp = path.with_name(f"{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=ROWS_PER_GROUP, compression="zstd",
                   write_statistics=["name"], use_dictionary=False)
    os.replace(tmp, path)
    by_name = dict(zip((task.name for task in ordered), digests))
    return [ShardRef(inputs=path, name=task.name, plan=by_name[task.name]) for task in tasks]


def remove_abandoned(folder: Path) -> None:
    """Task files in `folder` left by runs of this host that are gone (killed before they could remove them)."""
    host = socket.gethostname()
    for stale in Path(folder).glob(f".tasks-{host}-*.parquet"):
        pid = stale.name.removeprefix(f".tasks-{host}-").removesuffix(".parquet").partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load(ref: ShardRef) -> ShardTask:
    """The task a reference names, read from its row group; a task file that says otherwise than the plan the
    reference was made with (rewritten meanwhile) is refused."""
    try:
        stat = os.stat(ref.inputs)
    except FileNotFoundError:
        raise RuntimeError(f"{ref.inputs}: the task file of shard {ref.name} is gone: the run that wrote it ended "
                           "(stopped, or another driver on a shared scheduler ran this shard); rerun") from None
    file, firsts = _opened(ref.inputs, (stat.st_ino, stat.st_mtime_ns, stat.st_size))
    group = bisect.bisect_right(firsts, ref.name) - 1  # the shards are sorted by name, the groups in order
    rows = file.read_row_group(group, columns=["name", "plan", "task"]).to_pydict() if group >= 0 else {"name": []}
    for name, plan, blob in zip(rows["name"], rows.get("plan", ()), rows.get("task", ())):
        if name == ref.name:
            task = pickle.loads(blob)
            if plan != ref.plan or task.plan_digest() != ref.plan:
                raise RuntimeError(f"{ref.inputs}: shard {ref.name} there is not the one planned ({plan}, not "
                                   f"{ref.plan}); rerun")
            return task
    raise RuntimeError(f"{ref.inputs}: no shard {ref.name} there; rerun")


@functools.lru_cache(maxsize=4)
def _opened(path: Path, version: tuple[int, int, int]):
    """A task file opened (once per worker process and version of the file), and each row group's first shard."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    meta = file.metadata
    return file, [meta.row_group(i).column(0).statistics.min for i in range(meta.num_row_groups)]


def run_shard_ref(ref: ShardRef) -> ShardStats:
    """`run_shard_task` for the shard a reference names (what a Dask task runs)."""
    return run_shard_task(load(ref))
