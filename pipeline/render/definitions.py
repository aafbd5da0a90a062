"""User variant definitions: the fill syntax, `[variants.NAME]` tables of a TOML file, and `--define NAME:...`.

A table's keys are the regions (`background`, `person`, `objects`: a fill each), `masks` (MaskOptions),
`description`, and the protocol options `swap_mode`, `swap_seed`, `swap_align`, `backgrounds`, `still`,
`keep_if = [COVERAGE, FRAMES]` and `needs_objects` (whether the variant means anything without objects found;
default: whether its objects fill differs from its background's).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import tomllib

from pipeline.render.kinds import ALIGNS, MEAN, REGIONS, SWAP_MODES, Fill, MaskOptions, Pairing, Variant, VariantError


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


OPTION_KEYS = ("swap_mode", "swap_seed", "swap_align", "backgrounds", "still", "keep_if", "needs_objects")


def from_mapping(name: str, data: dict[str, Any], defaults: MaskOptions, where: str = "") -> Variant:
    """A variant from `{background: .., person: .., objects: .., masks: {..}, description: ..}` and the protocol
    options (OPTION_KEYS)."""
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
        still = _flag(data.get("still", False))
        objects_matter = _flag(data["needs_objects"]) if "needs_objects" in data else None
        keep_if = tuple(float(v) for v in data["keep_if"]) if "keep_if" in data else None
    except (TypeError, ValueError) as exc:
        raise VariantError(f"{where}bad option: {exc}") from None
    variant = Variant(name=name, **fills, masks=replace(defaults, **masks), description=str(data.get("description", "")),
                      pairing=pairing, backgrounds=backgrounds, still=still, keep_if=keep_if,
                      objects_matter=objects_matter)
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


def _flag(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes")


def from_spec(spec: dict[str, Any]) -> Variant:
    """The Variant a `Variant.spec()` describes (as a manifest or a render's metadata keeps it): the one that
    composes the same pixels."""
    where = f"variant {spec.get('name')!r}: "
    fills = {region: parse_fill(spec.get(region, "keep"), where) for region in REGIONS}
    return Variant(name=spec["name"], **fills, masks=MaskOptions(**spec.get("masks", {})),
                   description=spec.get("description", ""), pairing=Pairing(**spec.get("pairing", {})),
                   backgrounds=spec.get("backgrounds", 1), still=bool(spec.get("still")),
                   original=bool(spec.get("original")))
