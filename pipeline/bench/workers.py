"""`python -m pipeline.bench workers`: the CPU masks stage as `make masks` places it, in `--workers` local Dask
workers (each on its share of the cores, as a run keys it), against the bare forward of the same model in every
worker at once. The bench's own stage figure runs in its process on every core; a real CPU run does not, and what
slows only workers (Dask's trim setting: docs/PERFORMANCE.md, fifteenth session) shows only here.

Both rates are in the workers' own time and added over them: the stage's frames over the seconds its shards took
in each worker (the run's start, and the tail where one worker waits for another, which a long run does not
have, are left out; a worker that runs that tail alone runs it faster), and the forward's frames over its
seconds, all workers at once, on the first clip's batches as the stage cuts them (unpadded, as the bench's
forward). The clips are picked so that each is a shard of its own (shards are placed by a hash of the clip's id),
so that the workers share them evenly and only the last may run alone. Stage and forward alternate for
`--rounds`; the best of each counts, as in the bench.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import shutil
import time
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.bench.clips import clip_path, make_clips, write_listing
from pipeline.bench.masks_bench import PANS, calibrated
from pipeline.decode import DecodeOptions, VideoDecoder
from pipeline.engine.layout import Layout, new_buckets
from pipeline.executor import ExecOptions, dask_client
from pipeline.masks import MasksConfig, run_masks
from pipeline.masks.runner import worker_spec
from pipeline.segment import SegmenterSpec, load_segmenter, resolve_weights

log = logging.getLogger(__name__)


def one_clip_a_shard(clips: int) -> list[int]:
    """Indexes of `clips` bench clips (`clip_path`) that a new run with shards of one clip lays out one to a shard,
    half of them of each camera move (`PANS`: the index's parity), as the bench's own clips."""
    layout = Layout(shard_size=1, buckets=new_buckets({"train": clips}, 1))
    wanted = {move: len(range(move, clips, PANS)) for move in range(PANS)}
    found, index = {}, 0
    while len(found) < clips:
        (shard,) = layout.assign([index], group=lambda _: "train", key=lambda i: clip_path(Path(), i).stem)
        if shard not in found and wanted[index % PANS]:
            found[shard] = index
            wanted[index % PANS] -= 1
        index += 1
    return sorted(found.values())


def stage_rate(done: dict) -> float:
    """A round's stage frames/s: each worker's frames over its shards' seconds, added."""
    return sum(worker["frames_per_s"] for worker in done["workers"].values())


def load(spec: SegmenterSpec) -> None:
    """The stage's model loaded in this worker (cached for its shards), so that no timed shard loads it."""
    load_segmenter(spec)


def bare_forward(spec: SegmenterSpec, clip: Path, decode: DecodeOptions, seconds: float) -> float:
    """Frames/s of the stage's model (as this worker loaded it) on the clip's batches, over about `seconds`."""
    import torch

    segmenter = load_segmenter(spec)
    if spec.threads:  # as the stage sets it for each shard
        torch.set_num_threads(spec.threads)
    device = segmenter.on_device
    inputs = [device.prepare(batch.frames)[0] for batch in VideoDecoder(clip, decode)]
    device.forward(inputs[0])  # warm-up
    frames, started = 0, time.perf_counter()
    batches = itertools.cycle(inputs)
    while time.perf_counter() - started < seconds or not frames:  # checked each batch: the workers end together
        x = next(batches)
        device.forward(x)
        frames += len(x)
    return frames / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench workers", description=__doc__)
    parser.add_argument("--model", default="yolo11n-seg.yaml", help="weights (.pt) or an architecture (.yaml)")
    parser.add_argument("--size", default="340x256", help="WxH")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=60, help="frames per clip")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--instances", type=float, default=8, help="a .yaml model's instances per frame")
    parser.add_argument("--workers", type=int, default=2, help="local workers, as WORKERS (make masks: 2)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="the forward's time in each round")
    parser.add_argument("--work", type=Path, default=Path("bench/workers"),
                        help="its clips and its run (the run folder removed first)")
    parser.add_argument("--out", type=Path, default=Path("out/bench-workers.json"))
    args = parser.parse_args(argv)
    if args.clips < max(PANS, args.workers):
        parser.error(f"--clips {args.clips}: at least {max(PANS, args.workers)} (each camera move, and a shard "
                     "for each worker)")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pipeline.bench").setLevel(logging.INFO)  # each round's figures, on stderr
    width, height = (int(n) for n in args.size.split("x"))
    decode, root = DecodeOptions(batch=args.batch), (args.work / f"{width}x{height}").absolute()
    shutil.rmtree(root / "run", ignore_errors=True)  # a layout recorded for other clips would not be one to a shard
    indexes = one_clip_a_shard(args.clips)
    sources = make_clips(root / "data", indexes, args.frames, width, height, pans=PANS)
    write_listing(root / "data", sources)
    spec = resolve_weights(SegmenterSpec(model=args.model, device="cpu"))
    moves = [next(path for path, index in zip(sources, indexes) if index % PANS == move) for move in range(PANS)]
    spec = resolve_weights(calibrated(spec, moves, decode, args.frames, root, instances=args.instances))
    config = MasksConfig(dataset="kinetics400", root=root / "data", out=root / "run", segmenter=spec, decode=decode,
                         execution=ExecOptions(workers=args.workers), shard_size=1, overwrite=True)
    spec = worker_spec(config)  # each worker's share of the cores, as `make masks` keys it
    if resolve_weights(spec) != spec:  # run_masks resolves it: a second model, not the one timed here
        raise RuntimeError(f"the stage would load {resolve_weights(spec).model!r}, not {spec.model!r}")
    rounds = []
    with dask_client(config.execution) as client:
        config = dataclasses.replace(config, segmenter=spec, execution=ExecOptions(scheduler=client.scheduler.address))
        pids = sorted(client.run(os.getpid).values())
        client.run(load, spec)  # every worker, whether or not the warm-up run gives it a shard
        run_masks(config, progress=False)  # warm-up: each worker's first shards
        for _ in range(args.rounds):
            summary = run_masks(config, progress=False)
            if len(summary.workers) != args.workers:
                raise RuntimeError(f"{len(summary.workers)} of {args.workers} workers ran the stage's shards: "
                                   "give it more --clips")
            if any(w["frames"] != args.frames * w["shards"] for w in summary.workers.values()):
                raise RuntimeError(f"{root / 'run'}: shards of more than one clip ({summary.workers})")
            futures = [client.submit(bare_forward, spec, sources[0], decode, args.seconds, pure=False,
                                     workers=[address]) for address in client.scheduler_info()["workers"]]
            forward = [round(future.result(), 1) for future in futures]
            rounds.append({"workers": summary.workers, "forward": forward,
                           "instances_per_frame": round(summary.totals["instances"] / max(1, summary.frames), 2)})
            log.info("%d workers: stage %.1f, forward %.1f frames/s", args.workers, stage_rate(rounds[-1]),
                     sum(forward))
    best_stage = round(max(stage_rate(r) for r in rounds), 1)
    best_forward = round(max(sum(r["forward"]) for r in rounds), 1)
    report = {"model": args.model, "size": args.size, "clips": args.clips, "frames": args.frames,
              "batch": args.batch, "workers": args.workers, "worker_pids": pids, "threads": spec.threads,
              "conf": spec.conf, "rounds": rounds, "stage_frames_per_s": best_stage,
              "forward_frames_per_s": best_forward, "stage_vs_forward": round(best_stage / best_forward, 3)}
    write_json(args.out, report)
    print(f"stage {best_stage:.1f} frames/s in {args.workers} workers, their forward {best_forward:.1f}: "
          f"{best_stage / best_forward:.3f}")
    return report
