"""One shard's life, the same for every stage: claim → done check → invalidate the old marker → each item
through its tries → commit (renames) → stats last."""

from __future__ import annotations

import logging
import os
import time

from pipeline.engine.claims import claim, peak_rss_mb, worker_name
from pipeline.engine.commit import Commit, outputs_present
from pipeline.engine.failures import INFRASTRUCTURE_EXIT, InfrastructureError, in_dask_worker, is_infrastructure
from pipeline.engine.journal import journal_path
from pipeline.engine.records import Problem, ShardStats, ShardTask, count_statuses, outputs_digest
from pipeline.engine.tries import Tries, release_in_flight
from pipeline.records import FAILED, OK

log = logging.getLogger(__name__)


def is_done(task: ShardTask, stats: ShardStats | None = None) -> bool:
    """The shard's stats (`stats`, where already read) exist, were made from exactly what the task is made from
    (settings, items and their identities, upstream digests), its files are still there, and (with
    `retry_failed`) no item failed."""
    stats = stats or ShardStats.read(task.marker)
    if stats is None or stats.plan != task.plan_digest():
        return False
    if task.retry_failed and stats.by_status.get(FAILED):
        return False
    if not outputs_present(task.folder, stats.outputs):
        log.warning("%s: committed files are missing or changed on disk; recomputing", task.name)
        return False
    return True


def run_shard(task: ShardTask) -> ShardStats:
    """Compute and commit one shard; returns its stats (also written, last, as its done marker).

    Under the shard's claim (another process holding it is waited for, and a shard it finished meanwhile is
    not recomputed). The old done marker goes first, so from then on a crash leaves the shard not done. Items
    go through `Tries`: a data error is tried again, then recorded as failed; a machine error gives the shard up.
    """
    with claim(task.marker):
        if not task.overwrite and is_done(task):
            log.info("%s: finished by another run meanwhile", task.name)
            return ShardStats.read(task.marker)
        task.marker.unlink(missing_ok=True)  # invalidate first
        return _compute(task)


def _compute(task: ShardTask) -> ShardStats:
    started = time.perf_counter()
    tries = Tries(journal_path(task.marker), task.max_tries, task.made_from())
    commit = Commit(task.folder, cut_short=tries.path.exists())  # a journal outlives a writer cut short
    tries.open()  # before the writer makes a temporary file: a stale one is searched for where a journal is left
    try:
        work = task.stage.open(task, commit)
    except BaseException:
        tries.close()
        raise
    try:
        outcomes = _outcomes(task, tries, work)
        totals = work.finish(outcomes, commit)
        outputs = commit.finish()
    except BaseException:
        work.abort()
        commit.abort()
        raise
    finally:
        tries.close()
    stats = ShardStats(
        shard=task.name, plan=task.plan_digest(), fingerprint=task.fingerprint, items=dict(task.identity),
        upstream=dict(task.upstream), outputs=outputs, digest=outputs_digest(outputs),
        by_status=count_statuses(outcomes), retried=tries.retried(),
        failed={item.key: o.error for item, o in zip(task.items, outcomes) if o.status == FAILED}, frames=sum(o.frames for o in outcomes),
        seconds=round(time.perf_counter() - started, 3), worker=worker_name(), peak_rss_mb=peak_rss_mb(),
        totals=totals,
        problems=[Problem.of(item, o.status, o.error, task.name) for item, o in zip(task.items, outcomes) if o.status != OK],
        made_with=task.stage.made_with() if hasattr(task.stage, "made_with") else {},
    )
    stats.write(task.marker)  # last: its presence marks the shard done
    tries.clear()
    log.info("%s: %d items, %d frames in %.1fs", task.name, len(outcomes), stats.frames, stats.seconds)
    return stats


def _outcomes(task: ShardTask, tries: Tries, work) -> list:
    """Every item's outcome, kept (`work.keep`) in item order as soon as the items before it are settled.

    A work that can process several items at once (`process_together`) gets the items with a clean record
    first; it calls `begin` as it starts each (a shared try: a worker dying or a machine error there is not
    counted against the items, but marks them to be tried alone). Items that fail there, or came with a
    failed, unfinished or shared try, then go one by one through their tries, alone: an item is only ever
    given up for what it does by itself.
    """
    items, settled, kept = task.items, {}, 0

    def settle(item, outcome) -> None:
        nonlocal kept
        settled[item.key] = outcome
        while kept < len(items) and items[kept].key in settled:
            work.keep(settled[items[kept].key])
            kept += 1

    together = getattr(work, "process_together", None)
    if together is not None:
        stream = together([item for item in items if tries.clean(item.key)],
                          begin=lambda item: tries.begin(item.key, shared=True))
        try:
            for item, result in _machine_errors_named(stream, task.name):
                if isinstance(result, Exception):
                    tries.failed(item.key, result)  # raises for a machine error; else the item is retried alone
                else:
                    tries.succeeded(item.key, frames=result.frames)
                    settle(item, result)
        except BaseException:
            tries.abandon()  # the tries still in flight: taken back, their items tried alone next
            raise
        finally:
            stream.close()  # stops whatever the work still runs for the items in flight
    for item in items:
        if item.key not in settled:
            settle(item, tries.run(item.key, lambda: work.process(item), lambda error: work.give_up(item, error)))
    return [settled[item.key] for item in items]


def _machine_errors_named(stream, shard: str):
    """The items of `stream`; a machine error the work raises for all of them becomes InfrastructureError."""
    try:
        yield from stream
    except Exception as exc:
        if is_infrastructure(exc) and not isinstance(exc, InfrastructureError):
            raise InfrastructureError(f"{shard}: {type(exc).__name__}: {exc}") from exc
        raise


def run_shard_task(task: ShardTask) -> ShardStats:
    """`run_shard` as shipped to workers. On a Dask worker a device or memory error ends the worker process
    (its nanny starts a fresh one, with a fresh device context) and Dask gives the shard to another worker; a
    broken GPU never eats the queue by failing every shard it is handed."""
    try:
        return run_shard(task)
    except InfrastructureError as exc:
        if not in_dask_worker():
            raise
        log.error("%s: %s; restarting this worker, the shard goes to another", task.name, exc)
        release_in_flight()  # what other threads of this worker are on is not their items' fault either
        logging.shutdown()
        os._exit(INFRASTRUCTURE_EXIT)
