"""Swap pairs from a file in HAT's format (`data/actionswap_{mode}_{seed}.pickle` in princetonvisualai/HAT): a
dict from a foreground clip's name to `[background clip name, background frame count, background class]`,
names as HAT's lists give them (`archery/01xStFVYC7U_000011_000021`). A name is matched to a clip id by its
file stem. The file makes a swap variant named after it, with exactly its pairs; its mode and seed come from
the name (`actionswap_same_1`: same, 1) or are given. The pickle is read with only plain values allowed
(dicts, lists, strings, numbers), so a file from elsewhere runs no code."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import re
from pathlib import Path, PurePosixPath

from pipeline.datasets.common import safe_id
from pipeline.errors import InputError
from pipeline.masks import StoredClip
from pipeline.render.kinds import SWAP_MODES, Fill, Pairing, Variant

log = logging.getLogger(__name__)

HAT_NAME = re.compile(r"actionswap_([a-z]+)_(\d+)")
VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov")


class _PlainValues(pickle.Unpickler):
    """Plain containers and numbers only (numpy scalars too: HAT's counts may be numpy integers)."""

    ALLOWED = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # protocol 2 writes a numpy scalar's bytes through _codecs.encode

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it holds a {module}.{name}, not plain values")


def stem(name: str) -> str:
    """A clip name as HAT writes it (`class/clip`, maybe with a video suffix) → the clip id it names (made safe
    as the readers make ids: HMDB51's `!` and the like become `_`)."""
    base = PurePosixPath(str(name).replace("\\", "/")).name
    suffix = PurePosixPath(base).suffix
    return safe_id(base[: -len(suffix)] if suffix.lower() in VIDEO_SUFFIXES else base)


def read_pairs(path: Path, digest: str | None = None) -> dict[str, str]:
    """Foreground clip id → background clip id, from a pairs file; InputError naming the file when it is not in
    HAT's format, names one clip twice, or (with `digest`) no longer holds what was read when the run began."""
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the pairs file ({exc.strerror})") from None
    if digest is not None and hashlib.sha256(content).hexdigest() != digest:
        raise InputError(f"{path}: changed since the run began; run it again")
    try:
        data = _PlainValues(io.BytesIO(content)).load()
    except Exception as exc:  # noqa: BLE001 - anything unpickling raises: not a pairs file
        raise InputError(f"{path}: not a pairs pickle in HAT's format ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: not HAT's format: expected a non-empty dict of foreground clip name → "
                         f"[background clip name, frames, class], got {type(data).__name__}")
    pairs = {}
    for key, value in data.items():
        if not (isinstance(key, str) and isinstance(value, (list, tuple)) and len(value) == 3
                and isinstance(value[0], str)):
            raise InputError(f"{path}: not HAT's format at {key!r}: expected [background clip name, frames, class], "
                             f"got {value!r}")
        if stem(key) in pairs:
            raise InputError(f"{path}: names clip {stem(key)} twice (as {key!r} and another); keep one pair per clip")
        pairs[stem(key)] = stem(value[0])
    return pairs


def pairs_variant(path: Path, *, mode: str | None = None, seed: int | None = None) -> Variant:
    """The swap variant a pairs file makes: named after the file, its mode and seed from the name (or given)."""
    path = Path(path).expanduser().absolute()
    match = HAT_NAME.fullmatch(path.stem)
    mode = mode or (match.group(1) if match else None)
    seed = seed if seed is not None else int(match.group(2)) if match else 0
    if mode not in SWAP_MODES:
        raise InputError(f"{path}: its swap mode is not in its name (actionswap_<mode>_<seed>.pickle); give it with "
                         f"--swap-pairs-mode ({', '.join(SWAP_MODES)})")
    pairs = read_pairs(path)  # bad input before anything runs
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    log.info("%s: %d pairs (mode %s, seed %d)", path.name, len(pairs), mode, seed)
    name = re.sub(r"[^\w.-]+", "_", path.stem)
    return Variant(name=name, background=Fill("swap"), objects=Fill("swap"),
                   pairing=Pairing(mode=mode, seed=seed, pairs=digest, pairs_file=str(path)),
                   description=f"people pasted onto the backgrounds {path.name} pairs them with (HAT's pairs)")


def match_pairs(variant: Variant, clips: dict[str, StoredClip]) -> dict[str, str]:
    """The pairs of the variant's file whose foreground and background are clips of the run, the background
    one with usable masks (clip id → partner id); the others are counted in one warning line."""
    path = Path(variant.pairing.pairs_file)
    pairs = read_pairs(path, variant.pairing.pairs)
    absent = {fg: bg for fg, bg in pairs.items() if fg not in clips or bg not in clips}
    unusable = {fg: bg for fg, bg in pairs.items() if fg not in absent and not clips[bg].usable}
    if absent or unusable:
        example = next(f"{fg} → {bg}" for fg, bg in (absent or unusable).items())
        log.warning("%s: %d of %d pairs of %s left out: %d name clips this masks run does not have, %d a background "
                    "clip without usable masks (e.g. %s); their clips, if any, are no_pair rows", variant.name,
                    len(absent) + len(unusable), len(pairs), path.name, len(absent), len(unusable), example)
    return {fg: bg for fg, bg in pairs.items() if fg not in absent and fg not in unusable}
