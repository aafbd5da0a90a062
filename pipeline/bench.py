"""Benchmark (not a test): the masks and render stages against their bare baselines, printed as one JSON object.

    python -m pipeline.bench [--device auto] [--clips N] [--frames N] [--model yolo11n-seg.yaml] [--repeat 3]

Generates photo pan/zoom clips at 340×256 (lossy H.264, 25 fps; 32×300 frames on CUDA, 4×60 on CPU by
default) and times, in this process, after one warm-up batch, the best of `--repeat` interleaved rounds:
- masks stage: `run_masks` over the clips (decode, YOLO-seg, RLE, tracking, Parquet), frames/s;
- segment: the segmenter alone on the same frames, decoded beforehand (pre- and postprocessing included);
- forward: the network alone on the same frames, letterboxed and on the device beforehand;
- render: variant `bg` against a bare PyAV decode + x264 encode of the same clips, from masks of the real
  pretrained selfie model (true person shapes), which also give the storage cost of real masks.
A model built from a .yaml has random weights: it is seeded, and its score threshold is set so that about 100
boxes per frame enter NMS, which keeps `max_det` of them: postprocessing about as busy as a trained model's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2

from pipeline.datasets.sample import asset, pan_zoom, write_video
from pipeline.decode import DecodeOptions, VideoDecoder
from pipeline.executor import ExecOptions
from pipeline.masks import MasksConfig, run_masks
from pipeline.render import RenderConfig, run_render
from pipeline.render.variants import resolve
from pipeline.segment import SegmenterSpec, load_segmenter

WIDTH, HEIGHT, FPS = 340, 256, 25


def make_clips(root: Path, clips: int, frames: int) -> list[Path]:
    """Kinetics-layout clips panning over the two ultralytics photos with people."""
    lines, paths = ["label,youtube_id,time_start,time_end,split"], []
    for i in range(clips):
        photo_name = ("bus.jpg", "zidane.jpg")[i % 2]
        photo = cv2.cvtColor(cv2.imread(str(asset(photo_name))), cv2.COLOR_BGR2RGB)
        youtube_id = f"bench{i:05d}_"
        paths.append(root / "train" / f"{youtube_id}_000000_000010.mp4")
        write_video(paths[-1], pan_zoom(photo, WIDTH, HEIGHT, frames, seed=i), FPS)
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


def realistic_spec(spec: SegmenterSpec, frames, *, candidates: int = 100, seed: int = 0) -> SegmenterSpec:
    """For a .yaml model (random weights, seeded): the spec with `conf` set so that about `candidates` boxes per
    frame pass into NMS, as with a trained model on a busy frame; the segmenter it names is cached with mask
    coefficients biased so that kept boxes have non-empty masks (ultralytics drops empty ones)."""
    import dataclasses

    import torch

    torch.manual_seed(seed)
    probe = load_segmenter(spec)
    probe.segment(frames)  # sets up ultralytics' predictor
    predictor = probe.model.predictor
    with torch.inference_mode():
        raw = predictor.inference(predictor.preprocess([frame[..., ::-1] for frame in frames.frames]))
    while isinstance(raw, (list, tuple)):  # segmentation heads return ((N, 4 + classes + 32, anchors), proto), …
        raw = raw[0]
    scores = raw[:, 4:4 + len(probe.names)].amax(dim=1)
    realistic = dataclasses.replace(spec, conf=float(scores.topk(candidates, dim=1).values[:, -1].median()))
    torch.manual_seed(seed)  # the same weights again under the final spec
    for branch in load_segmenter(realistic).model.model.model[-1].cv4:  # mask-coefficient convolutions
        branch[-1].bias.data.fill_(0.5)
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


def bench_masks(root: Path, out: Path, spec: SegmenterSpec, batch: int, repeat: int) -> dict:
    """Best of `repeat` rounds of: the masks stage, the segmenter alone, the network alone (same frames)."""
    import torch

    sources = sorted(root.glob("train/*.mp4"))
    decode = DecodeOptions(batch=batch)
    first = next(iter(VideoDecoder(sources[0], decode)))
    if spec.model.endswith(".yaml"):
        spec = realistic_spec(spec, first)
    segmenter = load_segmenter(spec)
    segmenter.segment(first)  # warm-up: lazy setup, kernels, allocator
    cuda = spec.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    config = MasksConfig(dataset="kinetics400", root=root, out=out, segmenter=spec, decode=decode, execution=ExecOptions(workers=0),
                         shard_size=8, overwrite=True)
    batches = [b for path in sources for b in VideoDecoder(path, decode)]
    predictor = segmenter.model.predictor
    inputs = [predictor.preprocess([frame[..., ::-1] for frame in b.frames]) for b in batches]
    frames = sum(len(b) for b in batches)
    best = {"stage": float("inf"), "segment": float("inf"), "forward": float("inf")}
    for _ in range(repeat):  # interleaved, so a slow spell of a shared machine hits all three alike
        with Clock(spec.device) as stage:
            summary = run_masks(config, progress=False)
        with Clock(spec.device) as segment:
            for b in batches:
                segmenter.segment(b)
        with Clock(spec.device) as forward, torch.inference_mode():
            for x in inputs:
                predictor.inference(x)
        for name, clock in (("stage", stage), ("segment", segment), ("forward", forward)):
            best[name] = min(best[name], clock.seconds)
    assert summary.frames == frames, (summary.frames, frames)
    fps = {name: frames / seconds for name, seconds in best.items()}
    return {
        "conf": spec.conf,
        "frames": frames,
        "instances_per_frame": round(summary.totals["instances"] / max(1, frames), 2),
        "input_shape": list(inputs[0].shape),
        "stage_frames_per_s": round(fps["stage"], 1),
        "segment_frames_per_s": round(fps["segment"], 1),
        "forward_frames_per_s": round(fps["forward"], 1),
        "stage_vs_forward": round(fps["stage"] / fps["forward"], 3),
        "stage_vs_segment": round(fps["stage"] / fps["segment"], 3),
        # the whole process's peak, with every decoded batch and input tensor of this benchmark held
        "peak_host_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,
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
    parser.add_argument("--variant", default="bg")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each measurement; the best counts")
    parser.add_argument("--selfie-model", default="models/selfie_segmentation.tflite")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    clips, frames = args.clips or (32 if cuda else 4), args.frames or (300 if cuda else 60)
    root, out = args.out / "data", args.out / "run"
    shutil.rmtree(args.out, ignore_errors=True)
    make_clips(root, clips, frames)
    spec = SegmenterSpec(backend="yolo", model=args.model, device=device, max_det=args.max_det)
    result = {
        "device": device_name(device),
        "torch": torch.__version__,
        "clips": clips, "frames_per_clip": frames, "size": f"{WIDTH}x{HEIGHT}",
        "model": args.model, "batch": args.batch or (64 if cuda else 8), "max_det": args.max_det,
    }
    result["masks"] = bench_masks(root, out, spec, result["batch"], args.repeat)
    result["selfie_masks"] = bench_selfie(root, out, args.selfie_model)
    result["render"] = bench_render(root, out, args.variant, result["selfie_masks"]["run_tag"], args.repeat)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
