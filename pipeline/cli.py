"""Command line: `python -m pipeline masks ...` and `python -m pipeline fetch-models`.

Bad input (flags, dataset, folders, model) prints one line on stderr and exits 2 before anything is written.
A run whose shards all committed exits 0; one with failed shards exits 1 (rerun to retry only those).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from pipeline.config import MasksConfig
from pipeline.datasets import DATASETS, DatasetError
from pipeline.decode import DecodeOptions
from pipeline.segment import BACKENDS, SegmenterLoadError, SegmenterSpec

log = logging.getLogger("pipeline")


class UsageError(Exception):
    """Bad command-line input; becomes one line on stderr and exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block
        raise UsageError(f"{self.prog}: {message} (see --help)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def unit_float(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def segmenter(text: str) -> str:
    if text not in BACKENDS and not re.fullmatch(r"[\w.]+:\w+", text):
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(BACKENDS)} or module:Class, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    masks = commands.add_parser("masks", help="decode, segment and cache masks as Parquet shards")
    masks.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS)}")
    masks.add_argument("--root", type=Path, help="dataset folder (DATA_ROOT); the sample makes its own")
    masks.add_argument("--out", type=Path, default=Path("."), help="output root; shards go to OUT/masks/DATASET/TAG")
    masks.add_argument("--segmenter", type=segmenter, help="yolo, selfie or module:Class (default: selfie for sample, else yolo)")
    masks.add_argument("--model", default="yolo11n-seg.pt", help="YOLO-seg weights: a local .pt, a name ultralytics can download, or a .yaml (random init)")
    masks.add_argument("--device", type=device, default="cpu")
    masks.add_argument("--batch", type=positive_int, default=16, help="frames per model call")
    masks.add_argument("--workers", type=non_negative_int, default=2, help="local Dask worker processes; 0 runs in this process")
    masks.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    masks.add_argument("--limit", type=positive_int, help="only the first N clips (by clip id)")
    masks.add_argument("--overwrite", action="store_true", help="recompute shards that are already done")
    masks.add_argument("--splits", help="comma-separated splits to process (default: all)")
    masks.add_argument("--fps", type=positive_float, help="resample to this frame rate (default: every frame)")
    masks.add_argument("--short-side", type=positive_int, help="resize frames for inference to this short side")
    masks.add_argument("--conf", type=unit_float, default=0.25, help="yolo score threshold")
    masks.add_argument("--iou", type=unit_float, default=0.7, help="yolo NMS IoU threshold")
    masks.add_argument("--max-det", type=positive_int, default=100, help="yolo instances per frame at most")
    masks.add_argument("--imgsz", type=positive_int, help="yolo input size (default: frame long side, ≤ 640)")
    masks.add_argument("--object-classes", help="comma-separated object classes besides person (default: all; 'none' for none)")
    masks.add_argument("--selfie-model", default="models/selfie_segmentation.tflite", help="path of the selfie .tflite")
    masks.add_argument("--threshold", type=unit_float, default=0.5, help="selfie person-probability threshold")
    masks.add_argument("--shard-size", type=positive_int, help="clips per shard (default: 32; 4 for the sample)")
    masks.add_argument("--tag", help="run folder name (default: derived from the settings)")
    masks.add_argument("-v", "--verbose", action="store_true")

    fetch = commands.add_parser("fetch-models", help="extract the selfie model from the mediapipe wheel")
    fetch.add_argument("--dest", type=Path, default=Path("models"))
    return parser


def masks_config(args: argparse.Namespace) -> MasksConfig:
    backend = args.segmenter or ("selfie" if args.dataset == "sample" else "yolo")
    if args.object_classes is None:
        object_classes = None
    elif args.object_classes.strip().lower() == "none":
        object_classes = ()
    else:
        object_classes = tuple(name.strip() for name in args.object_classes.split(",") if name.strip())
    return MasksConfig(
        dataset=args.dataset,
        root=args.root,
        out=args.out,
        segmenter=SegmenterSpec(
            backend=backend,
            model=args.model,
            device=args.device,
            conf=args.conf,
            iou=args.iou,
            max_det=args.max_det,
            imgsz=args.imgsz,
            object_classes=object_classes,
            selfie_model=args.selfie_model,
            threshold=args.threshold,
        ),
        decode=DecodeOptions(fps=args.fps, short_side=args.short_side, batch=args.batch),
        splits=tuple(args.splits.split(",")) if args.splits else None,
        limit=args.limit,
        shard_size=args.shard_size or DATASETS.get(args.dataset, DATASETS["sample"]).shard_size,
        workers=args.workers,
        scheduler=args.scheduler,
        overwrite=args.overwrite,
        tag=args.tag,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if args.command == "fetch-models":
            from pipeline.weights import fetch_selfie_model

            print(fetch_selfie_model(args.dest))
            return 0
        from pipeline.runner import run_masks

        summary = run_masks(masks_config(args))
    except (UsageError, DatasetError, SegmenterLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 1 if summary.failed_shards else 0
