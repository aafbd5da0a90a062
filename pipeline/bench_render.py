"""Benchmark (not a test): render-stage throughput against a bare PyAV decode + encode of the same clips.

    python -m pipeline.bench_render [--clips 8] [--frames 150] [--variant bg] [--out bench]

Generates photo pan/zoom clips at 340×256 (lossy H.264, as real datasets are), segments them with the selfie
model, then times, in this process and with the same x264 settings (crf, preset, mbtree=0, threads):
- bare: PyAV decode → x264 encode of the decoded frames, nothing else;
- render: the render stage for one variant (decode → RGB → masks from the cache → fill → encode).
Prints one JSON object; `ratio` = render frames/s ÷ bare frames/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2

from pipeline.config import MasksConfig
from pipeline.datasets.sample import asset, pan_zoom, write_video
from pipeline.encode import X264_PARAMS, EncodeOptions
from pipeline.executor import ExecOptions
from pipeline.render_runner import RenderConfig, run_render
from pipeline.runner import run_masks
from pipeline.segment import SegmenterSpec
from pipeline.variants import resolve

WIDTH, HEIGHT, FPS = 340, 256, 25


def make_clips(root: Path, clips: int, frames: int) -> None:
    lines = ["label,youtube_id,time_start,time_end,split"]
    for i in range(clips):
        photo_name = ("bus.jpg", "zidane.jpg")[i % 2]
        photo = cv2.cvtColor(cv2.imread(str(asset(photo_name))), cv2.COLOR_BGR2RGB)
        youtube_id = f"bench{i:05d}_"
        write_video(root / "train" / f"{youtube_id}_000000_000010.mp4", pan_zoom(photo, WIDTH, HEIGHT, frames, seed=i), FPS)
        lines.append(f"{photo_name.removesuffix('.jpg')},{youtube_id},0,10,train")
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "train.csv").write_text("\n".join(lines) + "\n")


def bare_decode_encode(sources: list[Path], dest: Path, options: EncodeOptions) -> int:
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--variant", default="bg")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--selfie-model", default="models/selfie_segmentation.tflite")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root, out = args.out / "data", args.out / "run"
    shutil.rmtree(args.out, ignore_errors=True)
    make_clips(root, args.clips, args.frames)
    run_masks(MasksConfig(dataset="kinetics400", root=root, out=out, workers=0, shard_size=4,
                          segmenter=SegmenterSpec(backend="selfie", selfie_model=args.selfie_model)), progress=False)
    encode = EncodeOptions()
    sources = sorted(root.glob("train/*.mp4"))

    started = time.perf_counter()
    bare_frames = bare_decode_encode(sources, args.out / "bare", encode)
    bare_seconds = time.perf_counter() - started

    config = RenderConfig(dataset="kinetics400", out=out, variants=resolve([args.variant]), encode=encode,
                          execution=ExecOptions(workers=0), overwrite=True)
    started = time.perf_counter()
    summary = run_render(config, progress=False)
    render_seconds = time.perf_counter() - started
    render_frames = summary.variants[0].frames

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "clips": args.clips, "frames_per_clip": args.frames, "size": f"{WIDTH}x{HEIGHT}", "variant": args.variant,
        "encoder": {"crf": encode.crf, "preset": encode.preset, "x264-params": X264_PARAMS},
        "bare_frames_per_s": round(bare_frames / bare_seconds, 1),
        "render_frames_per_s": round(render_frames / render_seconds, 1),
        "ratio": round((render_frames / render_seconds) / (bare_frames / bare_seconds), 3),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
