"""The bench's clips: Kinetics-layout H.264 camera moves over the two ultralytics photos with people."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import cv2

from pipeline.datasets.sample import asset, pan_zoom, write_video

FPS = 25


def clip_path(root: Path, index: int) -> Path:
    return root / "train" / f"bench{index:05d}__000000_000010.mp4"


def make_clip(root: Path, index: int, frames: int, width: int, height: int, *, pans: int = 0) -> Path:
    """Clip `index`: a pan and zoom over one of the photos (the two in turn), lossy, 25 fps, seeded by the index;
    with `pans`, by the index modulo `pans`: clips then repeat the first `pans` clips' photos and moves."""
    seed = index % pans if pans else index
    photo = cv2.cvtColor(cv2.imread(str(asset(("bus.jpg", "zidane.jpg")[seed % 2]))), cv2.COLOR_BGR2RGB)
    path = clip_path(root, index)
    write_video(path, pan_zoom(photo, width, height, frames, seed=seed), FPS)
    return path


def make_clips(root: Path, indexes: Sequence[int], frames: int, width: int = 340, height: int = 256, *,
               pans: int = 0) -> list[Path]:
    """The clips of these indexes (`make_clip`), a few at a time (each is encoded on one thread, and holds its
    frames)."""
    threads = max(1, min(4, (os.cpu_count() or 1), len(indexes)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda i: make_clip(root, i, frames, width, height, pans=pans), indexes))


def write_listing(root: Path, paths: list[Path]) -> None:
    """annotations/train.csv naming exactly these clips (of make_clip's names), labelled by their photo."""
    lines = ["label,youtube_id,time_start,time_end,split"]
    for path in paths:
        youtube_id = path.name.split("__")[0] + "_"
        label = ("bus", "zidane")[int(youtube_id[5:10]) % 2]
        lines.append(f"{label},{youtube_id},0,10,train")
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "train.csv").write_text("\n".join(lines) + "\n")
