"""The problem clips of a masks or render run, as the engine lists them in `problems.csv` beside its shards
(`masks/<dataset>/<run>/problems.csv`, `renders/<dataset>/<run>/<variant>/_status/<format>/problems.csv`):
one row per clip that is not `ok`, with a header `clip_id,split,status,error,shard,source`."""

from __future__ import annotations

import html
from pathlib import Path

from pipeline.engine.problems import PROBLEMS_CSV as PROBLEMS
from pipeline.engine.problems import read_problems
from pipeline.html import table

SHOWN = 200  # rows shown per table; the CSV holds them all


def masks_problems(run: Path, shown: int = SHOWN) -> str:
    """The masks run's problem clips: status, clip, split, error and where the dataset lists it."""
    path = Path(run) / PROBLEMS
    problems = read_problems(path)
    if problems is None:
        return f"<p>No <code>{PROBLEMS}</code> in this masks run (made before runs wrote one).</p>"
    if not problems:
        return "<p>No problem clips in this masks run.</p>"
    rows = [(p.status, p.key, p.split, p.error, p.source) for p in problems]
    return _capped(f"<h3>Problem clips ({len(problems)})</h3>", ("status", "clip", "split", "error", "source"),
                   rows, [path], shown)


def render_problems(variant_dir: Path, shown: int = SHOWN) -> str:
    """A variant's problem clips over its formats; nothing when no format wrote a `problems.csv`."""
    found = {p.parent.name: (p, read_problems(p)) for p in sorted(Path(variant_dir).glob(f"_status/*/{PROBLEMS}"))}
    if not found:
        return ""
    rows = [(fmt, p.status, p.key, p.split, p.error) for fmt, (_, problems) in found.items() for p in problems]
    if not rows:
        return "<p>No problem clips in this variant's renders.</p>"
    return _capped(f"<h3>Problem clips ({len(rows)})</h3>", ("format", "status", "clip", "split", "error"), rows,
                   [path for path, _ in found.values()], shown)


def _capped(title: str, head: tuple[str, ...], rows: list[tuple[str, ...]], paths: list[Path], shown: int) -> str:
    parts = [title, table(head, rows[:shown])]
    if len(rows) > shown:
        where = ", ".join(f"<code>{html.escape(str(p))}</code>" for p in paths)
        parts.append(f"<p>{len(rows) - shown} more not shown; all are in {where}.</p>")
    return "\n".join(parts)
