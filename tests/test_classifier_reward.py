"""Image-classifier reward: probabilities by hand, a tiny random ViT saved and loaded, target sources."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from varrl.rewards import RewardConfig, build_reward  # noqa: E402
from varrl.rewards.classifier import (  # noqa: E402
    ClassifierConfig,
    ClassifierReward,
    ClassifierUnavailable,
    class_index,
    softmax_prob,
)

LABELS = {0: "cat", 1: "dog", 2: "red fox"}


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    try:
        from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil as Proc
    except ImportError:  # transformers 4.x
        from transformers import ViTImageProcessor as Proc
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    torch.manual_seed(0)
    model = ViTForImageClassification(cfg)
    with torch.no_grad():  # a larger head spreads the logits, so the probabilities differ clearly
        model.classifier.weight.mul_(30.0)
    path = tmp_path_factory.mktemp("vit") / "tiny-vit"
    model.save_pretrained(path)
    Proc(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 40, 40, 3), dtype=np.uint8)


def test_probabilities_by_hand():
    logits = np.array([[0.0, np.log(2.0), np.log(5.0)], [1000.0, 1000.0, 0.0]])  # softmax: 1/8 2/8 5/8 ; 1/2 1/2 0
    np.testing.assert_allclose(softmax_prob(logits, np.array([2, 0])), [5 / 8, 0.5], rtol=1e-12)
    np.testing.assert_allclose(softmax_prob(logits, np.array([1, 1]), log=True), [np.log(2 / 8), np.log(0.5)])


def test_class_labels_from_every_source():
    label2id = {"cat": 0, "dog": 1, "red fox": 2}
    assert class_index(2, label2id, 3, "x") == 2
    assert class_index(np.int64(1), label2id, 3, "x") == 1
    assert class_index(" 0 ", label2id, 3, "x") == 0
    assert class_index("Red Fox", label2id, 3, "x") == 2
    with pytest.raises(ValueError, match="outside the classifier's 3 classes"):
        class_index(3, label2id, 3, "x")
    with pytest.raises(ValueError, match="neither a class index nor one of"):
        class_index("zebra", label2id, 3, "image 0 condition")
    with pytest.raises(ValueError, match="must be an int"):
        class_index(True, label2id, 3, "x")


def test_reward_matches_the_model_softmax(vit_dir):
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, ViTForImageClassification

    images = _images(4)
    reward = ClassifierReward(ClassifierConfig(model=str(vit_dir), batch_size=3))
    # Conditions as the class-conditional policy gives them (ints), a digit string, a label name,
    # and a meta class label that wins over its prompt.
    prompts, meta = [0, "1", "red fox", 0], [{}, {}, {}, {"class_label": 1}]
    res = reward(images, prompts, meta)
    np.testing.assert_array_equal(reward.targets(prompts, meta), [0, 1, 2, 1])

    model = ViTForImageClassification.from_pretrained(vit_dir).eval()
    pixels = AutoImageProcessor.from_pretrained(vit_dir)(images=[Image.fromarray(i) for i in images],
                                                          return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = torch.softmax(model(pixel_values=pixels).logits.double(), -1).numpy()
    want = probs[np.arange(4), [0, 1, 2, 1]]
    np.testing.assert_allclose(res.scores, want, rtol=1e-6)
    np.testing.assert_allclose(res.components["prob"], want, rtol=1e-6)
    np.testing.assert_array_equal(res.components["top1"], (probs.argmax(-1) == [0, 1, 2, 1]).astype(float))
    assert want.max() - want.min() > 0.05  # the check above is not vacuous

    fixed = ClassifierReward(ClassifierConfig(model=str(vit_dir), target="dog", log_prob=True))
    np.testing.assert_allclose(fixed(images, prompts, meta).scores, np.log(probs[:, 1]), rtol=1e-6)

    # Label 3 = the number of classes: VAR's unconditional label, to which the reward does not apply.
    res = reward(images[:2], ["3", 2], [{}, {}])
    assert np.isnan(res.scores[0]) and np.isnan(res.components["top1"][0])
    assert res.scores[1] == pytest.approx(probs[1, 2], rel=1e-6)


def test_missing_model_and_bad_condition(vit_dir, tmp_path):
    images = _images(1)
    with pytest.raises(ClassifierUnavailable, match="save_pretrained"):
        ClassifierReward(ClassifierConfig(model=str(tmp_path / "none")))(images, [0], [{}])
    with pytest.raises(ClassifierUnavailable, match="no image classifier model given"):
        ClassifierReward()(images, [0], [{}])
    cfg = RewardConfig(weights={"classifier": 1.0}, classifier=ClassifierConfig(model=str(vit_dir)))
    with pytest.raises(ValueError, match="image 0 condition"):
        build_reward(cfg)(images, ["a photo of a zebra"], [{}])
