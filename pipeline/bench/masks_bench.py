"""`make bench`, the masks figures at one source size: the masks stage where a real run puts it (placement.py),
and in this process the segmenter (`segment()`, and ultralytics' `predict()` for reference), the bare network
forward and a bare decode, over the same clips.

The frames `segment()` and the forward are timed on are decoded beforehand, at most `hold_bytes` of them (26 GB
would be every frame of 32 × 300 at 720p); they are gone over again until as many frames as the stage's were
timed. `predict()` (full-frame masks to the host) is timed once on the first PREDICT_FRAMES of them. A model built from a .yaml is made lively (random weights that
depend on the image, `lively`) and saved as a checkpoint, which the stage's process loads too: the same weights
on both sides.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.bench import probe
from pipeline.bench.budget import another_round, clip_plan
from pipeline.bench.clips import make_clips, write_listing
from pipeline.bench.placement import StagePlace
from pipeline.bench.replay import replay_spec
from pipeline.decode import DecodeOptions, FrameBatch, VideoDecoder
from pipeline.masks import MasksConfig, run_masks
from pipeline.masks.runner import worker_spec
from pipeline.masks.stage import auto_decoders
from pipeline.segment import SegmenterSpec, load_segmenter, resolve_weights

log = logging.getLogger(__name__)

PREDICT_FRAMES = 256
CALIBRATION_FRAMES = 32  # a .yaml model's calibration frames, at least (a batch's where it holds more): a random
# model's count a frame swings with the image (0 to 60 along one pan at 340x256), so that on 8 frames, 4 a clip,
# the stage found 3.8 a frame where 8 were asked for (docs/PERFORMANCE.md, thirteenth session)
PANS = 2  # the stage's clips repeat the two calibrated camera moves: other moves of the same photos found 1 a frame
SEARCH_LOGIT = 4.0  # where a lively model's `instances`-th best logit a frame may lie at most: conf near 0.982,
# far from where fp16 scores run out (their steps near 1 are 2^-11; sigmoid(x) rounds to 1 from x = 8.32) and
# from the top of realistic_spec's 12-step search (1 - 2^-12, sigmoid(8.32) too)


def lively(model, frames: np.ndarray, *, masks_fill: bool = False) -> None:
    """Make a randomly initialised ultralytics model (built from a .yaml) behave like a trained one in the ways
    that cost time and that equivalence tests need: outputs that depend on the image, scores spread over
    (0, 1), masks of both signs. Its batch norms are calibrated on `frames` (random weights otherwise fade the
    signal out within a few layers: every score the same, every mask the same), and the class logits are
    widened; with `masks_fill`, masks cover most of their box (closer to real masks' cost than noise). Call
    before the model is fused."""
    import torch
    import torch.nn.functional as F

    height, width = (32 * math.ceil(side / 32) for side in frames.shape[1:3])
    images = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, size=(height, width))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # running statistics = this batch's
    model.train()
    with torch.no_grad():
        model(images)
        for branch in model.model[-1].cv3:  # class logits: spread, centred so that few pass a 0.5 threshold
            branch[-1].weight.mul_(2)
            branch[-1].bias.fill_(-5)
        if masks_fill:
            for branch in model.model[-1].cv4:  # mask coefficients: masks fill most of their box, ragged edges
                branch[-1].weight.mul_(0.3)
                branch[-1].bias.fill_(2.0)
    model.eval()


def within_search(model, frames: np.ndarray, *, instances: float, imgsz: int | None = None) -> float:
    """Scale a lively model's class logits so that, at the model's input size for `frames`, the best logits of
    about `instances` anchors a frame (over all of `frames`) pass SEARCH_LOGIT, no more; return the scale (1
    where none was needed). On large frames a lively model's best logits run far past where a score can be told
    from 1 (at 1280×720, 57 anchors a frame past 8.32): no `conf` keeps 8 a frame, and the bench's search for
    them ended at 40 on the H200 (conf 0.99976, its top)."""
    import torch

    from pipeline.segment.model_input import Geometry, input_size, letterbox

    height, width = frames.shape[1:3]
    geometry = Geometry.of(height, width, input_size(height, width, imgsz), int(max(model.stride)))
    images = letterbox(torch.from_numpy(frames), geometry, torch.float32)  # as the device path feeds the model
    convs = [branch[-1] for branch in model.model[-1].cv3]  # each scale's class logits
    caught = []
    hooks = [conv.register_forward_hook(lambda module, inputs, output: caught.append(output)) for conv in convs]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    best = torch.cat([logits.flatten(2) for logits in caught], dim=2).amax(1)  # (N, anchors): each one's best class
    top = float(best.flatten().topk(max(1, round(instances * len(frames)))).values[-1])
    if top <= SEARCH_LOGIT:
        return 1.0
    with torch.no_grad():
        for conv in convs:
            conv.weight.mul_(SEARCH_LOGIT / top)
            conv.bias.mul_(SEARCH_LOGIT / top)
    return SEARCH_LOGIT / top


def realistic_spec(spec: SegmenterSpec, frames: FrameBatch, folder: Path, *, instances: float = 8,
                   seed: int = 0) -> SegmenterSpec:
    """For a .yaml model: seeded random weights made lively on `frames`, saved as folder/lively-<name>.pt (fp32),
    and the spec naming that file, with `conf` set (by bisection, on `frames`) so that about `instances`
    instances per frame survive NMS and max_det, as a trained model finds on a busy frame (a random model's boxes
    overlap too little for NMS to thin them as it does a trained model's)."""
    import torch

    from pipeline.segment.yolo import YoloSegmenter

    torch.manual_seed(seed)
    found = YoloSegmenter(dataclasses.replace(spec, conf=0.0))  # not warmed up: the device path copies it after
    lively(found.model.model, frames.frames, masks_fill=True)
    within_search(found.model.model, frames.frames, instances=instances, imgsz=spec.imgsz)
    path = Path(folder).absolute() / f"lively-{Path(spec.model).stem}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": copy.deepcopy(found.model.model).float(), "ema": None, "train_args": {}}, path)
    on_device = found.on_device
    low, high = 0.0, 1.0  # instances per frame fall as conf rises
    for _ in range(12):
        on_device.conf = (low + high) / 2
        kept = np.mean([len(masks) for masks in on_device(frames.frames, frames.height, frames.width)])
        low, high = (on_device.conf, high) if kept >= instances else (low, on_device.conf)
    return dataclasses.replace(spec, model=str(path), conf=low)


class Clock:
    """Wall time of a block, waiting for the GPU's queued work at both ends."""

    def __init__(self, device: str) -> None:
        self.device, self.cuda = device, device.startswith("cuda")
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)  # its GPU (cuda:N), not the current one

    def __enter__(self) -> "Clock":
        self._sync()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._started


def stored_bytes(run_dir: Path) -> int:
    """Bytes of a run's mask shards (the RLE tables, not the clip status tables)."""
    return sum(p.stat().st_size for p in run_dir.glob("*.parquet") if not p.name.endswith(".clips.parquet"))


def first_shard(run_dir: Path) -> Path:
    """A run's first mask shard (its RLE table)."""
    return min(p for p in run_dir.glob("*.parquet") if not p.name.endswith(".clips.parquet"))


def host_side(config: MasksConfig, frames: int) -> dict[str, float]:
    """The stage run once with `config` (a replayed segmenter's, a fresh run folder), over the `frames` frames the
    stage ran: its frames/s, wall and in its shards."""
    with Clock("cpu") as clock:
        summary = run_masks(config, progress=False)
    if summary.frames != frames:
        raise RuntimeError(f"the replayed stage ran {summary.frames} frames, the stage {frames}")
    in_shards = shards_seconds(summary)
    return {"host_frames_per_s": frames / clock.seconds,
            "host_in_shards_frames_per_s": frames / in_shards if in_shards else None}


def shards_seconds(summary) -> float:
    """A run's shards' own seconds (one worker, shards in turn): without the run's start and the gaps between
    shards; 0 where every shard was found done."""
    return sum(worker["seconds"] for worker in summary.workers.values())


def shard_segmenter(run_dir: Path) -> dict[str, str | int]:
    """What the stage's segmenter recorded in its first mask shard (classes as a count)."""
    shard = first_shard(run_dir)
    meta = {k.decode().removeprefix("segmenter."): v.decode() for k, v in (pq.read_schema(shard).metadata or {}).items()
            if k.startswith(b"segmenter.")}
    if "classes" in meta:
        meta["classes"] = len(meta["classes"].split(","))
    return meta


def calibrated(spec: SegmenterSpec, moves: list[Path], decode: DecodeOptions, frames: int, folder: Path, *,
               instances: float) -> SegmenterSpec:
    """A .yaml model made lively (`realistic_spec`) on frames spread over one clip of each camera move, their
    whole pans (`frames` each), at least CALIBRATION_FRAMES of them; any other spec as it is."""
    if not spec.model.endswith((".yaml", ".yml")):
        return spec
    calibration = spread(moves, decode, frames, max(decode.batch, CALIBRATION_FRAMES))
    return realistic_spec(spec, calibration, folder, instances=instances)


def spread(sources: list[Path], decode: DecodeOptions, frames: int, count: int) -> FrameBatch:
    """About `count` frames spread evenly over these clips of `frames` frames each, as one batch."""
    keep = set(np.linspace(0, frames - 1, max(1, count // len(sources))).astype(int).tolist())
    picked, shape = [], None
    for path in sources:
        for batch in VideoDecoder(path, decode):
            picked += [frame for position, frame in zip(batch.positions, batch.frames) if position in keep]
            shape = batch.height, batch.width
    return FrameBatch(frames=np.stack(picked), indices=np.arange(len(picked)), times=np.zeros(len(picked)),
                      height=shape[0], width=shape[1])


def held_batches(sources: list[Path], decode: DecodeOptions, hold_bytes: int) -> list[FrameBatch]:
    """Decoded batches from the start of `sources`, at most `hold_bytes` of frames (at least one batch)."""
    held, size = [], 0
    for path in sources:
        for batch in VideoDecoder(path, decode):
            if held and size + batch.frames.nbytes > hold_bytes:
                return held
            held.append(batch)
            size += batch.frames.nbytes
    return held


def bench_size(folder: Path, spec: SegmenterSpec, place: StagePlace, *, width: int, height: int, clips: int,
               frames: int, batch: int, repeat: int, seconds: float, decoders: int = 0,
               hold_bytes: int = 2 << 30, instances: float = 8) -> dict:
    """The masks figures for `clips` (fewer where `seconds` would not fit them) clips of `frames` frames of
    width × height (past the first two, shorter ones where too few would fit for the stage's decoders:
    `clip_plan`), repeating the first two's camera moves, on which a .yaml model is calibrated: best of up to
    `repeat` interleaved rounds, a round begun only while one fits."""
    import torch

    started = time.perf_counter()
    deadline = started + seconds
    root, decode, device = folder / "data", DecodeOptions(batch=batch), spec.device
    early = make_clips(root, range(min(PANS, clips)), frames, width, height, pans=PANS)  # both photos
    first_clip = early[0]
    make_per_frame = (time.perf_counter() - started) / (frames * len(early))
    first = next(iter(VideoDecoder(first_clip, decode)))
    spec = resolve_weights(spec)  # as the stage names it: one model for both (a relative .pt made absolute)
    spec = calibrated(spec, early, decode, frames, folder, instances=instances)
    # on a CPU, the thread count the stage runs on and keys its run by: one model for the stage and the figures here
    spec = worker_spec(MasksConfig(dataset="kinetics400", segmenter=spec, execution=place.execution))
    segmenter = load_segmenter(spec)
    on_device = segmenter.on_device if spec.inference == "device" else None
    segmenter.segment(first)  # warm-up: lazy setup, kernels, allocator
    segmenter.predict(first)
    with Clock(device) as clock:
        segmenter.segment(first)
    segment_per_frame = clock.seconds / len(first)
    with Clock("cpu") as clock:
        first_frames = sum(len(b) for b in VideoDecoder(first_clip, decode))
    decode_per_frame = clock.seconds / first_frames

    stage_spec = place.stage_spec(spec)
    if resolve_weights(stage_spec) != stage_spec:  # run_masks resolves it: a second model, not the one measured
        raise RuntimeError(f"the stage would load {resolve_weights(stage_spec).model!r}, not {spec.model!r}")

    def config(data: Path, out: Path, segmenter: SegmenterSpec = stage_spec) -> MasksConfig:
        return MasksConfig(dataset="kinetics400", root=data, out=out, segmenter=segmenter, decode=decode,
                           decoders=decoders, execution=place.execution, shard_size=8, overwrite=True)

    warm = folder / "warm"  # the stage on the first clip alone: the stage's process loads its model, warms up
    (warm / "train").mkdir(parents=True, exist_ok=True)
    os.link(first_clip, warm / "train" / first_clip.name)
    write_listing(warm, [warm / "train" / first_clip.name])
    for _ in range(2 if place.client is not None else 1):  # a worker's first run loads the model
        with Clock("cpu") as clock:
            run_masks(config(warm, folder / "warm-run"), progress=False)
    stage_per_frame = clock.seconds / first_frames  # an upper bound: a run's fixed costs spread over one clip
    log.info("%dx%d: first clip made in %.1f s; per frame: segment %.2f ms, decode %.2f ms, stage at most %.2f ms; "
             "%.0f s of %.0f s left", width, height, make_per_frame * frames, 1e3 * segment_per_frame,
             1e3 * decode_per_frame, 1e3 * stage_per_frame, deadline - time.perf_counter(), seconds)

    # the stage's decoders as its worker counts them (a GPU worker's share of the cores is set where it starts)
    stage_decoders = decoders or place.call(auto_decoders, stage_spec.device)
    count, clip_frames = clip_plan(seconds=deadline - time.perf_counter(), frames_per_clip=frames,
                                   make_per_frame=make_per_frame, most=clips, at_least=stage_decoders,
                                   shortest=2 * batch, made=len(early),
                                   round_per_frame=2 * stage_per_frame + 2 * segment_per_frame + decode_per_frame)
    sources = [*early, *make_clips(root, range(len(early), count), clip_frames, width, height, pans=PANS)][:count]
    write_listing(root, sources)
    held = held_batches(sources, decode, hold_bytes)
    inputs = [on_device.prepare(b.frames)[0] for b in held] if on_device is not None else []
    held_frames = sum(len(b) for b in held)
    for_predict = held[:max(1, PREDICT_FRAMES // batch)]
    log.info("%dx%d: %d clips (%d of %d frames, the rest of %d) for %d decoders, %d frames held", width, height,
             len(sources), min(len(early), len(sources)), frames, clip_frames, stage_decoders, held_frames)
    best = dict.fromkeys(("stage", "stage_in_shards", "segment", "predict", "forward", "decode"), float("inf"))
    rounds: list[float] = []
    waits: dict[str, float | None] = {}
    replay = 0.0  # seconds kept back for the host figure's run after the rounds (at most a stage round's)
    # interleaved rounds: a slow spell hits all alike
    while another_round(done=rounds, repeat=repeat, deadline=deadline - replay):
        round_started = time.perf_counter()
        place.call(probe.begin, stage_spec, profile=not rounds)
        with probe.NvmlSampler(place.gpu) as nvml, Clock(device) as stage:
            summary = run_masks(config(root, folder / "run"), progress=False)
        window = place.call(probe.end, stage_spec)
        if not rounds:  # the profiled round: its own wall time is what the kernels' time is a share of
            profiled = {"stage_frames_per_s": summary.frames / stage.seconds, "nvml": nvml.mean, **window}
        if stage.seconds < best["stage"]:
            stage_window = window
        passes = max(1, math.ceil(summary.frames / held_frames))
        before = probe.counters(segmenter)
        with Clock(device) as segment:
            for _ in range(passes):
                for b in held:
                    segmenter.segment(b)
        waits["segment"] = probe.waits_per_batch(before, probe.counters(segmenter))
        with Clock(device) as predict:
            for b in for_predict:
                segmenter.predict(b)
        with Clock(device) as forward:
            for _ in range(passes):
                for x in inputs:
                    on_device.forward(x)
        with Clock("cpu") as decoding:
            decoded = sum(len(b) for path in sources for b in VideoDecoder(path, decode))
        assert summary.frames == decoded, (summary.frames, decoded)
        in_shards = shards_seconds(summary)
        if in_shards:  # (none where every shard was found done)
            best["stage_in_shards"] = min(best["stage_in_shards"], in_shards / summary.frames)
        for name, clock, n in (("stage", stage, summary.frames), ("segment", segment, passes * held_frames),
                               ("predict", predict, sum(len(b) for b in for_predict)),
                               ("forward", forward, passes * held_frames),
                               ("decode", decoding, decoded)):
            best[name] = min(best[name], clock.seconds / n)  # seconds per frame
        replay = best["stage"] * summary.frames
        rounds.append(time.perf_counter() - round_started)
        log.info("%dx%d: round %d in %.1f s, stage %.1f frames/s", width, height, len(rounds), rounds[-1],
                 summary.frames / stage.seconds)
    fps = {name: 1 / per_frame if inputs or name != "forward" else None for name, per_frame in best.items()}
    run_dir = Path(summary.output)
    host = host_side(config(root, folder / "replay-run", replay_spec(stage_spec, first_shard(run_dir))),
                     summary.frames)
    busy = profiled["gpu_kernel_busy_s"]
    return {
        "clips": len(sources), "frames": summary.frames, "rounds": len(rounds),
        "seconds": round(time.perf_counter() - started, 1),
        "conf": spec.conf,
        "segmenter": shard_segmenter(run_dir),  # as the stage's process ran it
        "stage_where": place.where, "stage_workers": sorted(summary.workers),
        "decoders": decoders or None,  # None: the stage's default (1 on CPU)
        # the stage's clips decoded at once, and the frames of each clip past the first two (which have
        # frames_per_clip): fewer where too few full-length clips would fit for its decoders (`clip_plan`; the
        # same camera move, faster, and the run ends on the two long clips)
        "stage_decoders": stage_decoders, "clip_frames": clip_frames,
        "frames_in_flight_max": summary.totals.get("frames_in_flight_max"),
        "pieces_unpinned": summary.totals.get("pieces_unpinned", 0),  # CUDA: decoded outside pinned memory, staged
        "instances_per_frame": round(summary.totals["instances"] / max(1, summary.frames), 2),
        "input_shape": list(inputs[0].shape) if inputs else None,
        "held_frames": held_frames, "segment_frames": passes * held_frames,
        **{f"{name}_frames_per_s": round(value, 1) if value else None for name, value in fps.items()},
        "stage_vs_forward": round(fps["stage"] / fps["forward"], 3) if fps["forward"] else None,
        # the stage in its shards' own time (one worker, shards in turn): without the run's start (listing,
        # planning, handing shards out) and the gaps between shards, so at most what a long run reaches
        "stage_in_shards_vs_forward": (round(fps["stage_in_shards"] / fps["forward"], 3)
                                       if fps["forward"] and fps["stage_in_shards"] else None),
        "stage_vs_segment": round(fps["stage"] / fps["segment"], 3),
        # the stage with the masks it made handed back in place of the model (bench/replay.py), where the stage
        # ran, one run: decode, packing, tracking, tables and writing without the segmenter's own host work, an
        # upper bound on what the host side keeps up with
        **{name: round(value, 1) if value else None for name, value in host.items()},
        "stage_vs_host": round(fps["stage"] / host["host_frames_per_s"], 3),
        "segment_vs_predict": round(fps["segment"] / fps["predict"], 3),
        # CUDA: kernel-busy seconds (torch profiler, union of kernel intervals) of the first stage round, and their
        # share of that round's wall time; NVML's mean utilisation over the same round (device-wide)
        "gpu_kernel_busy_s": busy,
        "gpu_kernel_busy": round(busy * profiled["stage_frames_per_s"] / summary.frames, 3) if busy else None,
        "profiled_stage_frames_per_s": round(profiled["stage_frames_per_s"], 1),
        "gpu_util_nvml": profiled["nvml"],
        "profiler_error": profiled["profiler_error"],
        "host_waits_per_batch": {"stage": stage_window["host_waits_per_batch"], "segment": waits["segment"]},
        "stage_pid": stage_window["pid"],
        "stage_peak_host_bytes": stage_window["peak_host_bytes"],
        "stage_peak_host_scope": stage_window["peak_host_scope"],
        "stage_peak_gpu_allocated_bytes": stage_window["peak_gpu_allocated_bytes"],
        "stage_peak_gpu_reserved_bytes": stage_window["peak_gpu_reserved_bytes"],
        "bench_peak_host_bytes": probe.peak_rss_bytes(),
        "bench_held_gpu_bytes": torch.cuda.memory_allocated(device) if device.startswith("cuda") else None,
        "bytes_per_instance_frame": round(stored_bytes(run_dir) / max(1, summary.totals["instances"]), 1),
    }
