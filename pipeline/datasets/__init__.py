"""Dataset readers: each turns a dataset as it lies on disk into ClipRecords with official splits and labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.datasets.classes import require_official, warn_unofficial_indices, with_official_indices
from pipeline.datasets.common import Listing, ReaderOptions, finish
from pipeline.datasets.errors import DatasetError
from pipeline.datasets.folder import list_file, list_folder
from pipeline.datasets.hmdb51 import list_hmdb51
from pipeline.datasets.kinetics import list_kinetics
from pipeline.datasets.mimetics import list_mimetics
from pipeline.datasets.sample import ensure_sample
from pipeline.datasets.ssv2 import list_ssv2
from pipeline.datasets.ucf101 import list_ucf101


@dataclass(frozen=True)
class Dataset:
    name: str
    read: Callable[[Path, ReaderOptions], Listing]
    default_root: Callable[[Path], Path] | None = None  # given the output root; None: DATA_ROOT is required
    shard_size: int = 32  # default clips per shard
    split_ids: bool = False  # official alternative splits (SPLIT_ID); outputs go to <name>-split<N>


def _sample(root: Path, options: ReaderOptions) -> Listing:
    return list_kinetics(ensure_sample(root), options)


DATASETS = {
    "sample": Dataset("sample", _sample, default_root=lambda out: Path(out) / "data" / "sample", shard_size=4),
    "kinetics400": Dataset("kinetics400", list_kinetics),
    "kinetics600": Dataset("kinetics600", list_kinetics),
    "kinetics700": Dataset("kinetics700", list_kinetics),
    "ssv2": Dataset("ssv2", list_ssv2),
    "mimetics": Dataset("mimetics", list_mimetics),
    "ucf101": Dataset("ucf101", list_ucf101, split_ids=True),
    "hmdb51": Dataset("hmdb51", list_hmdb51, split_ids=True),
    "folder": Dataset("folder", list_folder),
    "list": Dataset("list", list_file),
}

__all__ = ["DATASETS", "DatasetError", "Listing", "ReaderOptions", "list_clips", "output_name"]


def list_clips(name: str, root: Path | None, out: Path, splits: tuple[str, ...] | None = None,
               options: ReaderOptions = ReaderOptions()) -> Listing:
    """The clips of a dataset, sorted by clip id, with its class names; DatasetError for bad input."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    dataset = DATASETS[name]
    output_name(name, options.split_id)  # refuses a split id the dataset does not have
    if options.official_indices:
        require_official(name)  # refuses a dataset without an offline official class list, before reading it
    if root is None:
        if dataset.default_root is None:
            raise DatasetError(f"dataset {name!r} needs DATA_ROOT=/path/to/{name} (--root)")
        root = dataset.default_root(out)
    listing = dataset.read(Path(root), options)
    if options.official_indices:
        listing = with_official_indices(listing, name)
    else:
        warn_unofficial_indices(listing, name)
    return finish(listing, splits, Path(root))


def output_name(name: str, split_id: int | None = None) -> str:
    """The folder name of a dataset's outputs under masks/, renders/, manifests/ and reports/:
    `<name>-split<N>` for datasets with official alternative splits (N defaults to 1), else the name.
    Names that are not registered (a folder the user named) are taken as they are."""
    dataset = DATASETS.get(name)
    if dataset is not None and dataset.split_ids:
        return f"{name}-split{1 if split_id is None else split_id}"
    if split_id is not None:
        raise DatasetError(f"{name} has no official alternative splits; drop SPLIT_ID (--split-id)")
    return name

