"""segment-anything refinement: each detected instance's box prompts SAM, whose mask replaces the detector's.

Runs on keyframes (every Nth decoded frame of a clip, counted from its first); other frames keep the
detector's masks. The keyframes of a batch go through SAM's image encoder together, with all their boxes,
and the masks are upsampled to the source size on the model's device. A SAM mask that comes out empty keeps
the detector's mask (counted in the log at debug level), so refinement never drops an instance.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from pipeline.decode import FrameBatch
from pipeline.segment.base import (
    RANDOM,
    FrameMasks,
    RefineSpec,
    Segmenter,
    SegmenterLoadError,
    boxes_from_masks,
    file_sha256,
)

log = logging.getLogger(__name__)

SAM_TYPES = ("vit_b", "vit_l", "vit_h")
CHECKPOINTS = {  # the official file of each type, named in the error when none is given
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}


class SamRefiner:
    """Refines FrameMasks with any `segment_anything.modeling.Sam` (built by `load_sam`, or a small one in tests)."""

    def __init__(self, sam, *, every: int = 1, images: int = 4) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.sam = sam
        self.every = every
        self.images = images
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.half = sam.device.type == "cuda"

    def refine(self, batch: FrameBatch, found: list[FrameMasks]) -> list[FrameMasks]:
        """`found` with the masks of every keyframe's instances replaced by SAM's (at the source size)."""
        keys = [i for i in range(len(batch)) if batch.positions[i] % self.every == 0 and len(found[i])]
        refined = list(found)
        for first in range(0, len(keys), self.images):
            chunk = keys[first:first + self.images]
            outputs = self._predict([self._prompt(batch, found[i], i) for i in chunk])
            for i, output in zip(chunk, outputs):
                refined[i] = _merge(found[i], output["masks"][:, 0].cpu().numpy())
        return refined

    def _prompt(self, batch: FrameBatch, found: FrameMasks, i: int) -> dict:
        import torch
        import torch.nn.functional as F

        device = self.sam.device
        frame = torch.from_numpy(batch.frames[i]).to(device).permute(2, 0, 1)[None].float()
        height, width = frame.shape[-2:]
        scale = torch.tensor([width / batch.width, height / batch.height] * 2, device=device)
        boxes = torch.from_numpy(found.xyxy).to(device) * scale  # source pixels → inference-frame pixels
        # resized on the device; not with transform.apply_image_torch, which reads (H, W) from the wrong axes
        size = self.transform.get_preprocess_shape(height, width, self.transform.target_length)
        return {
            "image": F.interpolate(frame, size, mode="bilinear", align_corners=False, antialias=True)[0],
            "boxes": self.transform.apply_boxes_torch(boxes, (height, width)),
            "original_size": (batch.height, batch.width),  # masks come back at the source size
        }

    def _predict(self, inputs: list[dict]) -> list[dict]:
        import torch

        precision = torch.autocast("cuda", dtype=torch.float16) if self.half else contextlib.nullcontext()
        with torch.inference_mode(), precision:
            return self.sam(inputs, multimask_output=False)


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
        return {**self.base.provenance(), **self._provenance}


def refine_provenance(spec: RefineSpec) -> dict[str, str]:
    random = spec.checkpoint == RANDOM
    return {
        "refine": "sam",
        "sam_type": spec.sam_type,
        "sam_checkpoint": f"none (random init of {spec.sam_type})" if random else spec.checkpoint,
        "sam_sha256": "" if random else file_sha256(Path(spec.checkpoint)),
        "sam_every": str(spec.every),
    }


def check_refine(spec: RefineSpec) -> None:
    """Fail before a run starts when the SAM type or checkpoint cannot work; loads nothing."""
    if spec.sam_type not in SAM_TYPES:
        raise SegmenterLoadError(f"unknown SAM type {spec.sam_type!r}; use one of {', '.join(SAM_TYPES)}")
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

    check_refine(spec)
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


def _merge(found: FrameMasks, sam_masks: np.ndarray) -> FrameMasks:
    """Take SAM's mask per instance, except where it is empty; boxes follow the masks kept."""
    empty = ~sam_masks.any(axis=(1, 2))
    if empty.any():
        log.debug("SAM gave %d empty masks; kept the detector's", int(empty.sum()))
        sam_masks[empty] = found.full()[empty]
    return FrameMasks(masks=sam_masks, xyxy=np.where(empty[:, None], found.xyxy, boxes_from_masks(sam_masks)),
                      conf=found.conf, cls=found.cls)
