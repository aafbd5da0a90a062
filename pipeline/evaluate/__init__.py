"""Scoring a model's predictions on the variants: the static-bias metrics of HAT and StillMix, and the grids."""

from pipeline.evaluate.run import EvaluateConfig, run_evaluate

__all__ = ["EvaluateConfig", "run_evaluate"]
