"""`xclip:<name or folder>`: transformers' X-CLIP video models (`microsoft/xclip-base-patch32`, or a folder
that `from_pretrained` reads). Frames go through the model's own processor; the logits are the model's
`logits_per_video`, computed as its forward computes them, with the text embeddings made once: a class's text
embedding is the mean of its templates' projected embeddings (with one template, exactly the forward's), then
conditioned on each video by the model's prompt generator.

Weights (`SCORER_WEIGHTS`): none (the name's own, fetched as transformers fetches them), `random` (the
name's config, seeded initialisation), a folder or hub id of weights for the same architecture, or a
`.safetensors` / `.bin` state-dict file.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.predict.prompts import Prompts
from pipeline.predict.scorers import RANDOM, ScorerLoadError, ScorerSpec, autocast, first_line, seeded, state_sha256


class XClipScorer:
    def __init__(self, spec: ScorerSpec) -> None:
        import torch
        from transformers import XCLIPConfig, XCLIPModel, XCLIPProcessor

        self.spec, self._torch = spec, torch
        self.device = torch.device(spec.device)
        weights = spec.weights
        try:
            self.processor = XCLIPProcessor.from_pretrained(spec.name)
            if weights == RANDOM:
                with seeded():
                    model = XCLIPModel(XCLIPConfig.from_pretrained(spec.name))
            elif weights is not None and os.path.isfile(weights):
                model = XCLIPModel(XCLIPConfig.from_pretrained(spec.name))
                model.load_state_dict(_state_dict(weights), strict=True)
            else:
                model = XCLIPModel.from_pretrained(weights or spec.name)
        except Exception as exc:  # noqa: BLE001 - anything the library raises: the model or weights do not load
            raise ScorerLoadError(f"xclip:{spec.name} with weights {weights or 'its own'!r} does not load: "
                                  f"{type(exc).__name__}: {first_line(exc)}") from None
        self.frames = int(model.config.vision_config.num_frames)
        self.weights_sha256 = state_sha256(model)
        self.model = model.to(self.device).eval()
        self._classes: dict[str, torch.Tensor] = {}

    def preprocess(self, frames: np.ndarray):
        return self.processor(videos=[list(frames)], return_tensors="pt")["pixel_values"][0]

    def classes(self, prompts: Prompts):
        found = self._classes.get(prompts.digest())
        if found is None:
            torch = self._torch
            tokens = self.processor.tokenizer(prompts.texts(), padding=True, return_tensors="pt").to(self.device)
            with torch.no_grad(), autocast(self.spec):
                out = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            text = (out if isinstance(out, torch.Tensor) else out.pooler_output).float()
            found = self._classes[prompts.digest()] = text.view(len(prompts.names), len(prompts.templates), -1).mean(1)
        return found

    def score(self, clips, classes) -> np.ndarray:
        """XCLIPModel.forward from its vision tower on, with the class embeddings given."""
        torch, model = self._torch, self.model
        batch, frames, channels, height, width = clips.shape
        with torch.no_grad():
            with autocast(self.spec):
                vision = model.vision_model(pixel_values=clips.reshape(-1, channels, height, width).to(self.device))
                cls_features = model.visual_projection(vision[1]).view(batch, frames, -1)
                video = model.mit(cls_features)[1]
                image = model.prompts_visual_layernorm(vision[0][:, 1:, :]) @ model.prompts_visual_projection
                image = image.view(batch, frames, -1, video.shape[-1]).mean(dim=1)
                text = classes.to(image.dtype).unsqueeze(0).expand(batch, -1, -1)
                text = text + model.prompts_generator(text, image)
            video = torch.nn.functional.normalize(video.float(), dim=-1)
            text = torch.nn.functional.normalize(text.float(), dim=-1)
            logits = torch.einsum("bd,bkd->bk", video, model.logit_scale.exp().float() * text)
        return logits.cpu().numpy().astype(np.float32)


def _state_dict(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
