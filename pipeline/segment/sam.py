"""segment-anything refinement: each detected instance's box prompts SAM, whose mask replaces the detector's.

Runs on keyframes (every Nth decoded frame of a clip, counted from its first); other frames keep the
detector's masks. The keyframes of a batch go through SAM's image encoder `images` at a time, in calls of
that fixed size whatever the packing (sam_device.py: precision, weights cast once, masks to the host as box
windows). A SAM mask that comes out empty keeps the detector's mask (counted in the log at debug level), so
refinement never drops an instance.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline import rle
from pipeline.decode import FrameBatch
from pipeline.segment.base import (
    RANDOM,
    FrameMasks,
    RefineSpec,
    Segmenter,
    SegmenterLoadError,
    boxes_from_masks,
    file_sha256,
    sam_precision,
)

log = logging.getLogger(__name__)

SAM_TYPES = ("vit_b", "vit_l", "vit_h")
SAM_PRECISIONS = ("bf16", "fp16", "fp32")  # on CUDA; a CPU runs fp32
CHECKPOINTS = {  # the official file of each type, named in the error when none is given
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}


class SamRefiner:
    """Refines FrameMasks with any `segment_anything.modeling.Sam` (built by `load_sam`, or a small one in tests),
    whose weights it casts, once, to `precision` (None: bf16 on CUDA, fp32 on a CPU)."""

    def __init__(self, sam, *, every: int = 1, images: int = 4, precision: str | None = None) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        from pipeline.segment import sam_device

        self.sam = sam
        self.every = every
        self.images = images
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        dtype = sam_device.choose_dtype(sam.device, sam_precision(precision, str(sam.device)))
        sam_device.cast_once(sam, dtype)
        self.precision = sam_device.PRECISIONS[dtype]
        self._image_pe = None  # the prompt encoder's dense positional encoding, in the model's dtype

    def refine(self, batch: FrameBatch, found: list[FrameMasks]) -> list[FrameMasks]:
        """`found` with the masks of every keyframe's instances replaced by SAM's (at the source size)."""
        keys = [i for i in range(len(batch)) if batch.positions[i] % self.every == 0 and len(found[i])]
        refined = list(found)
        for first in range(0, len(keys), self.images):
            chunk = keys[first:first + self.images]
            boxes, masks = self._predict(batch, [found[i] for i in chunk], chunk)
            for i, count in zip(chunk, np.cumsum([len(found[i]) for i in chunk])):
                k = slice(count - len(found[i]), count)
                refined[i] = _merge(found[i], boxes[k], masks[k], (batch.height, batch.width))
        return refined

    def _predict(self, batch: FrameBatch, found: list[FrameMasks], chunk: list[int]):
        """Boxes and masks of every instance of the keyframes `chunk`: windows (sam_device.to_host), or RLE strings
        made on the device (`to_host_rles`, on a device_rle.DEVICES device)."""
        import torch

        from pipeline.segment import device_rle, sam_device

        sam = self.sam
        height, width = batch.frames.shape[1:3]
        size = self.transform.get_preprocess_shape(height, width, self.transform.target_length)
        scale = np.array([size[1] / batch.width, size[0] / batch.height] * 2, dtype=np.float32)
        prompts = np.concatenate([f.xyxy for f in found]).astype(np.float32) * scale  # source → model-frame pixels
        with torch.inference_mode():
            frames = torch.from_numpy(batch.frames[chunk]).to(sam.device)
            boxes = torch.from_numpy(prompts).to(sam.device).split([len(f) for f in found])
            embeddings = sam_device.encode(sam, frames, size, self.images)
            if self._image_pe is None:
                self._image_pe = sam.prompt_encoder.get_dense_pe().to(sam.refine_dtype)
            masks = [sam_device.decode(sam, embeddings[j:j + 1], boxes[j], self._image_pe, size,
                                       (batch.height, batch.width)) for j in range(len(chunk))]
            masks = torch.cat(masks)
            if masks.device.type in device_rle.DEVICES:
                return sam_device.to_host_rles(masks)
            return sam_device.to_host(masks)


class RefinedSegmenter:
    """A segmenter whose keyframe masks are refined by SAM; same names, provenance extended."""

    def __init__(self, base: Segmenter, refiner: SamRefiner, provenance: dict[str, str]) -> None:
        self.base = base
        self.refiner = refiner
        self.names = base.names
        self._provenance = provenance

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        return self.refiner.refine(batch, self.base.segment(batch))

    def provenance(self) -> dict[str, str]:
        """The base's and SAM's, with what ran here: the precision (fp32, bf16 or fp16) and images per encoder call."""
        return {**self.base.provenance(), **self._provenance, "sam_precision": self.refiner.precision,
                "sam_images": str(self.refiner.images)}


def refine_provenance(spec: RefineSpec) -> dict[str, str]:
    random = spec.checkpoint == RANDOM
    return {
        "refine": "sam",
        "sam_type": spec.sam_type,
        "sam_checkpoint": f"none (random init of {spec.sam_type})" if random else spec.checkpoint,
        "sam_sha256": "" if random else file_sha256(Path(spec.checkpoint)),
        "sam_every": str(spec.every),
    }


def check_refine(spec: RefineSpec, device: str) -> None:
    """Fail before a run starts when the SAM type, precision or checkpoint cannot work; loads nothing."""
    if spec.sam_type not in SAM_TYPES:
        raise SegmenterLoadError(f"unknown SAM type {spec.sam_type!r}; use one of {', '.join(SAM_TYPES)}")
    if spec.precision not in (None, *SAM_PRECISIONS):
        raise SegmenterLoadError(f"SAM precision {spec.precision!r}: use one of {', '.join(SAM_PRECISIONS)}")
    if sam_precision(spec.precision, device) != "fp32" and not device.startswith("cuda"):
        raise SegmenterLoadError(f"SAM runs in fp32 on {device}: leave out SAM_PRECISION={spec.precision} "
                                 "(--sam-precision), or use a CUDA device")
    if spec.checkpoint != RANDOM and not Path(spec.checkpoint).is_file():
        raise missing_checkpoint_error(spec)


def missing_checkpoint_error(spec: RefineSpec) -> SegmenterLoadError:
    given = f"SAM checkpoint {spec.checkpoint!r} not found" if spec.checkpoint else "--refine sam needs a checkpoint"
    return SegmenterLoadError(
        f"{given}. Download {CHECKPOINTS.get(spec.sam_type, 'the checkpoint')} (segment-anything's model "
        f"checkpoints for {spec.sam_type}) and pass SAM_CHECKPOINT=/path/to/it.pth (--sam-checkpoint), "
        "or leave out REFINE=sam (--refine)."
    )


def load_sam(spec: RefineSpec, device: str):
    """The SAM model of a spec on `device`, in eval mode; a checkpoint of another type is a clear error."""
    import torch
    from segment_anything import sam_model_registry

    check_refine(spec, device)
    sam = sam_model_registry[spec.sam_type](checkpoint=None)
    if spec.checkpoint != RANDOM:
        try:
            state = torch.load(spec.checkpoint, map_location="cpu", weights_only=True)
            sam.load_state_dict(state)
        except Exception as exc:  # unpickling and shape mismatches raise several types
            raise SegmenterLoadError(
                f"{spec.checkpoint}: cannot load as a SAM {spec.sam_type} checkpoint ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}); check --sam-type matches the file"
            ) from exc
    log.info("loaded SAM %s from %s", spec.sam_type, spec.checkpoint)
    return sam.to(device).eval()


def _merge(found: FrameMasks, boxes: np.ndarray, masks: list[np.ndarray] | list[bytes | None],
           size: tuple[int, int]) -> FrameMasks:
    """Take SAM's mask per instance (a window at its tight box, or its RLE string), except where it is empty: the
    detector's mask is kept there, the same way; boxes follow the masks kept."""
    strings = bool(masks) and not isinstance(masks[0], np.ndarray)
    empty = [mask is None for mask in masks] if strings else [not mask.size for mask in masks]
    if any(empty):
        log.debug("SAM gave %d empty masks; kept the detector's", sum(empty))
    xyxy = np.where(np.array(empty)[:, None], found.xyxy, boxes.astype(np.float32))
    masks = list(masks)
    if strings:
        theirs = found.rle() if any(empty) else []
        for k in np.flatnonzero(empty):
            masks[k] = theirs[k]
        return FrameMasks(xyxy=xyxy, conf=found.conf, cls=found.cls, rles=tuple(masks), size=size)
    origins = boxes[:, [1, 0]].copy()
    for k in np.flatnonzero(empty):
        masks[k], origins[k] = _detector_window(found, k)
    return FrameMasks(xyxy=xyxy, conf=found.conf, cls=found.cls, windows=tuple(masks), origins=origins, size=size)


def _detector_window(found: FrameMasks, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The detector's mask of instance k as (window, (y, x) origin), whichever way it holds it."""
    if found.windows:
        return found.windows[k], found.origins[k]
    mask = found.masks[k] if found.masks is not None else rle.decode(found.rles[k], *found.size)
    x1, y1, x2, y2 = boxes_from_masks(mask[None])[0].astype(int)
    return mask[y1:y2, x1:x2], np.array([y1, x1])
