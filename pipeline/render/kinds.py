"""A masked-clip variant's parts as data: the regions {background, person, objects}, a fill for each (written
`keep`, `color(R,G,B)`, `mean`, `blur(SIGMA)`, `noise`, `inpaint`, `swap`, `image(DIR)` or `stripes`: variants.py
says what each does), mask options, a swap's pairing, and the `Variant` that puts them together. The presets and
the choice of variants by name are variants.py's; parsing user definitions is definitions.py's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

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
    pairs: str | None = None  # the sha256 of a pairs file (HAT's pickles): exactly its pairs, mode and seed its own
    pairs_file: str | None = None  # where that file is (not in the spec: its content is)

    @property
    def needs_relations(self) -> bool:
        """close / far pairs read which classes are related (unless a pairs file gives them)."""
        return self.mode in ("close", "far") and self.pairs is None

    def spec(self) -> dict[str, Any]:
        """What shapes the pairs: the options, and a pairs file's content where there is one."""
        out = {key: value for key, value in asdict(self).items() if key != "pairs_file"}
        if self.pairs is None:  # the spec of a variant from before pairs files, unchanged
            del out["pairs"]
        return out


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
    objects_matter: bool | None = None  # whether it means anything without objects found (None: from its fills)

    def fills(self) -> dict[str, Fill]:
        return {region: getattr(self, region) for region in REGIONS}

    @property
    def needs_pair(self) -> bool:
        return any(fill.kind == "swap" for fill in self.fills().values())

    @property
    def needs_objects(self) -> bool:
        """Whether its render depends on which pixels are objects: its objects fill differs from its background's
        (with no objects found, the object pixels silently take the background's fill), or it says so (`bg_obj`,
        which equals `bg` unless objects are found). Not part of `spec()`: it shapes no pixel."""
        if self.objects_matter is not None:
            return self.objects_matter
        return self.objects != self.background

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
            spec["pairing"] = self.pairing.spec()
        if self.static:
            spec["backgrounds"] = self.backgrounds
        if self.still:
            spec["still"] = True
        if self.original:
            spec["original"] = True
        return spec

    def spec_json(self) -> str:
        return json.dumps(self.spec(), sort_keys=True)
