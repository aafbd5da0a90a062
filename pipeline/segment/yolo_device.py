"""YOLO-seg inference kept on the device for a whole batch: letterbox, forward, NMS and mask assembly.

The same computation as ultralytics' `predict()` (LetterBox, non_max_suppression, scale_boxes,
process_mask_native, crop_mask) without its per-image host work:
- the uint8 frames cross to the device once; letterboxing is a bilinear resize and a pad there;
- NMS runs on the device at fixed shapes (device_nms): each frame's best candidates, as many as a fixed room,
  so that the host does not wait to learn how many there are or how many were kept;
- each kept instance's mask is assembled only inside its box, at the source size (mask_windows), and the
  windows cross to the host as booleans (`FrameMasks.windows`), or on CUDA as RLE runs made there
  (`FrameMasks.rles`), not K whole frames.
The letterbox and the way back to frame pixels are model_input's. Equivalence with `predict()` is tested
(tests/test_yolo_device.py).

Bytes do not depend on scheduling: the network runs every batch padded to its `capacity` (the same for every
batch of one frame size), and each instance's mask is assembled at padded sizes that depend on its own box only
(`ladder`), never on the instances it shares the batch with (tests/test_fixed_batches.py). What crosses to the host
does so in two packed copies per batch (the instances' boxes, scores and windows' places, with whether the batch
must run again; then every window), and the points where the host waits on the device are counted
(`host_waits`): two per batch on a FIXED_NMS device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision

from pipeline.segment import device_nms, transfer
from pipeline.segment.base import FrameMasks
from pipeline.segment.mask_windows import Instances, ladder, mask_windows
from pipeline.segment.model_input import Geometry, input_size, letterbox, per_axis

NMS_CAPACITY = 512  # FIXED_NMS: the room for each frame's candidates in a first batch (a frame with more runs again)
SMALLEST_ROOM = 64  # FIXED_NMS: the room never shrinks below this …
MAX_ROOM = 1024  # … nor grows past this (its memory grows as its square: device_nms)
FIXED_NMS = ("cuda",)  # devices where NMS runs at a fixed room, so that the host need not ask how many candidates
ANCHOR_WAITS = 3  # waits on a CUDA device as ultralytics' head makes a level's anchors for an input shape new to
# it (make_anchors: two aranges copied from the host, a fill with the stride, a device scalar): kept by shape here
KEPT_ANCHORS = 64  # input shapes whose anchors are kept (a frame size's batch and its halves after running out)


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
    """A batch queued on the device (`DeviceYolo.launch`): what its post-processing needs, held until then. Every
    tensor here is made on the model's stream before the event of the instances' copy (`queued.copy.done`), the
    one event the masks' stream waits for before it reads them."""

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
        if not all(0 <= c < self.nc for c in classes):
            raise ValueError(f"classes {classes} are not all among the model's {self.nc}")
        self.kept = torch.zeros(self.nc, dtype=torch.bool, device=self.device)  # by class: kept?
        self.kept[classes] = True
        self.some_classes = len(set(classes)) < self.nc
        self.host_waits = 0  # times the host waited on the device (a copy to the host, a result's size)
        self.batches = 0  # batches post-processed
        self._staging = transfer.Staging(self.device) if self.device.type == "cuda" else None
        self._post = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None  # masks' stream
        self._rooms: dict[int, int] = {}  # anchors → the room for NMS's candidates next (`_room`)
        self._anchors: dict[tuple, tuple] = {}  # input shape → the head's anchors, strides and shape (`forward`)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray, out_height: int, out_width: int, *, capacity: int = 0
                 ) -> list[FrameMasks]:
        """(N, h, w, 3) uint8 RGB frames → one FrameMasks per frame, masks at (out_height, out_width). The network
        runs on `capacity` frames (the frames, then black ones), so that every batch of one size has one shape."""
        return self.launch(frames, out_height, out_width, capacity=capacity).result()

    @torch.inference_mode()
    def launch(self, frames: np.ndarray | list[np.ndarray], out_height: int, out_width: int, *, capacity: int = 0
               ) -> "Launched":
        """The batch's work queued on the device up to NMS, its instances' copy to the host on its way: the host
        can queue the next batch before it waits for this one (`Launched.result`). `frames`: in one array, or in
        the pieces they were decoded in, in order (on CUDA each crosses as it is, with no copy on the host)."""
        count = sum(map(len, _pieces(frames)))
        x, geometry = self.prepare(frames, capacity)
        preds, proto = self.forward(x)
        preds = self._checked(preds[:count].float())
        proto = proto[:count].float()  # before the copy's event (`_detect`): the masks' stream waits on no other
        score, usable = self._scores(preds)
        size = (out_height, out_width)
        queued = self._detect(preds, score, usable, self._room(usable), geometry, size)
        return Launched(yolo=self, preds=preds, score=score, usable=usable, proto=proto, geometry=geometry,
                        size=size, queued=queued)

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
                    again = transfer.index_to_device(frames, preds.device)
                    redone = self._detect(preds[again], launched.score[again], launched.usable[again], room,
                                          geometry, size, settle=True)
                    found = found.with_frames(frames, self._arrived(redone))
            self.batches += 1
            return self._frame_masks(found, launched.proto, geometry, len(preds), *size)

    def prepare(self, frames: np.ndarray | list[np.ndarray], capacity: int = 0) -> tuple[torch.Tensor, Geometry]:
        """The frames (one array, or its pieces in order) on the device, padded with black ones to `capacity`,
        letterboxed: the model's input."""
        pieces = _pieces(frames)
        height, width = pieces[0].shape[1:3]
        geometry = Geometry.of(height, width, input_size(height, width, self.imgsz), self.stride)
        if self._staging:
            waits = self._staging.waits
            pixels = self._staging.copy(pieces, capacity)
            self.host_waits += self._staging.waits - waits
        else:
            pixels = torch.from_numpy(pieces[0] if len(pieces) == 1 else np.concatenate(pieces)).to(self.device)
            if capacity > len(pixels):
                pixels = torch.cat([pixels, pixels.new_zeros((capacity - len(pixels), *pixels.shape[1:]))])
        return letterbox(pixels, geometry, self.dtype), geometry

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network alone: (N, 4 + classes + 32, anchors) predictions and (N, 32, mh, mw) prototypes. The head's
        anchors are kept by input shape: ultralytics' head makes them again whenever its input's shape is not the
        last one's (batches of two frame sizes in turn), waiting on a CUDA device each time (ANCHOR_WAITS a
        level, counted); the same values, so the same bytes."""
        head, shape = self.model.model[-1], tuple(x.shape)
        known = self._anchors.get(shape)
        if known is not None and (known[0].device, known[0].dtype) == (x.device, x.dtype):
            head.anchors, head.strides, head.shape = known
        else:
            known = None
        before = getattr(head, "anchors", None)
        (preds, proto), _ = self.model(x)
        if known is None:
            if len(self._anchors) >= KEPT_ANCHORS:
                del self._anchors[next(iter(self._anchors))]  # the oldest
            self._anchors[shape] = head.anchors, head.strides, head.shape
            if head.anchors is not before and self.device.type == "cuda":
                self.host_waits += ANCHOR_WAITS * head.nl
        return preds, proto

    def warm_up(self) -> None:
        """Two black frames through the whole path with every anchor a candidate (any score, any class), so that
        NMS and mask assembly run too: a device that cannot run it (an operator without a kernel there, a dtype
        it lacks) fails here, at load."""
        conf, kept = self.conf, self.kept
        self.conf, self.kept = -1.0, torch.ones_like(kept)  # whatever the classes kept, but with their test
        try:
            self(np.zeros((2, 64, 64, 3), dtype=np.uint8), 64, 64)
        finally:
            self.conf, self.kept, self.host_waits, self.batches = conf, kept, 0, 0

    def _checked(self, preds: torch.Tensor) -> torch.Tensor:
        """(N, 4 + classes + 32, anchors) network output → (N, anchors, 4 + classes + 32)."""
        if preds.shape[1] != 4 + self.nc + self.masks:
            raise RuntimeError(f"unexpected YOLO-seg output {tuple(preds.shape)}: expected (N, "
                               f"{4 + self.nc + self.masks}, anchors); an end-to-end head must be switched off "
                               "before the model is fused")
        return preds.transpose(1, 2)

    def _scores(self, preds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each anchor's best class score, and whether the anchor is a candidate: over the threshold (a half
        model's scores against `conf` rounded to half, as predict() compares them), its best class (the first of
        equal scores) a kept one, its box finite (an fp16 overflow is dropped before anything indexes with it).
        Which class is best is asked for only where some are not kept (on a CPU the scores alone are ten times
        faster); `_detect` finds it at the candidates."""
        scores = preds[..., 4:4 + self.nc]
        score = scores.amax(dim=2)
        conf = self.conf if self.dtype != torch.float16 else float(np.float16(np.float32(self.conf)))  # as torch
        # casts a Python number to half (through float32) where predict() compares a half model's scores with it
        usable = (score > conf) & torch.isfinite(preds[..., :4]).all(dim=2)
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
        made = mask_windows(found.instances, chosen, frame=meta[:, 0].astype(np.int64),
                            rank=meta[:, 11].astype(np.int64), places=meta[:, 7:11].astype(np.int64), proto=proto,
                            geometry=geometry, height=height, width=width)
        self.host_waits += made.host_waits
        return _per_frame(meta, made.masks, frames, height, width)


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


def _pieces(frames: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    """A batch's frames as a list of pieces: one array is one piece."""
    return [frames] if isinstance(frames, np.ndarray) else list(frames)
