"""CLIPScore (Hessel et al. 2021) with a `transformers` CLIPModel, as the CVTG-2K protocol reports it.

    CLIPScore(image, prompt) = 2.5 * max(cos(E_img(image), E_txt("A photo depicts " + prompt)), 0)

The text is truncated to the text model's maximum length (77 tokens for OpenAI CLIP). The model
comes from a local directory (what `CLIPModel.save_pretrained` + `CLIPProcessor.save_pretrained`
write) or a hub id such as `openai/clip-vit-large-patch14` where the network allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from varrl.config_checks import at_least, check_device_name, check_ranges
from varrl.device import resolve_device
from varrl.rewards.base import Reward, RewardResult, check_inputs
from varrl.rewards.hf import ModelUnavailable, features, import_transformers, model_location, to_pil

TEXT_PREFIX = "A photo depicts "
CLIP_WEIGHT = 2.5
HOW = ("give a local directory holding a CLIP model and its processor (written by CLIPModel.save_pretrained and "
       "CLIPProcessor.save_pretrained, e.g. a downloaded copy of openai/clip-vit-large-patch14), or a hub id such "
       "as openai/clip-vit-large-patch14 on a machine with network access")


class ClipUnavailable(ModelUnavailable):
    """The CLIP model could not be loaded (missing directory, no network, no transformers)."""


def clip_score_from_embeddings(img_BD: np.ndarray, txt_BD: np.ndarray, weight: float = CLIP_WEIGHT) -> np.ndarray:
    """weight * max(cos(img_b, txt_b), 0) per row; the embeddings need not be normalised."""
    img_BD = np.asarray(img_BD, dtype=np.float64)
    txt_BD = np.asarray(txt_BD, dtype=np.float64)
    cos_B = (img_BD * txt_BD).sum(-1) / (np.linalg.norm(img_BD, axis=-1) * np.linalg.norm(txt_BD, axis=-1))
    return weight * np.maximum(cos_B, 0.0)


class ClipScorer:
    """A loaded CLIP model that embeds images and texts and scores image/prompt pairs."""

    def __init__(self, model, tokenizer, image_processor, device: str = "cpu", batch_size: int = 32):
        self.model = model.eval().to(device)
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.device, self.batch_size = device, batch_size
        self.max_text_len = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def load(cls, path_or_id: str, device: str = "cpu", batch_size: int = 32) -> ClipScorer:
        """Load model, tokenizer and image processor; ClipUnavailable (saying how to provide one) if impossible."""
        where = model_location(path_or_id, "CLIP", HOW, ClipUnavailable)
        transformers = import_transformers("CLIPScore", ClipUnavailable)
        try:
            model = transformers.CLIPModel.from_pretrained(where)
            tokenizer = transformers.AutoTokenizer.from_pretrained(where)
            image_processor = transformers.AutoImageProcessor.from_pretrained(where)
        except (OSError, ValueError) as err:  # what from_pretrained raises for missing files or no network
            raise ClipUnavailable(f"cannot load CLIP model {path_or_id!r} ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''}); {HOW}") from err
        return cls(model, tokenizer, image_processor, resolve_device(device), batch_size)

    def embed_images(self, images) -> np.ndarray:
        """float64 [B, D] image embeddings (projected, not normalised) of uint8 [H, W, 3] images."""
        import torch

        out = []
        pil = to_pil(images)
        for i in range(0, len(pil), self.batch_size):
            pixels = self.image_processor(images=pil[i: i + self.batch_size], return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                emb = features(self.model.get_image_features(pixel_values=pixels.to(self.device)))
            out.append(emb.double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """float64 [B, D] text embeddings, each text truncated to the text model's maximum length."""
        import torch

        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(list(texts[i: i + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_text_len, return_tensors="pt")
            with torch.no_grad():
                emb = features(self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                            attention_mask=tok["attention_mask"].to(self.device)))
            out.append(emb.double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim))

    def score(self, images, prompts: list[str]) -> np.ndarray:
        """float64 [B] CLIPScore of each image against "A photo depicts " + its prompt."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts for {len(images)} images")
        if len(prompts) == 0:
            return np.zeros(0)
        texts = [TEXT_PREFIX + p for p in prompts]
        return clip_score_from_embeddings(self.embed_images(images), self.embed_texts(texts))


@dataclass
class ClipScoreConfig:
    """Settings of the CLIPScore reward."""

    model: str = "openai/clip-vit-large-patch14"
    """local CLIP directory (save_pretrained layout) or a hub id (needs network)"""
    device: str = "cpu"
    """torch device of the CLIP model ('auto': cuda when available)"""
    batch_size: int = 32
    """images per CLIP forward pass"""

    def __post_init__(self) -> None:
        check_device_name(self, "device")
        check_ranges(self, {"batch_size": at_least(1)})


class ClipScoreReward(Reward):
    """score = CLIPScore(image, prompt) in [0, 2.5]; the model loads on the first call."""

    name = "clip_score"

    def __init__(self, config: ClipScoreConfig | None = None):
        self.config = config or ClipScoreConfig()
        self._scorer: ClipScorer | None = None

    def scorer(self) -> ClipScorer:
        if self._scorer is None:  # lazily: loading CLIP takes seconds and gigabytes
            self._scorer = ClipScorer.load(self.config.model, self.config.device, self.config.batch_size)
        return self._scorer

    def __call__(self, images_BHW3: np.ndarray, prompts: list[str], meta: list[dict]) -> RewardResult:
        check_inputs(images_BHW3, prompts, meta)
        return RewardResult(scores=self.scorer().score(list(images_BHW3), [str(p) for p in prompts]))

    def close(self) -> None:
        self._scorer = None
