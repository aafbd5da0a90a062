"""Masked-clip variants as data: each maps the regions {background, person, objects} to a fill.

Fills are written `keep`, `color(R,G,B)`, `mean` (the ImageNet mean RGB), `blur(SIGMA)`, `noise` (seeded),
`inpaint` (the clip's temporal median of the pixels outside the region, cv2.inpaint where none) and `swap`
(the same region of the paired clip's `background_only` frames: the HAT action swap). Presets cover the
static-bias literature; users add their own in a TOML file or with `--define`.
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
FILL_KINDS = ("keep", "color", "mean", "blur", "noise", "inpaint", "swap")
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)


class VariantError(InputError):
    """A variant definition that cannot be parsed; the message names the variant and the bad text."""


@dataclass(frozen=True)
class Fill:
    kind: str = "keep"
    rgb: tuple[int, int, int] | None = None  # for color (and mean, rounded)
    sigma: float | None = None  # for blur

    def __str__(self) -> str:
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
class Variant:
    name: str
    background: Fill = KEEP
    person: Fill = KEEP
    objects: Fill = KEEP
    masks: MaskOptions = field(default_factory=MaskOptions)
    description: str = ""

    def fills(self) -> dict[str, Fill]:
        return {region: getattr(self, region) for region in REGIONS}

    @property
    def needs_pair(self) -> bool:
        return any(fill.kind == "swap" for fill in self.fills().values())

    def spec(self) -> dict[str, Any]:
        """Everything that shapes the variant's pixels, as plain data (stored in metadata and manifests)."""
        return {"name": self.name, **{r: str(f) for r, f in self.fills().items()}, "masks": asdict(self.masks),
                "description": self.description}

    def spec_json(self) -> str:
        return json.dumps(self.spec(), sort_keys=True)


GREEN = Fill("color", rgb=(0, 255, 0))
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
)}


def parse_fill(text: str, where: str = "") -> Fill:
    """`keep`, `color(R,G,B)`, `#rrggbb`, `mean`, `blur(SIGMA)`, `noise`, `inpaint` or `swap`."""
    text = text.strip().lower().replace(" ", "")
    if text in ("keep", "mean", "noise", "inpaint", "swap"):
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
                       "noise, inpaint or swap")


def from_mapping(name: str, data: dict[str, Any], defaults: MaskOptions, where: str = "") -> Variant:
    """A variant from `{background: .., person: .., objects: .., masks: {..}, description: ..}`."""
    where = f"{where}variant {name!r}: "
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise VariantError(f"{where}names may hold letters, digits, '_', '-' and '.' only")
    unknown = set(data) - {*REGIONS, "masks", "description"}
    if unknown:
        raise VariantError(f"{where}unknown keys {sorted(unknown)}; expected {', '.join(REGIONS)}, masks, description")
    masks = data.get("masks", {})
    known = set(MaskOptions.__dataclass_fields__)
    if not isinstance(masks, dict) or set(masks) - known:
        raise VariantError(f"{where}masks takes {', '.join(sorted(known))}")
    fills = {region: parse_fill(str(data[region]), where) for region in REGIONS if region in data}
    return Variant(name=name, **fills, masks=replace(defaults, **masks), description=str(data.get("description", "")))


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


def resolve(names: list[str], *, defaults: MaskOptions = MaskOptions(), file: Path | None = None,
            defines: list[str] = ()) -> tuple[Variant, ...]:
    """The named variants: user definitions (file, then --define) override presets of the same name."""
    known = {name: replace(v, masks=defaults) for name, v in PRESETS.items()}
    if file:
        known |= load_file(file, defaults)
    for text in defines:
        variant = parse_define(text, defaults)
        known[variant.name] = variant
    missing = [name for name in names if name not in known]
    if missing:
        raise VariantError(f"unknown variant(s) {', '.join(missing)}; known: {', '.join(known)}")
    return tuple(known[name] for name in dict.fromkeys(names))
