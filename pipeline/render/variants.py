"""Masked-clip variants as data: each maps the regions {background, person, objects} to a fill.

Fills are written `keep`, `color(R,G,B)`, `mean` (the ImageNet mean RGB), `blur(SIGMA)`, `noise` (seeded by
the frame's index), `inpaint` (the clip's temporal median of the pixels outside the region, cv2.inpaint where none), `swap`
(the same region of the paired clip's `background_only` frames: the HAT action swap), and the static
backgrounds of StillMix's SCUBA: `image(DIR)` (a seeded pick per clip from a folder of images) and `stripes`
(a seeded sinusoidal stripe image). Presets cover the static-bias literature (`original`, HAT's
background_only / human_only / swap modes, SCUBA / SCUFO); users add their own in a TOML file or with `--define`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

from pipeline.errors import InputError

REGIONS = ("background", "person", "objects")
FILL_KINDS = ("keep", "color", "mean", "blur", "noise", "inpaint", "swap", "image", "stripes")
STATIC_FILLS = ("image", "stripes")  # one still image per clip and background number
SWAP_MODES = ("rand", "same", "close", "far")  # HAT's pair files: another class, the same, a related, an unrelated
ALIGNS = ("none", "centroid")
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)


class VariantError(InputError):
    """A variant definition that cannot be parsed; the message names the variant and the bad text."""


@dataclass(frozen=True)
class Fill:
    kind: str = "keep"
    rgb: tuple[int, int, int] | None = None  # for color (and mean, rounded)
    sigma: float | None = None  # for blur
    path: str | None = None  # for image: the folder, absolute
    digest: str | None = None  # for image: the folder's images as found when the variant was read (names, sizes, mtimes)

    def __str__(self) -> str:
        if self.kind == "image":
            return f"image({self.path})"
        if self.kind == "color":
            return f"color({','.join(map(str, self.rgb))})"
        if self.kind == "blur":
            return f"blur({self.sigma:g})"
        return self.kind


KEEP = Fill()
BLACK = Fill("color", rgb=(0, 0, 0))
MEAN = Fill("mean", rgb=tuple(round(v) for v in IMAGENET_MEAN_RGB))


@dataclass(frozen=True, kw_only=True)
class MaskOptions:
    """How stored instances become region masks before filling."""

    min_score: float = 0.0  # drop instances scored below this
    min_area: int = 0  # drop instances of fewer pixels
    temporal: int = 0  # OR each frame's mask with its ±k neighbours (SCUBA used 1)
    dilate: int = 0  # grow masks by this many pixels (elliptical kernel)


@dataclass(frozen=True, kw_only=True)
class Pairing:
    """How a swap variant picks the clip whose background it pastes onto."""

    mode: str = "rand"  # one of SWAP_MODES
    seed: int | None = None  # None: the render's --seed
    align: str = "none"  # centroid: shift the people so the two first frames' person centres of mass line up

    @property
    def needs_relations(self) -> bool:
        """close / far pairs read which classes are related."""
        return self.mode in ("close", "far")


@dataclass(frozen=True, kw_only=True)
class Variant:
    name: str
    background: Fill = KEEP
    person: Fill = KEEP
    objects: Fill = KEEP
    masks: MaskOptions = field(default_factory=MaskOptions)
    description: str = ""
    pairing: Pairing = field(default_factory=Pairing)  # swap fills only
    backgrounds: int = 1  # static fills: renders per clip, one per background, as clips `<id>__<k>`
    still: bool = False  # SCUFO: one seeded frame of the composed clip, repeated for its whole length
    original: bool = False  # the source videos themselves, not re-encoded (every ratio's reference)
    keep_if: tuple[float, float] | None = None  # default manifest filter: coverage ≥ [0] in ≥ [1] of the frames

    def fills(self) -> dict[str, Fill]:
        return {region: getattr(self, region) for region in REGIONS}

    @property
    def needs_pair(self) -> bool:
        return any(fill.kind == "swap" for fill in self.fills().values())

    @property
    def static(self) -> bool:
        """Whether a region takes a still background image (SCUBA), so each clip renders once per background."""
        return any(fill.kind in STATIC_FILLS for fill in self.fills().values())

    def spec(self) -> dict[str, Any]:
        """Everything that shapes the variant's pixels, as plain data (stored in metadata and manifests). The
        options added for the benchmark protocols appear only where they apply, so the variants that existed
        before them keep their fingerprints (and their renders)."""
        spec = {"name": self.name, **{r: str(f) for r, f in self.fills().items()}, "masks": asdict(self.masks),
                "description": self.description}
        if self.needs_pair and self.pairing != Pairing():
            spec["pairing"] = asdict(self.pairing)
        if self.static:
            spec["backgrounds"] = self.backgrounds
        if self.still:
            spec["still"] = True
        if self.original:
            spec["original"] = True
        return spec

    def spec_json(self) -> str:
        return json.dumps(self.spec(), sort_keys=True)


GREEN = Fill("color", rgb=(0, 255, 0))
STRIPES = Fill("stripes")
SCUBA_KEEP = (0.10, 0.90)  # StillMix: people cover ≥ 10% of the frame in ≥ 90% of the frames
PRESETS: dict[str, Variant] = {v.name: v for v in (
    Variant(name="bg", background=BLACK, description="background filled; people and objects kept"),
    Variant(name="bg_obj", background=BLACK, objects=BLACK, description="background and objects in one colour; people kept"),
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


def parse_fill(text: str, where: str = "") -> Fill:
    """`keep`, `color(R,G,B)`, `#rrggbb`, `mean`, `blur(SIGMA)`, `noise`, `inpaint`, `swap`, `image(DIR)` or
    `stripes`."""
    if match := re.fullmatch(r"\s*image\((.+)\)\s*", text, flags=re.IGNORECASE):
        folder = Path(match.group(1).strip()).expanduser().absolute()
        if not folder.is_dir():
            raise VariantError(f"{where}image({folder}): no such folder; give a folder of background images")
        from pipeline.render.backdrops import folder_digest

        return Fill("image", path=str(folder), digest=folder_digest(folder))
    text = text.strip().lower().replace(" ", "")
    if text in ("keep", "mean", "noise", "inpaint", "swap", "stripes"):
        return MEAN if text == "mean" else Fill(text)
    if text in ("black", "white"):
        return Fill("color", rgb=(0, 0, 0) if text == "black" else (255, 255, 255))
    if match := re.fullmatch(r"#([0-9a-f]{6})", text):
        value = match.group(1)
        return Fill("color", rgb=tuple(int(value[i : i + 2], 16) for i in (0, 2, 4)))
    if match := re.fullmatch(r"colou?r\((\d+),(\d+),(\d+)\)", text):
        rgb = tuple(int(v) for v in match.groups())
        if max(rgb) <= 255:
            return Fill("color", rgb=rgb)
    if match := re.fullmatch(r"blur(?:\((\d+(?:\.\d+)?)\))?", text):
        sigma = float(match.group(1) or 8)
        if sigma > 0:
            return Fill("blur", sigma=sigma)
    raise VariantError(f"{where}bad fill {text!r}: expected keep, color(R,G,B), #rrggbb, mean, blur(SIGMA), "
                       "noise, inpaint, swap, image(DIR) or stripes")


OPTION_KEYS = ("swap_mode", "swap_seed", "swap_align", "backgrounds", "still", "keep_if")


def from_mapping(name: str, data: dict[str, Any], defaults: MaskOptions, where: str = "") -> Variant:
    """A variant from `{background: .., person: .., objects: .., masks: {..}, description: ..}` and the protocol
    options `swap_mode`, `swap_seed`, `swap_align`, `backgrounds`, `still`, `keep_if = [COVERAGE, FRAMES]`."""
    where = f"{where}variant {name!r}: "
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise VariantError(f"{where}names may hold letters, digits, '_', '-' and '.' only")
    unknown = set(data) - {*REGIONS, "masks", "description", *OPTION_KEYS}
    if unknown:
        raise VariantError(f"{where}unknown keys {sorted(unknown)}; expected {', '.join(REGIONS)}, masks, description, "
                           f"{', '.join(OPTION_KEYS)}")
    masks = data.get("masks", {})
    known = set(MaskOptions.__dataclass_fields__)
    if not isinstance(masks, dict) or set(masks) - known:
        raise VariantError(f"{where}masks takes {', '.join(sorted(known))}")
    fills = {region: parse_fill(str(data[region]), where) for region in REGIONS if region in data}
    try:
        pairing = Pairing(mode=str(data.get("swap_mode", "rand")),
                          seed=None if data.get("swap_seed") is None else int(data["swap_seed"]),
                          align=str(data.get("swap_align", "none")))
        backgrounds = int(data.get("backgrounds", 1))
        still = str(data.get("still", False)).lower() in ("true", "1", "yes")
        keep_if = tuple(float(v) for v in data["keep_if"]) if "keep_if" in data else None
    except (TypeError, ValueError) as exc:
        raise VariantError(f"{where}bad option: {exc}") from None
    variant = Variant(name=name, **fills, masks=replace(defaults, **masks), description=str(data.get("description", "")),
                      pairing=pairing, backgrounds=backgrounds, still=still, keep_if=keep_if)
    check(variant, where)
    return variant


def check(variant: Variant, where: str = "") -> None:
    """Options that cannot work together, named."""
    if variant.pairing.mode not in SWAP_MODES or variant.pairing.align not in ALIGNS:
        raise VariantError(f"{where}swap_mode is one of {', '.join(SWAP_MODES)}, swap_align one of {', '.join(ALIGNS)}")
    if variant.backgrounds < 1:
        raise VariantError(f"{where}backgrounds must be at least 1")
    if variant.keep_if is not None and (len(variant.keep_if) != 2 or not all(0 <= v <= 1 for v in variant.keep_if)):
        raise VariantError(f"{where}keep_if is [COVERAGE, FRAMES], both between 0 and 1")
    if variant.pairing.seed is not None and variant.pairing.seed < 0:
        raise VariantError(f"{where}swap_seed must be ≥ 0")
    if variant.still and variant.needs_pair:
        raise VariantError(f"{where}still and swap fills cannot be combined")


def parse_define(text: str, defaults: MaskOptions) -> Variant:
    """`name:background=color(0,0,255);objects=blur(8)` (the command line's `--define`)."""
    name, sep, body = text.partition(":")
    if not sep:
        raise VariantError(f"--define {text!r}: expected NAME:REGION=FILL;REGION=FILL")
    pairs = [part.split("=", 1) for part in body.split(";") if part.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise VariantError(f"--define {text!r}: expected NAME:REGION=FILL;REGION=FILL")
    return from_mapping(name.strip(), {k.strip(): v for k, v in pairs}, defaults)


def load_file(path: Path, defaults: MaskOptions) -> dict[str, Variant]:
    """Variants from a TOML file of `[variants.NAME]` tables."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise VariantError(f"{path}: variants file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise VariantError(f"{path}: {exc}") from None
    tables = data.get("variants")
    if not isinstance(tables, dict) or not tables:
        raise VariantError(f"{path}: expected [variants.NAME] tables")
    return {name: from_mapping(name, table, defaults, f"{path}: ") for name, table in tables.items()}


@dataclass(frozen=True, kw_only=True)
class ProtocolOptions:
    """Flags that reshape the protocol presets (and user variants of the same kinds)."""

    scuba_images: Path | None = None  # SCUBA / SCUFO backgrounds from this folder instead of stripes
    backgrounds: int | None = None  # static-background renders per clip (None: each variant's own, 1)
    swap_seeds: tuple[int, ...] = ()  # each swap variant V once per seed, as V-s<seed>
    swap_align: str | None = None  # none or centroid, for every swap variant


def resolve(names: list[str], *, defaults: MaskOptions = MaskOptions(), file: Path | None = None,
            defines: list[str] = (), protocol: ProtocolOptions = ProtocolOptions()) -> tuple[Variant, ...]:
    """The named variants: user definitions (file, then --define) override presets of the same name. A preset's
    own mask options (SCUBA's ±1-frame OR) win over the flags' defaults."""
    known = {name: replace(v, masks=replace(defaults, **_changed(v.masks))) for name, v in PRESETS.items()}
    if protocol.scuba_images:
        image = parse_fill(f"image({protocol.scuba_images})", "--scuba-images: ")
        for name in ("scuba", "scufo"):
            known[name] = replace(known[name], background=image, objects=image)
    if file:
        known |= load_file(file, defaults)
    for text in defines:
        variant = parse_define(text, defaults)
        known[variant.name] = variant
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
    for variant in chosen:
        check(variant, f"variant {variant.name!r}: ")
    names = [variant.name for variant in chosen]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise VariantError(f"variant name(s) {', '.join(twice)} given twice (a --swap-seeds name is <variant>-s<seed>)")
    return tuple(chosen)


def _changed(options: MaskOptions) -> dict[str, Any]:
    default = asdict(MaskOptions())
    return {key: value for key, value in asdict(options).items() if value != default[key]}
