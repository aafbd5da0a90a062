"""Run the render stage: read a masks run's current shards, pair clips for swap variants, and render every
(variant, masks shard) through the shard engine. Renders live under the masks run they came from:
`renders/<dataset>/<masks run>/<variant>/`, so two masks runs never write into one folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.bulk import bulk
from pipeline.engine import ShardTask, StageSummary, run_stage, select
from pipeline.engine.record import RecordFile
from pipeline.errors import InputError
from pipeline.executor import ExecOptions, run_tasks, session
from pipeline.masks import MasksRun, StoredClip, find_run
from pipeline.render.backdrops import folder_digest
from pipeline.render.encode import EncodeOptions
from pipeline.render.guards import say_what_changed, with_objects
from pipeline.render.kinds import Variant
from pipeline.render.pairing import (
    PAIR_RANGE,
    CoverageTask,
    Relations,
    pair_clips,
    read_relations,
    relations_digest,
    shard_coverage,
    unpaired_reason,
)
from pipeline.render.pairs_file import match_pairs
from pipeline.render.planes import planar
from pipeline.render.stage import SOURCE, RenderItem, RenderStage
from pipeline.render.tars import WEBDATASET

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RenderConfig:
    dataset: str  # the output name (`ucf101-split1`)
    variants: tuple[Variant, ...]
    default_set: bool = False  # the variants were not named (no --variants): one that cannot come out right from
    # these masks (Variant.needs_objects, no objects found) is left out with a warning instead of refused
    out: Path = Path(".")
    masks_tag: str | None = None  # None: the masks run started last that has committed shards
    make_args: str | None = None  # how the user names the dataset to `make` (`DATASET=ucf101 SPLIT_ID=1`), for hints
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    seed: int = 0  # noise fills, static backgrounds, SCUFO frames and swap pairing (unless a variant has its own)
    pair_range: tuple[float, float] = PAIR_RANGE
    relations: Path | None = None  # swap close / far: CSV of `class, related classes`
    limit: int | None = None  # the first masks shards (by name) holding at least this many clips
    execution: ExecOptions = field(default_factory=ExecOptions)
    overwrite: bool = False
    retry_failed: bool = False  # rerender done shards holding clips given up as failed

    def variant_dir(self, masks: MasksRun, variant: Variant) -> Path:
        return Path(self.out).absolute() / "renders" / self.dataset / masks.tag / variant.name

    def fingerprint(self, variant: Variant) -> str:
        return fingerprint_of(self.made_of(variant))

    def encode_for(self, variant: Variant) -> EncodeOptions:
        """The `original` variant writes no files: its rows point at the sources, whatever --format says."""
        return EncodeOptions(format=SOURCE) if variant.original else self.encode

    def made_of(self, variant: Variant) -> dict:
        """The settings a variant's renders are made from (what `fingerprint` hashes). Colour variants into mp4
        are composited on YUV planes, which gives other pixels than the RGB path they had before: they say so,
        and only they (every other variant's renders are as they were). The inputs a protocol variant reads
        besides the masks (a folder of backgrounds, the class relations of close / far swaps) are named by
        their content."""
        encode = self.encode_for(variant)
        if variant.original:  # links to the sources: nothing else shapes them
            return {"variant": variant.spec(), "encode": encode.output_fields()}
        fields = {"variant": variant.spec(), "encode": encode.output_fields(), "seed": self.seed,
                  "pair_range": list(self.pair_range) if variant.needs_pair else None}
        if planar(variant, encode.format):
            fields["composite"] = "yuv420p"
        if encode.format == WEBDATASET:  # each sample's JSON holds the verdict of the variant's own filter
            fields["keep_if"] = list(variant.keep_if) if variant.keep_if else None
        if any(fill.kind == "noise" for fill in variant.fills().values()):
            fields["noise"] = "per-frame"  # seeded by each frame's index (before: one stream per clip)
        images = {fill.path: fill.digest or folder_digest(fill.path) for fill in variant.fills().values()
                  if fill.kind == "image"}
        if images:
            fields["images"] = dict(sorted(images.items()))
        if variant.needs_pair and variant.pairing.needs_relations:
            if self.relations is None:
                raise InputError(f"variant {variant.name!r}: swap mode {variant.pairing.mode} needs a class relations "
                                 "file (--swap-relations FILE, `SWAP_RELATIONS=FILE`; CSV rows: class, related classes)")
            fields["relations"] = relations_digest(read_relations(self.relations))
        return fields


def fingerprint_of(made_of: dict) -> str:
    """A variant's render fingerprint: the digest of what its renders are made from."""
    return hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(kw_only=True)
class RenderSummary:
    dataset: str
    masks_dir: str
    variants: list[StageSummary]
    failed_variants: dict[str, str] = field(default_factory=dict)  # variant → why it yields no clip (not rendered)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.failed_variants) or any(v.failed_shards for v in self.variants)

    def lines(self) -> list[str]:
        out = [f"render {self.dataset} from {self.masks_dir} in {self.seconds:.1f}s"]
        for summary in self.variants:
            out += summary.lines()
        out += [f"FAILED {name}: {reason}" for name, reason in self.failed_variants.items()]
        return out


def run_render(config: RenderConfig, *, progress: bool = True) -> RenderSummary:
    """Render every variant from the dataset's masks run; safe to rerun (finished shards are skipped, and a
    shard whose masks, partners or settings changed is redone)."""
    started = time.perf_counter()
    masks = find_run(config.out, config.dataset, config.masks_tag, make_args=config.make_args)
    with bulk():
        clips = masks.clips()
    by_shard: dict[str, list[StoredClip]] = {}
    for clip in clips:
        by_shard.setdefault(clip.shard, []).append(clip)
    chosen = set(select(by_shard, limit=config.limit))
    execution = config.execution
    encode = config.encode if execution.in_process or config.encode.threads else \
        dataclasses.replace(config.encode, threads=execution.threads_per_worker())
    variants = with_objects(config.variants, masks, default_set=config.default_set)  # bad input first
    made_of = {variant.name: config.made_of(variant) for variant in variants}
    relations = read_relations(config.relations, {c.label for c in clips if c.label}) \
        if any(v.needs_pair and v.pairing.needs_relations for v in variants) else None
    summaries, failed = [], {}
    described = Described(masks)
    with session(execution) as client:
        for variant in variants:
            pairs, unpaired = swap_pairs(masks, by_shard, variant, config, relations, client) if variant.needs_pair \
                else ({}, None)
            if unpaired:  # a swap variant of no clip at all: failed, not rendered
                failed[variant.name] = f"no clip paired: {unpaired}"
                continue
            stage = RenderStage(variant=variant, encode=config.encode_for(variant) if variant.original else encode,
                                masks_dir=masks.folder, variant_dir=config.variant_dir(masks, variant),
                                decode_fps=masks.decode_fps, seed=config.seed)
            say_what_changed(f"render {variant.name}", stage.variant_dir / f"variant.{stage.encode.format}.json",
                             made_of[variant.name])
            record = RecordFile.json(stage.variant_dir / f"variant.{stage.encode.format}.json", {
                **made_of[variant.name], "fingerprint": fingerprint_of(made_of[variant.name]),
                "keep_if": list(variant.keep_if) if variant.keep_if else None,
                "masks_dir": str(masks.folder), "masks_fingerprint": masks.fingerprint})
            with bulk():
                plan = [render_task(stage, masks, shard, shard_clips, pairs, fingerprint_of(made_of[variant.name]),
                                    config, described) for shard, shard_clips in by_shard.items()]
            summary = run_stage(f"render {variant.name}", stage.variant_dir, plan,
                                [task for task in plan if task.name in chosen], options=execution, record=[record],
                                progress=progress, key_prefix=f"render-{config.dataset}-{variant.name}", client=client)
            if summary.computed:
                write_json(stage.status_dir / "summary.json", summary.record())
            summaries.append(summary)
    return RenderSummary(dataset=config.dataset, masks_dir=str(masks.folder), variants=summaries,
                         failed_variants=failed, seconds=round(time.perf_counter() - started, 2))


def render_task(stage: RenderStage, masks: MasksRun, shard: str, clips: list[StoredClip],
                pairs: dict[str, StoredClip], fingerprint: str, config: RenderConfig,
                described: "Described") -> ShardTask:
    """One variant over one masks shard. Made from: each clip's status row and masks identity (its source
    file included), its partner's, and the committed digests of the masks shards read. A variant with static
    backgrounds renders each clip once per background."""
    backgrounds = range(stage.variant.backgrounds) if stage.variant.static else [None]
    items = tuple(RenderItem(clip=clip, partner=pairs.get(clip.clip_id), background=k)
                  for clip in clips for k in backgrounds)
    upstream = {shard: masks.shards[shard].digest}
    identity = {}
    for item in items:
        if item.partner:
            upstream[item.partner.shard] = masks.shards[item.partner.shard].digest
        identity[item.key] = described.identity(item)
    return ShardTask(stage=stage, name=shard, folder=stage.status_dir, items=items, identity=identity,
                     upstream=upstream, fingerprint=fingerprint,
                     max_tries=config.execution.max_tries, overwrite=config.overwrite, retry_failed=config.retry_failed)


class Described:
    """What each clip is, as the render identities hash it: its status row and its masks' identity (its source
    file included), as sorted JSON, made once per run for every variant. An item's identity is the digest of
    its clip's (and its partner's) JSON in a list, as `json.dumps([...], sort_keys=True)` writes it."""

    FIELDS = tuple(StoredClip.__dataclass_fields__)

    def __init__(self, masks: MasksRun) -> None:
        self.masks, self._texts = masks, {}

    def text(self, clip: StoredClip) -> str:
        text = self._texts.get(clip.clip_id)
        if text is None:
            row = {name: str(getattr(clip, name)) for name in self.FIELDS}
            row["masks_identity"] = self.masks.shards[clip.shard].items.get(clip.clip_id, "")
            text = self._texts[clip.clip_id] = json.dumps(row, sort_keys=True)
        return text

    def identity(self, item: RenderItem) -> str:
        parts = [self.text(item.clip)] + ([self.text(item.partner)] if item.partner else [])
        return hashlib.sha256(f"[{', '.join(parts)}]".encode()).hexdigest()[:16]


def swap_pairs(masks: MasksRun, by_shard: dict[str, list[StoredClip]], variant: Variant, config: RenderConfig,
               relations: Relations | None, client) -> tuple[dict[str, StoredClip], str | None]:
    """Person coverage of every clip (one task per masks shard), then the seeded pairing: over every clip of
    the run, whatever LIMIT selects, so a clip's partner does not depend on the selection. Also why no clip was
    paired, where none was though some clip was usable. A variant with a pairs file takes exactly its pairs."""
    if variant.pairing.pairs_file:
        clips = {clip.clip_id: clip for shard_clips in by_shard.values() for clip in shard_clips}
        kept = match_pairs(variant, clips)
        pairs = {clip_id: clips[partner] for clip_id, partner in kept.items()}
        log.info("%s: %d of %d clips paired by %s", variant.name, len(pairs), len(clips),
                 Path(variant.pairing.pairs_file).name)
        return pairs, None if pairs else f"none of the pairs in {variant.pairing.pairs_file} names two clips of this run"
    coverage: dict[str, float] = {}
    jobs = [CoverageTask(masks_dir=masks.folder, shard=shard, clips=tuple(clips), options=variant.masks)
            for shard, clips in by_shard.items()]
    options = hashlib.sha256(json.dumps(dataclasses.asdict(variant.masks), sort_keys=True).encode()).hexdigest()[:8]
    failed = run_tasks(shard_coverage, jobs, names=[job.shard for job in jobs], options=config.execution,
                       on_done=lambda _, result: coverage.update(result), key_prefix="coverage",
                       keys=[f"{masks.tag}-{job.shard}-{masks.shards[job.shard].digest}-{options}" for job in jobs],
                       client=client)
    if failed:
        raise RuntimeError(f"person coverage failed for shards {sorted(failed)}: {next(iter(failed.values()))}")
    clips = [clip for shard_clips in by_shard.values() for clip in shard_clips]
    pairing = variant.pairing
    pairs = pair_clips(clips, coverage, seed=config.seed if pairing.seed is None else pairing.seed,
                       low=config.pair_range[0], high=config.pair_range[1], mode=pairing.mode,
                       relations=relations if pairing.needs_relations else None)
    log.info("%s: %d of %d clips paired (%s, person coverage %.0f-%.0f%%)", variant.name, len(pairs), len(clips),
             pairing.mode, 100 * config.pair_range[0], 100 * config.pair_range[1])
    low, high = config.pair_range
    return pairs, None if pairs else unpaired_reason(clips, coverage, low=low, high=high, mode=pairing.mode)
