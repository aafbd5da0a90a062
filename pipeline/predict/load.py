"""The scorer a spec names, built once per process: the one place that knows every backend's module (each of
which imports predict/scorers.py, never this)."""

from __future__ import annotations

import functools

from pipeline.predict.scorers import Scorer, ScorerSpec


@functools.lru_cache(maxsize=2)
def load_scorer(spec: ScorerSpec) -> Scorer:
    """The scorer `spec` names, built once per process (every shard of a worker shares it)."""
    if spec.backend == "open_clip":
        from pipeline.predict.clip_image import OpenClipScorer

        return OpenClipScorer(spec)
    from pipeline.predict.xclip import XClipScorer

    return XClipScorer(spec)
