"""YOLO-seg inference kept on the device for a whole batch: letterbox, forward, NMS and mask assembly.

The same computation as ultralytics' `predict()` (LetterBox, non_max_suppression, scale_boxes,
process_mask_native, crop_mask) without its per-image host work:
- the uint8 frames cross to the device once; letterboxing is a bilinear resize and a pad there;
- NMS runs on the device at fixed shapes (device_nms): each frame's best candidates, as many as a fixed room,
  so that the host does not wait to learn how many there are or how many were kept;
- each kept instance's mask is assembled only inside its box, at the source size: ultralytics upsamples the
  prototype-resolution logits in two bilinear steps, which are linear and separable, so they are folded into one
  row operator and one column operator (built once per frame geometry by running the same interpolations on an
  identity), and a window is `rows @ logits @ cols.T`;
- the windows cross to the host as booleans (`FrameMasks.windows`), or on CUDA as RLE runs made there
  (`FrameMasks.rles`), not K whole frames.
Equivalence with `predict()` is tested (tests/test_yolo_device.py).

Bytes do not depend on scheduling: the network runs every batch padded to its `capacity` (the same for every
batch of one frame size), and each instance's mask is assembled at padded sizes that depend on its own box only
(`ladder`), never on the instances it shares the batch with (tests/test_fixed_batches.py). What crosses to the host
does so in two packed copies per batch (the instances' boxes, scores and windows' places, with whether the batch
must run again; then every window), and the points where the host waits on the device are counted
(`host_waits`): two per batch on a FIXED_NMS device.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from pipeline.segment import device_nms, device_rle, transfer
from pipeline.segment.base import FrameMasks

PAD_VALUE = 114  # ultralytics' letterbox grey
WINDOW_BUDGET = 1 << 24  # float elements of mask windows assembled at once (64 MiB)
NMS_CAPACITY = 512  # FIXED_NMS: the room for each frame's candidates in a first batch (a frame with more runs again)
SMALLEST_ROOM = 64  # FIXED_NMS: the room never shrinks below this …
MAX_ROOM = 1024  # … nor grows past this (its memory grows as its square: device_nms)
FIXED_NMS = ("cuda",)  # devices where NMS runs at a fixed room, so that the host need not ask how many candidates
SMALLEST_WINDOW = 8  # window sides are padded up the ladder 8, 12, 16, 24, 32, 48, … (at most 1.5× each way)


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
    """(N, h, w, 3) uint8 RGB on the device → (N, 3, H, W) model input in [0, 1], grey-padded."""
    x = frames.permute(0, 3, 1, 2).to(torch.float16 if dtype == torch.float16 else torch.float32)  # half on CUDA
    if (geometry.new_height, geometry.new_width) != (geometry.height, geometry.width):
        x = F.interpolate(x, size=(geometry.new_height, geometry.new_width), mode="bilinear", align_corners=False)
        x = x.round_().clamp_(0, 255)  # uint8 steps, as OpenCV's resize gives them
    bottom = geometry.input_height - geometry.new_height - geometry.top
    right = geometry.input_width - geometry.new_width - geometry.left
    x = F.pad(x, (geometry.left, right, geometry.top, bottom), value=PAD_VALUE)
    return x.div_(255).to(dtype)


@dataclass(frozen=True)
class Axis:
    """The linear map along one axis from prototype resolution to frame pixels. Each output reads at most `taps`
    neighbouring inputs, from `start` on, so a window of outputs needs only a short span of inputs."""

    dense: torch.Tensor  # (out, 2 size + taps): the map, then zeros, for reads past its last input
    start: torch.Tensor  # (out,) int64: the first input each output reads
    taps: int
    first: np.ndarray  # `start` on the host
    spans: dict = dataclasses.field(default_factory=dict, compare=False)  # span(n), as asked for

    @classmethod
    def of(cls, dense: torch.Tensor) -> "Axis":
        nonzero = dense != 0
        size = dense.shape[1]
        first = torch.where(nonzero.any(1), nonzero.float().argmax(1), 0)
        last = size - 1 - nonzero.flip(1).float().argmax(1)
        taps = int((last - first).max()) + 1
        # any span (`span`) starts before `size` and is at most size - 1 + taps long: it ends inside the zeros
        return cls(F.pad(dense, (0, size + taps)), first, taps, first.cpu().numpy())

    def span(self, n: int) -> int:
        """Inputs that any run of n consecutive outputs reads (wherever it starts)."""
        if n not in self.spans:
            n_in = min(n, len(self.first))
            self.spans[n] = int((self.first[n_in - 1:] - self.first[:len(self.first) - n_in + 1]).max()) + self.taps
        return self.spans[n]

    def sub(self, outputs: torch.Tensor, begin: torch.Tensor, length: int) -> torch.Tensor:
        """(k, n, length): for each k, the map's rows `outputs[k]` over the inputs begin[k] … begin[k] + length
        (0 past the last input): whole rows of `length` entries, picked from a view of every such row (a copy:
        callers may write into it)."""
        return self.dense.unfold(1, length, 1)[outputs, begin[:, None]]


@functools.lru_cache(maxsize=32)
def mask_operators(proto_shape: tuple[int, int], height: int, width: int, out_height: int, out_width: int,
                   device: torch.device) -> tuple[Axis, Axis]:
    """The maps along rows and along columns that take prototype-resolution logits to output pixels
    (process_mask_native: upsample ×f, crop the letterbox padding of the (height, width) frames the model saw,
    resize, here straight to the output size, the source's display size)."""
    mh, mw = proto_shape
    gain = min(4 * mh / height, 4 * mw / width)
    pad = (4 * mh - max(round(height * gain), 1)) | (4 * mw - max(round(width * gain), 1))
    f = 4 // math.gcd(4, pad | pad // 2)
    im_h, im_w = mh * f, mw * f
    gain = min(im_h / height, im_w / width)
    pad_w, pad_h = (im_w - max(round(width * gain), 1)) / 2, (im_h - max(round(height * gain), 1)) / 2
    top, left = round(pad_h - 0.1), round(pad_w - 0.1)
    bottom, right = top + max(round(height * gain), 1), left + max(round(width * gain), 1)
    return (Axis.of(_axis_operator(mh, f, top, bottom, out_height, device)),
            Axis.of(_axis_operator(mw, f, left, right, out_width, device)))


def _axis_operator(size: int, f: int, start: int, stop: int, out: int, device: torch.device) -> torch.Tensor:
    """The same interpolations along one axis, applied to each unit vector: column j is the response to e_j."""
    unit = torch.eye(size, device=device, dtype=torch.float32)[:, None, :, None]  # (size, 1, size, 1)
    if f > 1:
        unit = F.interpolate(unit, scale_factor=(f, 1), mode="bilinear")
    unit = F.interpolate(unit[:, :, start:stop], size=(out, 1), mode="bilinear")
    return unit[:, 0, :, 0].T.contiguous()  # (out, size)


@dataclass(frozen=True, kw_only=True)
class Instances:
    """A batch's instances after NMS, on the device, in slots: each frame has min(room, max_det) slots, its kept
    instances first by falling score, the rest unused; flattened (K = frames × slots), boxes in output pixels."""

    xyxy: torch.Tensor  # (K, 4) float32
    coeffs: torch.Tensor  # (K, 32) mask coefficients
    origin: torch.Tensor  # (K, 2) int64 x, y: the top-left pixel of the mask window (inside the frame)
    extent: torch.Tensor  # (K, 2) int64 w, h: the window's size

    def __add__(self, other: "Instances") -> "Instances":
        return Instances(**{f.name: torch.cat([getattr(self, f.name), getattr(other, f.name)])
                            for f in dataclasses.fields(self)})


@dataclass(frozen=True, kw_only=True)
class Queued:
    """A batch's instances, their copy to the host on its way."""

    instances: Instances
    copy: "transfer.HostCopy"  # the (K, 12) meta, then each frame's candidates and whether its NMS settled
    shape: tuple[int, int]  # the meta's
    room: int  # the candidates NMS took per frame


@dataclass(frozen=True, kw_only=True)
class Detections:
    """A batch's instances with their copy on the host (`meta`), and what it says of the frames."""

    instances: Instances
    meta: np.ndarray  # (K, 12) float32: frame, xyxy, conf, cls, x, y, w, h, rank (inf for an unused slot)
    counts: np.ndarray  # (frames,) candidates each frame had (over the threshold, of a kept class)
    again: np.ndarray  # frames to run again: more candidates than the room, or NMS not settled in ROUNDS

    def with_frames(self, frames: np.ndarray, redone: "Detections") -> "Detections":
        """These with the instances of `frames` (by index here) replaced by `redone`'s (by index there)."""
        meta, theirs = self.meta.copy(), redone.meta.copy()
        meta[np.isin(meta[:, 0], frames), 11] = np.inf
        theirs[:, 0] = frames[theirs[:, 0].astype(np.int64)]
        return Detections(instances=self.instances + redone.instances, meta=np.concatenate([meta, theirs]),
                          counts=self.counts, again=redone.again)


@dataclass(frozen=True, kw_only=True)
class Launched:
    """A batch queued on the device (`DeviceYolo.launch`): what its post-processing needs, held until then."""

    yolo: "DeviceYolo"
    preds: torch.Tensor  # (N, anchors, 4 + classes + 32)
    score: torch.Tensor
    usable: torch.Tensor
    proto: torch.Tensor
    geometry: Geometry
    size: tuple[int, int]  # the masks' height, width
    queued: Queued

    def result(self) -> list[FrameMasks]:
        """One FrameMasks per frame (waits for the device)."""
        return self.yolo.finish(self)


class DeviceYolo:
    """A fused ultralytics SegmentationModel run on a device, with predict()'s settings."""

    def __init__(self, model: torch.nn.Module, *, device: str | torch.device, half: bool, conf: float, iou: float,
                 max_det: int, classes: list[int], imgsz: int | None) -> None:
        self.device = torch.device(device)
        self.dtype = torch.float16 if half else torch.float32
        self.model = model.to(self.device).to(self.dtype).eval()
        self.masks = int(model.model[-1].nm)  # mask coefficients per box
        self.stride = int(max(model.stride))
        self.nc = len(model.names)
        self.conf, self.iou, self.max_det, self.imgsz = conf, iou, max_det, imgsz
        self.kept = torch.zeros(self.nc, dtype=torch.bool, device=self.device)  # by class: kept?
        self.kept[classes] = True
        self.some_classes = len(set(classes)) < self.nc
        self.host_waits = 0  # times the host waited on the device (a copy to the host, a result's size)
        self.batches = 0  # batches post-processed
        self._staging = transfer.Staging(self.device) if self.device.type == "cuda" else None
        self._post = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None  # masks' stream
        self._rooms: dict[int, int] = {}  # anchors → the room for NMS's candidates next (`_room`)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray, out_height: int, out_width: int, *, capacity: int = 0
                 ) -> list[FrameMasks]:
        """(N, h, w, 3) uint8 RGB frames → one FrameMasks per frame, masks at (out_height, out_width). The network
        runs on `capacity` frames (the frames, then black ones), so that every batch of one size has one shape."""
        return self.launch(frames, out_height, out_width, capacity=capacity).result()

    @torch.inference_mode()
    def launch(self, frames: np.ndarray, out_height: int, out_width: int, *, capacity: int = 0) -> "Launched":
        """The batch's work queued on the device up to NMS, its instances' copy to the host on its way: the host
        can queue the next batch before it waits for this one (`Launched.result`)."""
        count = len(frames)
        x, geometry = self.prepare(frames, capacity)
        preds, proto = self.forward(x)
        preds = self._checked(preds[:count].float())
        score, usable = self._scores(preds)
        size = (out_height, out_width)
        queued = self._detect(preds, score, usable, self._room(usable), geometry, size)
        return Launched(yolo=self, preds=preds, score=score, usable=usable, proto=proto[:count].float(),
                        geometry=geometry, size=size, queued=queued)

    @torch.inference_mode()
    def finish(self, launched: "Launched") -> list[FrameMasks]:
        """A launched batch's masks. On CUDA its masks are assembled on a stream of their own, beside the next
        batch's network on the model's."""
        with transfer.side_stream(self._post, after=launched.queued.copy.done):
            found = self._arrived(launched.queued)
            preds, geometry, size = launched.preds, launched.geometry, launched.size
            if self.device.type in FIXED_NMS:
                anchors = preds.shape[1]
                most = int(ladder(max(SMALLEST_ROOM, found.counts.max() * 5 // 4)))
                self._rooms[anchors] = min(anchors, MAX_ROOM, most)
            if len(found.again):  # frames with more candidates than the room, or whose NMS had not settled: again,
                room = min(preds.shape[1], int(ladder(found.counts[found.again].max())))  # at their own room, to
                groups = -(-len(found.again) * room * room // device_nms.ROUND_BUDGET)  # the end (the same
                for frames in np.array_split(found.again, groups):  # instances), a few at a time
                    again = _to_device(frames, preds.device)
                    redone = self._detect(preds[again], launched.score[again], launched.usable[again], room,
                                          geometry, size, settle=True)
                    found = found.with_frames(frames, self._arrived(redone))
            self.batches += 1
            return self._frame_masks(found, launched.proto, geometry, len(preds), *size)

    def prepare(self, frames: np.ndarray, capacity: int = 0) -> tuple[torch.Tensor, Geometry]:
        """The frames on the device, padded with black ones to `capacity`, letterboxed: the model's input."""
        height, width = frames.shape[1:3]
        geometry = Geometry.of(height, width, input_size(height, width, self.imgsz), self.stride)
        if self._staging:
            waits = self._staging.waits
            pixels = self._staging.copy(frames)
            self.host_waits += self._staging.waits - waits
        else:
            pixels = torch.from_numpy(frames).to(self.device)
        if capacity > len(frames):
            pixels = torch.cat([pixels, pixels.new_zeros((capacity - len(frames), *pixels.shape[1:]))])
        return letterbox(pixels, geometry, self.dtype), geometry

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network alone: (N, 4 + classes + 32, anchors) predictions and (N, 32, mh, mw) prototypes."""
        (preds, proto), _ = self.model(x)
        return preds, proto

    def warm_up(self) -> None:
        """Two black frames through the whole path with every anchor a candidate (any score, any class), so that
        NMS and mask assembly run too: a device that cannot run it (an operator without a kernel there, a dtype
        it lacks) fails here, at load."""
        conf, kept, some = self.conf, self.kept, self.some_classes
        self.conf, self.kept = -1.0, torch.ones_like(kept)  # whatever the classes kept, but with their test
        try:
            self(np.zeros((2, 64, 64, 3), dtype=np.uint8), 64, 64)
        finally:
            self.conf, self.kept, self.some_classes, self.host_waits, self.batches = conf, kept, some, 0, 0

    def _checked(self, preds: torch.Tensor) -> torch.Tensor:
        """(N, 4 + classes + 32, anchors) network output → (N, anchors, 4 + classes + 32)."""
        if preds.shape[1] != 4 + self.nc + self.masks:
            raise RuntimeError(f"unexpected YOLO-seg output {tuple(preds.shape)}: expected (N, "
                               f"{4 + self.nc + self.masks}, anchors); an end-to-end head must be switched off "
                               "before the model is fused")
        return preds.transpose(1, 2)

    def _scores(self, preds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each anchor's best class score, and whether the anchor is a candidate: over the threshold, its best
        class (the first of equal scores) a kept one, its box finite (an fp16 overflow is dropped before anything
        indexes with it). Which class is best is asked for only where some are not kept (on a CPU the scores
        alone are ten times faster); `_detect` finds it at the candidates."""
        scores = preds[..., 4:4 + self.nc]
        score = scores.amax(dim=2)
        usable = (score > self.conf) & torch.isfinite(preds[..., :4]).all(dim=2)
        if self.some_classes:
            usable &= self.kept[scores.max(dim=2).indices]
        return score, usable

    def _room(self, usable: torch.Tensor) -> int:
        """Candidates NMS takes per frame. On a FIXED_NMS device, a room that follows the batches without asking
        how many candidates this one has: NMS_CAPACITY at first, then the ladder above 1.25× the most a frame
        of the last batch of this size had, at most MAX_ROOM (`finish`; frames with more run again). Elsewhere
        (a CPU, where a wait costs nothing and the work grows with the room) the batch's most, up the ladder.
        The kept instances are the same whatever the room (device_nms)."""
        anchors = usable.shape[1]
        if self.device.type in FIXED_NMS:
            return self._rooms.get(anchors, min(NMS_CAPACITY, anchors))
        self.host_waits += 1
        return min(anchors, int(ladder(int(usable.sum(1).max()))))

    def _detect(self, preds: torch.Tensor, score: torch.Tensor, usable: torch.Tensor, room: int,
                geometry: Geometry, size: tuple[int, int], *, settle: bool = False) -> "Queued":
        """Class-aware NMS within each frame over its `room` best candidates, max_det, boxes in output pixels:
        every frame's kept instances in min(room, max_det) slots, their copy to the host queued (with what says
        which frames must run again)."""
        height, width = size
        found = device_nms.candidates(score, usable, room)
        frames = torch.arange(len(preds), device=preds.device)[:, None]
        picked = preds[frames, found.anchor, :4 + self.nc]
        xyxy = torch.where(found.valid[..., None], torchvision.ops.box_convert(picked[..., :4], "cxcywh", "xyxy"), 0.0)
        kind = picked[..., 4:].argmax(2)  # the best class (the first of equal scores)
        keep, unsettled = self._nms(xyxy, kind, found, settle)
        rank = keep.cumsum(1) - 1
        chosen = keep & (rank < self.max_det)
        slots = torch.argsort((~chosen).to(torch.uint8), dim=1, stable=True)[:, :min(room, self.max_det)]
        anchor = found.anchor.gather(1, slots)
        boxes = geometry.to_frame(xyxy.gather(1, slots[..., None].expand(-1, -1, 4)).flatten(0, 1))
        boxes = per_axis(boxes, lambda x: (x * (width / geometry.width)).clamp(max=width),  # rounding may cross
                         lambda y: (y * (height / geometry.height)).clamp(max=height))  # the edge
        corners = per_axis(boxes.ceil().long(), lambda x: x.clamp(max=width), lambda y: y.clamp(max=height))
        origin = per_axis(corners[:, :2], lambda x: x.clamp(max=width - 1), lambda y: y.clamp(max=height - 1))
        extent = (corners[:, 2:] - origin).clamp(min=1)  # w, h; a box of no width at the edge: one pixel, in
        frame = frames.expand_as(slots).flatten()
        conf, kind = found.score.gather(1, slots).flatten(), kind.gather(1, slots).flatten()
        rank = torch.where(chosen.gather(1, slots), rank.gather(1, slots).float(), torch.inf).flatten()
        packed = torch.cat([frame[:, None].float(), boxes, conf[:, None], kind[:, None].float(), origin.float(),
                            extent.float(), rank[:, None]], dim=1)  # integers < 2^24
        status = torch.cat([found.count.float(), unsettled.float()])
        instances = Instances(xyxy=boxes, coeffs=preds[frames, anchor, 4 + self.nc:].flatten(0, 1), origin=origin,
                              extent=extent)
        return Queued(instances=instances, copy=transfer.HostCopy(torch.cat([packed.flatten(), status])),
                      shape=tuple(packed.shape), room=room)

    def _arrived(self, queued: "Queued") -> Detections:
        """The instances once their copy is on the host (a wait for the device), and the frames to run again."""
        host = queued.copy.numpy()
        self.host_waits += 1
        size = queued.shape[0] * queued.shape[1]
        counts, unsettled = host[size:].reshape(2, -1).astype(np.int64)
        return Detections(instances=queued.instances, meta=host[:size].reshape(queued.shape), counts=counts,
                          again=np.flatnonzero((counts > queued.room) | (unsettled > 0)))

    def _nms(self, xyxy: torch.Tensor, cls: torch.Tensor, found: device_nms.Candidates, settle: bool
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, room) kept, and (N,) whether a frame's NMS has not settled yet: on a FIXED_NMS device as a fixed
        point at fixed shapes; elsewhere with torchvision, frame by frame, as many as each frame has (the same
        instances, tested)."""
        if self.device.type not in FIXED_NMS:
            keep, checks = device_nms.frame_by_frame(xyxy, cls, found, self.iou)
        elif settle:
            keep, checks = device_nms.settle(device_nms.suppression(xyxy, cls, found.valid, self.iou), found.valid)
        else:
            return device_nms.greedy(device_nms.suppression(xyxy, cls, found.valid, self.iou), found.valid)
        self.host_waits += checks
        return keep, torch.zeros_like(found.count, dtype=torch.bool)

    def _frame_masks(self, found: Detections, proto: torch.Tensor, geometry: Geometry, frames: int, height: int,
                     width: int) -> list[FrameMasks]:
        """Each kept instance's mask over the pixels of its box (crop_mask keeps columns x1 ≤ c < x2), split by
        frame: the windows cross to the host in one copy."""
        chosen = np.flatnonzero(np.isfinite(found.meta[:, 11]))
        if not len(chosen):
            return [FrameMasks.empty(height, width) for _ in range(frames)]
        meta = found.meta[chosen]
        masks = self._windows(found, proto, chosen, meta, geometry, height, width)
        return _per_frame(meta, masks, frames, height, width)

    def _windows(self, found: Detections, proto: torch.Tensor, chosen: np.ndarray, meta: np.ndarray,
                 geometry: Geometry, height: int, width: int
                 ) -> list[np.ndarray] | list[bytes | None]:
        """The `chosen` instances' masks (`meta`: theirs, see `_per_frame`), as (h_k, w_k) bool windows, or on a
        device_rle.DEVICES device as RLE strings (None for an empty mask). Each is assembled at padded sizes that
        depend on its own extent only (`ladder`), together with the others of the same padded size, as many as
        WINDOW_BUDGET allows; all cross to the host in one copy (the windows, or their run lengths)."""
        rows, cols = mask_operators(tuple(proto.shape[2:]), geometry.height, geometry.width, height, width,
                                    proto.device)
        places = meta[:, 7:11].astype(np.int64)  # x, y, w, h
        padded = np.stack([ladder(places[:, 3]), ladder(places[:, 2])], axis=1)  # h, w
        order = np.lexsort((padded[:, 1], padded[:, 0]))
        sizes, starts = np.unique(padded[order], axis=0, return_index=True)
        frame_rows, plan = _logit_rows(meta[:, 0].astype(np.int64), meta[:, 11].astype(np.int64), len(proto))
        index = _to_device(np.concatenate([chosen, frame_rows, order, plan.frames]), proto.device)
        instance, frame_rows, on_device, frames = index.split([len(chosen), len(chosen), len(order), len(plan.frames)])
        kept = found.instances
        logits = _logits(kept.coeffs[instance], frame_rows, proto, frames, plan)
        box, origin, extent = kept.xyxy[instance], kept.origin[instance], kept.extent[instance]
        chunks, assembled = [], []
        runs = device_rle.RunBatch(height, width) if proto.device.type in device_rle.DEVICES else None
        for (h, w), begin, end in zip(sizes.tolist(), starts.tolist(), [*starts[1:].tolist(), len(order)]):
            ph, pw = rows.span(h), cols.span(w)
            per = h * w + h * ph + h * pw + w * pw + 2 * ph * pw  # floats one window takes
            step = max(1, WINDOW_BUDGET // per)
            for at in range(begin, end, step):
                chunk, members = on_device[at:min(end, at + step)], order[at:min(end, at + step)]
                window = _assemble(logits[chunk], box[chunk], origin[chunk], rows, cols, h, w, ph, pw)
                if runs is not None:
                    runs.add(window, origin[chunk], extent[chunk], capacity=device_rle.capacity(places[members, 2]))
                else:
                    assembled.append(window.flatten())
                chunks.append((members, h, w))
        if runs is not None:
            return self._strings(runs, np.concatenate([members for members, _, _ in chunks]))
        flat = torch.cat(assembled).cpu().numpy()
        self.host_waits += 1
        windows: list[np.ndarray] = [np.zeros((0, 0), dtype=bool)] * len(order)
        offset = 0
        for members, h, w in chunks:
            block = flat[offset:offset + len(members) * h * w].reshape(len(members), h, w)
            offset += block.size
            for k, window in zip(members.tolist(), block):
                windows[k] = window[:places[k, 3], :places[k, 2]]
        return windows

    def _strings(self, runs: device_rle.RunBatch, members: np.ndarray) -> list[bytes | None]:
        """The RLE strings of the windows `runs` holds (added in the order of `members`), by instance; None for an
        empty mask."""
        made = runs.strings()
        self.host_waits += runs.copies
        strings: list[bytes | None] = [None] * len(members)
        for member, string in zip(members.tolist(), made):
            strings[member] = string
        return strings


def per_axis(boxes: torch.Tensor, x, y) -> torch.Tensor:
    """(K, 2n) boxes with `x` applied to their even columns (x) and `y` to the odd ones (y): constants as Python
    numbers, so that no small tensor is copied to the device (each such copy waits for it)."""
    return torch.stack([x(boxes[:, 0::2]), y(boxes[:, 1::2])], dim=2).flatten(1)


def ladder(sides: np.ndarray) -> np.ndarray:
    """Sides rounded up to 8, 12, 16, 24, 32, 48, 64, …: a half-octave ladder, at most 1.5× each way."""
    sides = np.maximum(np.asarray(sides, dtype=np.int64), SMALLEST_WINDOW)
    step = 2 ** (np.floor(np.log2(sides - 1)).astype(np.int64) - 1)
    return -(-sides // step) * step


def _to_device(order: np.ndarray, device: torch.device) -> torch.Tensor:
    """An index array to the device without the host waiting for it (pinned, on CUDA)."""
    tensor = torch.from_numpy(order)
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass(frozen=True, kw_only=True)
class LogitPlan:
    """How a batch's instances' mask logits are made: each frame's instances as the rows of one matrix, padded to
    `ladder` of that frame's own count, so that no instance's arithmetic depends on another frame's; frames of
    the same padded count in one batched product."""

    frames: np.ndarray  # the frames that have instances, by padded count
    counts: list[tuple[int, int]]  # (frames, padded rows each), for consecutive runs of `frames`


def _logit_rows(frame: np.ndarray, rank: np.ndarray, frames: int) -> tuple[np.ndarray, LogitPlan]:
    """Each instance's row among the padded frames' rows (`_logits`), and the plan."""
    counts = np.bincount(frame, minlength=frames)
    present = np.flatnonzero(counts)
    padded = ladder(counts[present])
    by_size = np.lexsort((present, padded))
    present, padded = present[by_size], padded[by_size]
    first = np.zeros(frames, dtype=np.int64)
    first[present] = np.cumsum(padded) - padded
    sizes, runs = np.unique(padded, return_counts=True)
    return first[frame] + rank, LogitPlan(frames=present, counts=list(zip(runs.tolist(), sizes.tolist())))


def _logits(coeffs: torch.Tensor, rows: torch.Tensor, proto: torch.Tensor, frames: torch.Tensor,
            plan: LogitPlan) -> torch.Tensor:
    """(K, mh, mw) prototype-resolution mask logits of instances with these coefficients, at these rows of
    `_logit_rows`: their frame's prototypes times the coefficients, one product per padded size."""
    channels, mh, mw = proto.shape[1:]
    total = sum(count * size for count, size in plan.counts)
    padded = coeffs.new_zeros((total, channels))
    padded[rows] = coeffs
    out, row, at = [], 0, 0
    for count, size in plan.counts:
        these = proto[frames[at:at + count]].view(count, channels, mh * mw)
        out.append((padded[row:row + count * size].view(count, size, channels) @ these).view(-1, mh, mw))
        row, at = row + count * size, at + count
    return torch.cat(out)[rows]


def _assemble(logits: torch.Tensor, box: torch.Tensor, origin: torch.Tensor, rows: Axis, cols: Axis,
              h: int, w: int, ph: int, pw: int) -> torch.Tensor:
    """(k, h, w) bool windows at `origin`: the logits' prototype span, mapped to the window's pixels and cut
    to the box."""
    device = logits.device
    ys = (origin[:, 1, None] + torch.arange(h, device=device)).clamp(max=len(rows.start) - 1)  # (k, h)
    xs = (origin[:, 0, None] + torch.arange(w, device=device)).clamp(max=len(cols.start) - 1)  # (k, w)
    top, left = rows.start[ys[:, 0]], cols.start[xs[:, 0]]
    mh, mw = logits.shape[1:]
    proto_rows = (top[:, None] + torch.arange(ph, device=device)).clamp(max=mh - 1)
    proto_cols = (left[:, None] + torch.arange(pw, device=device)).clamp(max=mw - 1)
    span = logits[torch.arange(len(logits), device=device)[:, None, None], proto_rows[:, :, None],
                  proto_cols[:, None, :]]  # (k, ph, pw)
    inside_y = (ys >= box[:, 1, None]) & (ys < box[:, 3, None])
    inside_x = (xs >= box[:, 0, None]) & (xs < box[:, 2, None])
    # the cut to the box as zero rows of the maps: outside it the product is 0 (never > 0), inside it is the same
    # product as uncut (an output element's sum never reads another row of the maps)
    down = rows.sub(ys, top, ph) * inside_y[:, :, None]
    across = cols.sub(xs, left, pw) * inside_x[:, :, None]
    return (down @ span @ across.transpose(1, 2)) > 0  # (k, h, w)


def _per_frame(meta: np.ndarray, masks: list[np.ndarray] | list[bytes | None], frames: int, height: int, width: int
               ) -> list[FrameMasks]:
    """Split the batch's instances by frame (`meta`: frame, xyxy, conf, cls, x, y, w, h, rank), their masks as
    windows or RLE strings; an instance whose mask is empty is dropped (as predict() does)."""
    frame = meta[:, 0].astype(np.int64)
    xyxy, conf, cls = meta[:, 1:5].copy(), meta[:, 5].copy(), meta[:, 6].astype(np.int16)
    origins = meta[:, 8:6:-1].astype(np.int64)  # (y, x)
    strings = not masks or not isinstance(masks[0], np.ndarray)
    kept = np.array([mask is not None if strings else mask.any() for mask in masks], dtype=bool)
    out = []
    for i in range(frames):
        at = np.flatnonzero((frame == i) & kept)
        if not len(at):
            out.append(FrameMasks.empty(height, width))
            continue
        if strings:
            out.append(FrameMasks(xyxy=xyxy[at], conf=conf[at], cls=cls[at], rles=tuple(masks[k] for k in at),
                                  size=(height, width)))
        else:
            out.append(FrameMasks(xyxy=xyxy[at], conf=conf[at], cls=cls[at], windows=tuple(masks[k] for k in at),
                                  origins=origins[at], size=(height, width)))
    return out
