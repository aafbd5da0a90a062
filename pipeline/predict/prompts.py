"""The text side of a zero-shot classifier: each class's name as a prompt reads it, and the templates it is
put into.

Class names come from the dataset's listing (the manifests' label map), cleaned the same way for every
dataset: SSv2's placeholders lose their brackets (`Putting [something] on a surface` → `putting something on a
surface`), underscores become spaces (HMDB51's `brush_hair`), UCF101's CamelCase is split (`ApplyEyeMakeup` →
`apply eye makeup`), and everything is lower case with single spaces. The default templates are the 28 that
CLIP's paper used for Kinetics-700 (four openings × seven ways of naming the action). A TOML file replaces
them (`templates = ["a video of {}.", ...]`) and may rename classes (`[names]`, class = prompt name).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import tomllib

from pipeline.errors import InputError

OPENINGS = ("a photo of", "a video of", "a example of", "a demonstration of")
ACTIONS = ("{}", "a person {}", "a person using {}", "a person doing {}", "a person during {}",
           "a person performing {}", "a person practicing {}")
CLIP_VIDEO_TEMPLATES = tuple(f"{opening} {action}." for opening in OPENINGS for action in ACTIONS)


def clean_name(name: str) -> str:
    """A class name as a prompt reads it (see the module docstring)."""
    text = re.sub(r"\[([^\]]*)\]", r"\1", name)
    text = text.replace("_", " ")
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text)
    return " ".join(text.lower().split())


@dataclass(frozen=True, kw_only=True)
class Prompts:
    """Each class's prompt name (in label-index order) and the templates; one text embedding per class, the
    templates' mean."""

    names: tuple[str, ...]
    templates: tuple[str, ...] = CLIP_VIDEO_TEMPLATES

    def texts(self) -> list[str]:
        """Every prompt, class after class (each class's templates together)."""
        return [template.format(name) for name in self.names for template in self.templates]

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.names, self.templates]).encode()).hexdigest()[:16]


def make_prompts(classes: list[str], file: Path | None = None) -> Prompts:
    """The prompts for `classes` (label-map order): cleaned names and the default templates, or what the TOML
    `file` says. A bad file is an InputError naming it."""
    if any(not name for name in classes):
        raise InputError(f"the label map has classes without a name (index {classes.index('')}); a zero-shot "
                         "scorer needs every class named")
    names = {name: clean_name(name) for name in classes}
    templates = CLIP_VIDEO_TEMPLATES
    if file is not None:
        try:
            data = tomllib.loads(Path(file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"{file}: not a readable prompts file ({exc})") from None
        unknown = sorted(set(data) - {"templates", "names"})
        if unknown:
            raise InputError(f"{file}: unknown keys {unknown}; a prompts file has `templates` and `[names]`")
        if "templates" in data:
            templates = data["templates"]
            bad = next((t for t in templates if not isinstance(t, str) or t.count("{}") != 1), None) \
                if isinstance(templates, list) and templates else templates
            if bad is not None:
                raise InputError(f"{file}: templates must be a non-empty list of strings with one {{}} each; "
                                 f"got {bad!r}")
            templates = tuple(templates)
        renamed = data.get("names", {})
        missing = sorted(set(renamed) - set(classes))
        if missing:
            raise InputError(f"{file}: [names] renames classes the dataset does not have: {missing[:3]}")
        names |= {name: str(text) for name, text in renamed.items()}
    return Prompts(names=tuple(names[name] for name in classes), templates=templates)
