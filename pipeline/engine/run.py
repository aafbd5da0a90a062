"""Run a stage's planned shards: skip the shards already done, compute the rest (in this process or on Dask)
with a progress bar, record the plan once something commits, name the problems, and sum up what the selected
shards hold. Also reads back which committed shards of a folder are current, for the next stage."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.engine.failures import InfrastructureError, Interrupted
from pipeline.engine.journal import JournalWatch
from pipeline.engine.problems import PROBLEMS_CSV, SHARD_FAILED, ordered, problem_line, write_problems
from pipeline.engine.record import NOT_WRITABLE, RecordFile, RunRecord, require_writable
from pipeline.engine.records import MARKER_SUFFIX, Problem, ShardStats, ShardTask, made_with_counts
from pipeline.engine.refs import inputs_path, run_shard_ref, write_inputs
from pipeline.engine.shard import is_done, run_shard_task
from pipeline.executor import ExecOptions, run_tasks
from pipeline.progress import ShardProgress
from pipeline.records import OK

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class StageSummary:
    """What one invocation of a stage did, and what its selected shards now hold."""

    stage: str
    output: str
    planned: int  # shards in the whole plan
    shards: int  # shards this run selected
    computed: int
    skipped: int  # done before, not recomputed
    failed_shards: dict[str, str] = field(default_factory=dict)  # shard → error; a rerun redoes them
    # shard → why its task failed here, though its stats were committed since this run began (by another run
    # that held it, or by a worker lost after its commit): done, not failed
    committed_meanwhile: dict[str, str] = field(default_factory=dict)
    items: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    failed_items: dict[str, str] = field(default_factory=dict)  # item → error, given up after their tries
    retried: dict[str, int] = field(default_factory=dict)  # item → tries, where more than one was needed
    totals: dict[str, int] = field(default_factory=dict)  # the stage's own sums (masks: instances), and maxima
    left_out: dict[str, int] = field(default_factory=dict)  # input entries not made items, by reason (duplicates)
    workers: dict[str, dict] = field(default_factory=dict)  # host:pid → shards, frames, seconds, frames/s, peak
    # what ran the plan's current shards (their stats' made_with, all of them: a run that redid a few shards can
    # mix the folder): each setting's values, by shards
    made_with: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # said with the summary (the stage's own, e.g. mixed shards)
    problems: list[Problem] = field(default_factory=list)  # the selected shards' items that are not ok
    problems_file: str | None = None  # the run's problems.csv (every current shard's), once written
    seconds: float = 0.0

    def lines(self) -> list[str]:
        statuses = ", ".join(f"{k} {v}" for k, v in self.by_status.items()) or "none"
        meanwhile = len(self.committed_meanwhile)
        out = [f"{self.stage}: {self.items} clips ({statuses}), {self.frames} frames"
               + "".join(f", {v} {k}" for k, v in self.totals.items()) + f" in {self.seconds:.1f}s",
               f"  shards: {self.shards} of {self.planned} selected, {self.computed} computed, {self.skipped} already "
               "done, " + (f"{meanwhile} committed meanwhile (their tasks failed here), " if meanwhile else "")
               + f"{len(self.failed_shards)} failed -> {self.output}"]
        if self.left_out:
            out.append("  listing: " + ", ".join(f"{n} {reason}" for reason, n in self.left_out.items()))
        if self.retried:
            out.append(f"  retried: {len(self.retried)} clips needed more than one try")
        out += [f"  worker {name}: {w['shards']} shards, {w['frames']} frames, {w['frames_per_s']:.1f} frames/s, "
                f"peak {w['peak_rss_mb']:.0f} MiB" for name, w in sorted(self.workers.items())]
        out += [f"  FAILED {name}: {error}" for name, error in self.failed_shards.items()]
        out += [f"  WARNING: {warning}" for warning in self.warnings]
        out += self.problem_lines()
        return out

    def record(self) -> dict:
        """The summary as `summary.json` keeps it: without the problems (problems.csv lists them all)."""
        return {name: value for name, value in dataclasses.asdict(self).items() if name != "problems"}

    def problem_lines(self, first: int = 3) -> list[str]:
        """The count of problems by status, the first few named, and where the full list is."""
        if not self.problems:
            return []
        counts = Counter(p.status for p in self.problems)
        out = [f"  problems: {len(self.problems)} clips not ok ("
               + ", ".join(f"{status} {n}" for status, n in sorted(counts.items())) + ")"]
        out += [f"    {problem_line(p)}" for p in self.problems[:first]]
        rest = len(self.problems) - first
        where = self.problems_file or "the status tables"
        out.append(f"    ... {rest} more in {where}" if rest > 0 else f"    all listed in {where}")
        return out


def run_stage(stage: str, output: Path, plan: Sequence[ShardTask], selected: Sequence[ShardTask], *,
              options: ExecOptions, record: Sequence[RecordFile] = (), progress: bool = True,
              resources: dict[str, float] | None = None, fatal: tuple[type[BaseException], ...] = (),
              key_prefix: str | None = None, client: "distributed.Client | None" = None) -> StageSummary:  # noqa: F821
    """Compute the `selected` shards of `plan` that are not done. The run's record (the stage's own `record`
    files, then `plan.json` in each shard folder, so readers serve only shards made from what the plan says
    now) is written when a shard commits (the plan alone when the run ends with nothing new and nothing
    failed), and with it `problems.csv` (every current shard's items that are not ok) beside the shards. A run
    with work to do checks first that `output` is writable (InputError); one without writes nothing new.
    Ctrl-C or SIGTERM: Interrupted, saying how many selected shards are committed."""
    started = time.perf_counter()
    run_record = RunRecord(record, plan_files(plan))
    versions = marker_versions(plan)  # a folder listing says which shards have stats; each is read once
    read = committed_stats(plan, versions)
    todo = [task for task in selected if task.overwrite or not is_done(task, read.get(task.name))]
    if todo or run_record.pending(whole=False):
        require_writable(output)
    log.info("%s: %d of %d shards selected, %d to compute -> %s", stage, len(selected), len(plan), len(todo), output)
    before = {task.name: _marker_state(task) for task in todo}
    run_id = uuid.uuid4().hex[:8]  # keys tasks that redo shards (task_key)
    computed: dict[str, ShardStats] = {}
    watch = JournalWatch(todo) if progress else None  # the bar moves per clip, from the shards' journals
    with ShardProgress(selected, todo, enabled=progress, desc=stage, watch=watch) as bar:
        def on_done(task: ShardTask, stats: ShardStats) -> None:
            computed[task.name] = stats
            run_record.commit()  # a shard is in: the run's record describes it
            bar(task, stats.frames)

        inputs = inputs_path(todo[0].folder) if todo and not options.in_process else None
        try:
            plugins = ()
            if inputs is None:
                fn, sent = run_shard_task, todo
            else:  # the graph carries references; the shards themselves go to a file beside them
                from pipeline.engine.worker_plugin import ReleaseOnClose  # distributed: only for Dask runs

                fn, sent = run_shard_ref, write_inputs(todo, inputs)
                plugins = (ReleaseOnClose(),)  # workers stopped while on a shard take its tries back
            by_name = {task.name: task for task in todo}
            failed = run_tasks(fn, sent, names=[t.name for t in todo], options=options,
                               on_done=lambda sent_task, stats: on_done(by_name[sent_task.name], stats),
                               fatal=fatal, stop_on=(InfrastructureError,), key_prefix=key_prefix or stage,
                               keys=[task_key(t, run_id) for t in todo], resources=resources,
                               client=client, plugins=plugins)
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM (Interrupted)
            # shards a worker committed before the stop count, though their results never came back
            landed = [task for task in todo if task.name in computed or _committed_since(task, before[task.name])]
            if landed:
                run_record.commit()
                record_problems(plan, {}, required=True)
            done = len(selected) - len(todo) + len(landed)
            raise Interrupted(f"{stage}: {done} of {len(selected)} shards committed",
                              signum=getattr(exc, "signum", None)) from None
        finally:
            if inputs is not None:
                inputs.unlink(missing_ok=True)
    # a shard whose task failed here but that was committed since (not where this run asked for it to be redone:
    # another run's commit may have begun before this run did) is done, as the folder holds it now
    meanwhile = {name: failed.pop(name) for name in list(failed)
                 if not by_name[name].overwrite and _committed_since(by_name[name], before[name])}
    read = refreshed(plan, read, versions, computed)  # another run's commits meanwhile count (problems.csv)
    for name in [name for name in meanwhile if name not in read]:  # removed again since: being redone elsewhere
        failed[name] = f"{meanwhile.pop(name)}; committed meanwhile elsewhere, then removed again"
    for name, why in meanwhile.items():
        log.warning("%s: failed here (%s), but its stats were committed since this run began (by another run, or "
                    "by a worker lost after its commit): counted as done", name, why)
    if computed or meanwhile:
        run_record.commit()
    elif not failed:
        run_record.commit(whole=False)  # nothing new: the plan alone (which shards readers serve)
    if computed or meanwhile or not failed:
        mark_started(plan)
    todo_names = {task.name for task in todo} - set(computed) - set(meanwhile)  # their stats, if any, came from
    # elsewhere meanwhile
    summary = StageSummary(stage=stage, output=str(output), planned=len(plan), shards=len(selected),
                           computed=len(computed), skipped=len(selected) - len(todo), failed_shards=failed,
                           committed_meanwhile=meanwhile,
                           workers=worker_totals(list(computed.values())))
    statuses: Counter[str] = Counter()
    read |= computed
    for task in selected:
        if task.name in failed:
            statuses[SHARD_FAILED] += len(task.items)
            continue
        stats = read.get(task.name) if task.name not in todo_names else ShardStats.read(task.marker)
        if stats is None:  # another run is recomputing it right now
            statuses["not_done"] += len(task.items)
            continue
        read[task.name] = stats
        statuses.update(stats.by_status)
        summary.items += len(stats.items)
        summary.frames += stats.frames
        summary.failed_items |= stats.failed
        summary.retried |= stats.retried
        for key, value in stats.totals.items():  # sums; a `_max` is the largest of the shards'
            merge = max if key.endswith("_max") else int.__add__
            summary.totals[key] = merge(summary.totals.get(key, 0), value)
    summary.by_status = dict(sorted(statuses.items()))
    summary.items += statuses[SHARD_FAILED] + statuses["not_done"]
    chosen = {task.name for task in selected}
    current = current_stats(plan, read, failed)
    found = run_problems(plan, current, failed)
    summary.made_with = made_with_counts(current.values())
    summary.problems = [p for problems in found.values() for p in problems if p.shard in chosen]
    if computed or meanwhile or not failed:
        summary.problems_file = str(record_problems(plan, failed, required=bool(computed), found=found))
    summary.problems = ordered(summary.problems)
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary


def marker_versions(plan: Sequence[ShardTask]) -> dict[str, tuple[int, int]]:
    """Shard → its stats file's (inode, modification time), for the shards of the plan that have one (their
    folders listed once: most shards of a run at its start have none, and a stat per absent file costs seconds
    at Kinetics scale)."""
    listed: dict[Path, dict[str, os.DirEntry]] = {}
    found = {}
    for task in plan:
        entries = listed.get(task.folder)
        if entries is None:
            try:
                with os.scandir(task.folder) as scan:
                    entries = listed[task.folder] = {entry.name: entry for entry in scan}
            except FileNotFoundError:
                entries = listed[task.folder] = {}
        entry = entries.get(task.name + MARKER_SUFFIX)
        if entry is not None:
            try:
                stat = entry.stat()
            except FileNotFoundError:  # removed since the listing
                continue
            found[task.name] = (stat.st_ino, stat.st_mtime_ns)
    return found


def committed_stats(plan: Sequence[ShardTask],
                    versions: Mapping[str, tuple[int, int]] | None = None) -> dict[str, ShardStats]:
    """Shard → its stats, for the shards of the plan that have any (`versions`: those found, else listed now)."""
    versions = marker_versions(plan) if versions is None else versions
    found = {}
    for task in plan:
        if task.name in versions and (stats := ShardStats.read(task.marker)) is not None:
            found[task.name] = stats
    return found


def refreshed(plan: Sequence[ShardTask], read: Mapping[str, ShardStats], versions: Mapping[str, tuple[int, int]],
              computed: Mapping[str, ShardStats]) -> dict[str, ShardStats]:
    """`read` (taken when the run began, as `versions` found the stats files) with this run's `computed`, and
    the stats another run committed, rewrote or removed since read again: a shared folder's problems.csv and
    summary never drop nor restore what a concurrent run changed."""
    now = marker_versions(plan)
    out = {name: stats for name, stats in read.items() if name in now}
    for task in plan:
        if task.name not in computed and task.name in now and now[task.name] != versions.get(task.name):
            stats = ShardStats.read(task.marker)
            if stats is not None:
                out[task.name] = stats
    return out | dict(computed)


def record_problems(plan: Sequence[ShardTask], failed: Mapping[str, str], *, required: bool,
                    found: dict[Path, list[Problem]] | None = None) -> Path | None:
    """problems.csv beside the shards (one folder per plan, in practice); returns its path. A run that computed
    nothing may find the folder read-only: then a list that is out of date or missing (a run from before the
    lists) is only warned about."""
    path = None
    if found is None:
        found = run_problems(plan, current_stats(plan, committed_stats(plan), failed), failed)
    for folder, problems in found.items():
        try:
            path = write_problems(folder, problems)
        except OSError as exc:
            if required or exc.errno not in NOT_WRITABLE:
                raise
            log.warning("%s: problems.csv not brought up to date (%s); the next run that can write does it",
                        folder, exc.strerror)
            path = Path(folder) / PROBLEMS_CSV
    return path


def _committed_since(task: ShardTask, state: tuple[int, int] | None) -> bool:
    """Whether the shard's done marker changed from `state` (`_marker_state`, as this run found it) and marks it
    done now: committed meanwhile, whatever this run heard of its task."""
    return _marker_state(task) != state and is_done(task)


def _marker_state(task: ShardTask) -> tuple[int, int] | None:
    """A shard's done marker as found (inode, modification time), to tell a shard committed since."""
    try:
        stat = task.marker.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def current_stats(plan: Sequence[ShardTask], known: Mapping[str, ShardStats],
                  failed: Mapping[str, str]) -> dict[str, ShardStats]:
    """Shard → its stats (`known`: already read), for the plan's current shards (made from what the plan says
    now) that did not fail in this run."""
    return {task.name: stats for task in plan if task.name not in failed
            and (stats := known.get(task.name)) is not None and stats.plan == task.plan_digest()}


def run_problems(plan: Sequence[ShardTask], current: Mapping[str, ShardStats],
                 failed: Mapping[str, str]) -> dict[Path, list[Problem]]:
    """Shard folder → the problems of every current shard of the plan there (`current_stats`), and the items of
    the shards that failed in this run."""
    by_folder: dict[Path, list[Problem]] = {}
    for task in plan:
        problems = by_folder.setdefault(task.folder, [])
        if task.name in failed:
            problems += [Problem.of(item, SHARD_FAILED, failed[task.name], task.name) for item in task.items]
            continue
        stats = current.get(task.name)
        if stats is not None:
            found = stats.problem_records()
            problems += found if found is not None else stored_problems(task, stats)
    return by_folder


def stored_problems(task: ShardTask, stats: ShardStats) -> list[Problem]:
    """The problems of a shard whose stats predate the lists, from the status rows its stage stored."""
    if not any(status != OK for status in stats.by_status) or not hasattr(task.stage, "stored_outcomes"):
        return []
    outcomes = task.stage.stored_outcomes(task)
    return [Problem.of(item, *outcomes[item.key], task.name) for item in task.items
            if item.key in outcomes and outcomes[item.key][0] != OK]


def task_key(task: ShardTask, run: str) -> str:
    """The shard's Dask key: where it goes and what it is made from. Two runs on one scheduler that want the
    very same shard share one task (and its result, which Dask keeps while either waits); anything else gets a
    task of its own, and so does a run that asks for shards to be redone (OVERWRITE, RETRY_FAILED: tasks of
    this `run` alone), which another run's result for them must not satisfy."""
    where = hashlib.sha256(str(task.folder).encode()).hexdigest()[:8]
    redo = f"-{run}" if task.overwrite or task.retry_failed else ""
    return f"{task.name}-{where}-{task.plan_digest()}{redo}"


def worker_totals(stats: list[ShardStats]) -> dict[str, dict]:
    """Per-worker totals over the shards computed in this run."""
    workers: dict[str, dict] = {}
    for item in stats:
        w = workers.setdefault(item.worker, {"shards": 0, "frames": 0, "seconds": 0.0, "peak_rss_mb": 0.0})
        w["shards"] += 1
        w["frames"] += item.frames
        w["seconds"] = round(w["seconds"] + item.seconds, 3)
        w["peak_rss_mb"] = max(w["peak_rss_mb"], item.peak_rss_mb)
    for w in workers.values():
        w["frames_per_s"] = round(w["frames"] / w["seconds"], 2) if w["seconds"] else 0.0
    return workers


def mark_started(plan: Sequence[ShardTask]) -> None:
    """A run that went through marks its plan as the latest started (readers default to that run); on a
    read-only folder there is nothing to mark."""
    for folder in {task.folder for task in plan}:
        try:
            os.utime(folder / "plan.json")
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in NOT_WRITABLE:
                raise


def plan_files(plan: Sequence[ShardTask]) -> list[RecordFile]:
    """`plan.json` for each shard folder of the plan: shard → plan digest."""
    by_folder: dict[Path, dict[str, str]] = {}
    for task in plan:
        by_folder.setdefault(task.folder, {})[task.name] = task.plan_digest()
    return [RecordFile.json(folder / "plan.json", digests, compact=True) for folder, digests in by_folder.items()]


def current_shards(folder: Path, upstream: Mapping[str, str] | None = None) -> tuple[dict[str, ShardStats], list[str]]:
    """The committed shards of a folder that the latest plan still stands behind (name → stats), and the
    names of planned shards that are not committed, or were made from something else (stale). With
    `upstream` (upstream shard → the digest of its files now), a shard made from other upstream files than
    those is stale too: its upstream was recomputed since the plan was written."""
    try:
        plan = json.loads((Path(folder) / "plan.json").read_text())
    except FileNotFoundError:
        return {}, []
    current, stale = {}, []
    for name, digest in sorted(plan.items()):
        stats = ShardStats.read(Path(folder) / f"{name}_stats.json")
        if stats is None or stats.plan != digest:
            stale.append(name)
        elif upstream is not None and any(upstream.get(shard) != used for shard, used in stats.upstream.items()):
            stale.append(name)
        else:
            current[name] = stats
    return current, stale
