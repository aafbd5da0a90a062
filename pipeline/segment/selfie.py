"""MediaPipe selfie segmentation (a real pretrained person model) run offline on CPU with ai-edge-litert.

The model gives one person-probability map per frame, not instances. Instances are formed here as the
8-connected components of the map thresholded at `threshold` (at source resolution), keeping those of at
least `min_area` pixels, largest first; an instance's score is its mean probability.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.decode import FrameBatch
from pipeline.segment.base import PERSON, FrameMasks, SegmenterLoadError, SegmenterSpec, file_sha256


def missing_model_error(path: Path) -> SegmenterLoadError:
    return SegmenterLoadError(
        f"selfie model not found at {path}: run `make models` (extracts it from the "
        "mediapipe==0.10.21 wheel) or pass --selfie-model PATH"
    )


class SelfieSegmenter:
    names = {PERSON: "person"}

    def __init__(self, spec: SegmenterSpec) -> None:
        self.spec = spec
        self.path = Path(spec.selfie_model)
        if not self.path.is_file():
            raise missing_model_error(self.path)
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(self.path), num_threads=spec.threads or None)
        self.interpreter.allocate_tensors()
        (source,) = self.interpreter.get_input_details()
        (target,) = self.interpreter.get_output_details()
        self.input_index, self.output_index = source["index"], target["index"]
        self.input_height, self.input_width = (int(n) for n in source["shape"][1:3])

    def probabilities(self, frame: np.ndarray) -> np.ndarray:
        """Person probability (model resolution) of one RGB uint8 frame."""
        x = cv2.resize(frame, (self.input_width, self.input_height), interpolation=cv2.INTER_AREA)
        self.interpreter.set_tensor(self.input_index, (x.astype(np.float32) / 255.0)[None])
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index)[0, :, :, 0]

    def segment(self, batch: FrameBatch) -> list[FrameMasks]:
        return [self._instances(self.probabilities(frame), batch.height, batch.width) for frame in batch.frames]

    def _instances(self, probability: np.ndarray, height: int, width: int) -> FrameMasks:
        probability = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            (probability > self.spec.threshold).astype(np.uint8), connectivity=8
        )
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = [1 + i for i in np.argsort(-areas, kind="stable") if areas[i] >= self.spec.min_area]
        if not keep:
            return FrameMasks.empty(height, width)
        masks = np.stack([labels == label for label in keep])
        conf = np.array([probability[mask].mean() for mask in masks], dtype=np.float32)
        return FrameMasks.from_masks(masks, conf, np.full(len(keep), PERSON))

    def provenance(self) -> dict[str, str]:
        return {
            "model": "mediapipe selfie_segmentation (general, 256x256)",
            "weights_file": str(self.path),
            "weights_sha256": file_sha256(self.path),
            "classes": f"{PERSON}:person",
            "threshold": str(self.spec.threshold),
            "min_area": str(self.spec.min_area),
            "instances": "8-connected components of the thresholded probability map",
        }
