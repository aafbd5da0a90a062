"""Configuration of a masks run, and the run tag derived from everything that shapes its output."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.datasets import ReaderOptions, output_name
from pipeline.decode import DecodeOptions
from pipeline.executor import ExecOptions
from pipeline.segment import SegmenterSpec, resolve_weights, weights_digests
from pipeline.tracking import TrackOptions


@dataclass(frozen=True, kw_only=True)
class MasksConfig:
    dataset: str
    root: Path | None = None  # None: the dataset's default (the sample generates itself under out/data)
    reader: ReaderOptions = field(default_factory=ReaderOptions)  # split id, video folder, class list
    out: Path = Path(".")
    segmenter: SegmenterSpec = field(default_factory=SegmenterSpec)
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    decoders: int = 0  # clips decoded at once per worker, sharing model batches; 0: auto (1 on CPU); shapes nothing
    track: TrackOptions = field(default_factory=TrackOptions)  # stable instance ids across frames
    splits: tuple[str, ...] | None = None  # None: every split; selects shards, never changes them
    limit: int | None = None  # the first shards (by name) holding at least this many clips
    shard_size: int = 32  # clips per shard, on average, for a new run folder
    execution: ExecOptions = field(default_factory=ExecOptions)  # where shards run, and how often a clip is tried
    overwrite: bool = False  # recompute shards that are done
    retry_failed: bool = False  # recompute done shards that hold clips given up as failed
    tag: str | None = None  # run folder name; None derives one from the settings

    @property
    def name(self) -> str:
        """The dataset's output folder name (`ucf101-split2` for a split of a dataset with split ids)."""
        return output_name(self.dataset, self.reader.split_id)

    def absolute(self) -> "MasksConfig":
        """Every folder as an absolute path, so a worker started in another folder sees the same files."""
        reader = self.reader
        reader = dataclasses.replace(reader, videos=reader.videos and Path(reader.videos).absolute(),
                                     class_list=reader.class_list and Path(reader.class_list).absolute())
        return dataclasses.replace(self, root=self.root and Path(self.root).absolute(), reader=reader,
                                   out=Path(self.out).absolute())

    def with_weights(self) -> "MasksConfig":
        """The weights located, as absolute paths (SegmenterLoadError if they cannot be had)."""
        return dataclasses.replace(self, segmenter=resolve_weights(self.segmenter))

    def output_fields(self) -> dict[str, Any]:
        """What decides the stored masks; two runs agreeing on these may share a run folder. The weights count
        by the SHA-256 of their content, so weights rewritten in place make a new run folder; the batch size
        counts for a segmenter whose masks depend on it, and on a CPU the torch thread count for one whose masks
        depend on that."""
        fields = {
            "dataset": self.dataset,
            "segmenter": self.segmenter.output_fields(),
            "weights": weights_digests(self.segmenter),
            "fps": self.decode.fps,
            "short_side": self.decode.short_side,
            "track": {"min_iou": self.track.min_iou, "max_gap": self.track.max_gap},
        }
        if self.segmenter.batch_shapes_masks:
            fields["batch"] = self.batch_shape()
        return {**fields, **self.threads_field()}

    def model_threads(self) -> int:
        """The torch threads each CPU model runs on: the setting (THREADS), else each worker's equal share of the
        cores (all of them in this process); 0 where the workers' machines are not known here (a scheduler
        started elsewhere): each worker's own default."""
        return self.segmenter.threads or self.execution.threads_per_worker()

    def threads_field(self) -> dict[str, int]:
        """The thread count as the run tag keys it: on a CPU a torch network's masks (YOLO's, SAM's) differ in
        their last bits with it (docs/PERFORMANCE.md, ninth session), so another count is another run folder.
        Empty on a GPU and for a segmenter whose masks it does not shape."""
        return {"threads": self.model_threads()} if self.segmenter.threads_shape_masks else {}

    def batch_shape(self) -> dict[str, int]:
        """What sets a model batch's size: BATCH frames, fewer where they would pass max_batch_mb."""
        return {"frames": self.decode.batch, "max_mb": self.decode.max_batch_mb}

    def provenance(self) -> dict[str, Any]:
        """The settings as run.json records them: what the masks are made from (the run tag's fields: the
        backend's own settings, the weights by content and by where they were read, frame rate, size, tracking)
        and where the clips came from (dataset folder and reader options). Nothing that only selects or
        schedules the work (splits, limit, overwrite, retries, workers, decoders, batch sizes and thread
        counts where they do not change the masks, the device where it does not), nor the output folder, tag or
        shard size (layout.json has that): a run with other such flags keeps the same record. Each shard's stats
        keep what ran it (made_with)."""
        spec = self.segmenter
        read_from = {"model": spec.model} if spec.backend not in ("selfie",) else {"selfie_model": spec.selfie_model}
        if spec.refine:
            read_from["sam_checkpoint"] = spec.refine.checkpoint
        return {
            "dataset": self.dataset,
            "root": self.root,
            "reader": dataclasses.asdict(self.reader),
            "segmenter": {**spec.output_fields(), **self.threads_field(), "weights": weights_digests(spec),
                          "weights_paths": read_from},
            "decode": {"fps": self.decode.fps, "short_side": self.decode.short_side,
                       **({"batch": self.batch_shape()} if spec.batch_shapes_masks else {})},
            "track": {"min_iou": self.track.min_iou, "max_gap": self.track.max_gap},
        }

    def fingerprint(self) -> str:
        return fields_digest(self.output_fields())

    def run_tag(self) -> str:
        return self.tag or self.derived_tag(self.fingerprint())

    def derived_tag(self, fingerprint: str) -> str:
        """The run folder's name without TAG, for settings of this fingerprint."""
        backend = self.segmenter.backend
        if backend == "yolo":
            name = Path(self.segmenter.model).stem
        else:
            name = backend.rpartition(":")[2].lower() or backend
        return f"{name}-{fingerprint}"

    def run_dir(self) -> Path:
        return Path(self.out) / "masks" / self.name / self.run_tag()


def fields_digest(fields: dict[str, Any]) -> str:
    """The run tag's digest of a run's output fields."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]
