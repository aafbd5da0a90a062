"""A Kinetics-400-shaped listing of any size for the scale bench: the CVDF layout the Kinetics reader reads,
with a small share of the clips present as real tiny videos and the rest absent (so only the machinery runs).

    <root>/annotations/train.csv, val.csv   label,youtube_id,time_start,time_end,split   (the 400 official classes)
    <root>/{train,val}/<youtube_id>_<start:06d>_<end:06d>.mp4                         (the real clips only)

The same size and seed give the same files. Classes are balanced (each of the 400 takes every 400th clip of a
seeded permutation); val holds 20,000 of every 260,139 clips (Kinetics-400's ~20k of ~260k), train the rest;
there is no test split. The real clips are one tiny lossless clip (a pan over a photo with people), written
once and hard-linked under each real clip's name.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.datasets.classes import official_classes
from pipeline.datasets.kinetics import clip_name
from pipeline.datasets.sample import asset, pan_zoom, write_video

log = logging.getLogger(__name__)

KINETICS400_CLIPS = 260_139
VAL_SHARE = 20_000 / KINETICS400_CLIPS
YOUTUBE_ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype="S1")
HEADER = ("label", "youtube_id", "time_start", "time_end", "split")
TEMPLATE = "_template.mp4"  # the one real clip every real name links to (outside the split folders)


@dataclass(frozen=True, kw_only=True)
class ListingSpec:
    clips: int = KINETICS400_CLIPS
    real: int | None = None  # clips present as real videos; None: 0.2% of them, at least one
    frames: int = 4  # frames of each real clip
    width: int = 64
    height: int = 48
    seed: int = 0

    def real_clips(self) -> int:
        return min(self.clips, max(1, round(self.clips * 0.002)) if self.real is None else self.real)


@dataclass(frozen=True, kw_only=True)
class ScaleListing:
    root: Path
    clips: dict[str, int]  # split → rows
    real: dict[str, int]  # split → rows present as real videos
    classes: int
    frames_per_real_clip: int


def write_listing(root: Path, spec: ListingSpec) -> ScaleListing:
    """Write the annotations and the real clips under `root` (which must not hold an earlier listing)."""
    rng = np.random.default_rng(spec.seed)
    classes = official_classes("kinetics400")
    n = spec.clips
    label = rng.permutation(n) % len(classes)
    split = np.zeros(n, dtype=bool)  # True: val
    split[rng.choice(n, round(n * VAL_SHARE), replace=False)] = True
    youtube = YOUTUBE_ALPHABET[rng.integers(0, len(YOUTUBE_ALPHABET), size=(n, 11))].view("S11").ravel()
    start = rng.integers(0, 300, size=n)
    real = np.zeros(n, dtype=bool)
    real[rng.choice(n, spec.real_clips(), replace=False)] = True
    order = np.lexsort((youtube, label))  # the CVDF files run class by class
    (root / "annotations").mkdir(parents=True)
    template = root / TEMPLATE
    if real.any():
        write_template(template, spec)
    for is_val, name in ((False, "train"), (True, "val")):
        rows = order[split[order] == is_val]
        with open(root / "annotations" / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(HEADER)
            writer.writerows((classes[label[i]], youtube[i].decode(), start[i], start[i] + 10, name) for i in rows)
        folder = root / name
        folder.mkdir()
        for i in rows[real[rows]]:
            link(template, folder / f"{clip_name(youtube[i].decode(), int(start[i]), int(start[i]) + 10)}.mp4")
    listing = ScaleListing(root=root, clips={"train": int((~split).sum()), "val": int(split.sum())},
                           real={"train": int((real & ~split).sum()), "val": int((real & split).sum())},
                           classes=len(set(label.tolist())), frames_per_real_clip=spec.frames)
    log.info("listing of %d clips (%d real) in %s", n, int(real.sum()), root)
    return listing


def write_template(path: Path, spec: ListingSpec) -> None:
    """The real clip: a lossless pan over a photo with people (so the same bytes each time)."""
    photo = cv2.cvtColor(cv2.imread(str(asset("zidane.jpg"))), cv2.COLOR_BGR2RGB)
    write_video(path, pan_zoom(photo, spec.width, spec.height, spec.frames, seed=spec.seed), 15, lossless=True)


def link(template: Path, path: Path) -> None:
    try:
        os.link(template, path)
    except OSError:  # a filesystem without hard links
        path.write_bytes(template.read_bytes())
