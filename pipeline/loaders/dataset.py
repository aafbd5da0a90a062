"""`MaskedClips`: a PyTorch Dataset over a manifest that applies a variant on the fly, with no rendering.

Each sample decodes its clip up to the last frame it takes, reads that clip's masks from the cache by row group
(`MasksIndex`), and composes the sampled frames with the render stage's code (`ClipComposer`). Window
positions and any per-sample fills are drawn from (seed, epoch, index), so a sample is the same in every
worker and every run; `set_epoch` moves to the next epoch's draws.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import cv2
import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from pipeline.errors import InputError
from pipeline.loaders.frames import ClipComposer, ClipSource
from pipeline.loaders.index import MasksIndex
from pipeline.loaders.sampling import Sampling
from pipeline.masks import MasksRun, StoredClip
from pipeline.render.kinds import Variant
from pipeline.render.pairing import PAIR_RANGE, CoverageTask, pair_clips, read_relations, shard_coverage
from pipeline.render.stage import RenderItem
from pipeline.render.variants import resolve

log = logging.getLogger(__name__)


class ClipSample(NamedTuple):
    """One sample (the default collate stacks each field over a batch)."""

    frames: torch.Tensor  # (num_clips, clip_len, size, size, 3) uint8 RGB, or what `transform` made of it
    label: int  # the manifest's label index (-1 unlabelled)
    clip_id: str  # the render key: the clip id, or `<id>__<k>` for static background k
    positions: torch.Tensor  # (num_clips × clip_len,) frame positions in the clip


@dataclass(frozen=True, kw_only=True)
class Entry:
    """A manifest row as the loader needs it."""

    key: str
    clip_id: str  # the dataset's (source) clip id
    label: int
    partner: str | None  # swap variants: the clip whose background is pasted under the people


class MaskedClips(Dataset):
    """The clips a manifest lists (`in_lists` rows, of one split if given), shown as `variant`.

    `manifest`: a manifest.parquet (or its folder) of any variant of a masks run: `original`'s for the run's
    clips, or a rendered variant's to take its clip selection, filter, static-background keys and swap partners.
    `masks`: the masks run folder (default: the manifest's, `<out>/masks/<dataset>/<run>`). `size`: short side
    resized to this, then a centre crop `size`² (None: the source frames as composed). `random_fill`: None
    (the render's fills, pixel for pixel), "clip" or "frame" (new colours and static backgrounds per sample or
    per frame). `transform` takes the uint8 tensor (num_clips, clip_len, H, W, 3).
    """

    def __init__(self, manifest: Path | str, *, variant: Variant | str, split: str | None = None,
                 masks: Path | str | None = None, sampling: Sampling = Sampling(), size: int | None = 224,
                 random_fill: str | None = None, seed: int = 0, relations: Path | None = None,
                 transform: Callable[[torch.Tensor], object] | None = None) -> None:
        self.variant = resolve([variant])[0] if isinstance(variant, str) else variant
        if self.variant.original:
            self.variant = Variant(name="original")  # every region kept: the source frames
        self.sampling, self.size, self.random_fill, self.seed = sampling, size, random_fill, seed
        self.transform, self.epoch = transform, 0
        path = Path(manifest)
        path = path / "manifest.parquet" if path.is_dir() else path
        if not path.is_file():
            raise InputError(f"{path}: no manifest there; run `make manifests` (VARIANTS=original is enough)")
        table = pq.read_table(path)
        rows = [r for r in table.to_pylist() if r["in_lists"] and (split is None or r["split"] == split)]
        if not rows:
            raise InputError(f"{path}: no listed clips{f' in split {split!r}' if split else ''}")
        run_names = {r["masks_run"] for r in rows}
        if masks is None and len(run_names) > 1:
            raise InputError(f"{path}: rows from several masks runs; give masks=<run folder>")
        # <out>/manifests/<dataset>/<run>/<variant>/manifest.parquet → <out>/masks/<dataset>/<run>
        run = MasksRun(Path(masks) if masks else path.parents[4] / "masks" / path.parents[2].name / run_names.pop())
        self.index = MasksIndex(run)
        check_current(path, rows, self.index, run)
        self.decode_fps = run.decode_fps
        self.entries = self._entries(rows, relations)
        log.info("%s: %d clips as %s", path, len(self.entries), self.variant.name)

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's windows and fills (call before each epoch; DataLoader workers that are not
        persistent get the new value with the dataset)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> ClipSample:
        entry = self.entries[index]
        clip = self.index.clip(entry.clip_id)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        positions = self.sampling.positions(clip.frames, rng)
        seed = self.seed if self.random_fill is None else int(rng.integers(2**31))
        source = ClipSource(clip=clip, masks=self.index.masks(clip.clip_id), key=entry.key,
                            partner=self.index.clip(entry.partner) if entry.partner else None,
                            partner_masks=self.index.masks(entry.partner) if entry.partner else None)
        composer = ClipComposer(source, self.variant, decode_fps=self.decode_fps, seed=seed,
                                random_fill=self.random_fill)
        frames = centre_crop(composer.frames(positions), self.size)
        tensor = torch.from_numpy(frames).reshape(self.sampling.num_clips, self.sampling.clip_len, *frames.shape[1:])
        return ClipSample(frames=self.transform(tensor) if self.transform else tensor, label=entry.label,
                          clip_id=entry.key, positions=torch.from_numpy(np.asarray(composer.used(positions))))

    def _entries(self, rows: list[dict], relations: Path | None) -> list[Entry]:
        """One entry per render key the variant has: a clip once (formats and other variants' backgrounds
        folded), or once per static background of a rendered static variant's manifest. Partners named by the
        manifest only when it is this variant's; else paired as render pairs them."""
        own = all(row["variant"] == self.variant.name for row in rows)
        named = own and all(row["pair_clip_id"] for row in rows)
        pairs = swap_partners(self.index, self.variant, seed=self.seed, relations=relations) \
            if self.variant.needs_pair and not named else {}
        entries: dict[str, Entry] = {}
        keys = set()
        for row in rows:
            clip_id = row["source_clip_id"] or row["clip_id"]
            background = (row["background"] or 0) if self.variant.static else None
            key = RenderItem(clip=self.index.clip(clip_id), background=background).key
            partner = row["pair_clip_id"] if named else pairs.get(clip_id)
            keys.add(key)
            if key not in entries and (partner is not None or not self.variant.needs_pair):
                entries[key] = Entry(key=key, clip_id=clip_id, label=row["label_index"], partner=partner)
        if len(entries) < len(keys):
            log.warning("%s: %d of %d clips have no swap partner and are left out", self.variant.name,
                        len(keys) - len(entries), len(keys))
        return list(entries.values())


def check_current(path: Path, rows: list[dict], index: MasksIndex, run: MasksRun) -> None:
    """Every row was made from the masks as they are now (its run, its shard's digest, its label); a manifest
    older than the masks is an error, not stale labels or pixels that match no render."""
    for row in rows:
        clip_id = row["source_clip_id"] or row["clip_id"]
        stats = run.shards.get(row["masks_shard"])
        clip = index.clips.get(clip_id)
        label = -1 if clip is None or clip.label_index is None else clip.label_index
        if (row["masks_run"] != run.tag or stats is None or stats.digest != row["masks_digest"] or clip is None
                or label != row["label_index"]):
            raise InputError(f"{path}: clip {clip_id} was listed from masks that have changed since (run "
                             f"{row['masks_run']}, shard {row['masks_shard']}); run `make render` and `make manifests` "
                             "again (or give masks= the run it was made from)")


def centre_crop(frames: np.ndarray, size: int | None) -> np.ndarray:
    """(N, H, W, 3) frames with the short side resized to `size` (bilinear), then the centre `size`² crop."""
    if size is None:
        return frames
    height, width = frames.shape[1:3]
    scale = size / min(height, width)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    top, left = (new[1] - size) // 2, (new[0] - size) // 2
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        resized = frame if new == (width, height) else cv2.resize(frame, new, interpolation=cv2.INTER_LINEAR)
        out[i] = resized[top : top + size, left : left + size]
    return out


def swap_partners(index: MasksIndex, variant: Variant, *, seed: int, relations: Path | None = None) -> dict[str, str]:
    """Clip id → swap partner id, paired the way render pairs them: every clip of the run, person coverage
    under the variant's mask options (one pass over each shard, once), the variant's mode and seed."""
    by_shard: dict[str, list[StoredClip]] = {}
    for clip in index.clips.values():
        by_shard.setdefault(clip.shard, []).append(clip)
    coverage: dict[str, float] = {}
    for shard, clips in by_shard.items():
        coverage |= shard_coverage(CoverageTask(masks_dir=index.folder, shard=shard, clips=tuple(clips),
                                                options=variant.masks))
    pairing = variant.pairing
    if pairing.needs_relations and relations is None:
        raise InputError(f"variant {variant.name!r}: swap mode {pairing.mode} needs relations=<CSV file>")
    found = read_relations(relations, {c.label for c in index.clips.values() if c.label}) \
        if pairing.needs_relations else None
    pairs = pair_clips(list(index.clips.values()), coverage, seed=seed if pairing.seed is None else pairing.seed,
                       low=PAIR_RANGE[0], high=PAIR_RANGE[1], mode=pairing.mode, relations=found)
    return {clip_id: partner.clip_id for clip_id, partner in pairs.items()}
