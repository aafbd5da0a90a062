"""Fixtures: offline settings for ultralytics, and small datasets generated on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(ROOT / ".cache" / "ultralytics"))
os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))

from pipeline.datasets.sample import shape_clip, write_video  # noqa: E402

LUMA = "tests.segmenters:LumaKeySegmenter"


def write_kinetics_csv(root: Path, split: str, rows: list[tuple[str | None, str, int, int]]) -> None:
    lines = ["label,youtube_id,time_start,time_end,split"]
    for label, youtube_id, start, end in rows:
        quoted = f'"{label}"' if label else ""
        lines.append(f"{quoted},{youtube_id},{start},{end},{split}")
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"{split}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def shapes_dataset(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A Kinetics-layout tree of 5 lossless shape clips (2 classes); returns (root, clip_id → (person, box) truth)."""
    root = tmp_path / "k400"
    truth, rows = {}, {"train": [], "val": []}
    for i in range(5):
        split = "val" if i == 4 else "train"
        label = "juggling balls" if i % 2 else "passing American football (in game)"
        youtube_id = f"-clip{i}_x"
        frames, person, box = shape_clip(12 + i, 96, 64, seed=i)
        write_video(root / split / f"{youtube_id}_{i:06d}_{i + 10:06d}.mp4", frames, 12, lossless=True)
        truth[f"{youtube_id}_{i:06d}_{i + 10:06d}"] = (person, box)
        rows[split].append((label, youtube_id, i, i + 10))
    for split, split_rows in rows.items():
        write_kinetics_csv(root, split, split_rows)
    return root, truth


@pytest.fixture(scope="session")
def selfie_model() -> Path:
    """The real selfie model (fetched from the mediapipe wheel by `make models`, or here if missing)."""
    from pipeline.weights import fetch_selfie_model

    return fetch_selfie_model(ROOT / "models")
