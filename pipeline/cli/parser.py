"""Command line: `python -m pipeline list|masks|render|manifests|predict|report|evaluate|export-pairs|status|fetch-models ...`.

The parser: every command and its flags (README.md lists the make variables behind them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.types import (
    Parser,
    coverage_range,
    dataset_name,
    device,
    int_list,
    non_negative_int,
    positive_float,
    positive_int,
    segmenter,
    unit_float,
)
from pipeline.cluster import KINDS
from pipeline.datasets import DATASETS
from pipeline.predict.scorers import PRECISIONS
from pipeline.render.encode import FORMATS
from pipeline.render.kinds import ALIGNS, SWAP_MODES
from pipeline.render.pairing import PAIR_RANGE
from pipeline.render.variants import DEFAULT_VARIANTS, NEEDS_RELATIONS
from pipeline.segment.base import RANDOM
from pipeline.segment.sam import SAM_PRECISIONS, SAM_TYPES


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

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
    masks.add_argument("--threads", type=positive_int, help="torch threads per CPU model (default: each worker's "
                       "share of the cores); on a CPU a YOLO or SAM run's masks differ in their last bits with the "
                       "count, so it keys the run folder")
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



def _add_split_id(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--split-id", type=int, choices=(1, 2, 3),
                     help="ucf101, hmdb51: official split (default 1); outputs go to DATASET-splitN")



def _add_masks_run(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--masks", help="masks run folder name under OUT/masks/DATASET (default: the one with committed "
                                     "shards whose masks stage started last)")



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
