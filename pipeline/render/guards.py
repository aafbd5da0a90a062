"""What a render refuses, leaves out or says rather than degrade in silence: variants that tell objects from the
background, over masks whose segmenter finds no objects (every object pixel would take the background's fill);
and a variant made from other settings than its last render in the same folder (it is re-rendered: say what
changed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from pipeline.errors import InputError
from pipeline.masks import MasksRun
from pipeline.render.kinds import Variant
from pipeline.segment.base import SegmenterSpec

log = logging.getLogger(__name__)

RECORDED = ("fingerprint", "keep_if", "masks_dir", "masks_fingerprint")  # in variant.<format>.json besides made_of


def segmenter_finds_objects(masks: MasksRun) -> tuple[bool | None, str]:
    """Whether the segmenter that made a masks run finds objects besides people (None: not known, as for a
    segmenter of your own, or a run.json that does not say: `config.segmenter` read defensively), and how to
    name it where it finds none."""
    config = masks.info.get("config")
    recorded = config.get("segmenter") if isinstance(config, dict) else None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("backend"), str):
        return None, "an unrecorded segmenter"
    classes = recorded.get("object_classes")  # a list in JSON; None: every class of the model
    objects = tuple(classes) if isinstance(classes, list) else None
    spec = SegmenterSpec(backend=recorded["backend"], object_classes=objects)
    what = "the selfie segmenter" if spec.backend == "selfie" else f"{spec.backend} with --object-classes none"
    return spec.finds_objects, f"{what}, which finds no objects (people only)"


def with_objects(variants: Sequence[Variant], masks: MasksRun, *, default_set: bool) -> tuple[Variant, ...]:
    """The variants that can be rendered right from `masks`. One that needs objects (Variant.needs_objects) from
    masks whose segmenter finds none is refused when asked for by name (InputError), and left out of the default
    set with one warning line."""
    finds, segmenter = segmenter_finds_objects(masks)
    blind = [variant.name for variant in variants if variant.needs_objects] if finds is False else []
    if not blind:
        return tuple(variants)
    if not default_set:
        names = ", ".join(map(repr, blind))
        subject, them = (f"variants {names} tell", "them") if len(blind) > 1 else (f"variant {names} tells", "it")
        raise InputError(f"{subject} objects from the background, but masks run {masks.tag} was made with "
                         f"{segmenter}; render {them} from a YOLO run, or leave {them} out (a variant of your "
                         "own that means what it says without objects: `needs_objects = false` in its definition)")
    log.warning("left out %s: they need objects, and masks run %s was made with %s", ", ".join(blind), masks.tag,
                segmenter)
    return tuple(variant for variant in variants if variant.name not in blind)


def say_what_changed(stage: str, previous: Path, made_of: dict) -> None:
    """One warning line naming what a variant's renders in this folder were made from before (its
    `variant.<format>.json`, read before it is rewritten) and are now, old -> new; nothing when new or unchanged."""
    try:
        before = json.loads(previous.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(before, dict):
        return
    old = _flat({key: value for key, value in before.items() if key not in RECORDED or key in made_of})
    new = _flat(made_of)
    changed = [key for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
    if not changed:
        return
    what = "definition" if any(key.startswith("variant.") for key in changed) else "settings"
    log.warning("%s: %s changed since it was rendered (%s); re-rendering", stage, what,
                "; ".join(f"{key.removeprefix('variant.')}: {old.get(key, '(none)')} -> {new.get(key, '(none)')}"
                          for key in changed))


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as `key.sub` → value text."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out
