"""segment-anything on the model's device: one precision, weights cast once, fixed-shape encoder calls, and
masks that reach the host in one transfer per call: as RLE runs made on a CUDA device (device_rle), as
bit-packed box windows elsewhere.

Precision: fp32 on a CPU; on CUDA bf16 by default, which a device must compute natively (compute capability 8 and
up): an older one fails to load, and fp16 (whose range a ViT-H's activations can exceed) is asked for by name, so
that a run's masks are all of the precision its fingerprint names. The image encoder and the mask decoder are
cast to it once, at load; segment-anything's LayerNorm2d (which squares deviations itself) keeps fp32 weights and
computes in fp32, and the prompt encoder (a few thousand weights; segment-anything computes its positional
encoding in fp32) stays fp32, its embeddings cast when they enter the decoder. Logits that come out non-finite
make an empty mask (the caller keeps the detector's).

Fixed shapes: the image encoder always takes `images` images, zeros where fewer keyframes are left, since
kernels, and with them the last bits of the embeddings, change with the batch size. A keyframe's embedding
then does not depend on which keyframes share its call. Prompts, mask decoder and upsampling run per keyframe
on its own boxes.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d

from pipeline.segment.base import SegmenterLoadError

PRECISIONS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def choose_dtype(device: torch.device | str, precision: str) -> torch.dtype:
    """The dtype of `precision` (fp32, bf16, fp16) on `device`; bf16 on a CUDA device that does not compute in it
    natively is a load error that says what to ask for instead."""
    dtype = {name: dtype for dtype, name in PRECISIONS.items()}[precision]
    device = torch.device(device)
    if dtype != torch.bfloat16 or device.type != "cuda":
        return dtype
    with torch.cuda.device(device):  # is_bf16_supported asks about the current device
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.4 has no `including_emulation` (nor emulates): compute capability 8+
            native = torch.cuda.get_device_capability(device)[0] >= 8
    if not native:
        raise SegmenterLoadError(f"SAM runs in bf16 on CUDA, which {device} ({torch.cuda.get_device_name(device)}) "
                                 "does not compute natively: set SAM_PRECISION=fp16 (--sam-precision; its masks go to "
                                 "a run folder of their own), or fp32")
    return dtype


def cast_once(sam, dtype: torch.dtype) -> None:
    """Cast the image encoder's and mask decoder's weights to `dtype`, LayerNorm2d's excepted (they run in fp32).
    A model is cast once: again to the same dtype does nothing, to another is an error."""
    done = getattr(sam, "refine_dtype", None)
    if done == dtype:
        return
    if done is not None:
        raise ValueError(f"this SAM model was cast to {done} already; load it again for {dtype}")
    sam.refine_dtype = dtype
    if dtype == torch.float32:
        return
    for part in (sam.image_encoder, sam.mask_decoder):
        part.to(dtype)
        for module in part.modules():
            if isinstance(module, LayerNorm2d):
                module.float()
                module.register_forward_pre_hook(_inputs_as_fp32)
                module.register_forward_hook(partial(_output_as, dtype))


def _inputs_as_fp32(module, args):
    return tuple(a.float() for a in args)


def _output_as(dtype, module, args, output):
    return output.to(dtype)


def encode(sam, frames: torch.Tensor, size: tuple[int, int], images: int) -> torch.Tensor:
    """Image embeddings (`images`, C, h, w) of (n ≤ images, H, W, 3) uint8 frames on the device, resized to
    `size` (the model-frame size of their long side) and padded as segment-anything pads them."""
    if len(frames) > images:
        raise ValueError(f"{len(frames)} frames for an encoder call of {images}")
    x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size, mode="bilinear", align_corners=False,
                      antialias=True)  # not transform.apply_image_torch, which reads (H, W) from the wrong axes
    x = (x - sam.pixel_mean) / sam.pixel_std
    side = sam.image_encoder.img_size
    x = F.pad(x, (0, side - size[1], 0, side - size[0], 0, 0, 0, images - len(x)))  # also zero images to `images`
    return sam.image_encoder(x.to(sam.refine_dtype))


def decode(sam, embedding: torch.Tensor, boxes: torch.Tensor, image_pe: torch.Tensor, size: tuple[int, int],
           original: tuple[int, int]) -> torch.Tensor:
    """(K, H, W) bool masks at the `original` size of one image's (1, C, h, w) embedding and its (K, 4) boxes in
    model-frame pixels; `image_pe` is the prompt encoder's dense positional encoding in the model's dtype."""
    dtype = sam.refine_dtype
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    logits, _ = sam.mask_decoder(image_embeddings=embedding, image_pe=image_pe,
                                 sparse_prompt_embeddings=sparse.to(dtype), dense_prompt_embeddings=dense.to(dtype),
                                 multimask_output=False)
    logits = logits.float()
    finite = torch.isfinite(logits).flatten(1).all(1)
    masks = sam.postprocess_masks(logits, size, original)[:, 0] > sam.mask_threshold
    return masks & finite[:, None, None]


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) int64 x1, y1, x2, y2 (x2, y2 exclusive) of an (N, H, W) bool stack, on its device; zeros if empty."""
    def span(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(hit.shape[1], device=hit.device)
        first = torch.where(hit, index, hit.shape[1]).amin(1)
        end = torch.where(hit, index + 1, 0).amax(1)
        return torch.where(hit.any(1), first, 0), end

    (y1, y2), (x1, x2) = span(masks.any(2)), span(masks.any(1))
    return torch.stack([x1, y1, x2, y2], dim=1)


def to_host_rles(masks: torch.Tensor) -> tuple[np.ndarray, list[bytes | None]]:
    """(N, 4) int boxes and N pycocotools RLE strings (None for an empty mask) of an (N, H, W) bool stack, the
    run lengths made on the device (device_rle). Two waits: the boxes, then every mask's runs (two more for each
    part whose runs outgrew their room, redone exactly: `RunBatch.fetch`)."""
    from pipeline.segment import device_rle

    boxes = tight_boxes(masks)
    count, height, width = masks.shape
    whole = torch.zeros((count, 2), dtype=torch.int64, device=masks.device)  # made there: no copy to wait for
    extent = torch.stack([torch.full_like(whole[:, 0], width), torch.full_like(whole[:, 0], height)], dim=1)
    runs = device_rle.RunBatch(height, width)
    runs.add(masks, whole, extent, capacity=device_rle.capacity(np.full(count, width)))
    return boxes.cpu().numpy(), runs.strings()


def to_host(masks: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
    """(N, 4) int boxes and N bool windows (each mask inside its tight box; 0×0 when empty) of an (N, H, W) bool
    stack on the device. Two waits: the boxes, then every window bit-packed into one buffer (on a device whose
    RLE is made there, `to_host_rles`)."""
    boxes = tight_boxes(masks).cpu().numpy()
    if not len(masks):
        return boxes, []
    flat = torch.cat([masks[k, y1:y2, x1:x2].reshape(-1) for k, (x1, y1, x2, y2) in enumerate(boxes.tolist())])
    bits = np.unpackbits(_pack_bits(flat).cpu().numpy(), count=len(flat)).view(bool)
    shapes = [(y2 - y1, x2 - x1) for x1, y1, x2, y2 in boxes.tolist()]
    ends = np.cumsum([h * w for h, w in shapes])
    return boxes, [part.reshape(shape) for part, shape in zip(np.split(bits, ends[:-1]), shapes)]


def _pack_bits(flat: torch.Tensor) -> torch.Tensor:
    """np.packbits of a 1-D bool tensor, on its device (first value in the high bit)."""
    octets = F.pad(flat.to(torch.uint8), (0, -len(flat) % 8)).view(-1, 8)
    weights = 2 ** torch.arange(7, -1, -1, device=flat.device, dtype=torch.int32)
    return (octets * weights).sum(1).to(torch.uint8)
