"""Run the render stage: read a masks run, pair clips for swap variants, render every (variant, shard) not done."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.atomic import write_json
from pipeline.encode import EncodeOptions
from pipeline.executor import ExecOptions, ShardProgress, run_tasks
from pipeline.maskstore import find_run, read_clips, run_info
from pipeline.pairing import PAIR_RANGE, pair_clips, shard_coverage
from pipeline.render import RenderTask, is_done, render_shard
from pipeline.variants import Variant

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RenderConfig:
    dataset: str
    variants: tuple[Variant, ...]
    out: Path = Path(".")
    masks_tag: str | None = None  # None: the dataset's only masks run
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    seed: int = 0  # noise fills and swap pairing
    pair_range: tuple[float, float] = PAIR_RANGE
    limit: int | None = None  # first N clips in clip-id order
    execution: ExecOptions = field(default_factory=ExecOptions)
    overwrite: bool = False
    retry_failed: bool = False  # rerender done shards holding clips given up as failed

    def variant_dir(self, variant: Variant) -> Path:
        return Path(self.out) / "renders" / self.dataset / variant.name

    def fingerprint(self, variant: Variant, masks_fingerprint: str) -> str:
        fields = {"variant": variant.spec(), "encode": self.encode.output_fields(), "seed": self.seed,
                  "masks": masks_fingerprint, "pair_range": list(self.pair_range) if variant.needs_pair else None}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(kw_only=True)
class VariantSummary:
    variant: str
    clips: int
    by_status: dict[str, int]
    frames: int
    shards_computed: int
    shards_skipped: int
    failed_shards: dict[str, str]
    output: str


@dataclass(kw_only=True)
class RenderSummary:
    dataset: str
    masks_dir: str
    variants: list[VariantSummary]
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(v.failed_shards for v in self.variants)

    def lines(self) -> list[str]:
        out = [f"render {self.dataset} from {self.masks_dir} in {self.seconds:.1f}s"]
        for v in self.variants:
            statuses = ", ".join(f"{k} {n}" for k, n in v.by_status.items()) or "none"
            out.append(f"  {v.variant}: {v.clips} clips ({statuses}), {v.frames} frames; shards {v.shards_computed} "
                       f"computed, {v.shards_skipped} already done, {len(v.failed_shards)} failed -> {v.output}")
            out += [f"  FAILED {v.variant}/{name}: {error}" for name, error in v.failed_shards.items()]
        return out


def run_render(config: RenderConfig, *, progress: bool = True) -> RenderSummary:
    """Render every variant of the dataset's masks run; safe to rerun (finished shards are skipped)."""
    started = time.perf_counter()
    masks_dir = find_run(config.out, config.dataset, config.masks_tag)
    info = run_info(masks_dir)
    clips = sorted(read_clips(masks_dir).to_pylist(), key=lambda c: c["clip_id"])
    if config.limit:
        clips = clips[: config.limit]
    by_shard: dict[str, list[dict]] = defaultdict(list)
    for clip in clips:
        by_shard[clip["shard"]].append(clip)
    execution = config.execution
    encode = config.encode if execution.in_process or config.encode.threads else \
        dataclasses.replace(config.encode, threads=execution.threads_per_worker())

    tasks: list[RenderTask] = []
    for variant in config.variants:
        pairs = swap_pairs(masks_dir, by_shard, variant, config) if variant.needs_pair else {}
        write_json(config.variant_dir(variant) / f"variant.{config.encode.format}.json",
                   {"variant": variant.spec(), "encode": config.encode.output_fields(), "seed": config.seed,
                    "masks_dir": str(masks_dir), "masks_fingerprint": info["fingerprint"],
                    "pair_range": list(config.pair_range) if variant.needs_pair else None})
        for shard, shard_clips in sorted(by_shard.items()):
            tasks.append(RenderTask(
                shard=shard, variant=variant, clips=tuple(shard_clips), masks_dir=masks_dir,
                variant_dir=config.variant_dir(variant), encode=encode,
                decode_fps=info["config"]["decode"]["fps"], seed=config.seed,
                fingerprint=config.fingerprint(variant, info["fingerprint"]),
                pairs={c["clip_id"]: pairs[c["clip_id"]] for c in shard_clips if c["clip_id"] in pairs},
                max_tries=execution.max_tries, overwrite=config.overwrite, retry_failed=config.retry_failed,
            ))
    todo = tasks if config.overwrite else [task for task in tasks if not is_done(task)]
    log.info("render %s: %d variants x %d shards, %d to compute", config.dataset, len(config.variants), len(by_shard), len(todo))
    with ShardProgress(tasks, todo, enabled=progress, desc="render") as on_done:
        failed = run_tasks(render_shard, todo, names=[t.name for t in todo], options=execution, on_done=on_done,
                           key_prefix="render")
    summary = RenderSummary(dataset=config.dataset, masks_dir=str(masks_dir),
                            variants=[summarize(config, v, tasks, todo, failed) for v in config.variants],
                            seconds=round(time.perf_counter() - started, 2))
    for variant, part in zip(config.variants, summary.variants):
        write_json(config.variant_dir(variant) / "_status" / config.encode.format / "summary.json", dataclasses.asdict(part))
    return summary


def swap_pairs(masks_dir: Path, by_shard: dict[str, list[dict]], variant: Variant, config: RenderConfig) -> dict[str, dict]:
    """Person coverage of every clip (one task per masks shard), then the seeded pairing."""
    coverage: dict[str, float] = {}
    jobs = [(masks_dir, shard, tuple(clips), variant.masks) for shard, clips in sorted(by_shard.items())]
    failed = run_tasks(shard_coverage, jobs, names=[job[1] for job in jobs], options=config.execution,
                       on_done=lambda _, result: coverage.update(result), key_prefix=f"coverage-{variant.name}")
    if failed:
        raise RuntimeError(f"person coverage failed for shards {sorted(failed)}: {next(iter(failed.values()))}")
    clips = [clip for shard_clips in by_shard.values() for clip in shard_clips]
    pairs = pair_clips(clips, coverage, seed=config.seed, low=config.pair_range[0], high=config.pair_range[1])
    log.info("%s: %d of %d clips paired (person coverage %.0f-%.0f%%)", variant.name, len(pairs), len(clips),
             100 * config.pair_range[0], 100 * config.pair_range[1])
    return pairs


def summarize(config: RenderConfig, variant: Variant, tasks: list[RenderTask], todo: list[RenderTask],
              failed: dict[str, str]) -> VariantSummary:
    """Totals for one variant, read back from its committed status files."""
    mine = [task for task in tasks if task.variant is variant]
    statuses: Counter[str] = Counter()
    frames = 0
    for task in mine:
        if task.name in failed:
            statuses["shard_failed"] += len(task.clips)
            continue
        wanted = {clip["clip_id"] for clip in task.clips}
        for row in pq.read_table(task.status_paths()[0], columns=["clip_id", "status", "frames"]).to_pylist():
            if row["clip_id"] in wanted:
                statuses[row["status"]] += 1
                frames += row["frames"]
    computed = sum(1 for task in todo if task.variant is variant and task.name not in failed)
    return VariantSummary(
        variant=variant.name, clips=sum(len(t.clips) for t in mine), by_status=dict(sorted(statuses.items())),
        frames=frames, shards_computed=computed, shards_skipped=len(mine) - computed - sum(t.name in failed for t in mine),
        failed_shards={t.shard: failed[t.name] for t in mine if t.name in failed}, output=str(config.variant_dir(variant)),
    )
