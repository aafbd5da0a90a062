"""`python -m pipeline.bench hostcost`: where the device path's host time goes, batch by batch, and how fast the
host is. For each frame size: YOLO's device path (`DeviceYolo`) on a bench clip, with seeded lively weights and
`conf` set for about 8 instances a frame on frames spread over the clip (as `make bench`; the instances found are
reported over the measured batches and batch by batch), timed as `segment()` in its two halves: `launch`
(frames to the device, decoded as the stage decodes them, pinned on CUDA; the network; detection queued) and
`result` (NMS settled, masks assembled and encoded, on the host). Per batch: milliseconds of each, of the bare
forward, host waits (the path's own count), kernel launches, synchronising CUDA calls and kernels' busy time
(torch profiler), and the functions that take the most host time of their own (cProfile). The host: its cores
(affinity, cgroup quota), a pure-Python loop and single-threaded decoding per frame, to compare one machine's
host with another's. A figure, never a test.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from pathlib import Path

import torch

from pipeline.atomic import write_json
from pipeline.bench import probe
from pipeline.bench.clips import make_clip
from pipeline.bench.masks_bench import Clock, realistic_spec, spread
from pipeline.decode import DecodeOptions, VideoDecoder
from pipeline.gpu_workers import available_cores
from pipeline.segment import SegmenterSpec
from pipeline.segment.yolo import YoloSegmenter

SYNCING = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaMemcpy2D")
# (the calls that block the host; cudaMemcpyAsync does not, though a copy to pageable memory may)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench hostcost", description=__doc__)
    parser.add_argument("--model", default="yolo11n-seg.yaml", help="weights (.pt) or an architecture (.yaml)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4, help="batches of the clip, each timed in turn")
    parser.add_argument("--sizes", default="340x256,1280x720", help="frame sizes, WxH, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the batches (the best is kept)")
    parser.add_argument("--top", type=int, default=15, help="functions listed by their own host time")
    parser.add_argument("--out", type=Path, default=Path("out/bench-hostcost.json"))
    args = parser.parse_args(argv)
    report = {"model": args.model, "device": args.device, "batch": args.batch, "host": host(), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="hostcost-") as work:  # the clips and weights: never beside --out
        for size in args.sizes.split(","):
            width, height = map(int, size.split("x"))
            report["sizes"][size] = measure(args, width, height, Path(work) / size)
            write_json(args.out, report, sort_keys=False)  # after each size: a timeout keeps what was measured
            print(size, json.dumps(report["sizes"][size]), flush=True)
    return report


def host() -> dict:
    """The cores this process may use, the cgroup's CPU quota, and a pure-Python loop's milliseconds."""
    try:
        quota = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except OSError:
        quota = None
    started = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i
    return {"cpu_count": os.cpu_count(), "affinity": available_cores(),
            "cgroup_cpu_max": " ".join(quota) if quota else None,
            "python_loop_2e6_ms": round(1e3 * (time.perf_counter() - started), 1)}


def measure(args: argparse.Namespace, width: int, height: int, folder: Path) -> dict:
    clip = make_clip(folder, 0, args.batch * args.batches, width, height)
    decode = DecodeOptions(batch=args.batch)
    started = time.perf_counter()
    batches = list(VideoDecoder(clip, decode))
    decode_ms = 1e3 * (time.perf_counter() - started) / sum(len(b) for b in batches)
    # made lively and its conf set on frames spread over the whole clip, as many as a batch holds, not on its first
    # batch: set there, a 340×256 clip's batches found 34 instances a frame, not 8 (docs/PERFORMANCE.md)
    calibration = spread([clip], decode, args.batch * args.batches, len(batches[0]))
    spec = realistic_spec(SegmenterSpec(model=args.model, device=args.device, inference="device"), calibration,
                          folder)
    segmenter = YoloSegmenter(spec)
    memory = segmenter.frame_memory(lambda frame_bytes: 1 << 40)  # on CUDA pinned, as the stage decodes them
    if memory is not None:
        try:
            batches = list(VideoDecoder(clip, decode, memory=memory))
        finally:
            memory.close()  # its budget no longer holds for the process's pinned frames (these stay pinned)
    device = segmenter.on_device
    for b in batches[:2]:
        segmenter.segment(b)  # warm-up: kernels, allocator, rooms
    best = {"launch": float("inf"), "result": float("inf"), "forward": float("inf")}
    inputs = [device.prepare(b.frames, b.capacity)[0] for b in batches]
    before = probe.counters(segmenter)
    for _ in range(args.repeat):
        launch = result = forward = 0.0
        for b in batches:
            with Clock(args.device) as whole:  # from the device idle to its work done
                started = time.perf_counter()
                launched = segmenter.launch([b], capacity=b.capacity)
                queued = time.perf_counter() - started  # the host's own time, no wait at the end
                launched.result()
            launch, result = launch + queued, result + whole.seconds - queued
        with Clock(args.device) as clock:
            for x in inputs:
                device.forward(x)
        forward = clock.seconds
        for name, seconds in (("launch", launch), ("result", result), ("forward", forward)):
            best[name] = min(best[name], seconds)
    per_batch = {f"{name}_ms": round(1e3 * seconds / len(batches), 2) for name, seconds in best.items()}
    return {"frames": sum(len(b) for b in batches), **instances(segmenter, batches),
            **per_batch, "host_waits_per_batch": probe.waits_per_batch(before, probe.counters(segmenter)),
            "decode_ms_per_frame": round(decode_ms, 3), **profiled(segmenter, batches, args), "top": top(
                segmenter, batches, args.top)}


def instances(segmenter: YoloSegmenter, batches: list) -> dict:
    """Instances a frame over the measured batches, and in each batch (what the host's work grows with), and the
    bytes of a mask's RLE string (about one to two a run length: what pycocotools' strings cost grows with)."""
    found = [segmenter.segment(b) for b in batches]
    strings = [len(string) for batch in found for masks in batch for string in masks.rle()]
    return {"instances_per_frame": round(len(strings) / sum(map(len, batches)), 2),
            "instances_per_frame_by_batch": [round(sum(len(masks) for masks in batch) / len(batch), 2)
                                             for batch in found],
            "rle_bytes_per_mask": round(sum(strings) / len(strings), 1) if strings else None}


def profiled(segmenter: YoloSegmenter, batches: list, args: argparse.Namespace) -> dict:
    """Kernel launches, synchronising CUDA calls and kernels' busy time per batch (torch profiler), CUDA only."""
    if not args.device.startswith("cuda"):
        return {}
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            with Clock(args.device):  # waits for the batches' kernels
                for b in batches:
                    segmenter.segment(b)
    except Exception as exc:  # noqa: BLE001 - reported, as the measurement's result
        return {"profiler_error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    n = len(batches)
    launches = sync_calls = 0
    for event in prof.key_averages():
        if event.key in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"):
            launches += event.count
        elif event.key in SYNCING:
            sync_calls += event.count
    return {"kernel_launches_per_batch": round(launches / n, 1), "sync_calls_per_batch": round(sync_calls / n, 1),
            # the union of kernel intervals, as the masks bench measures it (probe.trace_busy)
            "kernel_busy_ms_per_batch": round(1e3 * probe.trace_busy(prof) / n, 2)}


def top(segmenter: YoloSegmenter, batches: list, count: int) -> list[dict]:
    """The functions with the most host time of their own over the batches: calls and milliseconds per batch."""
    profiler = cProfile.Profile()
    profiler.enable()
    for b in batches:
        segmenter.segment(b)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    rows = sorted(stats.items(), key=lambda item: -item[1][2])[:count]
    return [{"function": f"{Path(file).name}:{line}({name})", "calls_per_batch": round(calls / len(batches), 1),
             "own_ms_per_batch": round(1e3 * own / len(batches), 3),
             "total_ms_per_batch": round(1e3 * total / len(batches), 3)}
            for (file, line, name), (_, calls, own, total, _) in rows]

