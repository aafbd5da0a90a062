"""`export-pairs`: a swap variant's pairs, as its manifest lists them, written in HAT's format
(`{"<class>/<clip id>": ["<class>/<background clip id>", background frames, background class index]}`), so
HAT's own loader (`ActionSwapDataset(swapfile=...)`) reads them and `--swap-pairs` renders them again."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.atomic import temp_name
from pipeline.errors import InputError
from pipeline.masks import find_run


def export_pairs(*, out: Path, dataset: str, variant: str, dest: Path, masks_tag: str | None = None,
                 split: str | None = None, make_args: str | None = None) -> int:
    """Write the variant's listed pairs (of `split`, or every split) to `dest`; returns how many."""
    if Path(dest).exists():
        raise InputError(f"{dest}: exists; remove it or give another --output (nothing is overwritten)")
    masks = find_run(out, dataset, masks_tag, make_args=make_args)
    manifest = Path(out) / "manifests" / dataset / masks.tag / variant / "manifest.parquet"
    if not manifest.is_file():
        raise InputError(f"{manifest}: no manifest for variant {variant!r}; run `make render` and `make manifests`")
    rows = [r for r in pq.read_table(manifest).to_pylist() if r["in_lists"] and (split is None or r["split"] == split)]
    paired = [r for r in rows if r["pair_clip_id"]]
    if not paired:
        raise InputError(f"{manifest}: no listed clip has a swap partner{f' in split {split!r}' if split else ''}; "
                         "export-pairs takes a swap variant")
    frames = {clip.clip_id: clip.frames for clip in masks.clips()}
    pairs = {}
    for row in paired:
        key = f"{row['label']}/{row['source_clip_id'] or row['clip_id']}"
        pairs[key] = [f"{row['pair_label']}/{row['pair_clip_id']}", int(frames[row["pair_clip_id"]]),
                      int(row["pair_label_index"])]
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(Path(dest))
    tmp.write_bytes(pickle.dumps(dict(sorted(pairs.items())), protocol=4))
    try:
        os.link(tmp, dest)  # into place only if nothing is there: never replaces a file made meanwhile
    except FileExistsError:
        raise InputError(f"{dest}: exists; remove it or give another --output (nothing is overwritten)") from None
    finally:
        tmp.unlink()
    return len(pairs)
