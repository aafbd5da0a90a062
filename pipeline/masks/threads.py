"""On a CPU a torch network's masks (YOLO's, SAM's) differ in their last bits with torch's thread count
(docs/PERFORMANCE.md, ninth session). The run tag keys the count (MasksConfig.threads_field); what a run says
where that sends it to a new folder beside one of the same settings, or where its shards still differ."""

from __future__ import annotations

import json

from pipeline.masks.config import MasksConfig, fields_digest
from pipeline.segment import SegmenterSpec


def _count(threads: int) -> str:
    return f"{threads} torch threads" if threads else "each worker's own torch thread count"


def other_thread_runs(config: MasksConfig) -> list[str]:
    """What to say when this run starts a run folder while one beside it holds masks of the same settings made
    on another thread count (another WORKERS, another machine), or made before the count keyed the folder: a
    run resumed so would otherwise start again from nothing, silently."""
    fields = config.output_fields()
    if "threads" not in fields:
        return []
    here, run_dir = fields["threads"], config.run_dir()
    said = []
    for record in sorted(run_dir.parent.glob("*/run.json")):
        folder = record.parent
        try:
            made = json.loads(record.read_text())
            threads = made["config"]["segmenter"].get("threads")  # absent: made before the count keyed it
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        alike = {k: v for k, v in fields.items() if k != "threads"} | ({} if threads is None else {"threads": threads})
        if folder == run_dir or threads == here or made.get("fingerprint") != fields_digest(alike):
            continue
        if threads is None:
            said.append(f"{folder} holds masks of these settings made before the thread count keyed the run folder "
                        f"(each shard's stats name its count); this run, on {_count(here)}, starts {run_dir.name}")
        else:
            resume = f"; to go on with {folder.name}, pass THREADS={threads}" if threads else ""
            said.append(f"{folder} holds masks of these settings made on {_count(threads)}; this run, on "
                        f"{_count(here)}, starts {run_dir.name}: on a CPU the count shapes the masks' last bits"
                        f"{resume}")
    return said


def mixed_cpu_threads(name: str, spec: SegmenterSpec, made_with: dict[str, dict[str, int]]) -> str | None:
    """What to say when the run's current shards were segmented on a CPU with different torch thread counts: the
    count keys the run folder only where it is known when the run is planned, not where each worker of a
    scheduler started elsewhere runs on its own default, and not in folders made before it did."""
    devices = made_with.get("device", {})
    threads = {t: n for t, n in made_with.get("threads", {}).items() if t != "0"}  # 0: the setting, count unknown
    if len(threads) < 2 or not spec.threads_shape_masks or any(device != "cpu" for device in devices):
        return None
    counts = ", ".join(f"{n} on {t}" for t, n in sorted(threads.items(), key=lambda item: int(item[0])))
    return (f"{name}: the shards ran on a CPU with different torch thread counts (shards on so many threads: "
            f"{counts}); their masks differ in the last bits with it. For shards alike, pass THREADS=N, "
            "with OVERWRITE=1")
