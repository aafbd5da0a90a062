"""Dataset readers: each turns a dataset as it lies on disk into sorted ClipRecords."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.datasets.errors import DatasetError
from pipeline.datasets.kinetics import list_kinetics
from pipeline.datasets.sample import ensure_sample
from pipeline.records import ClipRecord


@dataclass(frozen=True)
class Dataset:
    name: str
    read: Callable[[Path, tuple[str, ...] | None], list[ClipRecord]]
    default_root: Callable[[Path], Path] | None = None  # given the output root; None: DATA_ROOT is required
    shard_size: int = 32  # default clips per shard


def _sample(root: Path, splits: tuple[str, ...] | None) -> list[ClipRecord]:
    return list_kinetics(ensure_sample(root), splits)


DATASETS = {
    "sample": Dataset("sample", _sample, default_root=lambda out: Path(out) / "data" / "sample", shard_size=4),
    "kinetics400": Dataset("kinetics400", list_kinetics),
    "kinetics600": Dataset("kinetics600", list_kinetics),
    "kinetics700": Dataset("kinetics700", list_kinetics),
}

__all__ = ["DATASETS", "DatasetError", "list_clips"]


def list_clips(name: str, root: Path | None, out: Path, splits: tuple[str, ...] | None = None) -> list[ClipRecord]:
    """The clips of a dataset, sorted by clip id; DatasetError for an unknown name or a bad folder."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    dataset = DATASETS[name]
    if root is None:
        if dataset.default_root is None:
            raise DatasetError(f"dataset {name!r} needs DATA_ROOT=/path/to/{name} (--root)")
        root = dataset.default_root(out)
    return sorted(dataset.read(Path(root), splits), key=lambda clip: clip.clip_id)
