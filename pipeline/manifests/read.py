"""A variant's manifest as the stages after it read it (predict, evaluate): the split they take, and the rows a
trainer's list of that split holds, in its order, with the variant's settings."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.render.encode import LAZY

LIST_FORMATS = ("mp4", "source", "rawframes", LAZY)  # the rows read, in order of preference (lazy: composed)


@dataclass(frozen=True)
class VariantRows:
    """A variant's manifest as the evaluation reads it: its settings and the listed rows of one split."""

    name: str
    spec: dict
    made_of: dict  # everything its renders were made from (the variant.<format>.json of the listed format)
    rows: list[dict]  # in the list file's order
    listed: tuple[str, ...] = ()  # every format with listed rows in the split (rows: those of the first of LIST_FORMATS)

    @property
    def role(self) -> str:
        regions = [self.spec.get(r) for r in ("background", "person", "objects")]
        if self.spec.get("original"):
            return "original"
        if "swap" in regions:
            return "swap"
        if self.spec.get("still"):
            return "scufo"
        if "backgrounds" in self.spec:
            return "scuba"
        return self.name


def choose_split(manifests: Path, variants: list[str], split: str | None) -> str:
    splits = set()
    for name in variants:
        table = pq.read_table(manifests / name / "manifest.parquet", columns=["split", "in_lists"])
        splits |= {s for s, listed in zip(table["split"].to_pylist(), table["in_lists"].to_pylist()) if listed}
    if split is not None:
        if split not in splits:
            raise InputError(f"{manifests}: no clips listed in split {split!r} (listed: {', '.join(sorted(splits))})")
        return split
    if "val" in splits or len(splits) == 1:
        return "val" if "val" in splits else splits.pop()
    raise InputError(f"{manifests}: the manifests list several splits ({', '.join(sorted(splits))}); pick one with SPLIT=")


def variant_rows(folder: Path, split: str) -> VariantRows:
    """The rows a trainer's list for `split` holds, in its order: the video list if there is one, else rawframes."""
    summary = json.loads((folder / "manifest.json").read_text())
    rows = [r for r in pq.read_table(folder / "manifest.parquet").to_pylist() if r["split"] == split and r["in_lists"]]
    listed = tuple(sorted({r["format"] for r in rows}))
    fmt = next((f for f in LIST_FORMATS if f in listed), None)
    rows = [r for r in rows if r["format"] == fmt]
    unlabelled = next((r for r in rows if r["label_index"] < 0), None)
    if unlabelled:
        raise InputError(f"{folder}: clip {unlabelled['clip_id']!r} of split {split!r} has no label; evaluate a labelled split")
    settings = summary["settings"].get(fmt) or next(iter(summary["settings"].values()), {})
    made_of = {k: v for k, v in settings.items() if k not in ("fingerprint", "keep_if", "masks_dir", "masks_fingerprint")}
    return VariantRows(name=folder.name, spec=settings.get("variant", {}), made_of=made_of, rows=rows, listed=listed)


def manifest_digest(folder: Path) -> str:
    """The content of a variant's manifest.parquet: what predictions and metrics made from it record."""
    return hashlib.sha256((Path(folder) / "manifest.parquet").read_bytes()).hexdigest()[:16]
