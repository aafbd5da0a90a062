"""A shard's commit: files are written under temporary names, hashed, then renamed into place one by one; the
stats file (the done marker) is written after the last rename. The caller removed the old marker before any of
this began, so a crash anywhere in between leaves the shard "not done", never half old and half new."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from pipeline.atomic import temp_name

log = logging.getLogger(__name__)


class Commit:
    """The files of one shard, written to temporary names and renamed into place at `finish`: the shard's
    tables, and files per item (a rendered clip) wherever the stage puts them."""

    def __init__(self, folder: Path, *, cut_short: bool = False) -> None:
        self.folder = Path(folder)
        self.cut_short = cut_short  # a writer of this shard was cut short before: it may have left temporary files
        self._staged: dict[Path, Path] = {}  # final → temporary, in the order staged

    def stage(self, path: Path) -> Path:
        """A temporary path (file or folder) to write `path` to; it is renamed into place at `finish`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.unstage(path)  # a try before this one left it
        self._staged[path] = temp_name(path)
        return self._staged[path]

    def unstage(self, path: Path) -> None:
        """Drop a staged output and what was written to it (an item's try that failed)."""
        tmp = self._staged.pop(Path(path), None)
        if tmp is not None:
            _remove(tmp)

    def finish(self) -> dict[str, dict[str, Any]]:
        """Hash every staged output, then rename each into place (in the order staged); returns the outputs
        (relative to the shard's folder) with their sha256 and size."""
        outputs = {self._name(final): file_digest(tmp) for final, tmp in self._staged.items()}
        for final, tmp in self._staged.items():
            if tmp.is_dir() and final.is_dir():  # a rawframes folder: a folder cannot replace a folder in one rename
                _remove(final)
            os.replace(tmp, final)
        self._staged = {}
        return dict(sorted(outputs.items()))

    def abort(self) -> None:
        for tmp in self._staged.values():
            _remove(tmp)
        self._staged = {}

    def _name(self, path: Path) -> str:
        return os.path.relpath(path, self.folder)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def file_digest(path: Path) -> dict[str, Any]:
    """sha256 and size of a file, or of a folder's files (names and contents, in sorted order); a symbolic link
    is what it points at, as text (the `original` variant's links to the sources are not read)."""
    path = Path(path)
    if path.is_symlink():
        target = os.readlink(path).encode()
        return {"sha256": hashlib.sha256(target).hexdigest(), "bytes": len(target)}
    digest, size = hashlib.sha256(), 0
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    return {"sha256": digest.hexdigest(), "bytes": size}


def outputs_present(folder: Path, outputs: dict[str, dict[str, Any]]) -> bool:
    """Every recorded output still exists with its recorded size (a cheap check: sizes, not contents)."""
    for name, entry in outputs.items():
        path = Path(folder) / name
        if path.is_symlink():  # the same target (its recorded digest), and that target still there
            if file_digest(path)["sha256"] != entry["sha256"] or not path.exists():
                return False
            size = entry["bytes"]
        elif path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            size = path.stat().st_size
        else:
            return False
        if size != entry["bytes"]:
            return False
    return True
