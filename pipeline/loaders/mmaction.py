"""`MaskVariant`: an mmaction2 pipeline transform that composes the decoded frames as a variant, on the fly.

Put it right after the decode step (frames at source size, before any resize or crop):

    custom_imports = dict(imports=["pipeline.loaders.mmaction"], allow_failed_imports=False)
    train_pipeline = [dict(type="DecordInit"), dict(type="SampleFrames", clip_len=16, frame_interval=4, num_clips=1),
                      dict(type="DecordDecode"),
                      dict(type="MaskVariant", masks="out/masks/kinetics400/<run>", variant="human_only"), ...]

It takes the results dict (`imgs`: the decoded RGB frames, `frame_inds`: their frame numbers, `filename` or
`frame_dir`: the clip) and returns the same dict with `imgs` composed, exactly as render composes those frames.
The clip is found by file name (a clip id, as the `original` variant's links and every render are named) or by
the file a link points to. Registered in mmaction2's TRANSFORMS when mmaction2 is importable; without it the
class works the same as a plain callable.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.loaders.dataset import swap_partners
from pipeline.loaders.frames import ClipComposer, ClipSource
from pipeline.loaders.index import MasksIndex
from pipeline.masks import MasksRun, StoredClip
from pipeline.render.kinds import Variant
from pipeline.render.stage import RenderItem
from pipeline.render.variants import resolve

log = logging.getLogger(__name__)


class MaskVariant:
    """Compose `results["imgs"]` as `variant` (a preset name or a Variant) from the masks run folder `masks`.
    `random_fill` ("clip" / "frame") draws colours and static backgrounds from numpy's global generator (the
    one mmengine seeds per worker), as mmaction2's own random transforms do."""

    def __init__(self, masks: str | Path, variant: str | Variant = "human_only", *, seed: int = 0,
                 random_fill: str | None = None, relations: str | Path | None = None) -> None:
        self.variant = resolve([variant])[0] if isinstance(variant, str) else variant
        run = MasksRun(Path(masks))
        if run.decode_fps:
            raise InputError(f"{masks}: masks made at --fps {run.decode_fps:g}; mmaction2's frame numbers count every "
                             "frame, so they do not line up; use a masks run without --fps (or MaskedClips)")
        self.index, self.seed, self.random_fill = MasksIndex(run), seed, random_fill
        self.partners = swap_partners(self.index, self.variant, seed=seed, relations=relations) \
            if self.variant.needs_pair else {}
        self._by_target: dict[Path, str] | None = None

    def __call__(self, results: dict) -> dict:
        clip = self.clip_of(results)
        frames = [np.asarray(img) for img in results["imgs"]]
        positions = (np.asarray(results["frame_inds"]).reshape(-1) - int(results.get("start_index", 0))).tolist()
        if len(positions) != len(frames):
            raise ValueError(f"{clip.path}: {len(frames)} imgs for {len(positions)} frame_inds")
        if self.index.rotation.get(clip.clip_id):
            raise ValueError(f"{clip.path}: turned {self.index.rotation[clip.clip_id]}° upright by its metadata, which "
                             "mmaction2's decoders do not apply; its masks would land turned: use MaskedClips for it")
        if positions and not 0 <= min(positions) <= max(positions) < clip.frames:
            raise ValueError(f"{clip.path}: frame_inds up to {max(positions)}, but its masks hold {clip.frames} frames "
                             f"(status {clip.status}); list only clips whose masks cover them (manifest rows with "
                             "status ok), or use MaskedClips")
        if frames and frames[0].shape[:2] != (clip.height, clip.width):
            raise ValueError(f"{clip.path}: frames are {frames[0].shape[1]}x{frames[0].shape[0]}, its masks "
                             f"{clip.width}x{clip.height}; put MaskVariant right after the decode step")
        partner = self.partners.get(clip.clip_id)
        if self.variant.needs_pair and partner is None:
            raise ValueError(f"{clip.clip_id}: no swap partner (person coverage out of range, or alone in its split)")
        seed = self.seed if self.random_fill is None else int(np.random.randint(2**31))
        composer = ClipComposer(
            ClipSource(clip=clip, masks=self.index.masks(clip.clip_id),
                       key=RenderItem(clip=clip, background=0 if self.variant.static else None).key,
                       partner=self.index.clip(partner) if partner else None,
                       partner_masks=self.index.masks(partner) if partner else None),
            self.variant, decode_fps=None, seed=seed, random_fill=self.random_fill)
        if self.variant.still:  # its one frame may not be among those decoded: the composer decodes it
            results["imgs"] = list(composer.frames(positions))
            return results
        indices = range(clip.frames)  # no --fps: a frame's source index is its position
        made = {p: composer.compose(p, frames[positions.index(p)], indices) for p in sorted(set(positions))}
        results["imgs"] = [made[p] for p in positions]
        return results

    def clip_of(self, results: dict) -> StoredClip:
        """The clip of a results dict: by its file (or frame folder) name, else by the file a link points to."""
        name = results.get("filename") or results.get("frame_dir")
        if name is None:
            raise KeyError("MaskVariant needs `filename` or `frame_dir` in the results")
        path = Path(name)
        stem = path.name if "frame_dir" in results and "filename" not in results else path.stem
        if stem in self.index.clips:
            return self.index.clips[stem]
        if self._by_target is None:
            self._by_target = {Path(clip.path).resolve(): clip.clip_id for clip in self.index.clips.values()}
        clip_id = self._by_target.get(path.resolve())
        if clip_id is None:
            raise KeyError(f"{path}: not a clip of {self.index.folder} (by name or by the file it links to)")
        return self.index.clips[clip_id]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(masks={str(self.index.folder)!r}, variant={self.variant.name!r})"


try:  # registered where mmaction2 is installed; the class needs nothing of it
    from mmaction.registry import TRANSFORMS
except ImportError:  # pragma: no cover - mmaction2 is optional
    TRANSFORMS = None
else:  # pragma: no cover
    TRANSFORMS.register_module(module=MaskVariant, force=True)
