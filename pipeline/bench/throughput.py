"""Benchmark (not a test): the masks and render stages against their bare baselines, printed as one JSON object.

    python -m pipeline.bench [--device auto] [--clips N] [--frames N] [--sizes 340x256,1280x720]
                             [--model yolo11n-seg.yaml] [--inference device|predict] [--repeat 3]

Generates photo pan/zoom clips at each size (lossy H.264, 25 fps; 32×300 frames on CUDA, 4×60 on CPU by
default) and times, in this process, after one warm-up batch, the best of `--repeat` interleaved rounds:
- stage: `run_masks` over the clips (decode, YOLO-seg, RLE, tracking, Parquet), frames/s;
- segment: the segmenter alone on the same frames, decoded beforehand (letterbox, forward, NMS, masks);
- predict: the same through ultralytics' predict(), the reference path;
- forward: the network alone on the same frames, letterboxed and on the device beforehand;
- decode: PyAV decoding alone;
- on CUDA, the share of the stage's wall time spent in the network's forward (CUDA events), and peak memory;
- render (first size): variant `human_only` (colour fills, as `bg`, which selfie masks are refused for: they hold
  no objects) against a bare PyAV decode + x264 encode of the same clips, from masks of the real pretrained selfie
  model (true person shapes), which also give the storage cost of real masks;
- loader (first size, the same masks): MaskedClips samples/s (16-frame windows, 224² crops, variants composed
  on the fly) against plain decoding of the same windows.
A model built from a .yaml has random weights: seeded, its batch norms calibrated on the clip's frames so that
its outputs depend on them (`lively`), and its score threshold set so that about 100 boxes per frame enter
NMS, which keeps `max_det` of them: postprocessing about as busy as a trained model's.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import shutil
import time
from contextlib import closing
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline.datasets.sample import asset, pan_zoom, write_video
from pipeline.decode import DecodeOptions, FrameBatch, VideoDecoder
from pipeline.executor import ExecOptions
from pipeline.masks import MasksConfig, run_masks
from pipeline.render import RenderConfig, run_render
from pipeline.render.variants import resolve
from pipeline.segment import SegmenterSpec, load_segmenter

FPS = 25


def make_clips(root: Path, clips: int, frames: int, width: int = 340, height: int = 256) -> list[Path]:
    """Kinetics-layout clips panning over the two ultralytics photos with people."""
    lines, paths = ["label,youtube_id,time_start,time_end,split"], []
    for i in range(clips):
        photo_name = ("bus.jpg", "zidane.jpg")[i % 2]
        photo = cv2.cvtColor(cv2.imread(str(asset(photo_name))), cv2.COLOR_BGR2RGB)
        youtube_id = f"bench{i:05d}_"
        paths.append(root / "train" / f"{youtube_id}_000000_000010.mp4")
        write_video(paths[-1], pan_zoom(photo, width, height, frames, seed=i), FPS)
        lines.append(f"{photo_name.removesuffix('.jpg')},{youtube_id},0,10,train")
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "train.csv").write_text("\n".join(lines) + "\n")
    return paths


def bare_decode_encode(sources: list[Path], dest: Path, options) -> int:
    """PyAV decode → x264 encode of every frame, touching no pixels, with the render stage's x264 settings."""
    from pipeline.render.encode import X264_PARAMS

    frames = 0
    dest.mkdir(parents=True, exist_ok=True)
    codec_options = {"crf": str(options.crf), "preset": options.preset, "x264-params": X264_PARAMS}
    for path in sources:
        with av.open(str(path)) as src, av.open(str(dest / path.name), "w") as dst:
            stream = src.streams.video[0]
            out = dst.add_stream("libx264", rate=Fraction(stream.average_rate), options=codec_options)
            out.width, out.height, out.pix_fmt = stream.width, stream.height, "yuv420p"
            for i, frame in enumerate(src.decode(stream)):
                frame.pts, frame.time_base = i, 1 / Fraction(stream.average_rate)
                dst.mux(out.encode(frame))
                frames += 1
            dst.mux(out.encode())
    return frames


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


def realistic_spec(spec: SegmenterSpec, frames: FrameBatch, *, candidates: int = 100, seed: int = 0) -> SegmenterSpec:
    """For a .yaml model (random weights, seeded, made lively): the spec with `conf` set so that about
    `candidates` boxes per frame pass into NMS, as with a trained model on a busy frame; the segmenter it names
    is cached with that model."""
    import dataclasses

    import torch

    torch.manual_seed(seed)
    probe = load_segmenter(dataclasses.replace(spec, conf=0.0))
    lively(probe.model.model, frames.frames, masks_fill=True)
    preds, _ = probe.on_device.forward(probe.on_device.prepare(frames.frames)[0])
    scores = preds[:, 4:4 + len(probe.names)].amax(dim=1)
    realistic = dataclasses.replace(spec, conf=float(scores.topk(candidates, dim=1).values[:, -1].median()))
    torch.manual_seed(seed)  # the same weights again under the final spec
    lively(load_segmenter(realistic).model.model, frames.frames, masks_fill=True)
    return realistic


class Clock:
    """Wall time of a block, waiting for the GPU's queued work at both ends."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

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


def bench_masks(root: Path, out: Path, spec: SegmenterSpec, batch: int, repeat: int, decoders: int = 0) -> dict:
    """Best of `repeat` interleaved rounds of: the masks stage, the segmenter alone (the device path, and
    ultralytics' predict() for reference), the network alone, and decoding alone, all on the same frames."""
    import torch

    sources = sorted(root.glob("train/*.mp4"))
    decode = DecodeOptions(batch=batch)
    first = next(iter(VideoDecoder(sources[0], decode)))
    if spec.model.endswith(".yaml"):
        spec = realistic_spec(spec, first)
    segmenter = load_segmenter(spec)
    device_path = segmenter.on_device
    segmenter.segment(first)  # warm-up: lazy setup, kernels, allocator
    segmenter.predict(first)
    cuda = spec.device.startswith("cuda")
    config = MasksConfig(dataset="kinetics400", root=root, out=out, segmenter=spec, decode=decode, decoders=decoders,
                         execution=ExecOptions(workers=0), shard_size=8, overwrite=True)
    batches = [b for path in sources for b in VideoDecoder(path, decode)]
    inputs = [device_path.prepare(b.frames)[0] for b in batches]
    frames = sum(len(b) for b in batches)
    held = torch.cuda.memory_allocated() if cuda else 0  # this benchmark's own inputs, not the stage's
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    best = dict.fromkeys(("stage", "segment", "predict", "forward", "decode"), float("inf"))
    busy = None
    for _ in range(repeat):  # interleaved, so a slow spell of a shared machine hits all alike
        with Clock(spec.device) as stage, device_path.timed() as forward_seconds:
            summary = run_masks(config, progress=False)
        if cuda and stage.seconds < best["stage"]:  # the busy share of the round whose stage figure counts
            busy = sum(forward_seconds) / stage.seconds
        with Clock(spec.device) as segment:
            for b in batches:
                segmenter.segment(b)
        with Clock(spec.device) as predict:
            for b in batches:
                segmenter.predict(b)
        with Clock(spec.device) as forward:
            for x in inputs:
                device_path.forward(x)
        with Clock("cpu") as decoding:
            decoded = sum(len(b) for path in sources for b in VideoDecoder(path, decode))
        for name, clock in (("stage", stage), ("segment", segment), ("predict", predict), ("forward", forward),
                            ("decode", decoding)):
            best[name] = min(best[name], clock.seconds)
    assert summary.frames == frames == decoded, (summary.frames, frames, decoded)
    fps = {name: frames / seconds for name, seconds in best.items()}
    return {
        "conf": spec.conf,
        "decoders": decoders or None,  # None: the stage's default (1 on CPU)
        "frames_in_flight_max": summary.totals.get("frames_in_flight_max"),
        "frames": frames,
        "instances_per_frame": round(summary.totals["instances"] / max(1, frames), 2),
        "input_shape": list(inputs[0].shape),
        **{f"{name}_frames_per_s": round(value, 1) for name, value in fps.items()},
        "stage_vs_forward": round(fps["stage"] / fps["forward"], 3),
        "stage_vs_segment": round(fps["stage"] / fps["segment"], 3),
        "segment_vs_predict": round(fps["segment"] / fps["predict"], 3),
        # CUDA only: the share of the stage's wall time the device spent in the network (CUDA events)
        "gpu_forward_busy": round(busy, 3) if busy is not None else None,
        # the whole process's peak, with every decoded batch and input tensor of this benchmark held
        "peak_host_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() - held if cuda else None,
        "bytes_per_instance_frame": round(stored_bytes(Path(summary.output)) / max(1, summary.totals["instances"]), 1),
    }


def bench_selfie(root: Path, out: Path, selfie_model: str) -> dict:
    """Real person masks (the pretrained selfie model) on the same clips: what storage costs for true shapes."""
    spec = SegmenterSpec(backend="selfie", selfie_model=selfie_model)
    summary = run_masks(MasksConfig(dataset="kinetics400", root=root, out=out, segmenter=spec, execution=ExecOptions(workers=0), shard_size=8),
                        progress=False)
    return {
        "run_tag": Path(summary.output).name,
        "instances_per_frame": round(summary.totals["instances"] / max(1, summary.frames), 2),
        "bytes_per_instance_frame": round(stored_bytes(Path(summary.output)) / max(1, summary.totals["instances"]), 1),
    }


def bench_render(root: Path, out: Path, variant: str, masks_tag: str, repeat: int) -> dict:
    """Best of `repeat` rounds of: bare decode + encode, and the render stage for one variant."""
    from pipeline.render.encode import X264_PARAMS, EncodeOptions

    encode = EncodeOptions()
    config = RenderConfig(dataset="kinetics400", out=out, masks_tag=masks_tag, variants=resolve([variant]),
                          encode=encode, execution=ExecOptions(workers=0), overwrite=True)
    bare_s = render_s = float("inf")
    for _ in range(repeat):
        with Clock("cpu") as bare:
            bare_frames = bare_decode_encode(sorted(root.glob("train/*.mp4")), out / "bare", encode)
        with Clock("cpu") as render:
            frames = run_render(config, progress=False).variants[0].frames
        bare_s, render_s = min(bare_s, bare.seconds), min(render_s, render.seconds)
    return {
        "variant": variant,
        "masks": masks_tag,
        "encoder": {"crf": encode.crf, "preset": encode.preset, "x264-params": X264_PARAMS},
        "bare_frames_per_s": round(bare_frames / bare_s, 1),
        "render_frames_per_s": round(frames / render_s, 1),
        "ratio": round((frames / render_s) / (bare_frames / bare_s), 3),
    }


def bench_loader(root: Path, out: Path, variants: list[str], masks_tag: str, repeat: int, frames: int) -> dict:
    """Samples/s of MaskedClips (16-frame windows, 224² centre crops, composed on the fly) against plain
    decoding of the same windows with the same crop, in this process; best of `repeat` passes over the clips."""
    from pipeline.loaders import MaskedClips, Sampling
    from pipeline.loaders.dataset import centre_crop
    from pipeline.loaders.frames import DECODE_BATCH
    from pipeline.manifests import ManifestConfig, write_manifests
    from pipeline.render.compose import decoded

    run_render(RenderConfig(dataset="kinetics400", out=out, masks_tag=masks_tag, variants=resolve(["original"]),
                            execution=ExecOptions(workers=0)), progress=False)
    write_manifests(ManifestConfig(dataset="kinetics400", out=out, masks_tag=masks_tag, variants=("original",)))
    manifest = out / "manifests" / "kinetics400" / masks_tag / "original"
    sampling = Sampling(clip_len=16, frame_interval=max(1, min(4, frames // 16)))

    def plain(clips: MaskedClips) -> None:
        for i, entry in enumerate(clips.entries):
            clip = clips.index.clip(entry.clip_id)
            positions = sampling.positions(clip.frames, np.random.default_rng([clips.seed, clips.epoch, i]))
            last, kept = int(positions.max()), {}
            with closing(decoded(clip.path, DecodeOptions(batch=DECODE_BATCH), clip.frames)) as stream:
                for position, (_, frame) in enumerate(stream):
                    kept[position] = frame
                    if position >= last:
                        break
            centre_crop(np.stack([kept[p] for p in positions]), 224)

    result = {"sampling": {"clip_len": sampling.clip_len, "frame_interval": sampling.frame_interval}, "size": 224}
    for variant in variants:
        clips = MaskedClips(manifest, variant=variant, sampling=sampling, size=224)
        plain_s = masked_s = float("inf")
        for _ in range(repeat):
            with Clock("cpu") as bare:
                plain(clips)
            with Clock("cpu") as masked:
                for i in range(len(clips)):
                    clips[i]
            plain_s, masked_s = min(plain_s, bare.seconds), min(masked_s, masked.seconds)
        result[variant] = {"samples": len(clips), "plain_samples_per_s": round(len(clips) / plain_s, 2),
                           "masked_samples_per_s": round(len(clips) / masked_s, 2),
                           "ratio": round(plain_s / masked_s, 3)}
    return result


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    parser.add_argument("--clips", type=int, help="default: 32 on CUDA, 4 on CPU")
    parser.add_argument("--frames", type=int, help="frames per clip; default: 300 on CUDA, 60 on CPU")
    parser.add_argument("--model", default="yolo11n-seg.yaml", help="YOLO-seg weights, or a .yaml (random weights)")
    parser.add_argument("--batch", type=int, help="frames per model call; default: 64 on CUDA, 8 on CPU")
    parser.add_argument("--max-det", type=int, default=5, help="detections per frame")
    parser.add_argument("--variant", default="human_only")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each measurement; the best counts")
    parser.add_argument("--selfie-model", default="models/selfie_segmentation.tflite")
    parser.add_argument("--sizes", default="340x256", help="source sizes, comma-separated WxH; the masks stage is "
                        "measured at each, render and storage at the first (e.g. 340x256,1280x720)")
    parser.add_argument("--inference", default="device", choices=("device", "predict"), help="the stage's YOLO path")
    parser.add_argument("--decoders", type=int, default=0, help="the stage's clips decoded at once (0: its default)")
    parser.add_argument("--loader-variants", default="human_only,scuba,background_only",
                        help="variants MaskedClips is measured with (comma-separated; empty: none)")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    clips, frames = args.clips or (32 if cuda else 4), args.frames or (300 if cuda else 60)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    shutil.rmtree(args.out, ignore_errors=True)
    spec = SegmenterSpec(backend="yolo", model=args.model, device=device, max_det=args.max_det, inference=args.inference)
    result = {
        "device": device_name(device),
        "torch": torch.__version__,
        "clips": clips, "frames_per_clip": frames,
        "model": args.model, "inference": args.inference, "batch": args.batch or (64 if cuda else 8),
        "max_det": args.max_det, "masks": {},
    }
    for width, height in sizes:
        folder = args.out / f"{width}x{height}"
        make_clips(folder / "data", clips, frames, width, height)
        load_segmenter.cache_clear()  # a fresh model at each size
        result["masks"][f"{width}x{height}"] = bench_masks(folder / "data", folder / "run", spec, result["batch"],
                                                           args.repeat, args.decoders)
    folder = args.out / "x".join(map(str, sizes[0]))
    result["selfie_masks"] = bench_selfie(folder / "data", folder / "run", args.selfie_model)
    result["render"] = bench_render(folder / "data", folder / "run", args.variant, result["selfie_masks"]["run_tag"],
                                    args.repeat)
    loader_variants = [name for name in args.loader_variants.split(",") if name]
    if loader_variants:
        result["loader"] = bench_loader(folder / "data", folder / "run", loader_variants,
                                        result["selfie_masks"]["run_tag"], args.repeat, frames)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
