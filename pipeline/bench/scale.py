"""`make bench-scale`: the pipeline's machinery at Kinetics scale, as one JSON object (OUT/bench_scale.json).

    python -m pipeline.bench scale [--clips 260139] [--overhead-clips 20000] [--real N] [--workers 2] [--out DIR]

Writes a Kinetics-400-shaped listing of --clips clips (listing.py: most absent, a few real tiny videos) and times
the CLI on it, each command in a subprocess of its own (wall seconds, peak RSS):
- plan: `masks --limit 1 --workers 0`: list, identify and plan every clip, run one shard; where its time goes
  (the listing, the identities) is timed again in this process;
- masks and render engine overhead, in process and on --workers Dask workers: a run over the first shards
  holding --overhead-clips clips (0: every clip) less a run of one shard of the same (the listing's planning and
  the workers' start cancel out), per shard and per clip computed, less what the real clips' shards took beyond
  a shard without frames (their frames are reported beside); render is `--variants human_only` over those masks;
- the no-op rerun: the in-process masks command again, its shards all done;
- `manifests` and `report` over the in-process run, `status` of it.
Every figure says how many clips it was measured on.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.bench.listing import KINETICS400_CLIPS, ListingSpec, write_listing
from pipeline.bench.runs import Computed, Timed, committed, machine, run_cli

log = logging.getLogger(__name__)

DATASET = "kinetics400"
MARKER = ".bench-scale"
GOALS = {  # issue 24, for 260k clips on the 2-core machine
    "plan_s": 5, "plan_peak_rss_mb": 500, "masks_in_process_per_clip_ms": 0.3, "masks_dask_per_shard_ms": 20,
    "noop_rerun_s": 10, "status_s": 5, "manifests_s": 30, "report_s": 30}


@dataclass(frozen=True, kw_only=True)
class ScaleOptions:
    out: Path
    listing: ListingSpec = ListingSpec()
    overhead_clips: int = 20_000  # the overhead runs' --limit; 0: the whole listing
    workers: int = 2
    selfie_model: Path = Path("models/selfie_segmentation.tflite")
    variant: str = "human_only"


class Bench:
    """The commands of one scale bench, each logged to OUT/logs/<name>.log."""

    def __init__(self, options: ScaleOptions, root: Path) -> None:
        self.options, self.root, self.out = options, root, options.out
        self.limit = options.overhead_clips or options.listing.clips

    def run(self, name: str, args: list[str], stage_dir: Path | None = None) -> tuple[Timed, Computed | None]:
        """Run one command; with `stage_dir`, also what it committed there. A failing command stops the bench."""
        before = committed(stage_dir) if stage_dir else {}
        timed = run_cli(args, self.out / "logs" / f"{name}.log")
        if timed.rc != 0:
            raise RuntimeError(f"{name}: `python -m pipeline {shlex.join(args)}` exited {timed.rc}:\n{timed.tail()}")
        log.info("%s: %.1f s, peak %.0f MiB", name, timed.seconds, timed.peak_rss_mb)
        return timed, Computed.between(before, committed(stage_dir)) if stage_dir else None

    def masks(self, where: Path, workers: int, limit: int) -> list[str]:
        return ["masks", "--dataset", DATASET, "--root", str(self.root), "--out", str(where), "--segmenter", "selfie",
                "--selfie-model", str(self.options.selfie_model), "--workers", str(workers), "--limit", str(limit)]

    def render(self, where: Path, workers: int, limit: int | None) -> list[str]:
        return ["render", "--dataset", DATASET, "--out", str(where), "--variants", self.options.variant,
                "--workers", str(workers), *(["--limit", str(limit)] if limit else [])]

    def overhead(self, stage: str, where: Path, workers: int, one: tuple[Timed, Computed] | None = None) -> dict:
        """The stage's machinery per shard and per clip: a run of the first shards holding the overhead's clips
        less a run of one shard, both in `where` (the second skips the first's shard)."""
        name, folder = f"{stage}-{'in-process' if workers == 0 else f'{workers}-workers'}", where / f"{stage}s"
        command = self.masks if stage == "mask" else self.render
        if one is None:
            one = self.run(f"{name}-one-shard", command(where, workers, 1), folder)
        rest = self.run(name, command(where, workers, self.limit if stage == "mask" else None), folder)
        (t1, c1), (t2, c2) = one, rest
        machinery = (t2.seconds - c2.real_excess_s) - (t1.seconds - c1.real_excess_s)
        shards, clips = c2.shards - c1.shards, c2.clips - c1.clips
        return {
            "workers": workers, "run_clips": c1.clips + c2.clips, "run_shards": c1.shards + c2.shards,
            "one_shard": {"seconds": round(t1.seconds, 2), "clips": c1.clips, "real_clips": c1.real_clips},
            "rest": {**t2.figures(), "shards": c2.shards, "clips": c2.clips, "real_clips": c2.real_clips,
                     "frames": c2.frames, "real_excess_s": c2.real_excess_s},
            "per_shard_ms": round(1000 * machinery / shards, 2) if shards > 0 else None,
            "per_clip_ms": round(1000 * machinery / clips, 3) if clips > 0 else None,
        }


def bench_scale(options: ScaleOptions) -> dict:
    out = options.out
    fresh_folder(out)
    started = time.perf_counter()
    listing = write_listing(out / "data" / DATASET, options.listing)
    written_s = time.perf_counter() - started
    bench, local, dask = Bench(options, listing.root), out / "in-process", out / "workers"
    clips = options.listing.clips
    result: dict = {"bench": "scale", **machine(), "clips": clips, "notes": []}
    result["listing"] = {"clips": listing.clips, "real_clips": listing.real, "classes": listing.classes,
                         "frames_per_real_clip": listing.frames_per_real_clip, "written_s": round(written_s, 2)}

    plan = bench.run("plan", bench.masks(local, 0, 1), local / "masks")
    split = plan_split(listing.root, local)
    if split["listing_s"] is not None:
        split["rest_s"] = round(plan[0].seconds - split["listing_s"] - split["identities_s"], 2)
    result["plan"] = {**plan[0].figures(), "clips": clips, "command": "masks --limit 1 --workers 0", "split": split}
    result["masks"] = {"in_process": bench.overhead("mask", local, 0, one=plan)}
    noop = bench.run("noop-rerun", bench.masks(local, 0, bench.limit))[0]
    result["noop_rerun"] = {**noop.figures(), "clips": clips, "done_clips": result["masks"]["in_process"]["run_clips"]}
    result["masks"][f"workers_{options.workers}"] = bench.overhead("mask", dask, options.workers)
    result["render"] = {"variant": options.variant, "in_process": bench.overhead("render", local, 0),
                        f"workers_{options.workers}": bench.overhead("render", dask, options.workers)}
    done = result["masks"]["in_process"]["run_clips"]
    for name, args in (("manifests", ["manifests", "--dataset", DATASET, "--out", str(local), "--variants",
                                      options.variant]),
                       ("report", ["report", "--dataset", DATASET, "--out", str(local)])):
        result[name] = {**bench.run(name, args)[0].figures(), "clips": done}
    status = bench.run("status", ["status", "--dataset", DATASET, "--out", str(local)])[0]
    result["status"] = {**status.figures(), "clips": clips, "done_clips": done}
    result["goals"] = goals(result, options.workers)
    return result


def fresh_folder(out: Path) -> None:
    """Empty `out` for this bench: only a folder an earlier scale bench made (its marker inside) is removed."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise SystemExit(f"error: {out} is not empty and is no scale bench's folder; pick another --out (OUT)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by python -m pipeline.bench scale; removed whole by the next one\n")


def plan_split(root: Path, out: Path) -> dict:
    """Where planning's time goes, timed again in this process: the reader's listing, then the identities (each
    clip's file looked up); `rest` is the plan command's seconds less those two (start, imports, layout, plan,
    one shard). Null parts where the pipeline no longer has these functions."""
    try:
        from pipeline.datasets import list_clips
        from pipeline.masks.runner import clip_identities

        started = time.perf_counter()
        listing = list_clips(DATASET, root, out)
        listed = time.perf_counter()
        clip_identities(listing.clips)
        return {"listing_s": round(listed - started, 2), "identities_s": round(time.perf_counter() - listed, 2)}
    except (ImportError, TypeError, AttributeError) as exc:
        return {"listing_s": None, "identities_s": None, "rest_s": None, "error": f"{type(exc).__name__}: {exc}"}


def goals(result: dict, workers: int) -> dict:
    """Each of issue 24's goals beside its figure (they are stated for 260k clips)."""
    measured = {
        "plan_s": result["plan"]["seconds"], "plan_peak_rss_mb": result["plan"]["peak_rss_mb"],
        "masks_in_process_per_clip_ms": result["masks"]["in_process"]["per_clip_ms"],
        "masks_dask_per_shard_ms": result["masks"][f"workers_{workers}"]["per_shard_ms"],
        "noop_rerun_s": result["noop_rerun"]["seconds"], "status_s": result["status"]["seconds"],
        "manifests_s": result["manifests"]["seconds"], "report_s": result["report"]["seconds"]}
    return {name: {"goal": goal, "measured": measured[name],
                   "met": None if measured[name] is None else measured[name] <= goal} for name, goal in GOALS.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench scale", description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=KINETICS400_CLIPS, help="clips listed (Kinetics-400's count)")
    parser.add_argument("--overhead-clips", type=int, default=20_000,
                        help="clips the overhead, manifests and report runs cover (0: every clip)")
    parser.add_argument("--real", type=int, help="clips present as real videos (default: 0.2%% of --clips)")
    parser.add_argument("--frames", type=int, default=4, help="frames of each real clip (64x48)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the listing")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers of the overhead runs")
    parser.add_argument("--selfie-model", type=Path, default=Path("models/selfie_segmentation.tflite"))
    parser.add_argument("--out", type=Path, default=Path("bench-scale"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    options = ScaleOptions(out=args.out.absolute(), overhead_clips=args.overhead_clips, workers=args.workers,
                           selfie_model=args.selfie_model.absolute(),
                           listing=ListingSpec(clips=args.clips, real=args.real, frames=args.frames, seed=args.seed))
    command = shlex.join(["python", "-m", "pipeline.bench", "scale", *(sys.argv[2:] if argv is None else argv)])
    result = {"command": command, **bench_scale(options)}
    text = json.dumps(result, indent=2)
    (options.out / "bench_scale.json").write_text(text + "\n")
    print(text)
    return result
