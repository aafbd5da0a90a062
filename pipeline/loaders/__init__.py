"""Trainer integration: variants applied on the fly in data loaders (PyTorch, mmaction2), no rendering."""

from pipeline.loaders.dataset import ClipSample, MaskedClips
from pipeline.loaders.frames import ClipComposer, ClipSource
from pipeline.loaders.index import MasksIndex
from pipeline.loaders.sampling import Sampling

__all__ = ["ClipComposer", "ClipSample", "ClipSource", "MaskedClips", "MasksIndex", "Sampling"]
