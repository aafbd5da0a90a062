"""The published static-bias metrics over scored variants, each with a bootstrap 95% interval.

- top-1, top-5 and per-class top-1 of every variant;
- HAT: BOR = top-1(background_only) ÷ top-1(original), HOR = top-1(human_only) ÷ top-1(original), on the clips
  both variants have; SHAcc / SBErr = the share of swap clips predicted as their own (foreground) label / as
  their background clip's label, pooled over the variants (seeds) of each swap mode;
- StillMix: SCUBA top-1, SCUFO top-1, and contrasted accuracy = the share of clips right on SCUBA and wrong on
  SCUFO, on the clips both have.

Intervals resample clips with replacement (paired where two variants are compared), with a fixed seed, so the
same predictions always give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

BOOTSTRAP_SEED = 0
CHUNK_CELLS = 4_000_000  # resampled rows held at once


@dataclass(frozen=True)
class Scored:
    """One variant's manifest rows (of one split, in list order) and what the model predicted for them."""

    variant: str
    clip_ids: tuple[str, ...]
    labels: np.ndarray  # (N,) true label index
    pair_labels: np.ndarray  # (N,) the swap background clip's label index, -1 where none
    predicted: np.ndarray  # (N,) top-1 label index
    scores: np.ndarray | None  # (N, C) when the predictions had scores

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    def on(self, clip_ids: list[str]) -> np.ndarray:
        """Correctness of the rows with these ids, in that order."""
        position = {clip_id: i for i, clip_id in enumerate(self.clip_ids)}
        return self.correct[[position[c] for c in clip_ids]]

    def common(self, other: "Scored") -> list[str]:
        mine = set(self.clip_ids)
        return [clip_id for clip_id in other.clip_ids if clip_id in mine]


def bootstrap(statistic: Callable[..., np.ndarray], arrays: list[np.ndarray], resamples: int) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of `statistic` over `resamples` resamplings of the rows (the same rows
    for every array: paired). `statistic` takes arrays of shape (resamples, N) and returns (resamples,)."""
    n = len(arrays[0])
    if n == 0 or resamples <= 0:
        return None
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    chunk = max(1, CHUNK_CELLS // n)  # resamples at a time, so memory stays bounded on 100k-clip pools
    values = []
    for start in range(0, resamples, chunk):
        picks = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        with np.errstate(divide="ignore", invalid="ignore"):
            values.append(statistic(*(a[picks] for a in arrays)))
    values = np.concatenate(values)
    values = values[np.isfinite(values)]
    return [round(float(v), 6) for v in np.percentile(values, [2.5, 97.5])] if len(values) else None


def share(hits: np.ndarray, resamples: int) -> dict:
    """A share of clips, with its interval."""
    hits = np.asarray(hits, dtype=np.float64)
    return {"value": round(float(hits.mean()), 6) if len(hits) else None, "clips": int(len(hits)),
            "ci95": bootstrap(lambda h: h.mean(axis=1), [hits], resamples)}


def ratio(numerator: Scored, denominator: Scored, resamples: int) -> dict:
    """top-1(numerator) ÷ top-1(denominator) on the clips both have, with a paired interval."""
    ids = numerator.common(denominator)
    top, bottom = numerator.on(ids).astype(np.float64), denominator.on(ids).astype(np.float64)
    value = top.mean() / bottom.mean() if len(ids) and bottom.any() else None
    return {"value": None if value is None else round(float(value), 6), "clips": len(ids),
            "numerator": numerator.variant, "denominator": denominator.variant,
            "ci95": bootstrap(lambda a, b: a.mean(axis=1) / b.mean(axis=1), [top, bottom], resamples)}


def accuracy(scored: Scored, classes: list[str], resamples: int) -> dict:
    """top-1 (with its interval), top-5 (when there are scores) and top-1 per class present."""
    correct = scored.correct
    out = {"clips": int(len(correct)), "top1": round(float(correct.mean()), 6) if len(correct) else None,
           "top1_ci95": bootstrap(lambda c: c.mean(axis=1), [correct.astype(np.float64)], resamples), "top5": None}
    if scored.scores is not None and len(correct):
        k = min(5, scored.scores.shape[1])
        top = np.argsort(-scored.scores, axis=1, kind="stable")[:, :k]
        out["top5"] = round(float((top == scored.labels[:, None]).any(axis=1).mean()), 6)
    out["per_class_top1"] = {classes[c]: round(float(correct[scored.labels == c].mean()), 6)
                             for c in sorted(set(scored.labels.tolist()))}
    return out


def swap_shares(variants: list[Scored], resamples: int) -> dict:
    """SHAcc and SBErr pooled over the swap variants of one mode (their seeds)."""
    predicted = np.concatenate([v.predicted for v in variants])
    own = np.concatenate([v.labels for v in variants])
    background = np.concatenate([v.pair_labels for v in variants])
    return {"SHAcc": share(predicted == own, resamples), "SBErr": share(predicted == background, resamples),
            "variants": [v.variant for v in variants]}


def stillmix(scuba: Scored, scufo: Scored, resamples: int) -> dict:
    """SCUBA top-1, SCUFO top-1 and contrasted accuracy on the clips both have."""
    ids = scuba.common(scufo)
    on_scuba, on_scufo = scuba.on(ids), scufo.on(ids)
    return {"SCUBA": share(on_scuba, resamples), "SCUFO": share(on_scufo, resamples),
            "contrasted": share(on_scuba & ~on_scufo, resamples), "scuba": scuba.variant, "scufo": scufo.variant}
