"""ultralytics YOLO-seg backend: batched frames, person plus chosen object classes, masks at source size."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.decode import FrameBatch, FrameMemory
from pipeline.segment.base import (
    PERSON,
    FrameMasks,
    Launched,
    Ready,
    SegmenterLoadError,
    SegmenterSpec,
    file_sha256,
)

log = logging.getLogger(__name__)


class YoloSegmenter:
    def __init__(self, spec: SegmenterSpec) -> None:
        import torch

        self.spec = spec
        if spec.inference not in ("device", "predict"):
            raise SegmenterLoadError(f"unknown YOLO inference {spec.inference!r}; use 'device' or 'predict'")
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.device = torch_device(spec.device)
        self.model = _load(spec.model)
        self.names = _class_names(self.model)
        self.class_ids = select_classes(self.names, spec.object_classes)
        self.half = self.device.type == "cuda"
        self.precision = _precision_args(self.half)
        self._device_model = None  # the device path's own copy of the network, taken at first use of either path
        self._on_device = None  # built at first use (it fuses the model's batch norms into its convolutions)
        self._caller = threading.local()  # torch's CPU threads where predict() was called, put back as it starts
        self.model.add_callback("on_predict_start", self._own_threads)

    def _own_threads(self, predictor) -> None:
        """ultralytics' select_device, as predict() first sets its predictor up, sets torch's CPU threads for the
        whole process to its own count (cores - 1, at most 8): the first call's forward would run on that count
        and later ones on the caller's, and on a CPU the count shapes the network's last bits."""
        threads = getattr(self._caller, "threads", 0)  # the callback runs on the thread that called predict()
        if threads:
            import torch

            torch.set_num_threads(threads)

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        return self.launch([batch], capacity=batch.capacity).result()

    def frame_memory(self, budget: Callable[[int], int]) -> FrameMemory | None:
        """Where decoders write frames (Segmenter.frame_memory): for the device path on CUDA, pinned memory within
        `budget` (each piece then crosses to the GPU as it is, with no copy on the host), one count for the
        process's open feeders (`transfer.frame_memory`); None otherwise."""
        if self.spec.inference == "device" and self.device.type == "cuda":
            from pipeline.segment.transfer import frame_memory

            return frame_memory(budget)
        return None

    def launch(self, pieces: list[FrameBatch], *, capacity: int = 0) -> Launched:
        """The pieces' frames queued on the device as one batch of `capacity` (Segmenter.launch); predict() runs at
        once."""
        if self.spec.inference == "predict":
            batch = (replace(pieces[0], capacity=capacity) if len(pieces) == 1  # a lone piece: not copied again
                     else FrameBatch.concat(pieces, capacity=capacity))
            return Ready(self.predict(batch))
        first = pieces[0]
        return self.on_device.launch([piece.frames for piece in pieces], first.height, first.width, capacity=capacity)

    def warm_up(self) -> None:
        """A first small batch on the device through the path the stage will use (see DeviceYolo.warm_up)."""
        if self.spec.inference == "predict":
            frames = np.zeros((2, 64, 64, 3), dtype=np.uint8)
            self.predict(FrameBatch(frames=frames, indices=np.arange(2), times=np.zeros(2), height=64, width=64))
        else:
            self.on_device.warm_up()

    @property
    def on_device(self):
        """The batched device path (pipeline/segment/yolo_device.py) over its own copy of this segmenter's
        network: what it changes (an end-to-end head switched off, batch norms fused, the device and dtype) is
        never what predict() runs, and predict() never moves it."""
        if self._on_device is None:
            from pipeline.segment.yolo_device import DeviceYolo

            spec, network = self.spec, self._network_copy()
            if getattr(network, "end2end", False):  # predict() runs NMS on the one-to-many head (unless told
                network.end2end = False  # nms=False); switched before fusing, which drops the other head
            self._on_device = DeviceYolo(network.fuse(verbose=False), device=self.device, half=self.half,
                                         conf=spec.conf, iou=spec.iou, max_det=spec.max_det, classes=self.class_ids,
                                         imgsz=spec.imgsz)
        return self._on_device

    def _network_copy(self):
        """The device path's copy of `self.model.model`, taken once, at the first use of either path: changes made
        to the loaded network before then (the benchmark's calibration) reach both paths, and predict() cannot
        reach the copy (ultralytics 8.4.8 moves, fuses and halves the module it is given in place; 8.4.190 copies
        it first)."""
        if self._device_model is None:
            self._device_model = copy.deepcopy(self.model.model)
        return self._device_model

    def predict(self, batch: FrameBatch) -> list[FrameMasks]:
        """The reference path: ultralytics' predict(), image by image around one batched forward (padded with
        black frames to the batch's capacity)."""
        import torch

        from pipeline.segment.model_input import input_size

        self._network_copy()  # before predict() first touches the network
        height, width = batch.frames.shape[1:3]
        imgsz = input_size(height, width, self.spec.imgsz)
        frames = [frame[..., ::-1] for frame in batch.frames]  # ultralytics takes numpy frames as BGR
        frames += [np.zeros_like(frames[0])] * (batch.capacity - len(frames))
        threads = self._caller.threads = torch.get_num_threads()
        try:
            results = self.model.predict(
                frames,
                imgsz=imgsz,
                conf=self.spec.conf,
                iou=self.spec.iou,
                max_det=self.spec.max_det,
                classes=self.class_ids,
                device=self.device,  # a torch.device: ultralytics leaves CUDA_VISIBLE_DEVICES alone (torch_device)
                **self.precision,
                retina_masks=True,  # masks at the input frame size, not the letterboxed model size
                verbose=False,
            )
        finally:  # and after it (_own_threads), for the whole process: the device path and the bench's figures too
            torch.set_num_threads(threads)
        return [self._frame_masks(result, batch.height, batch.width) for result in results[:len(batch)]]

    def _frame_masks(self, result, out_height: int, out_width: int) -> FrameMasks:
        if result.masks is None or len(result.boxes) == 0:
            return FrameMasks.empty(out_height, out_width)
        in_height, in_width = result.orig_shape
        scale = np.array([out_width / in_width, out_height / in_height] * 2, dtype=np.float32)
        return FrameMasks(
            masks=_to_source_size(result.masks.data, out_height, out_width),
            xyxy=result.boxes.xyxy.cpu().numpy().astype(np.float32) * scale,
            conf=result.boxes.conf.cpu().numpy().astype(np.float32),
            cls=result.boxes.cls.cpu().numpy().astype(np.int16),
        )

    def provenance(self) -> dict[str, str]:
        weights = getattr(self.model, "ckpt_path", None)
        return {
            "model": self.spec.model,
            "weights_file": str(weights) if weights else f"none (random init from {self.spec.model})",
            "weights_sha256": file_sha256(Path(weights)) if weights else "",
            "classes": ",".join(f"{i}:{self.names[i]}" for i in self.class_ids),
            "conf": str(self.spec.conf),
            "iou": str(self.spec.iou),
            "max_det": str(self.spec.max_det),
            "imgsz": str(self.spec.imgsz or "auto"),
            "half": str(self.half),
            "inference": self.spec.inference,
        }


def _to_source_size(masks, height: int, width: int) -> np.ndarray:
    """(K, h, w) mask probabilities on the model's device → (K, height, width) bool on the host. Upsampled and
    thresholded on the device, so one byte per source pixel crosses to the host instead of four."""
    import torch.nn.functional as F

    if masks.shape[1:] != (height, width):
        masks = F.interpolate(masks[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
    return (masks > 0.5).cpu().numpy()


def select_classes(names: dict[int, str], object_classes: tuple[str, ...] | None) -> list[int]:
    """Person plus the object classes asked for (names or ids); None means every other class."""
    if object_classes is None:
        return sorted(names)
    by_name = {name: i for i, name in names.items()}
    ids = {PERSON}
    for item in object_classes:
        if item.isdigit() and int(item) in names:
            ids.add(int(item))
        elif item in by_name:
            ids.add(by_name[item])
        else:
            raise SegmenterLoadError(f"unknown object class {item!r}; the model knows: {', '.join(names.values())}")
    return sorted(ids)


def _class_names(model) -> dict[int, str]:
    """The model's class names; a model built from a yaml has only numbers, so an 80-class one gets COCO's."""
    names = {int(k): str(v) for k, v in model.names.items()}
    if len(names) == 80 and all(v == str(k) for k, v in names.items()):
        from ultralytics.utils import ROOT, YAML

        names = {int(k): str(v) for k, v in YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"].items()}
    return names


def _precision_args(half: bool) -> dict:
    """fp16 on CUDA: ultralytics spells it `half=True` up to 8.4.48 at least, `quantize=16` from 8.4.95 at most."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    if "quantize" in DEFAULT_CFG_DICT:
        return {"quantize": 16 if half else None}
    return {"half": half}


def torch_device(device: str):
    """DEVICE (cpu, cuda, cuda:N) as an explicit torch.device; `cuda` is GPU 0, as it is for ultralytics.

    Both paths are handed this object. Given a string such as "1", ultralytics 8.4.8's select_device sets
    CUDA_VISIBLE_DEVICES=1 (too late once CUDA has started, as it has here) and runs on cuda:0, i.e. GPU 0; given
    a torch.device it uses that device as it is (8.4.190 selects the same index either way)."""
    import torch

    try:
        found = torch.device(device)
    except RuntimeError:
        raise SegmenterLoadError(f"device {device!r}: expected cpu, cuda or cuda:N") from None
    if found.type == "cpu":
        return torch.device("cpu")
    if found.type != "cuda":
        raise SegmenterLoadError(f"device {device!r}: expected cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise SegmenterLoadError(f"device {device!r} asked for, but no CUDA device is visible; use DEVICE=cpu")
    found = torch.device("cuda", found.index or 0)
    if found.index >= torch.cuda.device_count():
        raise SegmenterLoadError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) "
                                 "are visible (CUDA_VISIBLE_DEVICES counts from 0)")
    return found


def missing_weights_error(model: str, cause: Exception) -> SegmenterLoadError:
    return SegmenterLoadError(
        f"could not load YOLO weights {model!r} ({type(cause).__name__}: {cause}). "
        "Pass MODEL=/path/to/weights.pt (--model) with a -seg checkpoint you have, "
        "or SEGMENTER=selfie (--segmenter selfie) for the offline person segmenter."
    )


def locate_weights(model: str) -> str:
    """What a YOLO `--model` names, as workers will load it: a local file as an absolute path, a checkpoint
    name as the file found in (or downloaded to) ultralytics' weights folder, or an architecture yaml that
    ultralytics ships (`yolo11n-seg.yaml`: the name keeps its scale letter) as it is."""
    path = Path(model)
    if path.is_file():
        return str(path.absolute())
    try:
        if path.suffix in (".yaml", ".yml"):
            architecture(model)
            return model
        from ultralytics.utils.downloads import attempt_download_asset

        found = Path(attempt_download_asset(model))
        if not found.is_file():
            raise FileNotFoundError(f"{model} not found locally and could not be downloaded")
        return str(found.absolute())
    except Exception as exc:  # ultralytics raises many types (download, file) for the same cause
        raise missing_weights_error(model, exc) from exc


def weights_digest(model: str) -> str:
    """SHA-256 of the weights file, or of the architecture a packaged yaml builds (random weights)."""
    if Path(model).is_file():
        return file_sha256(Path(model))
    blob = json.dumps(architecture(model), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def architecture(model: str) -> dict:
    from ultralytics.nn.tasks import yaml_model_load

    return yaml_model_load(model)


def _load(model: str):
    from ultralytics import YOLO

    try:
        yolo = YOLO(model)
    except Exception as exc:  # ultralytics raises many types (download, pickle, file) for the same cause
        raise missing_weights_error(model, exc) from exc
    if yolo.task != "segment":
        raise SegmenterLoadError(f"{model!r} is a {yolo.task} model; the masks stage needs a -seg model")
    log.info("loaded %s (%d classes)", model, len(yolo.names))
    return yolo
