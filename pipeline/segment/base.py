"""The segmenter interface: a spec that names a backend, and the per-frame result container."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import cv2
import numpy as np

from pipeline import rle
from pipeline.decode import FrameBatch

PERSON = 0  # COCO class id of "person"; every backend reports people with this id


class SegmenterLoadError(RuntimeError):
    """The model or its weights could not be loaded; the message says what to pass instead."""


DEVICE_NMS = "greedy by class, float64 IoU, ties by anchor"  # YOLO's device path's NMS (another: another run tag)
HALF_INPUT = "resized in float32"  # YOLO's device path in fp16: its letterbox (it once resized in half precision)
HALF_CONF = "scores over conf in half"  # and its threshold (it once kept scores equal to conf rounded to half)
RANDOM = "random"  # SAM checkpoint value that builds the architecture with random weights (tests, timing)


def sam_precision(asked: str | None, device: str) -> str:
    """What SAM computes in on `device`: the precision asked for, else bf16 on CUDA and fp32 on a CPU."""
    return asked or ("bf16" if device.startswith("cuda") else "fp32")


@dataclass(frozen=True, kw_only=True)
class RefineSpec:
    """segment-anything refinement of the detector's masks (pipeline/segment/sam.py)."""

    sam_type: str = "vit_b"  # vit_b, vit_l or vit_h
    checkpoint: str = ""  # path of the SAM .pth of sam_type; "random" for random weights
    every: int = 1  # refine every Nth frame of a clip (1: all); the others keep the detector's mask
    images: int = 4  # keyframes per SAM image-encoder call on CUDA, always that many (a CPU takes one at a time)
    precision: str | None = None  # on CUDA "bf16" (None: the default), "fp16" (a GPU without bf16) or "fp32"

    def output_fields(self) -> dict[str, Any]:
        """What shapes the masks; the checkpoint by content (weights_digests), not by where it lies."""
        return {"sam_type": self.sam_type, "random": self.checkpoint == RANDOM, "every": self.every}


@dataclass(frozen=True, kw_only=True)
class SegmenterSpec:
    """Everything that decides which segmenter runs and how; hashable so workers can cache the model."""

    backend: str = "yolo"  # "yolo", "selfie", or "package.module:Class" for your own
    model: str = "yolo11n-seg.pt"  # yolo: a name ultralytics resolves, a local .pt, or a model .yaml
    device: str = "cpu"  # cpu, cuda, cuda:N
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 100
    imgsz: int | None = None  # yolo input size; None: the frames' long side, rounded up to 32, at most 640
    inference: str = "device"  # yolo: "device" (yolo_device: batched, on the model's device) or "predict" (reference)
    object_classes: tuple[str, ...] | None = None  # None: every non-person class of the model; () none
    selfie_model: str = "models/selfie_segmentation.tflite"
    threshold: float = 0.5  # selfie: person probability above which a pixel is a person
    min_area: int = 64  # selfie: smallest connected component (pixels) kept as an instance
    threads: int = 0  # CPU threads for the model; 0 leaves the library default
    refine: RefineSpec | None = None  # None: the backend's masks as they are

    @property
    def finds_objects(self) -> bool | None:
        """Whether its masks can hold objects besides people: selfie finds people only, and so does YOLO with no
        object classes (`--object-classes none`); a segmenter of your own is not known (None)."""
        if self.backend == "selfie":
            return False
        if self.backend == "yolo":
            return self.object_classes != ()
        return None

    @property
    def torch_network(self) -> bool:
        """Whether a torch network makes the masks (YOLO's, or SAM refining them): their last bits then depend
        on the kernels the machine runs. Selfie runs on TFLite; one of your own is not known."""
        return self.backend == "yolo" or self.refine is not None

    @property
    def batch_shapes_masks(self) -> bool:
        """Whether the masks depend on the model batch's shape: YOLO's network runs every batch padded to one
        size, and another size picks other kernels (their last bits, and so a few mask pixels, differ), as SAM's
        encoder does; selfie runs frame by frame. A segmenter of your own is taken to run frame by frame."""
        return self.torch_network

    @property
    def threads_shape_masks(self) -> bool:
        """Whether the masks' last bits depend on torch's thread count: on a CPU a torch network's do (YOLO's,
        SAM's refining; docs/PERFORMANCE.md, ninth and tenth sessions), not on a GPU; selfie runs on TFLite, and one
        of your own is not known. A masks run keys the count (MasksConfig.threads_field); a run whose shards still
        differ says so."""
        return self.device == "cpu" and self.torch_network

    def output_fields(self) -> dict[str, Any]:
        """The backend's fields that shape the stored masks, as the run tag keys them. The device does not, nor
        the threads setting: on a CPU the count the model runs on does (MasksConfig.threads_field keys it, where
        the count per worker is known). Weights count by their content (segment.weights_digests), not by where
        they lie, so the paths are left out too."""
        unused = {"device", "threads", "refine"}
        if self.backend != "selfie":
            unused |= {"selfie_model", "threshold", "min_area"}
        if self.backend == "selfie":
            unused |= {"model", "conf", "iou", "max_det", "imgsz", "object_classes", "inference"}
        if self.backend != "yolo":
            unused.add("inference")
        if self.backend in ("yolo", "selfie"):
            unused |= {"model", "selfie_model"}
        fields = {k: v for k, v in self.__dict__.items() if k not in unused}
        if self.backend == "yolo" and self.inference == "device":  # its NMS once kept other borderline boxes
            fields["nms"] = DEVICE_NMS
            if self.device.startswith("cuda"):  # fp16 there: its input once took other rounding steps, and its
                fields["half_input"] = HALF_INPUT  # threshold kept other borderline scores
                fields["half_conf"] = HALF_CONF
        if self.refine:  # absent rather than None when unset; the precision SAM runs in (a GPU without it does not
            cuda = self.device.startswith("cuda")  # load), and the encoder's batch size, which changes kernels
            fields["refine"] = {**self.refine.output_fields(), "images": self.refine.images if cuda else 1,
                                "precision": sam_precision(self.refine.precision, self.device)}
        if self.backend != "selfie" or self.refine:  # the detectors that run in fp16 on CUDA (SAM's is above; a
            # selfie base with SAM keeps this field too, as every run tag since it was added has)
            fields["precision"] = "fp16" if self.device.startswith("cuda") else "fp32"
        return fields


@dataclass(frozen=True, kw_only=True)
class FrameMasks:
    """Instances found in one frame, masks at the source frame's display size, held one of three ways: whole
    frames (`masks`); each instance's mask inside a window of the frame (`windows`, placed at `origins`, zero
    outside them); or each instance's COCO RLE already made (`rles`, e.g. from runs computed on the device). The
    last two need the frame's `size`. `full()` and `rle()` read any of them."""

    xyxy: np.ndarray  # (K, 4) float32 pixel box x1, y1, x2, y2
    conf: np.ndarray  # (K,) float32 score
    cls: np.ndarray  # (K,) int16 class id
    masks: np.ndarray | None = None  # (K, H, W) bool
    windows: tuple[np.ndarray, ...] = ()  # or K (h_k, w_k) bool windows …
    origins: np.ndarray | None = None  # … with their top-left corners (K, 2) int (y, x) …
    size: tuple[int, int] | None = None  # … in a frame of (H, W)
    rles: tuple[bytes, ...] | None = None  # or K pycocotools compressed RLE strings of (H, W) = `size` masks

    def __post_init__(self) -> None:
        count = len(self.conf)
        if self.rles is not None:
            if self.masks is not None or self.windows:
                raise ValueError("FrameMasks takes one of `masks`, `windows` or `rles`, not several")
            if (len(self.rles) != count or self.size is None
                    or not all(isinstance(counts, bytes) for counts in self.rles)):
                raise ValueError(f"FrameMasks of {count} instances needs an RLE string (bytes) each and a size")
        elif self.masks is None and (len(self.windows) != count or self.size is None or self.origins is None
                                     or self.origins.shape != (count, 2)):
            raise ValueError(f"FrameMasks of {count} instances needs `masks`, or a window and origin each and a size")

    def __len__(self) -> int:
        return len(self.conf)

    def full(self) -> np.ndarray:
        """(K, H, W) bool whole-frame masks."""
        if self.masks is not None:
            return self.masks
        height, width = self.size
        out = np.zeros((len(self), height, width), dtype=bool)
        if self.rles is not None:
            for k, counts in enumerate(self.rles):
                out[k] = rle.decode(counts, height, width)
            return out
        for k, (window, (y, x)) in enumerate(zip(self.windows, self.origins.tolist())):
            out[k, y:y + window.shape[0], x:x + window.shape[1]] = window
        return out

    def rle(self) -> list[bytes]:
        """COCO compressed RLE counts of every instance's whole-frame mask (pycocotools' bytes, any way held)."""
        if self.masks is not None:
            return rle.encode(self.masks)
        if self.rles is not None:
            return list(self.rles)
        return rle.encode_windows(self.windows, self.origins, *self.size)

    @classmethod
    def empty(cls, height: int, width: int) -> "FrameMasks":
        return cls(
            masks=np.zeros((0, height, width), dtype=bool),
            xyxy=np.zeros((0, 4), dtype=np.float32),
            conf=np.zeros(0, dtype=np.float32),
            cls=np.zeros(0, dtype=np.int16),
        )

    @classmethod
    def from_masks(cls, masks: np.ndarray, conf: np.ndarray, class_ids: np.ndarray) -> "FrameMasks":
        """Build from masks alone; boxes are the masks' tight bounds."""
        return cls(
            masks=masks.astype(bool, copy=False),
            xyxy=boxes_from_masks(masks),
            conf=np.asarray(conf, dtype=np.float32),
            cls=np.asarray(class_ids, dtype=np.int16),
        )


class Launched(Protocol):
    """A batch whose masks are on their way (Segmenter.launch)."""

    def result(self) -> list[FrameMasks]:
        """One FrameMasks per frame of the batch (waits for them)."""
        ...


@dataclass(frozen=True)
class Ready:
    """Masks made at once, handed over as a launched batch's."""

    masks: list[FrameMasks]

    def result(self) -> list[FrameMasks]:
        return self.masks


class Segmenter(Protocol):
    """What the masks stage calls. `names` maps class id → class name. A segmenter may also have
    `launch(pieces, *, capacity) -> Launched`: the frames of a list of FrameBatch pieces (one size, in order) as
    one batch of `capacity`, its work queued (on a GPU), so that the caller can queue the next batch before it
    waits for this one's masks; the feeder then holds one batch launched (masks/feed.py), and has its decoders
    write frames into the memory `frame_memory(budget) -> FrameMemory | None` gives where it gives one (pinned
    memory while `budget(frame_bytes)` bytes hold it, from which the pieces cross to the GPU as they are; its
    `close()`, where it has one, is called when the feeder is done)."""

    names: Mapping[int, str]

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        """One FrameMasks per frame of the batch, masks at (batch.height, batch.width)."""
        ...

    def provenance(self) -> dict[str, str]:
        """Weights file, checksum and settings, stored in every shard's metadata."""
        ...


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes (pixel edges, x2/y2 exclusive) of a (K, H, W) mask stack; zeros for empty masks."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if len(rows):
            boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a (K, h, w) stack of binary or [0, 1] masks to (K, height, width) booleans (bilinear, 0.5 cut)."""
    if masks.shape[1:] == (height, width):
        return masks > 0.5 if masks.dtype != bool else masks
    out = np.empty((len(masks), height, width), dtype=bool)
    for k, mask in enumerate(masks):
        out[k] = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) > 0.5
    return out


def file_sha256(path: Path) -> str:
    """SHA-256 of a weights file, hashed once per process per file version (every shard records it)."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
