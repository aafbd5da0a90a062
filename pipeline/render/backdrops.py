"""Static backgrounds for SCUBA-style variants (StillMix): one still image per clip and background number,
drawn from a folder of images or generated as sinusoidal stripes, always the same for the same seed and clip.

A folder's identity for the cache is the name, size and modification time of each of its images (the rule the
masks stage applies to source videos), taken when the variant is read: a background added, replaced or removed
changes every render that could have drawn it, and the folder is listed again.
"""

from __future__ import annotations

import hashlib
import zlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline.errors import InputError

if TYPE_CHECKING:
    from pipeline.render.kinds import Fill

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_files(folder: str | Path) -> tuple[Path, ...]:
    """The folder's images (by suffix, recursively), in name order; an error when it holds none."""
    files = tuple(sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
    if not files:
        raise InputError(f"{folder}: no background images ({', '.join(IMAGE_SUFFIXES)}); give a folder that holds some")
    return files


def folder_digest(folder: str | Path) -> str:
    """What a folder of backgrounds is, for fingerprints: its images' relative names, sizes and mtimes."""
    digest = hashlib.sha256()
    for path in image_files(folder):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def backdrop(fill: Fill, *, seed: int, key: str, width: int, height: int) -> np.ndarray:
    """The still background (RGB, height × width) that render `key` (`<clip id>__<k>`) takes for `fill`."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    if fill.kind == "image":
        files = _cached_files(fill.path, fill.digest)
        path = files[int(rng.integers(len(files)))]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{path}: not a readable image; remove it from the backgrounds folder")
        return cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (width, height), interpolation=cv2.INTER_AREA)
    if fill.kind == "stripes":
        return stripes(rng, width, height)
    raise ValueError(f"{fill}: not a static background")


def stripes(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Sinusoidal stripes between two random colours, at a random angle, period and phase."""
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(0.05, 0.25) * max(width, height)
    phase = rng.uniform(0, 2 * np.pi)
    low, high = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)
    return np.clip(low + wave[..., None] * (high - low), 0, 255).round().astype(np.uint8)


def still_index(*, seed: int, key: str, frames: int) -> int:
    """The frame a SCUFO render repeats: seeded by the render's key, in [0, frames)."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode()), 1])
    return int(rng.integers(max(1, frames)))


@lru_cache(maxsize=8)
def _cached_files(folder: str, digest: str | None) -> tuple[Path, ...]:
    """The folder's images, listed once per process and folder state (the digest the variant was read with):
    a folder changed between two runs of a long-lived worker is listed again."""
    return image_files(folder)
