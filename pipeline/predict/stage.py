"""What the predict stage does per shard: one variant's listed rows of one masks shard, each clip's frames read
(or composed) and preprocessed on reader threads while the model scores the clips before them, in batches of
a fixed shape (the last one padded), so a clip's scores do not depend on which clips it was batched with. The
shard's rows go to `<shard>.parquet` (PREDICT_SCHEMA) beside its stats; the engine claims, retries, commits."""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.decode import DecodeError
from pipeline.engine import Commit, ShardTask
from pipeline.masks import MasksRun
from pipeline.predict.inputs import PredictItem, positions, read_frames
from pipeline.predict.load import load_scorer
from pipeline.predict.prompts import Prompts
from pipeline.predict.scorers import ScorerSpec
from pipeline.records import DECODE_ERROR, FAILED, OK
from pipeline.render.definitions import from_spec
from pipeline.render.encode import LAZY

log = logging.getLogger(__name__)

PREDICT_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),  # the render key
    pa.field("split", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # ok, decode_error, failed
    pa.field("error", pa.string()),
    pa.field("positions", pa.list_(pa.int32()), nullable=False),  # the frames scored, by position in the clip
    pa.field("scores", pa.list_(pa.float32()), nullable=False),  # one logit per class (empty unless ok)
])


@dataclass(kw_only=True)
class PredictRow:
    """One clip's outcome: a row of PREDICT_SCHEMA."""

    clip_id: str
    split: str
    status: str
    error: str | None = None
    positions: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return len(self.positions)


@dataclass(frozen=True, kw_only=True)
class PredictStage:
    """The predict stage's settings for one variant, as each worker needs them (the engine's ShardStage)."""

    scorer: ScorerSpec
    prompts: Prompts
    frames: int  # per clip
    batch: int  # clips per model call (a fixed shape: the last batch is padded)
    readers: int  # clips read ahead at once
    variant: dict  # the variant's spec (composing lazy rows)
    seed: int  # the render's seed (lazy rows' fills, noise, backgrounds)
    decode_fps: float | None
    masks_dir: Path
    folder: Path  # the shards' tables and stats
    threads: int = 0  # torch's CPU threads in a Dask worker (an equal share of the cores); 0: torch's default

    def made_with(self) -> dict[str, Any]:
        return {"device": self.scorer.device, "readers": self.readers, "threads": self.threads}

    def open(self, task: ShardTask, commit: Commit) -> "PredictWork":
        return PredictWork(self, task, commit)


class PredictWork:
    def __init__(self, stage: PredictStage, task: ShardTask, commit: Commit) -> None:
        self.stage, self.task = stage, task
        if stage.threads:
            import torch

            torch.set_num_threads(stage.threads)
        self.scorer = load_scorer(stage.scorer)
        self.classes = self.scorer.classes(stage.prompts)
        self.variant = from_spec(stage.variant)
        self.masks = MasksRun(stage.masks_dir) if any(item.format == LAZY for item in task.items) else None
        self.stored = self.masks.shard_masks(task.name) if self.masks is not None else {}

    def prepare(self, item: PredictItem) -> "Any | PredictRow":
        """The item's preprocessed frames (N, 3, S, S), or its row when its file cannot be decoded."""
        partner = self.masks.clip_masks(item.partner) if item.partner is not None and self.masks else None
        try:
            frames = read_frames(item, positions(item.clip.frames, self.stage.frames), variant=self.variant,
                                 seed=self.stage.seed,
                                 decode_fps=self.stage.decode_fps, masks=self.stored.get(item.clip.clip_id),
                                 partner_masks=partner)
        except DecodeError as exc:
            log.warning("predict %s: %s", item.key, exc)
            return PredictRow(clip_id=item.key, split=item.split, status=DECODE_ERROR, error=str(exc))
        return self.scorer.preprocess(frames)

    def scored(self, items: list[PredictItem], tensors: list) -> list[PredictRow]:
        """One model call on `batch` clips (`items`, padded with copies of the first)."""
        import torch

        stacked = torch.stack(tensors + [tensors[0]] * (self.stage.batch - len(tensors)))
        logits = self.scorer.score(stacked, self.classes)[: len(items)]
        return [PredictRow(clip_id=item.key, split=item.split, status=OK,
                           positions=positions(item.clip.frames, self.stage.frames),
                           scores=[float(v) for v in row]) for item, row in zip(items, logits)]

    def process(self, item: PredictItem) -> PredictRow:
        prepared = self.prepare(item)
        return prepared if isinstance(prepared, PredictRow) else self.scored([item], [prepared])[0]

    def process_together(self, items: list[PredictItem], *, begin: Callable[[PredictItem], None]
                         ) -> Iterator[tuple[PredictItem, "PredictRow | Exception"]]:
        """Every item, read `readers` at a time ahead of the model, scored `batch` at a time; an item whose read
        or batch raised comes back as its exception (the engine then tries it alone)."""
        with ThreadPoolExecutor(self.stage.readers, thread_name_prefix="predict-read") as pool:
            pending = []
            for item, result in _read_ahead(pool, items, self.prepare, begin, ahead=self.stage.readers + self.stage.batch):
                if isinstance(result, (PredictRow, Exception)):
                    yield item, result
                    continue
                pending.append((item, result))
                if len(pending) == self.stage.batch:
                    yield from self._flush(pending)
                    pending = []
            yield from self._flush(pending)

    def _flush(self, pending: list) -> Iterator[tuple[PredictItem, "PredictRow | Exception"]]:
        if not pending:
            return
        items = [item for item, _ in pending]
        try:
            rows = self.scored(items, [tensor for _, tensor in pending])
        except Exception as exc:  # noqa: BLE001 - each is tried alone next; a machine error is the engine's to see
            yield from ((item, exc) for item in items)
            return
        yield from zip(items, rows)

    def give_up(self, item: PredictItem, error: str) -> PredictRow:
        return PredictRow(clip_id=item.key, split=item.split, status=FAILED, error=error)

    def keep(self, row: PredictRow) -> None:
        pass

    def finish(self, rows: list[PredictRow], commit: Commit) -> dict[str, Any]:
        metadata = {"scorer": self.stage.scorer.label, "weights_sha256": self.scorer.weights_sha256,
                    "fingerprint": self.task.fingerprint}
        table = pa.Table.from_pylist([asdict(row) for row in rows], schema=PREDICT_SCHEMA.with_metadata(metadata))
        pq.write_table(table, commit.stage(self.stage.folder / f"{self.task.name}.parquet"), compression="zstd")
        return {}

    def abort(self) -> None:
        pass


def _read_ahead(pool: ThreadPoolExecutor, items: Iterable[PredictItem], prepare, begin, *, ahead: int):
    """(item, prepare(item) or its exception), in item order, with up to `ahead` reads in flight."""
    queue: deque = deque()
    items = iter(items)

    def submit() -> bool:
        item = next(items, None)
        if item is None:
            return False
        begin(item)
        queue.append((item, pool.submit(prepare, item)))
        return True

    while len(queue) < ahead and submit():
        pass
    while queue:
        item, future = queue.popleft()
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - the item's own error, tried alone next
            result = exc
        yield item, result
        submit()
