"""On a CPU a torch network's masks (YOLO's, SAM's) differ in their last bits with torch's thread count
(docs/PERFORMANCE.md, ninth and tenth sessions: which counts differ was itself not the same on a Xeon and an
EPYC), and may with the kind of CPU, whose instruction sets pick the kernels, as with the model of a GPU. The run
tag keys the count (MasksConfig.threads_field); what a run says where that keeps it from going on with masks of
its settings made on another count, or where its shards still ran on different counts, or on machines of
different kinds (which no run tag can key: each worker learns its own)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.masks.config import MasksConfig, fields_digest


def _count(threads: int) -> str:
    return f"{threads} torch threads" if threads else "each worker's own torch thread count"


def other_thread_runs(config: MasksConfig) -> list[str]:
    """What to say where masks of this run's settings made on another thread count (another WORKERS, a machine
    with other cores), or made before the count keyed the run folder, lie in a folder this run does not go on
    with: beside its own (it starts a folder of its own), or its own (a TAG folder whose record, run.json, was
    last written on another count: it redoes the shards made on a count not its own). Without a word, a run
    resumed so would start again from nothing. Nothing where this run goes on with its folder's record."""
    fields = config.output_fields()
    run_dir = config.run_dir()
    if "threads" not in fields or (_record(run_dir / "run.json") or {}).get("fingerprint") == fields_digest(fields):
        return []
    here, said = fields["threads"], []
    for path in sorted(run_dir.parent.glob("*/run.json")):
        made = _record(path)
        try:
            threads = made["config"]["segmenter"].get("threads")  # absent: made before the count keyed it
            alike = {k: v for k, v in fields.items() if k != "threads"} | ({} if threads is None else {"threads": threads})
            if threads == here or made.get("fingerprint") != fields_digest(alike):
                continue
        except (KeyError, TypeError, AttributeError):  # not a masks run's record
            continue
        folder, made_on = path.parent, "before the thread count keyed the run folder" if threads is None \
            else f"on {_count(threads)}"
        if folder == run_dir:
            said.append(f"{folder}'s record says its masks were last made {made_on}; this run, on {_count(here)}, "
                        f"redoes every shard made on another count: on a CPU the count shapes the masks' last bits"
                        f"{_resume(config, folder, threads, made['fingerprint'], those=True)}")
        else:
            said.append(f"{folder} holds masks of these settings made {made_on}; this run, on {_count(here)}, starts "
                        f"{run_dir.name}: on a CPU the count shapes the masks' last bits"
                        f"{_resume(config, folder, threads, made['fingerprint'])}")
    return said


def _resume(config: MasksConfig, folder: Path, threads: int | None, fingerprint: str, *, those: bool = False) -> str:
    """How to go on with the masks in `folder`, made on `threads` (settings of `fingerprint`); nothing for a
    folder made before the count keyed it. TAG= where the folder is not the one the run would name."""
    if threads is None:
        return ""
    what = "those" if those else folder.name
    how = f"pass THREADS={threads}" if threads else "run on workers of a scheduler started elsewhere, without THREADS"
    tag = "" if folder.name == (config.tag or config.derived_tag(fingerprint)) else f" TAG={folder.name}"
    return f"; to go on with {what}, {how}{tag}"


def _record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        return None
    return record if isinstance(record, dict) else None


def machine_warnings(name: str, torch_network: bool, made_with: dict[str, dict[str, int]]) -> list[str]:
    """What a run folder's current shards, by what ran them (`made_with`, counted over them), say about what
    their masks' last bits depend on beyond the run tag: for a torch network, different thread counts or kinds
    of CPU, or different models of GPU. The run's summary says it, and `pipeline status` from the folder."""
    return [said for said in (_mixed_threads(name, torch_network, made_with),
                              _mixed_machines(name, torch_network, made_with)) if said]


def torch_network_of(run_dir: Path) -> bool:
    """Whether a masks run's record (run.json) names a torch network, as SegmenterSpec.torch_network says of the
    spec it was written from: YOLO, or SAM refining (its fields are there only where it refines)."""
    config = (_record(run_dir / "run.json") or {}).get("config")
    segmenter = config.get("segmenter") if isinstance(config, dict) else None
    return isinstance(segmenter, dict) and (segmenter.get("backend") == "yolo" or "refine" in segmenter)


def _mixed_threads(name: str, torch_network: bool, made_with: dict[str, dict[str, int]]) -> str | None:
    """The shards were segmented on a CPU with different torch thread counts: the count keys the run folder only
    where it is known when the run is planned, not where each worker of a scheduler started elsewhere runs on
    its own default (every shard runs on the keyed count otherwise)."""
    threads = {t: n for t, n in made_with.get("threads", {}).items() if t != "0"}  # 0: the setting, count unknown
    if len(threads) < 2 or not torch_network or _side(made_with) != "cpu":
        return None
    counts = ", ".join(f"{n} on {t}" for t, n in sorted(threads.items(), key=lambda item: int(item[0])))
    return (f"{name}: the shards ran on a CPU with different torch thread counts (shards on so many threads: "
            f"{counts}); their masks differ in the last bits with it. Shards alike come from one count: THREADS=N "
            "runs every worker on N threads (in a run folder of its own, unless TAG names this one)")


def _mixed_machines(name: str, torch_network: bool, made_with: dict[str, dict[str, int]]) -> str | None:
    """The shards were segmented on machines whose kernels differ: on a CPU, of different kinds
    (`machine.cpu_kind`); on CUDA, GPUs of different models. Said only where two kinds are recorded; shards from
    before the record are named beside them (they may be of either)."""
    side = _side(made_with)
    if not torch_network or side is None:
        return None
    key, where, what = {"cpu": ("cpu", "on a CPU on machines of different kinds", "kind"),
                        "cuda": ("gpu", "on GPUs of different models", "model")}[side]
    kinds = made_with.get(key, {})
    if len(kinds) < 2:
        return None
    counts = "; ".join(f"{n} on {kind}" for kind, n in sorted(kinds.items()))
    unknown = sum(made_with.get("device", {}).values()) - sum(kinds.values())
    before = f", and {unknown} made before the {what} was recorded" if unknown > 0 else ""
    return (f"{name}: the shards ran {where} (shards on each: {counts}{before}); their masks may differ in the "
            f"last bits with the {what}. Shards alike come from one {what}: run them again (OVERWRITE=1) where the "
            f"workers are all of one {what}")


def _side(made_with: dict[str, dict[str, int]]) -> str | None:
    """"cpu" or "cuda" where every shard ran on that side, else None."""
    devices = made_with.get("device", {})
    sides = {"cuda" if device.startswith("cuda") else device for device in devices}
    return next(iter(sides)) if len(sides) == 1 and sides <= {"cpu", "cuda"} else None
