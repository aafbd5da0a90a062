"""`open_clip:<arch>`: an image CLIP / SigLIP model from open_clip as a video classifier. Each frame is put
through the model's own validation transform and image encoder; a clip's embedding is the mean of its frames'
normalised embeddings, normalised again. A class's embedding is open_clip's own prompt ensemble
(`build_zero_shot_classifier`: the mean of its templates' normalised text embeddings, normalised again). Logits are the model's `logit_scale.exp()` times the
cosine similarity, plus its `logit_bias` where it has one (SigLIP).

Weights (`SCORER_WEIGHTS`): `random`; a checkpoint file, or a folder holding one; a pretrained tag open_clip downloads (`openai`,
`laion2b_s34b_b79k`; `open_clip.list_pretrained_tags_by_model(arch)`). An arch given as `local-dir:DIR` or
`hf-hub:ID` carries its own weights (or takes a file, or `random`; one found without weights is refused).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from pipeline.predict.prompts import Prompts
from pipeline.predict.scorers import RANDOM, ScorerLoadError, ScorerSpec, autocast, first_line, seeded, state_sha256

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")


class OpenClipScorer:
    frames = None  # any number of frames per clip

    def __init__(self, spec: ScorerSpec) -> None:
        import open_clip
        import torch
        from PIL import Image

        self.spec, self._image, self._torch = spec, Image, torch
        self.device = torch.device(spec.device)
        schema = spec.name.split(":", 1)[0] if spec.name.startswith(("local-dir:", "hf-hub:")) else None
        weights = spec.weights
        if weights is None and schema is None:
            tags = open_clip.list_pretrained_tags_by_model(spec.name)
            raise ScorerLoadError(f"open_clip:{spec.name}: give its weights with SCORER_WEIGHTS= (--weights): a "
                                  f"checkpoint file, a pretrained tag ({', '.join(tags) or 'none known'}) or random")
        if weights not in (None, RANDOM) and os.path.isdir(weights):
            weights = checkpoint_in(weights, spec.name)
        file = weights if weights not in (None, RANDOM) and (os.sep in weights or os.path.isfile(weights)) else None
        if file is not None and not os.path.isfile(file):
            raise ScorerLoadError(f"{weights}: no such weights file for open_clip:{spec.name}")
        if schema is not None and weights not in (None, RANDOM) and file is None:
            raise ScorerLoadError(f"open_clip:{spec.name}: a {schema}: model takes a weights file or folder, or "
                                  f"random; not the tag {weights!r}")
        tag = weights if weights not in (None, RANDOM) and file is None else None
        try:
            with seeded():
                model, _, self._transform = open_clip.create_model_and_transforms(  # random or a file: no
                    spec.name, pretrained=tag, load_weights=weights is None or tag is not None,  # download of a
                    pretrained_text=weights is None or tag is not None)  # pretrained text tower to overwrite
            if file is not None:  # a checkpoint for the architecture, wherever it came from
                open_clip.load_checkpoint(model, file)
            self._tokenizer = open_clip.get_tokenizer(spec.name)
        except Exception as exc:  # noqa: BLE001 - anything the library raises: the weights or arch do not load
            raise ScorerLoadError(f"open_clip:{spec.name} with weights {weights or 'its own'!r} does not load: "
                                  f"{type(exc).__name__}: {first_line(exc)}") from None
        self.weights_sha256 = state_sha256(model)
        if schema is not None and weights is None and not has_weights(spec.name, self.weights_sha256):
            raise ScorerLoadError(f"open_clip:{spec.name}: no weights found there (open_clip initialised it at random); "
                                  "put the checkpoint beside its open_clip_config.json, or give SCORER_WEIGHTS=random "
                                  "to mean it")
        self.model = model.to(self.device).eval()
        self._classes: dict[str, torch.Tensor] = {}

    def preprocess(self, frames: np.ndarray):
        return self._torch.stack([self._transform(self._image.fromarray(frame)) for frame in frames])

    def classes(self, prompts: Prompts):
        found = self._classes.get(prompts.digest())
        if found is None:  # open_clip's own prompt ensemble: the normalised mean of the normalised templates
            from open_clip import build_zero_shot_classifier

            with autocast(self.spec):
                weights = build_zero_shot_classifier(self.model, self._tokenizer, list(prompts.names),
                                                     list(prompts.templates), num_classes_per_batch=16,
                                                     device=self.device)
            found = self._classes[prompts.digest()] = weights.T.float()
        return found

    def score(self, clips, classes) -> np.ndarray:
        torch = self._torch
        batch, frames = clips.shape[:2]
        with torch.no_grad():
            with autocast(self.spec):
                images = self.model.encode_image(clips.flatten(0, 1).to(self.device, non_blocking=True)).float()
            images = torch.nn.functional.normalize(images, dim=-1).view(batch, frames, -1)
            video = torch.nn.functional.normalize(images.mean(dim=1), dim=-1)
            logits = self.model.logit_scale.exp().float() * video @ classes.T
            bias = getattr(self.model, "logit_bias", None)
            if bias is not None:
                logits = logits + bias.float()
        return logits.cpu().numpy().astype(np.float32)


def has_weights(name: str, loaded_sha256: str) -> bool:
    """Whether a `local-dir:` / `hf-hub:` model came with weights: open_clip only warns when it finds none, and
    initialises it at random. A folder is looked in; a hub model is compared with its random initialisation."""
    if name.startswith("local-dir:"):
        return any(p.suffix in (".safetensors", ".bin", ".pth")  # what open_clip looks for there
                   for p in Path(name.removeprefix("local-dir:")).iterdir())
    import open_clip

    with seeded():
        model = open_clip.create_model(name, load_weights=False)
    return state_sha256(model) != loaded_sha256


def checkpoint_in(folder: str, name: str) -> str:
    """The checkpoint file in a weights folder: the only one, or open_clip's own file where it is there."""
    found = sorted(p for p in Path(folder).iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
    own = [p for p in found if p.name in OPEN_CLIP_FILES]
    if own:
        return str(min(own, key=lambda p: OPEN_CLIP_FILES.index(p.name)))
    if len(found) != 1:
        raise ScorerLoadError(f"{folder}: {'no' if not found else len(found)} checkpoint files for open_clip:{name} "
                              f"({', '.join(p.name for p in found) or 'none of ' + ', '.join(CHECKPOINT_SUFFIXES)}); "
                              "give SCORER_WEIGHTS the file itself")
    return str(found[0])
