"""Something-Something v2 reader.

<root>/20bn-something-something-v2/<id>.webm          (or any folder given as --videos / VIDEO_DIR)
<root>/labels/labels.json      {"Holding something next to something": "47", ...}   template → index
<root>/labels/train.json       [{"id": "78687", "label": "holding potato next to a bottle",
                                 "template": "Holding [something] next to [something]", "placeholders": [...]}, ...]
<root>/labels/validation.json  (same) → split val
<root>/labels/test.json        [{"id": "1420"}, ...] → split test, unlabelled
The annotation files may also lie in <root> itself, or be named something-something-v2-{labels,train,...}.json.
Label = the template without brackets; its index comes from labels.json. The template, the placeholders and
the filled-in caption are kept in the clip's meta (and so in the manifests).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from pipeline.datasets.common import Listing, ReaderOptions, index_videos, need_dir, safe_id
from pipeline.datasets.errors import DatasetError
from pipeline.records import ClipRecord

SPLIT_FILES = (("train", "train"), ("val", "validation"), ("test", "test"))
VIDEO_FOLDER = "20bn-something-something-v2"


def list_ssv2(root: Path, options: ReaderOptions = ReaderOptions()) -> Listing:
    root = need_dir(Path(root), "dataset folder", "pass DATA_ROOT=/path/to/something-something-v2 (--root)")
    index = read_labels(annotation_file(root, "labels"))
    classes = tuple(sorted(index, key=index.__getitem__))
    video_dir = need_dir(options.videos or root / VIDEO_FOLDER, "SSv2 video folder", "pass VIDEO_DIR=/path/to/webm (--videos)")
    videos = index_videos(video_dir)
    clips = []
    for split, name in SPLIT_FILES:
        path = annotation_file(root, name, required=split != "test")
        if path is None:
            continue
        for line, entry in json_entries(path):
            clips.append(_clip(entry, split, index, videos, video_dir, f"{path}:{line}"))
    return Listing(clips=clips, classes=classes)


def annotation_file(root: Path, name: str, *, required: bool = True) -> Path | None:
    for folder in (root / "labels", root):
        for file_name in (f"{name}.json", f"something-something-v2-{name}.json"):
            if (folder / file_name).is_file():
                return folder / file_name
    if required:
        raise DatasetError(f"{root / 'labels' / (name + '.json')}: SSv2 annotation file not found "
                           f"(also looked for {root}/{name}.json and something-something-v2-{name}.json)")
    return None


def read_labels(path: Path) -> dict[str, int]:
    """labels.json: template (no brackets) → index; the indices must be 0..N-1."""
    labels = _load(path)
    if not isinstance(labels, dict):
        raise DatasetError(f"{path}:1: expected an object of template → index, got {type(labels).__name__}")
    try:
        index = {str(template): int(value) for template, value in labels.items()}
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: every index must be a whole number ({exc})") from None
    if sorted(index.values()) != list(range(len(index))):
        raise DatasetError(f"{path}: indices must run 0..{len(index) - 1} once each")
    return index


def json_entries(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, element) of a JSON array, so that errors can name the line of the bad entry."""
    text = path.read_text(encoding="utf-8")
    pos = len(text) - len(text.lstrip())
    if not text.startswith("[", pos):
        raise DatasetError(f"{path}:{text.count(chr(10), 0, pos) + 1}: expected a JSON array of clips")
    decoder, pos = json.JSONDecoder(), pos + 1
    line, counted = 1, 0  # newlines are counted incrementally: the files hold 10^5 entries
    try:
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text) or text[pos] == "]":
                return
            entry, end = decoder.raw_decode(text, pos)
            line, counted = line + text.count("\n", counted, pos), pos
            yield line, entry
            pos = end
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def _clip(entry: Any, split: str, index: dict[str, int], videos: dict[str, Path], video_dir: Path, where: str) -> ClipRecord:
    if not isinstance(entry, dict) or not str(entry.get("id", "")).strip():
        raise DatasetError(f"{where}: entry has no id")
    clip_id = str(entry["id"]).strip()
    if safe_id(clip_id) != clip_id:
        raise DatasetError(f"{where}: id {clip_id!r} is not a plain video name")
    path = videos.get(clip_id) or f"{video_dir}/{clip_id}.webm"  # a missing file becomes a status row
    if split == "test" and "template" not in entry:
        return ClipRecord(clip_id=clip_id, path=path, split=split, source=where)
    template = entry.get("template")
    if not isinstance(template, str):
        raise DatasetError(f"{where}: clip {clip_id} has no template")
    label = template.replace("[", "").replace("]", "")
    if label not in index:
        raise DatasetError(f"{where}: template {template!r} of clip {clip_id} is not in labels.json (as {label!r})")
    meta = {"template": template, "placeholders": list(entry.get("placeholders") or [])}
    if entry.get("label"):
        meta["caption"] = entry["label"]
    return ClipRecord(clip_id=clip_id, path=path, split=split, label=label, label_index=index[label], meta=meta,
                      source=where)
