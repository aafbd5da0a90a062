"""Benchmark (not a test): the masks and render stages against their bare baselines, printed as one JSON object
(also written to OUT/bench.json).

    python -m pipeline.bench [--device auto] [--minutes M] [--clips N] [--frames N] [--sizes 340x256,1280x720]
                             [--model yolo11n-seg.yaml] [--max-det 100] [--inference device|predict] [--repeat 3]
                             [--masks-only]

At each source size (340×256 and 1280×720 by default), photo pan/zoom clips (lossy H.264, 25 fps; at most 32×300
frames on CUDA, 4×60 on CPU, fewer where --minutes would not fit them), with production settings (max_det 100,
every class), the best of up to `--repeat` interleaved rounds (masks_bench.py):
- stage: `run_masks` over the clips (decode, YOLO-seg, RLE, tracking, Parquet), on CUDA in one Dask GPU worker
  as a real run places it, on a CPU in this process (placement.py); with, read in the stage's process
  (probe.py), the device path's blocking host waits per batch, peak host RSS and peak GPU memory, and on CUDA
  the GPU's kernel-busy time (torch profiler) and NVML's utilisation over the first round;
- segment: `segment()` in this process on frames decoded beforehand (at most --hold-mib of them);
- predict: ultralytics' predict(), the reference path, on those frames;
- forward: the network alone on those frames, letterboxed and on the device beforehand;
- decode: PyAV decoding alone;
- unless --masks-only, at the first size: render (variant `human_only`) against a bare PyAV decode + x264
  encode, from masks of the real pretrained selfie model, which also give the storage cost of real masks, and
  the loader (MaskedClips samples/s against plain decoding of the same windows).
A model built from a .yaml has seeded random weights made lively, with its score threshold set so that about
--instances (8) instances per frame are kept, as a trained model on a busy Kinetics frame.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from contextlib import closing
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.atomic import write_json
from pipeline.bench.budget import Budget
from pipeline.bench.masks_bench import Clock, bench_size, stored_bytes
from pipeline.bench.placement import stage_place
from pipeline.decode import DecodeOptions
from pipeline.executor import ExecOptions
from pipeline.machine import cpu_model, gpu_model
from pipeline.masks import MasksConfig, run_masks
from pipeline.render import RenderConfig, run_render
from pipeline.render.variants import resolve
from pipeline.segment import SegmenterSpec

RENDER_SHARE = 0.2  # of the budget, kept for the render and loader figures


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
    from pipeline.manifests.write import ManifestConfig, write_manifests
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
        import torch  # noqa: F401 - loaded, for gpu_model to ask

        return gpu_model(device) or device
    return f"{cpu_model()}, {os.cpu_count()} cores"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    parser.add_argument("--minutes", type=float, help="time budget of the whole bench; default: 7 on CUDA, 3 on CPU")
    parser.add_argument("--clips", type=int, help="clips per size, at most; default: 32 on CUDA, 4 on CPU")
    parser.add_argument("--frames", type=int, help="frames per clip; default: 300 on CUDA, 60 on CPU")
    parser.add_argument("--model", default="yolo11n-seg.yaml", help="YOLO-seg weights, or a .yaml (random weights)")
    parser.add_argument("--batch", type=int, help="frames per model call; default: 64 on CUDA, 8 on CPU")
    parser.add_argument("--max-det", type=int, default=100, help="detections per frame (a run's default: 100)")
    parser.add_argument("--instances", type=float, default=8,
                        help="a .yaml model's instances per frame (its score threshold is set to give about these)")
    parser.add_argument("--variant", default="human_only")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each measurement, at most; the best counts")
    parser.add_argument("--selfie-model", default="models/selfie_segmentation.tflite")
    parser.add_argument("--sizes", default="340x256,1280x720", help="source sizes, comma-separated WxH; the masks "
                        "stage is measured at each, render and storage at the first")
    parser.add_argument("--inference", default="device", choices=("device", "predict"), help="the stage's YOLO path")
    parser.add_argument("--decoders", type=int, default=0, help="the stage's clips decoded at once (0: its default)")
    parser.add_argument("--hold-mib", type=int, default=2048,
                        help="decoded frames held for the segment/forward figures, at most (MiB)")
    parser.add_argument("--masks-only", action="store_true",
                        help="leave out the selfie masks, render and loader figures (they need ai-edge-litert)")
    parser.add_argument("--loader-variants", default="human_only,scuba,background_only",
                        help="variants MaskedClips is measured with (comma-separated; empty: none)")
    parser.add_argument("--out", type=Path, default=Path("bench"), help="work folder, emptied first")
    parser.add_argument("--json", type=Path, help="bench.json written here too, as it is in OUT (after each size)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pipeline.bench").setLevel(logging.INFO)  # where the time goes, on stderr
    import torch
    import ultralytics

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    budget = Budget(seconds=60 * (args.minutes if args.minutes is not None else 7 if cuda else 3))
    clips, frames = args.clips or (32 if cuda else 4), args.frames or (300 if cuda else 60)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    shutil.rmtree(args.out, ignore_errors=True)
    spec = SegmenterSpec(backend="yolo", model=args.model, device=device, max_det=args.max_det,
                         inference=args.inference, object_classes=None)  # every class, as a run
    result = {
        "device": device_name(device),
        "torch": torch.__version__, "ultralytics": ultralytics.__version__,
        "minutes": round(budget.seconds / 60, 3), "clips_most": clips, "frames_per_clip": frames,
        "model": args.model, "inference": args.inference, "batch": args.batch or (64 if cuda else 8),
        "max_det": args.max_det, "classes": "all", "instances_target": args.instances, "masks": {},
    }
    reserve = 0.0 if args.masks_only else RENDER_SHARE * budget.seconds
    with stage_place(device) as place:
        result["stage_where"], result["stage_note"] = place.where, place.note
        for i, (width, height) in enumerate(sizes):
            result["masks"][f"{width}x{height}"] = bench_size(
                args.out / f"{width}x{height}", spec, place, width=width, height=height, clips=clips,
                frames=frames, batch=result["batch"], repeat=args.repeat, decoders=args.decoders,
                instances=args.instances,
                seconds=budget.share(len(sizes) - i, reserve), hold_bytes=args.hold_mib << 20)
            write_result(args, result | {"elapsed_s": round(budget.elapsed(), 1), "complete": False})
    if not args.masks_only:
        folder = args.out / "x".join(map(str, sizes[0]))
        repeat = args.repeat if budget.left() > 0 else 1
        result["selfie_masks"] = bench_selfie(folder / "data", folder / "run", args.selfie_model)
        result["render"] = bench_render(folder / "data", folder / "run", args.variant,
                                        result["selfie_masks"]["run_tag"], repeat)
        loader_variants = [name for name in args.loader_variants.split(",") if name]
        if loader_variants:
            result["loader"] = bench_loader(folder / "data", folder / "run", loader_variants,
                                            result["selfie_masks"]["run_tag"], repeat, frames)
    result |= {"elapsed_s": round(budget.elapsed(), 1), "complete": True}
    print(write_result(args, result), flush=True)
    return result


def write_result(args: argparse.Namespace, result: dict) -> str:
    """OUT/bench.json (and --json), rewritten after each size: a bench stopped by a time limit, or the whole
    command stopped from outside, keeps the sizes done."""
    for path in (args.out / "bench.json", *([args.json] if args.json else [])):
        text = write_json(path, result, sort_keys=False)
    return text


if __name__ == "__main__":
    main()
