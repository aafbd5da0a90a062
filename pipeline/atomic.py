"""Write-then-rename helpers: a reader never sees a partial file."""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def temp_name(path: Path) -> Path:
    """A hidden sibling name, unique per host and process, on the same filesystem as `path`."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, data: Any, *, sort_keys: bool = True) -> str:
    """Write `data` as indented JSON (paths as strings; keys sorted unless told), atomically; return the text."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys, default=str)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return text
