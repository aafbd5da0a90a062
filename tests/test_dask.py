"""The same stage on two Dask worker processes gives the same shards as in-process."""

import json
import os
from pathlib import Path

from pipeline.runner import run_masks
from tests.test_masks_stage import config, shard_bytes


def test_two_worker_processes_match_in_process_run(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    local = run_masks(config(root, tmp_path / "local"), progress=False)
    dask = run_masks(config(root, tmp_path / "dask", workers=2), progress=False)
    assert dask.by_status == {"ok": 5} and dask.shards_computed == 3
    assert shard_bytes(Path(dask.run_dir)) == shard_bytes(Path(local.run_dir))
    workers = {json.loads(p.read_text())["worker"] for p in Path(dask.run_dir).glob("*_stats.json")}
    assert len(workers) >= 1 and not any(w.endswith(f":{os.getpid()}") for w in workers)
