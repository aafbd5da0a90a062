"""The render stage: masked variants of every clip, composed from the mask cache and encoded, per masks run."""

from pipeline.render.runner import RenderConfig, RenderSummary, run_render
from pipeline.render.stage import NO_PAIR, RENDER_SCHEMA

__all__ = ["NO_PAIR", "RENDER_SCHEMA", "RenderConfig", "RenderSummary", "run_render"]
