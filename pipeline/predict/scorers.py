"""Zero-shot video classifiers: which one (`ScorerSpec`, from `open_clip:<arch>` or `xclip:<name or path>` and
the weights), what `predict` asks of it (`Scorer`), and what the backends share (loaded once per process by
predict/load.py).

Weights are `random` (seeded: the same in every process; for tests and timing), a local file or folder, or a
name the library fetches as its users normally do. Whatever the source, the content hash recorded is the
sha256 of the loaded state dict (every tensor's name, dtype, shape and bytes, in name order), so two
downloads of the same weights, or a file moved elsewhere, key the same predictions.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline.errors import InputError
from pipeline.predict.prompts import Prompts

BACKENDS = ("open_clip", "xclip")
RANDOM = "random"
PRECISIONS = ("fp32", "fp16", "bf16")
SCORER_FILE = "scorer.json"  # beside predict's CSVs: the scorer, its classes, each CSV's manifest (evaluate reads it)


class ScorerLoadError(InputError):
    """A scorer that cannot be built or whose weights do not load: the run stops before any work (exit 2)."""


@dataclass(frozen=True, kw_only=True)
class ScorerSpec:
    """Which classifier, with which weights, where and in what precision."""

    backend: str  # open_clip or xclip
    name: str  # open_clip: an architecture (ViT-B-32), `local-dir:DIR` or `hf-hub:ID`; xclip: a hub id or folder
    weights: str | None = None  # random, a file, a folder, a name the library knows; None: the name's own
    device: str = "cpu"
    precision: str = "fp32"  # fp16 / bf16: autocast on CUDA

    @classmethod
    def parse(cls, text: str, *, weights: str | None = None, device: str = "cpu",
              precision: str | None = None) -> "ScorerSpec":
        backend, _, name = text.partition(":")
        if backend not in BACKENDS or not name:
            raise InputError(f"unknown scorer {text!r}; expected open_clip:<arch> (e.g. open_clip:ViT-B-32) or "
                             "xclip:<name or folder> (e.g. xclip:microsoft/xclip-base-patch32)")
        precision = precision or ("fp16" if device.startswith("cuda") else "fp32")
        if precision not in PRECISIONS:
            raise InputError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if precision != "fp32" and not device.startswith("cuda"):
            raise InputError(f"precision {precision} needs a CUDA device; on the CPU use fp32")
        return cls(backend=backend, name=name, weights=weights or None, device=device, precision=precision)

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.name}"


class Scorer(Protocol):
    """A loaded classifier. `frames` is the number of frames per clip it must get (None: any)."""

    spec: ScorerSpec
    frames: int | None
    weights_sha256: str

    def preprocess(self, frames: np.ndarray) -> "torch.Tensor":  # noqa: F821
        """(N, H, W, 3) uint8 RGB → (N, 3, S, S) float32, the model's own preprocessing (CPU)."""
        ...

    def classes(self, prompts: Prompts) -> "torch.Tensor":  # noqa: F821
        """The class embeddings of `prompts` on the device (made once per prompts and process)."""
        ...

    def score(self, clips: "torch.Tensor", classes: "torch.Tensor") -> np.ndarray:  # noqa: F821
        """(B, N, 3, S, S) preprocessed clips → (B, C) float32 logits."""
        ...


def first_line(exc: BaseException) -> str:
    """A library's error message as one line (some run to a page)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def state_sha256(module: "torch.nn.Module") -> str:  # noqa: F821
    """The content hash of a model's weights: every state-dict tensor's name, dtype, shape and bytes."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{value.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def seeded(seed: int = 0):
    """Random initialisation that is the same in every process (`random` weights); the global generator is
    left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def autocast(spec: ScorerSpec):
    """The precision's autocast on CUDA; nothing on the CPU (fp32)."""
    import torch

    if spec.precision == "fp32" or not spec.device.startswith("cuda"):
        return nullcontext()
    dtype = torch.bfloat16 if spec.precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)
