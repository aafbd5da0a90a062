"""Masked-clip variants: the presets and the choice of variants by name (`resolve`). A variant (kinds.py) maps
the regions {background, person, objects} to a fill each.

Fills are written `keep`, `color(R,G,B)`, `mean` (the ImageNet mean RGB), `blur(SIGMA)`, `noise` (seeded by
the frame's index), `inpaint` (the clip's temporal median of the pixels outside the region, cv2.inpaint where
none), `swap` (the same region of the paired clip's `background_only` frames: the HAT action swap), and the
static backgrounds of StillMix's SCUBA: `image(DIR)` (a seeded pick per clip from a folder of images) and
`stripes` (a seeded sinusoidal stripe image). Presets cover the static-bias literature (`original`, HAT's
background_only / human_only / swap modes, SCUBA / SCUFO); users add their own in a TOML file or with
`--define` (parsed in definitions.py), under names of their own.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.render.definitions import check, load_file, parse_define, parse_fill
from pipeline.render.kinds import BLACK, MEAN, Fill, MaskOptions, Pairing, Variant, VariantError

GREEN = Fill("color", rgb=(0, 255, 0))
STRIPES = Fill("stripes")
SCUBA_KEEP = (0.10, 0.90)  # StillMix: people cover ≥ 10% of the frame in ≥ 90% of the frames
PRESETS: dict[str, Variant] = {v.name: v for v in (
    Variant(name="bg", background=BLACK, description="background filled; people and objects kept"),
    Variant(name="bg_obj", background=BLACK, objects=BLACK, objects_matter=True, description="background and objects in one colour; people kept"),
    Variant(name="bg_obj2", background=BLACK, objects=GREEN, description="background and objects in two colours; people kept"),
    Variant(name="person", person=BLACK, description="people filled; the rest kept (static cues only)"),
    Variant(name="obj", objects=BLACK, description="objects filled; the rest kept"),
    Variant(name="human_only", background=MEAN, objects=MEAN, description="everything but people in the ImageNet mean (HAT)"),
    Variant(name="background_only", person=Fill("inpaint"), description="people inpainted away (HAT)"),
    Variant(name="swap", background=Fill("swap"), objects=Fill("swap"),
            description="people pasted onto another clip's background_only frames (HAT action swap)"),
    Variant(name="swap_same", background=Fill("swap"), objects=Fill("swap"), pairing=Pairing(mode="same"),
            description="people pasted onto the background_only frames of another clip of their class (HAT)"),
    Variant(name="swap_close", background=Fill("swap"), objects=Fill("swap"), pairing=Pairing(mode="close"),
            description="people pasted onto the background of a clip of a related class (HAT; --swap-relations)"),
    Variant(name="swap_far", background=Fill("swap"), objects=Fill("swap"), pairing=Pairing(mode="far"),
            description="people pasted onto the background of a clip of an unrelated class (HAT; --swap-relations)"),
    Variant(name="original", original=True, description="the source videos, not re-encoded (the reference accuracy)"),
    Variant(name="scuba", background=STRIPES, objects=STRIPES, masks=MaskOptions(temporal=1), keep_if=SCUBA_KEEP,
            description="people (masks OR-ed over ±1 frame) on a static background (StillMix SCUBA)"),
    Variant(name="scufo", background=STRIPES, objects=STRIPES, masks=MaskOptions(temporal=1), keep_if=SCUBA_KEEP,
            still=True, description="one seeded frame of the SCUBA clip repeated for its length (StillMix SCUFO)"),
)}
NEEDS_RELATIONS = ("swap_close", "swap_far")
DEFAULT_VARIANTS = tuple(name for name in PRESETS if name not in NEEDS_RELATIONS)


@dataclass(frozen=True, kw_only=True)
class ProtocolOptions:
    """Flags that reshape the protocol presets (and user variants of the same kinds)."""

    scuba_images: Path | None = None  # SCUBA / SCUFO backgrounds from this folder instead of stripes
    backgrounds: int | None = None  # static-background renders per clip (None: each variant's own, 1)
    swap_seeds: tuple[int, ...] = ()  # each swap variant V once per seed, as V-s<seed>
    swap_align: str | None = None  # none or centroid, for every swap variant
    swap_pairs: tuple[Variant, ...] = ()  # swap variants with a pairs file's pairs (`pairs_file.pairs_variant`)


def resolve(names: list[str], *, defaults: MaskOptions = MaskOptions(), file: Path | None = None,
            defines: list[str] = (), protocol: ProtocolOptions = ProtocolOptions()) -> tuple[Variant, ...]:
    """The named variants: presets, and user definitions (file, then --define; a later one of a name replaces an
    earlier). A user definition may not take a preset's name, unless it is the preset's own. A preset's own mask
    options (SCUBA's ±1-frame OR) win over the flags' defaults."""
    known = {name: replace(v, masks=replace(defaults, **_changed(v.masks))) for name, v in PRESETS.items()}
    if protocol.scuba_images:
        image = parse_fill(f"image({protocol.scuba_images})", "--scuba-images: ")
        for name in ("scuba", "scufo"):
            known[name] = replace(known[name], background=image, objects=image)
    user = [(f"{file}: ", variant) for variant in (load_file(file, defaults).values() if file else ())]
    user += [("--define: ", parse_define(text, defaults)) for text in defines]
    for where, variant in user:
        known[variant.name] = _owned(variant, known, where)
    missing = [name for name in names if name not in known]
    if missing:
        raise VariantError(f"unknown variant(s) {', '.join(missing)}; known: {', '.join(known)}")
    chosen = []
    for name in dict.fromkeys(names):
        variant = known[name]
        if protocol.backgrounds and variant.static:
            variant = replace(variant, backgrounds=protocol.backgrounds)
        if protocol.swap_align and variant.needs_pair:
            variant = replace(variant, pairing=replace(variant.pairing, align=protocol.swap_align))
        if protocol.swap_seeds and variant.needs_pair:
            chosen += [replace(variant, name=f"{name}-s{seed}", pairing=replace(variant.pairing, seed=seed))
                       for seed in protocol.swap_seeds]
        else:
            chosen.append(variant)
    for variant in protocol.swap_pairs:
        if variant.name in known or re.fullmatch(r"(.+)-s\d+", variant.name):
            raise VariantError(f"{variant.pairing.pairs_file}: its variant would be named {variant.name!r}, the name "
                               "of another variant; rename the file")
        chosen.append(variant if not protocol.swap_align else
                      replace(variant, pairing=replace(variant.pairing, align=protocol.swap_align)))
    for variant in chosen:
        check(variant, f"variant {variant.name!r}: ")
    names = [variant.name for variant in chosen]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise VariantError(f"variant name(s) {', '.join(twice)} given twice (a --swap-seeds name is <variant>-s<seed>)")
    return tuple(chosen)


def _owned(variant: Variant, known: dict[str, Variant], where: str) -> Variant:
    """A user variant under a name of its own; under a preset's name only if defined just as the preset is (same
    spec after the same defaults: then it is the preset), so a preset's renders are never made from anything else.
    The names `--swap-seeds` gives a swap preset's copies (`swap-s3`) are the presets' too."""
    copy = re.fullmatch(r"(.+)-s\d+", variant.name)
    if copy and copy.group(1) in PRESETS and PRESETS[copy.group(1)].needs_pair:
        raise VariantError(f"{where}variant {variant.name!r} is the name --swap-seeds gives the preset "
                           f"{copy.group(1)!r} for a seed; name yours differently, e.g. '{copy.group(1)}_custom'")
    preset = known.get(variant.name) if variant.name in PRESETS else None
    if preset is None:
        return variant
    if variant.spec() == preset.spec():
        return preset
    raise VariantError(f"{where}variant {variant.name!r} is a preset ({preset.description}); name yours differently, "
                       f"e.g. '{variant.name}_custom'")


def _changed(options: MaskOptions) -> dict[str, Any]:
    default = asdict(MaskOptions())
    return {key: value for key, value in asdict(options).items() if value != default[key]}
