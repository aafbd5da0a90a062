"""The files that describe a run besides its shards' stats: the stage's own (the masks run's `run.json` and
`layout.json`, a variant's `variant.<format>.json`) and `plan.json`, then `problems.csv` and `summary.json`.

A record that was committed changes only when something new is committed: these files are written when a
shard of the run commits (the plan alone also when the run ends with nothing failed); a start that fails (a
model that will not load, no GPU, Ctrl-C before the first shard) leaves them as they were. A file that already
holds the same content is not rewritten, so a run with nothing to do writes nothing (and reads a read-only
folder happily).
"""

from __future__ import annotations

import errno
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.atomic import atomic_path
from pipeline.engine.claims import claim
from pipeline.errors import InputError

log = logging.getLogger(__name__)

NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def json_text(data: Any) -> str:
    """JSON as every record file is written: indented, keys sorted, paths as strings."""
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def read_text(path: Path) -> str | None:
    try:
        return Path(path).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_if_changed(path: Path, content: str | bytes) -> bool:
    """Write `content` to `path` atomically unless it holds exactly that already; returns whether it wrote."""
    data = content.encode() if isinstance(content, str) else content
    try:
        if Path(path).read_bytes() == data:
            return False
    except (FileNotFoundError, NotADirectoryError):
        pass
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


@dataclass(frozen=True)
class RecordFile:
    """One record file: its content, or how its content on disk becomes the one to write (`merge`, called under
    the file's lock, for files that concurrent runs extend, such as the layout). A JSON file (`json`) counts as
    unchanged while it parses to the same data, however it is laid out."""

    path: Path
    text: str | None = None
    merge: Callable[[str | None], str] | None = None
    parsed: Any = None  # JSON files: the data, as `text` parses

    @classmethod
    def json(cls, path: Path, data: Any, *, compact: bool = False) -> "RecordFile":
        """`compact`: one line (for large files: json's indented encoder is its slow, pure-Python one)."""
        text = json.dumps(data, sort_keys=True, default=str) + "\n" if compact else json_text(data)
        return cls(Path(path), text=text, parsed=json.loads(text))

    def wanted(self, current: str | None) -> str:
        return self.merge(current) if self.merge else self.text

    def pending(self) -> bool:
        current = read_text(self.path)
        if self.parsed is not None and current is not None:
            try:
                return json.loads(current) != self.parsed
            except ValueError:
                return True
        return self.wanted(current) != current

    def write(self) -> bool:
        if not self.pending():  # nothing to write (and no lock to take: a read-only folder has none to give)
            return False
        if self.merge is None:
            return write_if_changed(self.path, self.text)
        with claim(self.path):
            return write_if_changed(self.path, self.wanted(read_text(self.path)))


class RunRecord:
    """A run's record files: those that describe it (run.json, layout.json, variant.json), written when a shard
    of the run commits, and its plans (plan.json: which shards are current), written then too, or when the run
    ends with nothing failed (shards planned anew, or out of date, are then known to readers). The plans go last:
    readers take a run by its plan, so a record cut short is never a new plan beside old descriptions."""

    def __init__(self, describe: Sequence[RecordFile], plans: Sequence[RecordFile]) -> None:
        self.describe, self.plans = list(describe), list(plans)
        self.committed = False  # the whole record, at a commit

    def pending(self, *, whole: bool) -> bool:
        """Whether committing (the whole record, or the plans alone) would change a file."""
        return any(file.pending() for file in (self.describe if whole else []) + self.plans)

    def commit(self, *, whole: bool = True) -> None:
        if self.committed:
            return
        for file in (self.describe if whole else []) + self.plans:
            if file.write():
                log.debug("recorded %s", file.path)
        self.committed = whole


def require_writable(folder: Path, what: str = "OUT") -> None:
    """InputError, one line, if nothing can be created in `folder` (or, while it does not exist, in the folder
    that would hold it): checked before a run with work to do begins, so a read-only output fails at once."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    probe = existing / f".write-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as exc:
        if exc.errno not in NOT_WRITABLE:
            raise
        raise InputError(f"{existing}: {what} is not writable ({exc.strerror}); this run has work to do there: "
                         f"make it writable, or pick another {what}") from None
