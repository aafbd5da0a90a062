"""Benchmark (not a test): the predict stage against the bare model forward, printed as one JSON object.

    python -m pipeline.bench predict [--scorer open_clip:ViT-B-32] [--weights random] [--clips 12]
                                     [--frames 48] [--device cpu] [--batch 4] [--repeat 2] [--out DIR]

Generates photo pan clips (340×256, 25 fps), masks them with the pretrained selfie model, renders each of
`--variants` (human_only: colour fills; background_only: inpainting) to mp4 and its twin `<name>_lazy` (the same
fills) with FORMAT=lazy, and times, in this process, the best of `--repeat` rounds of:
- forward: `Scorer.score` alone on the clips' frames, read and preprocessed beforehand, in the stage's batches
  (its fixed shape: the last one padded);
- original: the predict stage on `original` (the sources decoded, preprocessed on reader threads, scored);
- mp4 / lazy: the predict stage on the rendered mp4s, and on the same variant composed on the fly.
Figures: each stage's clips/s against the bare forward (goal ≥ 0.9), and what composing costs over reading the
render (goal ≤ 10%).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

from pipeline.bench.clips import make_clips, write_listing
from pipeline.bench.throughput import bench_selfie, device_name
from pipeline.executor import ExecOptions
from pipeline.manifests.read import variant_rows
from pipeline.manifests.write import ManifestConfig, write_manifests
from pipeline.predict.inputs import positions, read_frames
from pipeline.predict.load import load_scorer
from pipeline.predict.runner import PredictConfig, run_predict
from pipeline.predict.scorers import ScorerSpec
from pipeline.render import RenderConfig, run_render
from pipeline.render.encode import EncodeOptions
from pipeline.render.variants import resolve


def bare_forward(config: PredictConfig, out: Path, masks_tag: str, frames: int, repeat: int) -> dict:
    """Seconds for the scorer alone over the `original` clips' frames, decoded and preprocessed beforehand."""
    import torch

    from pipeline.masks import MasksRun
    from pipeline.predict.inputs import PredictItem
    from pipeline.render.kinds import Variant

    scorer = load_scorer(config.scorer)
    run = MasksRun(out / "masks" / "kinetics400" / masks_tag)
    rows = variant_rows(out / "manifests" / "kinetics400" / masks_tag / "original", "train").rows
    clips = {clip.clip_id: clip for clip in run.clips()}
    tensors = []
    for row in rows:
        clip = clips[row["source_clip_id"]]
        item = PredictItem(key=clip.clip_id, clip=clip, format="source", path=str(clip.path))
        tensors.append(scorer.preprocess(read_frames(item, positions(clip.frames, frames), variant=Variant(name="original"), seed=0,
                                                     decode_fps=None, masks=None, partner_masks=None)))
    classes = scorer.classes(run_prompts(out, masks_tag))
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for i in range(0, len(tensors), config.batch):
            part = tensors[i : i + config.batch]
            scorer.score(torch.stack(part + [part[0]] * (config.batch - len(part))), classes)
        best = min(best, time.perf_counter() - started)
    return {"clips": len(tensors), "seconds": round(best, 3), "clips_per_s": round(len(tensors) / best, 2)}


def run_prompts(out: Path, masks_tag: str):
    from pipeline.predict.prompts import make_prompts

    label_map = out / "manifests" / "kinetics400" / masks_tag / "original" / "label_map.txt"
    return make_prompts(label_map.read_text().splitlines())


def stage_seconds(config: PredictConfig, variant: str, repeat: int) -> float:
    """Best of `repeat` predict runs over one variant (recomputed each time), the stage alone (not the load)."""
    best = float("inf")
    for _ in range(repeat):
        summary = run_predict(dataclasses.replace(config, variants=(variant,), overwrite=True), progress=False)
        best = min(best, summary.variants[0].seconds)
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorer", default="open_clip:ViT-B-32")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--frames", type=int, default=48, help="frames per generated clip")
    parser.add_argument("--sample-frames", type=int, default=8, help="frames scored per clip")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4, help="clips per model call")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--variants", default="human_only,background_only",
                        help="rendered to mp4 and, as <name>_lazy, composed on the fly")
    parser.add_argument("--selfie-model", default="models/selfie_segmentation.tflite")
    parser.add_argument("--out", type=Path, default=Path("bench-predict"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.out.exists():
        shutil.rmtree(args.out)
    root, out = args.out / "data", args.out / "out"
    write_listing(root, make_clips(root, range(args.clips), args.frames))  # all in train
    masks = bench_selfie(root, out, args.selfie_model)
    tag = masks["run_tag"]
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    twins = tuple(dataclasses.replace(variant, name=f"{variant.name}_lazy") for variant in resolve(names))
    run_render(RenderConfig(dataset="kinetics400", out=out, masks_tag=tag, variants=resolve(["original", *names]),
                            execution=ExecOptions(workers=0)), progress=False)
    run_render(RenderConfig(dataset="kinetics400", out=out, masks_tag=tag, variants=twins,
                            encode=EncodeOptions(format="lazy"), execution=ExecOptions(workers=0)), progress=False)
    write_manifests(ManifestConfig(dataset="kinetics400", out=out, masks_tag=tag))
    config = PredictConfig(dataset="kinetics400", out=out, masks_tag=tag, split="train", frames=args.sample_frames,
                           scorer=ScorerSpec.parse(args.scorer, weights=args.weights, device=args.device),
                           batch=args.batch, execution=ExecOptions(workers=0))
    run_predict(config, progress=False)  # loads the model, warms up
    forward = bare_forward(config, out, tag, args.sample_frames, args.repeat)
    seconds = {name: stage_seconds(config, name, args.repeat)
               for name in ["original", *(n for name in names for n in (name, f"{name}_lazy"))]}
    clips = forward["clips"]
    result = {
        "device": device_name(args.device), "scorer": args.scorer, "weights": args.weights,
        "clips": clips, "frames_per_clip": args.frames, "scored_frames": args.sample_frames, "batch": args.batch,
        "forward": forward,
        "stage_clips_per_s": {name: round(clips / s, 2) for name, s in seconds.items()},
        "vs_forward": {name: round(forward["seconds"] / s, 3) for name, s in seconds.items()},
        "compose_over_mp4": {name: round(seconds[f"{name}_lazy"] / seconds[name] - 1, 3) for name in names},
        "goals": {"vs_forward": ">= 0.9", "compose_over_mp4": "<= 0.10"},
        "positions": positions(args.frames, args.sample_frames),
    }
    print(json.dumps(result, indent=1))
    (args.out / "bench_predict.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
