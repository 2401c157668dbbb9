"""Image-classifier reward: the probability a `transformers` image classifier gives the target class.

The classifier is any directory `AutoModelForImageClassification.save_pretrained` writes, with its
image processor saved beside it (e.g. a downloaded google/vit-base-patch16-224 for ImageNet classes,
whose indices match the class labels of the VAR ImageNet checkpoints).

The target class of each image, first match wins:
1. the fixed `target` setting (a class index, or a label name from the model's id2label);
2. the image's meta dict: key "class_label", "label" or "class" (index or label name);
3. the condition (prompt) itself: an int class label, a string of digits, or a label name.
A condition or meta label equal to the number of classes is the VAR "unconditional" label: the
reward does not apply and scores NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from varrl.config_checks import at_least, check_device_name, check_ranges
from varrl.device import resolve_device
from varrl.rewards.base import Reward, RewardResult, check_inputs
from varrl.rewards.hf import ModelUnavailable, import_transformers, model_location, to_pil

META_KEYS = ("class_label", "label", "class")
HOW = ("give classifier.model = a local directory written by AutoModelForImageClassification.save_pretrained "
       "together with its image processor (e.g. a downloaded copy of google/vit-base-patch16-224)")


class ClassifierUnavailable(ModelUnavailable):
    """The classifier could not be loaded."""


def softmax_prob(logits_BC: np.ndarray, target_B: np.ndarray, log: bool = False) -> np.ndarray:
    """softmax(logits)[b, target_b] (or its log), computed stably in float64."""
    z_BC = np.asarray(logits_BC, dtype=np.float64)
    z_BC = z_BC - z_BC.max(-1, keepdims=True)
    logp_BC = z_BC - np.log(np.exp(z_BC).sum(-1, keepdims=True))
    picked_B = logp_BC[np.arange(len(target_B)), np.asarray(target_B, dtype=np.int64)]
    return picked_B if log else np.exp(picked_B)


def class_index(value, label2id: dict[str, int], num_classes: int, where: str) -> int:
    """A class label (int, digit string, or label name, case-insensitive) as an index in [0, num_classes)."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: a class label must be an int or a label name, got {value!r}")
    if isinstance(value, (int, np.integer)):
        index = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        index = int(value.strip())
    elif isinstance(value, str) and value.strip().lower() in label2id:
        index = label2id[value.strip().lower()]
    else:
        names = ", ".join(list(label2id)[:5])
        raise ValueError(f"{where}: {value!r} is neither a class index nor one of the classifier's labels "
                         f"({names}, ...); set classifier.target or pass integer class labels")
    if not 0 <= index < num_classes:
        raise ValueError(f"{where}: class {index} is outside the classifier's {num_classes} classes")
    return index


@dataclass
class ClassifierConfig:
    """Settings of the image-classifier reward."""

    model: str = ""
    """local directory of a transformers image classifier (save_pretrained layout, with its image processor)"""
    target: int | str | None = None
    """fixed target class (index or label name) for every image; None: from each image's meta or condition"""
    log_prob: bool = False
    """score log p(target) instead of p(target)"""
    device: str = "cpu"
    """torch device of the classifier ('auto': cuda when available)"""
    batch_size: int = 32
    """images per forward pass"""

    def __post_init__(self) -> None:
        check_device_name(self, "device")
        check_ranges(self, {"batch_size": at_least(1)})


class ClassifierReward(Reward):
    """score = p(target class | image) under the classifier (log p with log_prob); loads on first call."""

    name = "classifier"

    def __init__(self, config: ClassifierConfig | None = None):
        self.config = config or ClassifierConfig()
        self._model = self._processor = None

    def _load(self):
        if self._model is None:  # lazily: building the reward must not need the model files
            where = model_location(self.config.model, "image classifier", HOW, ClassifierUnavailable)
            transformers = import_transformers("the classifier reward", ClassifierUnavailable)
            try:
                model = transformers.AutoModelForImageClassification.from_pretrained(where)
                self._processor = transformers.AutoImageProcessor.from_pretrained(where)
            except (OSError, ValueError) as err:
                raise ClassifierUnavailable(f"cannot load image classifier {self.config.model!r} "
                                            f"({type(err).__name__}); {HOW}") from err
            self._model = model.eval().to(resolve_device(self.config.device))
        return self._model, self._processor

    def targets(self, prompts: list, meta: list[dict]) -> np.ndarray:
        """int64 [B] target class per image (see the module docstring); -1 for the unconditional label."""
        model, _ = self._load()
        num_classes = int(model.config.num_labels)
        label2id = {str(name).lower(): int(i) for i, name in model.config.id2label.items()}
        out = []
        for i, (prompt, m) in enumerate(zip(prompts, meta)):
            if self.config.target is not None:
                value, where = self.config.target, "classifier.target"
            else:
                key = next((k for k in META_KEYS if m.get(k) is not None), None)
                value, where = (m[key], f"image {i} meta[{key!r}]") if key else (prompt, f"image {i} condition")
                if str(value).strip() == str(num_classes):
                    out.append(-1)
                    continue
            out.append(class_index(value, label2id, num_classes, where))
        return np.array(out, dtype=np.int64)

    def logits(self, images) -> np.ndarray:
        """float64 [B, C] classifier logits of uint8 [H, W, 3] images."""
        import torch

        model, processor = self._load()
        device = next(model.parameters()).device
        pil, out = to_pil(images), []
        for i in range(0, len(pil), self.config.batch_size):
            pixels = processor(images=pil[i: i + self.config.batch_size], return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                out.append(model(pixel_values=pixels.to(device)).logits.double().cpu().numpy())
        return np.concatenate(out)

    def __call__(self, images_BHW3: np.ndarray, prompts: list, meta: list[dict]) -> RewardResult:
        check_inputs(images_BHW3, prompts, meta)
        target_B = self.targets(prompts, meta)
        logits_BC = self.logits(list(images_BHW3))
        applies_B = target_B >= 0
        safe_B = np.where(applies_B, target_B, 0)
        prob_B = np.where(applies_B, softmax_prob(logits_BC, safe_B), np.nan)
        scores = prob_B
        if self.config.log_prob:
            scores = np.where(applies_B, softmax_prob(logits_BC, safe_B, log=True), np.nan)
        top1_B = np.where(applies_B, (logits_BC.argmax(-1) == target_B).astype(float), np.nan)
        return RewardResult(scores=scores, components={"prob": prob_B, "top1": top1_B})

    def close(self) -> None:
        self._model = self._processor = None
