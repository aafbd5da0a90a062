"""Command line: `python -m pipeline list|masks|render|manifests|predict|report|evaluate|export-pairs|status|fetch-models ...`.

Bad input (flags, dataset, folders, model) prints one line on stderr and exits 2 before anything is written.
A run whose shards all committed exits 0; one with failed shards exits 1 (rerun to retry only those), and so
does one with a variant that yields no clip (a swap that pairs none, a manifest filter that keeps none).
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
from pathlib import Path

from pipeline.cluster import KINDS, load_cluster_spec
from pipeline.datasets import DATASETS, ReaderOptions, output_name
from pipeline.decode import DecodeOptions
from pipeline.engine import Interrupted, stop_on_signals
from pipeline.engine.record import NOT_WRITABLE
from pipeline.errors import InputError
from pipeline.executor import ExecOptions
from pipeline.masks.config import MasksConfig
from pipeline.predict.scorers import PRECISIONS, ScorerSpec
from pipeline.render.encode import FORMATS, EncodeOptions
from pipeline.render.kinds import ALIGNS, SWAP_MODES, MaskOptions
from pipeline.render.pairing import PAIR_RANGE
from pipeline.render.pairs_file import pairs_variant
from pipeline.render.runner import RenderConfig
from pipeline.render.variants import DEFAULT_VARIANTS, NEEDS_RELATIONS, ProtocolOptions, resolve
from pipeline.segment import BACKENDS, RefineSpec, SegmenterLoadError, SegmenterSpec
from pipeline.segment.base import RANDOM
from pipeline.segment.sam import SAM_PRECISIONS, SAM_TYPES
from pipeline.tracking import TrackOptions

log = logging.getLogger("pipeline")


class UsageError(Exception):
    """Bad command-line input; becomes one line on stderr and exit code 2."""


class _Formatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none (None, False, empty) or says it itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, "", [], argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, formatter_class=_Formatter, **kwargs)

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


def dataset_name(text: str) -> str:
    """A registered dataset name: a typo is refused at every stage, not taken for a dataset without masks yet."""
    if text not in DATASETS:
        raise argparse.ArgumentTypeError(f"unknown dataset {text!r}; known: {', '.join(DATASETS)}")
    return text


def segmenter(text: str) -> str:
    if text not in BACKENDS and not re.fullmatch(r"[\w.]+:\w+", text):
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(BACKENDS)} or module:Class, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    listing = commands.add_parser("list", help="dry run: read the dataset's listing as masks does and say what a "
                                  "run would process (counts, classes, conflicts, missing files, shards); writes nothing")
    _add_listing(listing)
    listing.add_argument("--out", type=Path, default=Path("."), help="output root (the sample lives in OUT/data/sample)")
    listing.add_argument("-v", "--verbose", action="store_true", help="log debug lines")

    masks = commands.add_parser("masks", help="decode, segment and cache masks as Parquet shards")
    _add_listing(masks)
    masks.add_argument("--out", type=Path, default=Path("."), help="output root; shards go to OUT/masks/DATASET/TAG")
    masks.add_argument("--segmenter", type=segmenter, help="yolo, selfie or module:Class (default: selfie for sample, else yolo)")
    masks.add_argument("--model", default="yolo11n-seg.pt", help="YOLO-seg weights: a local .pt, a name ultralytics can download, or a .yaml (random init)")
    masks.add_argument("--device", type=device, default="cpu", help="cpu, cuda (one worker per visible GPU) or cuda:N")
    masks.add_argument("--batch", type=positive_int, default=16, help="frames per model call")
    masks.add_argument("--decoders", type=positive_int, help="clips decoded at once per worker, their frames packed "
                       "into shared model batches (default: 1 on CPU; on CUDA one per core of the GPU worker's "
                       "share, 1 to 8)")
    masks.add_argument("--fps", type=positive_float, help="resample to this frame rate (default: every frame)")
    masks.add_argument("--short-side", type=positive_int, help="resize frames for inference to this short side")
    masks.add_argument("--conf", type=unit_float, default=0.25, help="yolo score threshold")
    masks.add_argument("--iou", type=unit_float, default=0.7, help="yolo NMS IoU threshold")
    masks.add_argument("--max-det", type=positive_int, default=100, help="yolo instances per frame at most")
    masks.add_argument("--imgsz", type=positive_int, help="yolo input size (default: frame long side, ≤ 640)")
    masks.add_argument("--inference", choices=("device", "predict"), default="device",
                       help="yolo: batched letterbox, NMS and mask assembly on the model's device (default), or "
                            "ultralytics' predict() as the reference")
    masks.add_argument("--object-classes", help="comma-separated object classes besides person (default: all; 'none' for none)")
    masks.add_argument("--selfie-model", default="models/selfie_segmentation.tflite", help="path of the selfie .tflite")
    masks.add_argument("--threshold", type=unit_float, default=0.5, help="selfie person-probability threshold")
    masks.add_argument("--refine", choices=("none", "sam"), default="none", help="refine masks with segment-anything, prompted by each instance's box")
    masks.add_argument("--sam-type", choices=SAM_TYPES, help="SAM architecture of --sam-checkpoint (default vit_b)")
    masks.add_argument("--sam-checkpoint", help=f"SAM weights (.pth) for --refine sam (none by default); "
                       f"'{RANDOM}' for random weights (timing only)")
    masks.add_argument("--sam-precision", choices=SAM_PRECISIONS,
                       help="what SAM computes in on CUDA (default bf16; fp16 for a GPU without bf16, its masks in a run "
                            "folder of their own); a CPU runs fp32")
    masks.add_argument("--refine-every", type=positive_int,
                       help="refine every Nth frame of a clip (default 1: all); others keep the detector's mask")
    masks.add_argument("--track-iou", type=unit_float, default=0.3, help="least mask IoU that continues an instance's track id")
    masks.add_argument("--track-gap", type=non_negative_int, default=5, help="frames a track may go unseen and continue")
    masks.add_argument("--tag", help="run folder name (default: derived from the settings)")
    _add_execution(masks)

    render = commands.add_parser("render", help="render masked clip variants from the mask cache")
    _add_dataset(render)
    render.add_argument("--out", type=Path, default=Path("."), help="output root: reads OUT/masks, writes OUT/renders/DATASET/VARIANT")
    _add_masks_run(render)
    render.add_argument("--variants", help=f"comma-separated (default: every preset but {', '.join(NEEDS_RELATIONS)}: "
                                           f"{', '.join(DEFAULT_VARIANTS)}; those that need objects are left out "
                                           "where the masks' segmenter finds none)")
    render.add_argument("--variants-file", type=Path, help="TOML file of [variants.NAME] tables (see README)")
    render.add_argument("--define", action="append", default=[], metavar="NAME:REGION=FILL;...",
                        help="define a variant, e.g. 'blue:background=color(0,0,255);objects=blur(8)'")
    render.add_argument("--format", choices=FORMATS, default="mp4",
                        help="mp4 files, rawframes folders, or webdataset: one tar of mp4 + JSON samples per shard")
    render.add_argument("--crf", type=non_negative_int, default=23, help="x264 quality (mp4, webdataset)")
    render.add_argument("--preset", default="veryfast", help="x264 preset (mp4, webdataset)")
    render.add_argument("--jpeg-quality", type=positive_int, default=95, help="rawframes JPEG quality")
    render.add_argument("--short-side", type=positive_int, help="scale outputs to this short side (default: source size)")
    render.add_argument("--seed", type=non_negative_int, default=0, help="seed of noise fills and swap pairing")
    render.add_argument("--pair-coverage", type=coverage_range, default=PAIR_RANGE, metavar="LOW,HIGH",
                        help="swap: person coverage range of paired clips (default 0.05,0.5)")
    render.add_argument("--scuba-images", type=Path, metavar="DIR",
                        help="scuba / scufo: backgrounds drawn from this folder of images (default: stripes)")
    render.add_argument("--backgrounds-per-clip", type=positive_int, metavar="K",
                        help="static-background variants (scuba, scufo): K renders per clip, as <id>__<k> (default 1)")
    render.add_argument("--swap-seeds", type=int_list, metavar="S,S,...",
                        help="render each swap variant V once per seed, as V-s<seed> (HAT used three)")
    render.add_argument("--swap-align", choices=ALIGNS,
                        help="centroid: shift the pasted people so the first frames' person centres line up (HAT)")
    render.add_argument("--swap-relations", type=Path, metavar="CSV",
                        help="swap_close / swap_far: rows of `class, related class, ...`")
    render.add_argument("--swap-pairs", type=Path, action="append", default=[], metavar="PICKLE",
                        help="a swap variant with exactly these pairs (HAT's actionswap_<mode>_<seed>.pickle format), "
                             "named after the file; may be given more than once")
    render.add_argument("--swap-pairs-mode", choices=SWAP_MODES, help="--swap-pairs: the mode, where the file name "
                        "does not say it")
    render.add_argument("--swap-pairs-seed", type=non_negative_int, help="--swap-pairs: the seed, where the file "
                        "name does not say it (default 0)")
    render.add_argument("--dilate", type=non_negative_int, default=0, help="grow masks by N pixels")
    render.add_argument("--temporal", type=non_negative_int, default=0, help="OR masks over ±K neighbouring frames")
    render.add_argument("--min-area", type=non_negative_int, default=0, help="ignore instances under N pixels")
    render.add_argument("--min-score", type=unit_float, default=0.0, help="ignore instances scored below S")
    _add_execution(render)

    manifests = commands.add_parser("manifests", help="write mmaction2 / PySlowFast lists and Parquet manifests")
    _add_dataset(manifests)
    manifests.add_argument("--out", type=Path, default=Path("."), help="output root: reads OUT/renders, writes "
                           "OUT/manifests/DATASET/MASKS_RUN/VARIANT")
    _add_masks_run(manifests)
    manifests.add_argument("--variants", help="comma-separated (default: every rendered variant)")
    manifests.add_argument("--min-coverage", type=unit_float, help="quality filter: person coverage F … (default: "
                           "the variant's own rule: 0.1 for scuba / scufo, else 0)")
    manifests.add_argument("--min-frames-frac", type=unit_float, help="… in at least this fraction G of frames "
                           "(default: 0.9 for scuba / scufo, else 0)")

    report = commands.add_parser("report", help="write an offline HTML report of the masks and variants")
    _add_dataset(report)
    report.add_argument("--out", type=Path, default=Path("."), help="output root: writes OUT/reports/DATASET/MASKS_RUN")
    _add_masks_run(report)
    report.add_argument("--clips", type=positive_int, default=4, help="clips per contact sheet")
    report.add_argument("--frames", type=positive_int, default=4, help="frames per clip")
    report.add_argument("--all-evaluations", action="store_true", help="every evaluation, not only the newest of each predictions folder")

    evaluate = commands.add_parser("evaluate", help="score a model's predictions on the variants (BOR, HOR, SHAcc, "
                                   "SBErr, SCUBA, SCUFO, contrasted, grids)")
    _add_dataset(evaluate)
    evaluate.add_argument("--out", type=Path, default=Path("."), help="output root: reads OUT/manifests, writes "
                          "OUT/reports/DATASET/MASKS_RUN/evaluations")
    _add_masks_run(evaluate)
    evaluate.add_argument("--predictions", type=Path, required=True, metavar="DIR",
                          help="<variant>.pkl (mmaction2 --dump or --out) or <variant>.csv (clip_id,pred or "
                               "clip_id,score_0,...) per variant; subfolders per training variant give a grid")
    evaluate.add_argument("--split", help="the manifest split the predictions are for (default: val, or the only one)")
    evaluate.add_argument("--bootstrap", type=non_negative_int, default=1000, help="resamples per 95%% interval")

    predict = commands.add_parser("predict", help="score every variant's listed clips with a zero-shot video "
                                  "classifier (CLIP, SigLIP, X-CLIP); writes the <variant>.csv files evaluate reads")
    _add_dataset(predict)
    predict.add_argument("--out", type=Path, default=Path("."), help="output root: reads OUT/manifests, writes "
                         "OUT/predictions/DATASET/MASKS_RUN/SCORER-FINGERPRINT/SPLIT")
    _add_masks_run(predict)
    predict.add_argument("--scorer", required=True, help="open_clip:<arch> (e.g. open_clip:ViT-B-32) or "
                         "xclip:<hub id or folder> (e.g. xclip:microsoft/xclip-base-patch32)")
    predict.add_argument("--weights", help="random, a weights file or folder, or a name the library downloads "
                         "(open_clip: a pretrained tag such as openai; default for xclip: the model's own)")
    predict.add_argument("--variants", help="comma-separated (default: every variant with a manifest)")
    predict.add_argument("--split", help="the manifest split to score (default: val, or the only one)")
    predict.add_argument("--frames", type=positive_int, help="frames per clip, evenly spread (default: 8; X-CLIP: "
                         "the model's own)")
    predict.add_argument("--prompts", type=Path, help="TOML file: templates = [\"a video of {}.\", ...] and [names] "
                         "(default: CLIP's 28 Kinetics templates, cleaned class names)")
    predict.add_argument("--label-space", choices=("dataset", "kinetics400"), default="dataset",
                         help="the classes scored: the dataset's own (Mimetics: its 50), or the 400 of Kinetics")
    predict.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    predict.add_argument("--precision", choices=PRECISIONS, help="fp32 (default on the CPU), fp16 (default on CUDA), bf16")
    predict.add_argument("--batch", type=positive_int, default=4, help="clips per model call")
    predict.add_argument("--readers", type=positive_int, default=2, help="clips read or composed ahead at once")
    predict.add_argument("--evaluate", action="store_true", help="then evaluate the predictions (metrics.json and "
                         "the report's Evaluation section)")
    predict.add_argument("--bootstrap", type=non_negative_int, default=1000, help="--evaluate: resamples per 95%% interval")
    _add_execution(predict)
    predict.set_defaults(workers=0)

    export = commands.add_parser("export-pairs", help="write a swap variant's pairs in HAT's pickle format "
                                 "(actionswap_<mode>_<seed>.pickle), for HAT's loader or --swap-pairs")
    _add_dataset(export)
    export.add_argument("--out", type=Path, default=Path("."), help="output root: reads OUT/manifests")
    _add_masks_run(export)
    export.add_argument("--variant", default="swap", help="the swap variant whose manifest lists the pairs")
    export.add_argument("--split", help="only this split's clips (default: every split)")
    export.add_argument("--output", type=Path, required=True, metavar="PICKLE", help="the file to write")

    status = commands.add_parser("status", help="where the masks run and its renders stand, in progress or finished: "
                                 "shards done, claimed and failed, clips by status, frames/s, ETA, top errors; "
                                 "from any machine that sees OUT; writes nothing")
    _add_dataset(status)
    status.add_argument("--out", type=Path, default=Path("."), help="output root: reads OUT/masks and OUT/renders")
    status.add_argument("--masks", help="masks run folder name under OUT/masks/DATASET (default: the one that "
                                        "changed last, a run in progress included)")

    fetch = commands.add_parser("fetch-models", help="extract the selfie model from the mediapipe wheel")
    fetch.add_argument("--dest", type=Path, default=Path("models"), help="folder to put selfie_segmentation.tflite in")
    for sub in (manifests, report, evaluate, export, status, fetch):
        sub.add_argument("-v", "--verbose", action="store_true", help="log debug lines")
    return parser


def _add_dataset(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--dataset", required=True, type=dataset_name, help=f"one of: {', '.join(DATASETS)}")
    _add_split_id(sub)


def _add_listing(sub: argparse.ArgumentParser) -> None:
    """The flags that say which clips a dataset has: masks and its dry run, list."""
    _add_dataset(sub)
    sub.add_argument("--root", type=Path, help="dataset folder, or the list/CSV file for list and mimetics (DATA_ROOT); the sample makes its own")
    sub.add_argument("--videos", type=Path, help="video folder when not the usual one (ssv2, ucf101, hmdb51, mimetics, list)")
    sub.add_argument("--class-list", type=Path, help="mimetics: the model's Kinetics class list (label_map_k400.txt or a "
                                                     "Kinetics annotation CSV; default: the official Kinetics-400 list)")
    sub.add_argument("--official-indices", action="store_true",
                     help="kinetics400: label indices (and label map) from the official 400 classes, for subsets")
    sub.add_argument("--splits", help="comma-separated splits to process (default: all)")
    sub.add_argument("--shard-size", type=positive_int, help="clips per shard in a new run folder (default: 32; 4 for the sample)")


def reader_options(args: argparse.Namespace) -> ReaderOptions:
    return ReaderOptions(split_id=args.split_id, videos=args.videos, class_list=args.class_list,
                         official_indices=args.official_indices)


def _add_split_id(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--split-id", type=int, choices=(1, 2, 3),
                     help="ucf101, hmdb51: official split (default 1); outputs go to DATASET-splitN")


def _add_masks_run(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--masks", help="masks run folder name under OUT/masks/DATASET (default: the one with committed "
                                     "shards whose masks stage started last)")


def make_args(args: argparse.Namespace) -> str:
    """How the user names this dataset to `make`, for hints (`DATASET=ucf101 SPLIT_ID=1`)."""
    split = DATASETS.get(args.dataset)
    if split is not None and split.split_ids:
        return f"DATASET={args.dataset} SPLIT_ID={args.split_id or 1}"
    return f"DATASET={args.dataset}"


def _add_execution(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--workers", type=non_negative_int, default=2, help="local Dask worker processes; 0 runs in this process")
    sub.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    sub.add_argument("--cluster", choices=KINDS, help="run the workers as batch jobs (dask-jobqueue), shaped by --cluster-config")
    sub.add_argument("--cluster-config", type=Path, default=Path("cluster.yaml"), help="job shape (default: cluster.yaml)")
    sub.add_argument("--jobs", type=positive_int, help="at most this many batch jobs at once (overrides max_jobs)")
    sub.add_argument("--dashboard", metavar="ADDRESS", help="serve the Dask dashboard of the cluster started here, e.g. :8787")
    sub.add_argument("--limit", type=positive_int, help="only the first shards (by name) holding at least N clips")
    sub.add_argument("--overwrite", action="store_true", help="recompute shards that are already done")
    sub.add_argument("--retry-failed", action="store_true", help="recompute done shards holding clips given up as failed")
    sub.add_argument("--max-tries", type=positive_int, default=3,
                     help="tries per clip (a raised error, or its worker dying) before it is recorded as failed")
    sub.add_argument("-v", "--verbose", action="store_true", help="log debug lines")


def execution(args: argparse.Namespace) -> ExecOptions:
    cluster = load_cluster_spec(args.cluster_config, args.cluster, max_jobs=args.jobs) if args.cluster else None
    if cluster and args.scheduler:
        raise UsageError("--cluster starts its own scheduler; leave out --scheduler")
    return ExecOptions(workers=args.workers, scheduler=args.scheduler, cluster=cluster, dashboard=args.dashboard,
                       max_tries=args.max_tries)


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integers ≥ 0, got {text!r}")
    return values


def coverage_range(text: str) -> tuple[float, float]:
    try:
        low, high = (unit_float(v) for v in text.split(","))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH between 0 and 1, got {text!r}") from None
    if low > high:
        raise argparse.ArgumentTypeError(f"LOW must not exceed HIGH, got {text!r}")
    return low, high


SAM_ARGS = {"sam_type": "sam_type", "checkpoint": "sam_checkpoint", "every": "refine_every", "precision": "sam_precision"}


def refine_spec(args: argparse.Namespace) -> RefineSpec | None:
    """SAM's settings (RefineSpec field → argument) where `--refine sam` asks for it; given without it, an error:
    they would be dropped unseen."""
    given = {field: getattr(args, dest) for field, dest in SAM_ARGS.items() if getattr(args, dest) is not None}
    if args.refine == "sam":
        return RefineSpec(**given)
    if given:
        flags = ", ".join("--" + SAM_ARGS[field].replace("_", "-") for field in given)
        raise UsageError(f"{flags} set without --refine sam, which no mask would use: add --refine sam (REFINE=sam), "
                         "or leave them out")
    return None


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
        reader=reader_options(args),
        out=args.out,
        segmenter=SegmenterSpec(
            backend=backend,
            model=args.model,
            device=args.device,
            conf=args.conf,
            iou=args.iou,
            max_det=args.max_det,
            imgsz=args.imgsz,
            inference=args.inference,
            object_classes=object_classes,
            selfie_model=args.selfie_model,
            threshold=args.threshold,
            refine=refine_spec(args),
        ),
        decode=DecodeOptions(fps=args.fps, short_side=args.short_side, batch=args.batch),
        decoders=args.decoders or 0,
        track=TrackOptions(min_iou=args.track_iou, max_gap=args.track_gap),
        splits=splits(args),
        limit=args.limit,
        shard_size=args.shard_size or DATASETS[args.dataset].shard_size,
        execution=execution(args),
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        tag=args.tag,
    )


def splits(args: argparse.Namespace) -> tuple[str, ...] | None:
    return tuple(args.splits.split(",")) if args.splits else None


def render_config(args: argparse.Namespace) -> RenderConfig:
    defaults = MaskOptions(dilate=args.dilate, temporal=args.temporal, min_area=args.min_area, min_score=args.min_score)
    names = [name.strip() for name in (args.variants or ",".join(DEFAULT_VARIANTS)).split(",") if name.strip()]
    protocol = ProtocolOptions(scuba_images=args.scuba_images, backgrounds=args.backgrounds_per_clip,
                               swap_seeds=tuple(args.swap_seeds or ()), swap_align=args.swap_align,
                               swap_pairs=tuple(pairs_variant(path, mode=args.swap_pairs_mode, seed=args.swap_pairs_seed)
                                                for path in args.swap_pairs))
    return RenderConfig(
        dataset=output_name(args.dataset, args.split_id),
        variants=resolve(names, defaults=defaults, file=args.variants_file, defines=args.define, protocol=protocol),
        default_set=not args.variants,
        out=args.out,
        masks_tag=args.masks,
        make_args=make_args(args),
        encode=EncodeOptions(format=args.format, crf=args.crf, preset=args.preset, short_side=args.short_side,
                             jpeg_quality=args.jpeg_quality),
        seed=args.seed,
        pair_range=args.pair_coverage,
        relations=args.swap_relations,
        limit=args.limit,
        execution=execution(args),
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
    )


def run(args: argparse.Namespace) -> int:
    """Run one command; returns the exit code (bad input raises InputError or SegmenterLoadError)."""
    if args.command == "fetch-models":
        from pipeline.weights import fetch_selfie_model

        print(fetch_selfie_model(args.dest))
        return 0
    if args.command == "list":
        from pipeline.listing import check_listing

        check = check_listing(args.dataset, args.root, args.out, options=reader_options(args), splits=splits(args),
                              shard_size=args.shard_size)
        print("\n".join(check.lines()))
        return 0
    if args.command == "masks":
        from pipeline.masks import run_masks

        summary = run_masks(masks_config(args))
        print("\n".join(summary.lines()))
        return 1 if summary.failed_shards else 0
    if args.command == "render":
        from pipeline.render import run_render

        rendered = run_render(render_config(args))
        print("\n".join(rendered.lines()))
        return 1 if rendered.failed else 0
    if args.command == "manifests":
        from pipeline.manifests.write import ManifestConfig, write_manifests

        variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else None
        dataset = output_name(args.dataset, args.split_id)
        config = ManifestConfig(dataset=dataset, out=args.out, masks_tag=args.masks, make_args=make_args(args),
                                variants=variants, min_coverage=args.min_coverage, min_frames_frac=args.min_frames_frac)
        summaries = write_manifests(config)
        for summary in summaries:
            counts = "; ".join(f"{key}: " + ", ".join(f"{s} {n}" for s, n in c.items()) for key, c in summary["counts"].items())
            print(f"manifests {dataset}/{summary['variant']}: {counts}")
        print(f"output: {Path(args.out) / 'manifests' / dataset / summaries[0]['masks_run']}")
        failed = [summary for summary in summaries if summary["failed"]]
        for summary in failed:
            print(f"FAILED {summary['variant']}: {summary['failed']}")
        return 1 if failed else 0
    if args.command == "predict":
        from pipeline.predict.runner import PredictConfig, run_predict

        variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else None
        execution_options = execution(args)
        if args.device.startswith("cuda") and not execution_options.in_process:
            raise UsageError("predict on CUDA runs in this process (one GPU); leave WORKERS at 0")
        config = PredictConfig(
            dataset=output_name(args.dataset, args.split_id), out=args.out, masks_tag=args.masks,
            make_args=make_args(args), variants=variants, split=args.split, frames=args.frames, prompts=args.prompts,
            label_space=args.label_space,
            scorer=ScorerSpec.parse(args.scorer, weights=args.weights, device=args.device, precision=args.precision),
            batch=args.batch, readers=args.readers, execution=execution_options, overwrite=args.overwrite,
            retry_failed=args.retry_failed)
        summary = run_predict(config)
        print("\n".join(summary.lines()))
        if summary.failed:
            if args.evaluate:
                print("not evaluated: some clips were not scored (rerun to retry them)")
            return 1
        if args.evaluate:
            from pipeline.evaluate.run import EvaluateConfig, run_evaluate

            path, metrics = run_evaluate(EvaluateConfig(
                dataset=config.dataset, predictions=Path(summary.folder), out=args.out, masks_tag=summary.masks_tag,
                make_args=config.make_args, split=summary.split, bootstrap=args.bootstrap))
            print("\n".join(evaluation_lines(metrics)))
            print(f"metrics: {path}")
        return 0
    if args.command == "export-pairs":
        from pipeline.manifests.pairs import export_pairs

        count = export_pairs(out=args.out, dataset=output_name(args.dataset, args.split_id), variant=args.variant,
                             dest=args.output, masks_tag=args.masks, split=args.split, make_args=make_args(args))
        print(f"export-pairs: {count} pairs of {args.variant} -> {args.output}")
        return 0
    if args.command == "status":
        from pipeline.status import run_status, status_lines

        stages = run_status(args.out, output_name(args.dataset, args.split_id), args.masks, make_args=make_args(args))
        print("\n".join(status_lines(stages)))
        return 0
    if args.command == "evaluate":
        from pipeline.evaluate.run import EvaluateConfig, run_evaluate

        config = EvaluateConfig(dataset=output_name(args.dataset, args.split_id), predictions=args.predictions,
                                out=args.out, masks_tag=args.masks, make_args=make_args(args), split=args.split,
                                bootstrap=args.bootstrap)
        path, metrics = run_evaluate(config)
        print("\n".join(evaluation_lines(metrics)))
        print(f"metrics: {path}")
        return 0
    from pipeline.report import write_report

    dataset = output_name(args.dataset, args.split_id)
    path = write_report(dataset=dataset, out=args.out, masks_tag=args.masks, make_args=make_args(args),
                        clips=args.clips, frames=args.frames, all_evaluations=args.all_evaluations)
    print(f"report: {path}")
    return 0


def evaluation_lines(metrics: dict) -> list[str]:
    """The CLI's summary of an evaluation: top-1 per variant, then each protocol metric with its interval."""
    def value(entry: dict) -> str:
        ci = entry.get("ci95")
        shown = "n/a" if entry.get("value") is None else f"{entry['value']:.3f}"
        return shown + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + f" ({entry['clips']} clips)"

    lines = [f"evaluate {metrics['dataset']} ({metrics['split']}):"]
    for name, entry in metrics.get("variants", {}).items():
        top1 = "n/a" if entry["top1"] is None else f"{entry['top1']:.3f}"
        top5 = "" if entry["top5"] is None else f", top-5 {entry['top5']:.3f}"
        lines.append(f"  {name}: top-1 {top1}{top5} ({entry['clips']} clips)")
    for key in ("BOR", "HOR", "SCUBA", "SCUFO", "contrasted"):
        if key in metrics:
            lines.append(f"  {key}: {value(metrics[key])}")
    for key in ("SHAcc", "SBErr"):
        for mode, entry in metrics.get(key, {}).items():
            lines.append(f"  {key} ({mode}): {value(entry)}")
    for train, row in metrics.get("grid", {}).items():
        lines.append(f"  trained on {train}: " + ", ".join(f"{v} {'n/a' if a is None else f'{a:.3f}'}"
                                                          for v, a in row.items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    with stop_on_signals():  # Ctrl-C and SIGTERM: Interrupted, until the command has said how it ended
        try:
            args = build_parser().parse_args(argv)
            logging.basicConfig(
                level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            )
            return run(args)
        except (UsageError, InputError, SegmenterLoadError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Interrupted as exc:
            print(f"interrupted: {exc}; rerun to resume", file=sys.stderr)
            return 128 + exc.signum
        except KeyboardInterrupt:  # outside the main thread, where no handler is set
            print("interrupted; rerun to resume", file=sys.stderr)
            return 130
        except OSError as exc:
            if exc.errno not in NOT_WRITABLE:
                raise
            hint = "; make it writable, or pick another OUT" if exc.errno == errno.EROFS else ""
            print(f"error: {exc.filename or 'a file'}: {exc.strerror}{hint}", file=sys.stderr)
            return 2
