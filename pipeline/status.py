"""`pipeline status`: where a dataset's masks run and each of its rendered variants stand, in progress or
finished, read by any machine that sees OUT; writes nothing (`engine.status`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.engine.status import WINDOW, Claim, StageStatus, stage_status
from pipeline.errors import InputError
from pipeline.masks.threads import machine_warnings, torch_network_of


def run_status(out: Path, dataset: str, masks_tag: str | None = None, *,
               make_args: str | None = None) -> list[StageStatus]:
    """The masks run (`masks_tag`, or the one that moved last), then each variant and format rendered from it."""
    run_dir = pick_run(Path(out).absolute() / "masks" / dataset, masks_tag, make_args or f"DATASET={dataset}")
    now = time.time()
    masks = stage_status(f"masks {dataset}/{run_dir.name}", run_dir, total=_listed(run_dir), now=now)
    # what its current shards say of the machines that made them, as the run's summary says it
    masks.warnings = machine_warnings(run_dir.parent.name, torch_network_of(run_dir), masks.made_with)
    stages = [masks]
    renders = Path(out).absolute() / "renders" / dataset / run_dir.name
    for folder in sorted(renders.glob("*/_status/*")):
        if folder.is_dir():
            stages.append(stage_status(f"render {folder.parent.parent.name} ({folder.name})", folder, now=now))
    return stages


def pick_run(base: Path, tag: str | None, make_args: str) -> Path:
    """The masks run folder: `tag`'s, or the one where something happened last (a run in progress has no plan
    until its first shard commits, but its folder changes as its shards start)."""
    runs = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if tag:
        if base / tag not in runs:
            choices = ", ".join(p.name for p in runs) or "none"
            raise InputError(f"{base / tag}: no masks run there; pick MASKS= from {choices}")
        return base / tag
    if not runs:
        raise InputError(f"{base}: no masks run yet; run `make masks {make_args}` first")
    return max(runs, key=lambda run: (max(_mtime(run), _mtime(run / "plan.json")), run.name))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _listed(run_dir: Path) -> int | None:
    """The clips a masks run plans (its listing, all of it: the plan covers every split)."""
    try:
        return int(json.loads((run_dir / "run.json").read_text())["listing"]["clips"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def status_lines(stages: list[StageStatus]) -> list[str]:
    out = []
    for s in stages:
        planned, remaining = ("?", "?") if s.planned is None else (f"{s.planned:,}", f"{s.remaining:,}")
        out += [f"{s.name}: {s.folder}",
                f"  shards: {s.done:,} of {planned} done, {len(s.claimed)} claimed now, {remaining} remaining, "
                f"{len(s.failed)} failed" + (" (no plan yet: it is written when the first shard commits)"
                                              if s.planned is None else "")]
        statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(s.by_status.items())) or "none"
        left = "" if s.left is None else f"; {'~' if s.estimated else ''}{s.left:,.0f} to go"
        out.append(f"  clips: {sum(s.by_status.values()):,} done ({statuses}); {s.in_flight:,} finished in claimed "
                   f"shards{left}")
        out.append("  " + _rate_line(s))
        out += [_claim_line(claim, s.now) for claim in s.claimed[:5]]
        out += [f"  failed: {shard}: {why}" for shard, why in list(s.failed.items())[:5]]
        more = len(s.claimed) - 5, len(s.failed) - 5
        out += [f"  ... {n} more {what}" for n, what in zip(more, ("claimed", "failed")) if n > 0]
        if s.errors:
            out.append("  top errors:")
            out += [f"    {n:,}x {error} (e.g. {example})" for n, error, example in s.errors]
        out += [f"  WARNING: {warning}" for warning in s.warnings]
    return out


def _claim_line(claim: Claim, now: float) -> str:
    clips = f"{claim.finished} clip{'' if claim.finished == 1 else 's'} finished"
    moved = f", last {_age(now - claim.moved)} ago" if claim.moved else ""
    return f"  claimed: {claim.shard} by {claim.holder} for {_age(now - claim.since)}, {clips}{moved}"


def _rate_line(s: StageStatus) -> str:
    if not s.items_per_s:
        idle = f"; last activity {_age(s.now - s.last)} ago" if s.last else ""
        return f"rate: nothing finished in the last {_age(WINDOW)}{idle}"
    if s.left == 0:
        eta = "; all done"
    else:
        eta = "" if s.eta is None else f"; ETA {_age(s.eta)}" + (" (estimated clip count)" if s.estimated else "")
    return f"rate: {s.frames_per_s:,.1f} frames/s, {s.items_per_s:,.2f} clips/s over the last {_age(s.span)}{eta}"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
