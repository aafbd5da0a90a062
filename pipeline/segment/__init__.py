"""Segmenter backends behind one interface; `load_segmenter` builds (and caches per process) one from a spec."""

from __future__ import annotations

import dataclasses
import functools
import importlib
from pathlib import Path

from pipeline.segment.base import (
    RANDOM,
    FrameMasks,
    RefineSpec,
    Segmenter,
    SegmenterLoadError,
    SegmenterSpec,
    file_sha256,
)

BACKENDS = ("yolo", "selfie")

__all__ = ["BACKENDS", "FrameMasks", "RefineSpec", "Segmenter", "SegmenterLoadError", "SegmenterSpec", "check_segmenter",
           "load_segmenter", "resolve_weights", "weights_digests"]


def check_segmenter(spec: SegmenterSpec) -> None:
    """Fail before a run writes anything when the weights a spec names plainly are not there.

    Cheap: loads nothing. A bare YOLO name (``yolo11n-seg.pt``) passes, since ultralytics may download it;
    if it cannot, the first shard's load error stops the run.
    """
    if spec.refine:
        from pipeline.segment.sam import check_refine

        check_refine(spec.refine, spec.device)
    if spec.backend == "selfie":
        from pipeline.segment.selfie import missing_model_error

        if not Path(spec.selfie_model).is_file():
            raise missing_model_error(Path(spec.selfie_model))
    elif spec.backend == "yolo":
        from pipeline.segment.yolo import missing_weights_error

        model = Path(spec.model)
        if model.suffix == ".pt" and model.parent != Path(".") and not model.is_file():
            raise missing_weights_error(spec.model, FileNotFoundError(f"{model} does not exist"))


def resolve_weights(spec: SegmenterSpec) -> SegmenterSpec:
    """The spec with every weights file it names as an absolute path (workers may run in another folder), a
    YOLO name found where ultralytics keeps weights (or downloaded, where it can be); SegmenterLoadError when
    the weights cannot be had. Runs before anything is written."""
    check_segmenter(spec)
    changes = {}
    if spec.backend == "yolo":
        from pipeline.segment.yolo import locate_weights

        changes["model"] = locate_weights(spec.model)
    elif spec.backend == "selfie":
        changes["selfie_model"] = str(Path(spec.selfie_model).absolute())
    if spec.refine and spec.refine.checkpoint != RANDOM:
        changes["refine"] = dataclasses.replace(spec.refine, checkpoint=str(Path(spec.refine.checkpoint).absolute()))
    return dataclasses.replace(spec, **changes)


def weights_digests(spec: SegmenterSpec) -> dict[str, str]:
    """SHA-256 of the content of every weights file a resolved spec names (YOLO weights or architecture yaml,
    selfie model, SAM checkpoint): what the masks are made from, wherever the file lies."""
    digests = {}
    if spec.backend == "yolo":
        from pipeline.segment.yolo import weights_digest

        digests["model"] = weights_digest(spec.model)
    elif spec.backend == "selfie":
        digests["selfie_model"] = file_sha256(Path(spec.selfie_model))
    if spec.refine and spec.refine.checkpoint != RANDOM:
        digests["sam_checkpoint"] = file_sha256(Path(spec.refine.checkpoint))
    return digests


@functools.lru_cache(maxsize=2)
def load_segmenter(spec: SegmenterSpec) -> Segmenter:
    """The segmenter a spec names; a worker process loads each model once and reuses it for every shard. A
    backend with a `warm_up` runs its first batch here: what fails there fails every batch (a CPU-only
    torchvision's NMS on CUDA, a dtype the device lacks, too little memory for the model), so it is a load error
    that stops the run, not a failure of each clip."""
    base = _load_backend(spec)
    warm_up = getattr(base, "warm_up", None)
    if warm_up is not None:
        try:
            warm_up()
        except SegmenterLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the device raises on its first batch
            raise SegmenterLoadError(
                f"the {spec.backend} segmenter ({spec.model if spec.backend == 'yolo' else spec.backend}) failed its "
                f"first batch on {spec.device}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
                "Check that torch and torchvision are matching builds for this device (`pip show torch torchvision`) "
                "and that it has memory free, or use DEVICE=cpu") from exc
    if not spec.refine:
        return base
    from pipeline.segment.sam import RefinedSegmenter, SamRefiner, load_sam, refine_provenance

    sam = load_sam(spec.refine, spec.device)
    images = spec.refine.images if spec.device.startswith("cuda") else 1  # a CPU gains nothing from batching
    refiner = SamRefiner(sam, every=spec.refine.every, images=images, precision=spec.refine.precision)
    return RefinedSegmenter(base, refiner, refine_provenance(spec.refine))


def _load_backend(spec: SegmenterSpec) -> Segmenter:
    if spec.backend == "yolo":
        from pipeline.segment.yolo import YoloSegmenter

        return YoloSegmenter(spec)
    if spec.backend == "selfie":
        from pipeline.segment.selfie import SelfieSegmenter

        return SelfieSegmenter(spec)
    module_name, _, class_name = spec.backend.partition(":")
    if not class_name:
        raise SegmenterLoadError(f"unknown segmenter {spec.backend!r}: use one of {BACKENDS} or 'module:Class'")
    try:
        backend = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise SegmenterLoadError(f"cannot import segmenter {spec.backend!r}: {exc}") from exc
    return backend(spec)
