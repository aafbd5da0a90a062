"""Scoring a model's predictions on the variants: the static-bias metrics of HAT and StillMix, and the grids
(`run.run_evaluate`). Nothing is imported here: report/ reads `evaluate.section`, and evaluate.run writes the
report, so importing a module of this package must not run the other."""
