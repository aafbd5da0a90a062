"""The Dask task graph carries shard references; the shards are read by the worker from a file beside them."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from pipeline.engine.records import ShardTask
from pipeline.engine.refs import ShardRef, inputs_path, load, write_inputs
from pipeline.masks import run_masks
from pipeline.records import ClipRecord
from tests.test_masks_stage import config


class Stage:  # a picklable stand-in for a stage's settings
    def open(self, task, commit):  # pragma: no cover - never run here
        raise AssertionError


def shard(name: str, clips: int) -> ShardTask:
    items = tuple(ClipRecord(clip_id=f"{name}-{i:05d}", path=f"/data/{name}/{i}.mp4", split="train", label="x",
                             label_index=0, source=f"/data/train.csv:{i + 2}") for i in range(clips))
    return ShardTask(stage=Stage(), name=name, folder=Path("/out"), items=items,
                     identity={item.clip_id: f"{item.clip_id}:absent:{item.path}" for item in items}, fingerprint="f")


def test_a_reference_stays_small_whatever_the_shard_holds_and_loads_the_planned_task(tmp_path):
    tasks = [shard(f"train-{i:05d}", 10 + 200 * (i % 3)) for i in range(40)]
    refs = write_inputs(list(reversed(tasks)), inputs_path(tmp_path))
    assert [ref.name for ref in refs] == [task.name for task in reversed(tasks)]  # in the order given
    assert max(len(pickle.dumps(ref)) for ref in refs) < 300 < len(pickle.dumps(tasks[1]))
    for task, ref in zip(reversed(tasks), refs):
        loaded = load(ref)
        assert (loaded.name, loaded.plan_digest(), loaded.items) == (task.name, task.plan_digest(), task.items)


def test_a_task_file_rewritten_with_another_plan_is_refused(tmp_path):
    (ref,) = write_inputs([shard("val-00000", 3)], inputs_path(tmp_path))
    other = shard("val-00000", 4)  # the same shard, planned from other items
    write_inputs([other], ref.inputs)
    with pytest.raises(RuntimeError, match="not the one planned"):
        load(ref)
    with pytest.raises(RuntimeError, match="no shard train-00000"):
        load(ShardRef(inputs=ref.inputs, name="train-00000", plan=ref.plan))


def test_a_task_file_gone_names_the_shard_and_says_rerun_and_two_runs_never_share_one(tmp_path):
    first, second = inputs_path(tmp_path), inputs_path(tmp_path)
    assert first != second  # two drivers of one host (containers can share a pid) write their own files
    (ref,) = write_inputs([shard("val-00000", 3)], first)
    first.unlink()
    with pytest.raises(RuntimeError, match=rf"^{first}: the task file of shard val-00000 is gone: .*; rerun$"):
        load(ref)


def test_a_dask_run_sends_references_and_leaves_no_task_file(shapes_dataset, tmp_path, monkeypatch):
    import pipeline.executor as executor

    sent = []
    real_map = None

    def recording_map(self, fn, tasks, **kwargs):
        sent.extend(tasks)
        return real_map(self, fn, tasks, **kwargs)

    from distributed import Client

    real_map = Client.map
    monkeypatch.setattr(Client, "map", recording_map)
    root, _ = shapes_dataset
    summary = run_masks(config(root, tmp_path / "out", execution=executor.ExecOptions(workers=1)), progress=False)
    assert summary.computed == 3 and summary.by_status == {"ok": 5}
    assert sent and all(isinstance(item, ShardRef) for item in sent)
    assert not list((tmp_path / "out").rglob(".tasks-*"))
