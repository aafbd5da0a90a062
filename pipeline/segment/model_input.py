"""How frames of one size become a YOLO model's input, and its boxes frame pixels again: ultralytics' LetterBox
(with `auto`) and scale_boxes, on the device."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format  # Tensor.suggest_memory_format, which torch keeps private

PAD_VALUE = 114  # ultralytics' letterbox grey


def input_size(height: int, width: int, imgsz: int | None) -> int:
    """The model input size both paths ask for: `imgsz`, or the frames' long side rounded up to 32, at most 640."""
    return imgsz or min(640, 32 * math.ceil(max(height, width) / 32))


@dataclass(frozen=True)
class Geometry:
    """How frames of one size map onto the model input (ultralytics' LetterBox with `auto`, and scale_boxes)."""

    height: int  # the frames handed to the model
    width: int
    input_height: int  # the model input, padded to the stride
    input_width: int
    new_height: int  # the frame resized, before padding
    new_width: int
    top: int
    left: int

    @classmethod
    def of(cls, height: int, width: int, imgsz: int, stride: int) -> "Geometry":
        imgsz = max(stride, math.ceil(imgsz / stride) * stride)  # ultralytics' check_imgsz
        r = min(imgsz / height, imgsz / width)
        new_w, new_h = max(round(width * r), 1), max(round(height * r), 1)
        dw, dh = (imgsz - new_w) % stride / 2, (imgsz - new_h) % stride / 2
        top, bottom, left, right = round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1)
        return cls(height, width, new_h + top + bottom, new_w + left + right, new_h, new_w, top, left)

    def to_frame(self, boxes: torch.Tensor) -> torch.Tensor:
        """Model-input xyxy → frame pixels, clipped (scale_boxes)."""
        gain = min(self.input_height / self.height, self.input_width / self.width)
        new_h, new_w = max(round(self.height * gain), 1), max(round(self.width * gain), 1)
        pad_x = round((self.input_width - new_w) / 2 - 0.1)
        pad_y = round((self.input_height - new_h) / 2 - 0.1)
        return per_axis(boxes, lambda x: ((x - pad_x) / (new_w / self.width)).clamp(0, self.width),
                        lambda y: ((y - pad_y) / (new_h / self.height)).clamp(0, self.height))


def letterbox(frames: torch.Tensor, geometry: Geometry, dtype: torch.dtype) -> torch.Tensor:
    """(N, h, w, 3) uint8 RGB on the device → (N, 3, H, W) model input in [0, 1], grey-padded, in the layout
    torch suggests for the frames (channels-last for interleaved frames, a crop or a slice of them: the layout the
    network runs fastest on, and whose kernels shaped the masks). The values and layout of resizing, padding with
    PAD_VALUE and dividing by 255 in turn (tests/test_yolo_device.py), in fewer passes: the frames become float
    in the layout they are resized in, the resized frames are divided straight into the padded input, and its
    margins alone are filled (with the pad value divided there, by the same kernel)."""
    # float32 even for a half model: half keeps steps of 1/8 above 128, so its rounding to uint8 steps would differ
    x = frames.permute(0, 3, 1, 2)
    layout = suggest_memory_format(x)  # as F.pad chose it when the input was made step by step (dense or sliced
    # frames: tested; a broadcast or transposed view may differ, which nothing here makes)
    size = (geometry.new_height, geometry.new_width)
    if size != (geometry.height, geometry.width):
        planar = torch.contiguous_format if _resize_planar(x, geometry) else torch.preserve_format
        x = F.interpolate(x.to(torch.float32, memory_format=planar), size=size, mode="bilinear", align_corners=False)
        x = x.round_().clamp_(0, 255)  # uint8 steps, as OpenCV's resize gives them
    out = torch.empty((len(x), 3, geometry.input_height, geometry.input_width), dtype=torch.float32,
                      device=x.device, memory_format=layout)
    top, left = geometry.top, geometry.left
    bottom, right = top + geometry.new_height, left + geometry.new_width
    torch.div(x, 255, out=out[:, :, top:bottom, left:right])
    for margin in (out[:, :, :top], out[:, :, bottom:], out[:, :, top:bottom, :left], out[:, :, top:bottom, right:]):
        if margin.numel():  # divided on the device, as the frames are: CUDA multiplies by 1/255, a CPU divides
            margin.fill_(PAD_VALUE).div_(255)
    return out.to(dtype)


def _resize_planar(x: torch.Tensor, geometry: Geometry) -> bool:
    """Whether interleaved (channels-last) frames are resized faster made planar first, to the same values: on a
    CPU with several threads, enlarging to more than 128 rows and columns together, 2-2.5× faster. On one thread,
    shrinking, or smaller, torch's channels-last path was as fast or faster; CUDA is left as it was
    (docs/PERFORMANCE.md, ninth session)."""
    return (x.device.type == "cpu" and torch.get_num_threads() > 1
            and x.is_contiguous(memory_format=torch.channels_last)
            and geometry.new_height + geometry.new_width > 128
            and geometry.new_height * geometry.new_width >= geometry.height * geometry.width)


def per_axis(boxes: torch.Tensor, x, y) -> torch.Tensor:
    """(K, 2n) boxes with `x` applied to their even columns (x) and `y` to the odd ones (y): constants as Python
    numbers, so that no small tensor is copied to the device (each such copy waits for it)."""
    return torch.stack([x(boxes[:, 0::2]), y(boxes[:, 1::2])], dim=2).flatten(1)
