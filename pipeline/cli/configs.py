"""Parsed arguments into the stages' keyword-only configurations."""

from __future__ import annotations

import argparse

from pipeline.cli.types import UsageError
from pipeline.cluster import load_cluster_spec
from pipeline.datasets import DATASETS, ReaderOptions, output_name
from pipeline.decode import DecodeOptions
from pipeline.executor import ExecOptions
from pipeline.masks.config import MasksConfig
from pipeline.render.encode import EncodeOptions
from pipeline.render.kinds import MaskOptions
from pipeline.render.pairs_file import pairs_variant
from pipeline.render.runner import RenderConfig
from pipeline.render.variants import DEFAULT_VARIANTS, ProtocolOptions, resolve
from pipeline.segment import RefineSpec, SegmenterSpec
from pipeline.tracking import TrackOptions


def reader_options(args: argparse.Namespace) -> ReaderOptions:
    return ReaderOptions(split_id=args.split_id, videos=args.videos, class_list=args.class_list,
                         official_indices=args.official_indices)



def make_args(args: argparse.Namespace) -> str:
    """How the user names this dataset to `make`, for hints (`DATASET=ucf101 SPLIT_ID=1`)."""
    split = DATASETS.get(args.dataset)
    if split is not None and split.split_ids:
        return f"DATASET={args.dataset} SPLIT_ID={args.split_id or 1}"
    return f"DATASET={args.dataset}"



def execution(args: argparse.Namespace) -> ExecOptions:
    cluster = load_cluster_spec(args.cluster_config, args.cluster, max_jobs=args.jobs) if args.cluster else None
    if cluster and args.scheduler:
        raise UsageError("--cluster starts its own scheduler; leave out --scheduler")
    return ExecOptions(workers=args.workers, scheduler=args.scheduler, cluster=cluster, dashboard=args.dashboard,
                       max_tries=args.max_tries)



SAM_ARGS = {"sam_type": "sam_type", "checkpoint": "sam_checkpoint", "every": "refine_every",
            "precision": "sam_precision"}  # RefineSpec field → argument



def refine_spec(args: argparse.Namespace) -> RefineSpec | None:
    """SAM's settings where `--refine sam` asks for it; given without it, an error: they would be dropped unseen."""
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
            threads=args.threads or 0,
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
