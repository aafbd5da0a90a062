"""Segmenter backends behind one interface; `load_segmenter` builds (and caches per process) one from a spec."""

from __future__ import annotations

import functools
import importlib

from pipeline.segment.base import FrameMasks, Segmenter, SegmenterLoadError, SegmenterSpec

BACKENDS = ("yolo", "selfie")

__all__ = ["BACKENDS", "FrameMasks", "Segmenter", "SegmenterLoadError", "SegmenterSpec", "load_segmenter"]


@functools.lru_cache(maxsize=2)
def load_segmenter(spec: SegmenterSpec) -> Segmenter:
    """The segmenter a spec names; a worker process loads each model once and reuses it for every shard."""
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
