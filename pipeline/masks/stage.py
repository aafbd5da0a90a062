"""What the masks stage does per shard and per clip: decode each clip, segment its frames, and write the
shard's mask rows and status rows (the engine claims, retries, commits and marks the shard done). With several
decoders the shard's clips go through the Feeder together (frames of several clips share model batches); a clip
that fails there, or whose last try did not finish, is then tried alone, one clip at a time."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from pipeline.decode import DecodeOptions, VideoInfo
from pipeline.engine import Commit, ShardTask
from pipeline.engine.problems import stored_statuses
from pipeline.machine import cpu_kind, gpu_model
from pipeline.masks.feed import Feeder
from pipeline.masks.tables import ClipRows, ShardFiles, ShardWriter
from pipeline.records import CONFLICT, DECODE_ERROR, EMPTY, FAILED, MISSING, OK, PARTIAL, USABLE, ClipRecord, ClipStatus
from pipeline.segment import Segmenter, SegmenterSpec, load_segmenter
from pipeline.tracking import IouTracker, TrackOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MasksStage:
    """The masks stage's settings, as each worker needs them (the engine's ShardStage)."""

    segmenter: SegmenterSpec
    decode: DecodeOptions
    track: TrackOptions
    metadata: dict[str, str]  # provenance every shard file carries (run tag, fingerprint, settings)
    decoders: int = 0  # clips decoded at once, their frames sharing model batches; 0: `auto_decoders` here

    def decoders_here(self) -> int:
        return self.decoders or auto_decoders(self.segmenter.device)

    def made_with(self) -> dict[str, Any]:
        """What ran a shard, left out of the run's record (kept in its stats). None of it shapes the masks, but on
        a CPU the threads and the kind of CPU, and on CUDA the GPU's model, in their last bits: the run tag keys
        the count where it is known when the run is planned, and the run says so where its shards still ran on
        different counts or kinds."""
        torch = sys.modules.get("torch")  # the threads the model ran on (on a CPU they shape its last bits), not
        threads = torch.get_num_threads() if torch is not None else self.segmenter.threads  # the setting (0)
        made = {"device": self.segmenter.device, "batch": self.decode.batch, "decoders": self.decoders_here(),
                "threads": threads}
        if self.segmenter.torch_network:  # the machine its kernels ran on
            if self.segmenter.device == "cpu":
                made["cpu"] = cpu_kind()
            elif gpu := gpu_model(self.segmenter.device):
                made["gpu"] = gpu
        if os.environ.get("CUDA_VISIBLE_DEVICES"):
            made["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
        return made

    def stored_outcomes(self, task: ShardTask) -> dict[str, tuple[str, str | None]]:
        """Clip id → (status, error) from a committed shard's clips table."""
        return stored_statuses(ShardFiles(task.folder, task.name).clips)

    def open(self, task: ShardTask, commit: Commit) -> "MasksWork":
        segmenter = load_segmenter(self.segmenter)
        spec = self.segmenter
        if spec.threads and spec.threads_shape_masks:  # the count the run is keyed by,
            import torch  # whatever this process ran on since the model (cached) was loaded: SAM's count too

            torch.set_num_threads(spec.threads)
        provenance = {f"segmenter.{key}": value for key, value in segmenter.provenance().items()}
        writer = ShardWriter(ShardFiles(task.folder, task.name), commit, {**self.metadata, **provenance})
        return MasksWork(self, segmenter, writer)


class MasksWork:
    """One shard's clips; a clip's mask rows reach the shard only once the clip is complete and kept."""

    def __init__(self, stage: MasksStage, segmenter: Segmenter, writer: ShardWriter) -> None:
        self.stage, self.segmenter, self.writer = stage, segmenter, writer
        self.decoders = stage.decoders_here()
        self._rows: dict[str, ClipRows] = {}  # usable clips' rows, until kept
        self._alone = Feeder(segmenter, stage.decode, decoders=1, rows=self._new_rows, overlap=self.overlap)
        try:
            self._feeder = Feeder(segmenter, stage.decode, decoders=self.decoders, rows=self._new_rows,
                                  overlap=self.overlap) if self.decoders > 1 else None
        except BaseException:
            self._alone.close()
            raise
        self.process_together = self._together if self._feeder else None  # the engine's hook, or none

    @property
    def overlap(self) -> bool:
        return self.stage.segmenter.device.startswith("cuda")

    def process(self, clip: ClipRecord) -> ClipStatus:
        """One try at a clip on its own: fresh rows (nothing from an earlier try), then decode and segment."""
        self._rows.pop(clip.clip_id, None)
        status, rows = run_alone(clip, self._alone)
        self._hold(status, rows)
        return status

    def _together(self, clips: list[ClipRecord], *, begin: Callable[[ClipRecord], None]
                  ) -> Iterator[tuple[ClipRecord, ClipStatus | Exception]]:
        """One try at each clip, `decoders` of them at once (the engine's `process_together`)."""
        feedable = []
        for clip in clips:
            self._rows.pop(clip.clip_id, None)
            status = undecodable(clip)
            if status is None:
                feedable.append(clip)
                continue
            begin(clip)
            yield clip, status
        for clip, fed in self._feeder.run(feedable, begin):
            if isinstance(fed, Exception):
                yield clip, fed
                continue
            status = decoded_status(clip, fed.info, fed.frames, fed.error, len(fed.rows))
            self._hold(status, fed.rows)
            yield clip, status

    def give_up(self, clip: ClipRecord, error: str) -> ClipStatus:
        self._rows.pop(clip.clip_id, None)
        return ClipStatus(clip=clip, status=FAILED, error=error)

    def keep(self, status: ClipStatus) -> None:
        rows = self._rows.pop(status.clip.clip_id, None)
        if rows is not None:
            self.writer.write(rows)

    def finish(self, outcomes: list[ClipStatus], commit: Commit) -> dict[str, Any]:
        self._close_feeders()
        self.writer.finish(outcomes)
        totals = {"instances": sum(status.instances for status in outcomes)}
        if self._feeder:  # its bound on decoded frames held at once (host memory)
            totals["frames_in_flight_max"] = self._feeder.frames_in_flight
        splits = self._alone.splits + (self._feeder.splits if self._feeder else 0)
        if splits:  # batches run as two halves after running out of device memory
            totals["oom_splits"] = splits
        unpinned = self._alone.unpinned + (self._feeder.unpinned if self._feeder else 0)
        if unpinned:  # pieces decoded into ordinary memory (no room in pinned memory's budget), their batches staged
            totals["pieces_unpinned"] = unpinned
        return totals

    def abort(self) -> None:
        self._close_feeders()
        self.writer.abort()

    def _close_feeders(self) -> None:
        for feeder in (self._alone, self._feeder):
            if feeder is not None:
                feeder.close()

    def _new_rows(self, clip: ClipRecord) -> ClipRows:
        return ClipRows(clip.clip_id, dict(self.segmenter.names), IouTracker(self.stage.track))

    def _hold(self, status: ClipStatus, rows: ClipRows) -> None:
        if status.status in USABLE:
            self._rows[status.clip.clip_id] = rows


def auto_decoders(device: str) -> int:
    """Clips to decode at once: 1 on a CPU (the model takes the cores); on a GPU, one per core of this GPU
    worker's share of its job's cores (pipeline.gpu_workers.core_share: the share a GPU job or local GPU
    cluster sets, else the batch system's cores ÷ the job's GPUs, else this process's cores ÷ the machine's
    GPUs), at most 8, at least 1. Never all the cores: a worker pinned to one GPU sees one GPU."""
    if not device.startswith("cuda"):
        return 1
    from pipeline.gpu_workers import core_share

    share = core_share()
    log.debug("decoders: %d (%d cores per GPU worker, from %s)", share.decoders, share.cores, share.source)
    return share.decoders


def undecodable(clip: ClipRecord) -> ClipStatus | None:
    """The status of a clip there is nothing to decode for (listed twice with different labels, or missing)."""
    if clip.conflict:
        return ClipStatus(clip=clip, status=CONFLICT, error=clip.conflict)
    if not os.path.isfile(clip.path):
        return ClipStatus(clip=clip, status=MISSING, error=f"{clip.path}: file not found")
    return None


def segment_clip(clip: ClipRecord, segmenter: Segmenter, options: DecodeOptions, rows: ClipRows, *,
                 overlap: bool = False) -> ClipStatus:
    """Decode and segment one clip into `rows` (the Feeder with one decoder); the returned status says whether
    the rows are usable, and the clip's own failure is raised.

    A clip that stops decoding part way (a truncated download) keeps the masks of the frames before the
    error: status `partial`, with the error and the frame count. With `overlap` (a GPU model, whose thread
    mostly waits), RLE and tracking run on a thread of their own; on CPU they run inline, since there they
    only compete with the model for the cores (measured 5–8% slower).
    """
    feeder = Feeder(segmenter, options, decoders=1, rows=lambda _: rows, overlap=overlap)
    try:
        return run_alone(clip, feeder)[0]
    finally:
        feeder.close()


def run_alone(clip: ClipRecord, feeder: Feeder) -> tuple[ClipStatus, ClipRows | None]:
    """One clip through a feeder: its status and its rows (None when there was nothing to decode)."""
    status = undecodable(clip)
    if status is not None:
        return status, None
    ((_, fed),) = feeder.run([clip], begin=lambda _: None)
    if isinstance(fed, Exception):
        raise fed
    return decoded_status(clip, fed.info, fed.frames, fed.error, len(fed.rows)), fed.rows


def decoded_status(clip: ClipRecord, info: VideoInfo | None, frames: int, error: str | None, instances: int
                   ) -> ClipStatus:
    """A decoded clip's status: ok; partial (frames, then a decode error); decode_error; or empty."""
    if error is not None and not frames:
        return ClipStatus(clip=clip, status=DECODE_ERROR, error=error)
    if info is None:
        return ClipStatus(clip=clip, status=EMPTY, error=f"{clip.path}: no decodable video frames")
    return ClipStatus(
        clip=clip,
        status=PARTIAL if error else OK,
        error=error and f"decoded {frames} frames, then: {error}",
        frames=frames,
        fps=info.fps,
        width=info.width,
        height=info.height,
        duration=info.duration,
        rotation=info.rotation,
        instances=instances,
    )
