"""Fetch the offline person model: selfie_segmentation.tflite from inside the mediapipe==0.10.21 wheel.

mediapipe itself is never installed (it pins numpy<2 and pulls jax); pip only downloads its wheel.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.atomic import atomic_path

log = logging.getLogger(__name__)

MEDIAPIPE = "mediapipe==0.10.21"
SELFIE_MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"


def fetch_selfie_model(dest_dir: Path) -> Path:
    """Download the mediapipe wheel with pip (no install) and extract the selfie model into `dest_dir`."""
    target = Path(dest_dir) / Path(SELFIE_MEMBER).name
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--dest", tmp, MEDIAPIPE]
        log.info("downloading %s (wheel only) to extract %s", MEDIAPIPE, target.name)
        subprocess.run(command, check=True)
        (wheel,) = Path(tmp).glob("mediapipe-*.whl")
        extract_member(wheel, SELFIE_MEMBER, target)
    return target


def extract_member(wheel: Path, member: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive, atomic_path(target) as tmp:
        tmp.write_bytes(archive.read(member))
