"""FORMAT=webdataset: one WebDataset tar per render shard, `<variant dir>/<shard>.tar`. Each rendered clip is
one sample: `<key>.mp4` (encoded exactly as FORMAT=mp4 encodes it) and `<key>.json` (its manifest row, path
`<shard>.tar`). Samples go in the shard's item order; clips that were not rendered have no sample, only
their status row.

WebDataset splits a member's name into key and extension at the first '.', and clip ids may hold '.': the key
is the render key (clip id, or `<id>__<k>`) with '.' written '%2E' (safe ids never hold '%'); the JSON holds
the true `clip_id`. The tar is reproducible: members in a fixed order with a fixed mtime, owner and mode.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO, Callable

from pipeline.manifests.rows import manifest_row, masks_provenance

WEBDATASET = "webdataset"
TAR_MTIME = 0  # every member's mtime, owner and mode are constants: the same samples give the same bytes
TAR_OWNER = "pipeline"
TAR_MODE = 0o444


def sample_key(render_key: str) -> str:
    """The WebDataset key of a render: '.' percent-encoded, so that the key ends at the extension's '.'."""
    return render_key.replace(".", "%2E")


def render_key(key: str) -> str:
    """The render key (clip id, or `<id>__<k>`) of a WebDataset key."""
    return key.replace("%2E", ".")


def shard_tar_name(shard: str) -> str:
    """A render shard's tar, relative to the variant folder (and a webdataset row's `path`)."""
    return f"{shard}.tar"


class SampleTar:
    """A render shard's samples appended to one tar at `path` (the Commit's temporary name for it); `close`
    finishes it, and the Commit renames it into place."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.samples = 0
        self._file: BinaryIO | None = open(self.path, "wb")
        from webdataset import TarWriter  # here: importing webdataset imports torch (seconds, hundreds of MB)

        # PAX: a member name past ustar's 100 characters gets an extended header instead of an error
        self._writer = TarWriter(self._file, user=TAR_OWNER, group=TAR_OWNER, mode=TAR_MODE, mtime=TAR_MTIME,
                                 encoder=False, format="PAX_FORMAT")

    def add(self, key: str, mp4: bytes, row: dict) -> None:
        """Append one sample: the render's mp4 bytes and `row` (its manifest row) as sorted-key JSON."""
        self._writer.write({"__key__": sample_key(key), "mp4": mp4,
                            "json": json.dumps(row, sort_keys=True).encode()})
        self.samples += 1

    def close(self) -> None:
        """Finish the tar (its end blocks) and close the file; a second call does nothing."""
        if self._file is None:
            return
        try:
            self._writer.close()
        finally:
            self._file.close()
            self._file = None


def sample_rows(masks: object, shard: str, digest: str, keep_if: tuple[float, float] | None
                ) -> Callable[[object], dict]:
    """What turns a render row (`RenderRow`) of `shard` into its sample's JSON: the row as `manifest.parquet`
    will hold it (coverage summary, the verdict of the variant's own filter, the provenance of the masks shard
    `masks` (a MasksRun) holds under `digest`)."""
    provenance = masks_provenance(masks, shard, digest)
    min_coverage, min_frames_frac = keep_if or (0.0, 0.0)
    return lambda render: asdict(manifest_row(asdict(render), provenance, min_coverage, min_frames_frac))


def read_sample(tar: Path, key: str) -> dict[str, bytes]:
    """One render's members (`mp4`, `json`) from a shard tar, by its render key (for the report; trainers read
    the tars with `webdataset.WebDataset`)."""
    prefix = sample_key(key) + "."
    found = {}
    with tarfile.open(tar) as archive:
        for member in archive:
            if member.name.startswith(prefix) and "." not in member.name[len(prefix):]:
                found[member.name[len(prefix):]] = archive.extractfile(member).read()
    if not found:
        raise FileNotFoundError(f"{tar}: no sample {sample_key(key)!r}; rerun `make render` for this variant")
    return found
