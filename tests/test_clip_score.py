"""CLIPScore: the formula by hand, a tiny random CLIP saved and loaded through the real path, errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from tinyhf import byte_tokenizer  # noqa: E402

from varrl.rewards import RewardConfig, build_reward  # noqa: E402
from varrl.rewards.clip_score import (  # noqa: E402
    TEXT_PREFIX,
    ClipScoreConfig,
    ClipScorer,
    ClipScoreReward,
    ClipUnavailable,
    clip_score_from_embeddings,
)

MAX_LEN = 24  # text positions: "<bos>" + 22 bytes + "<eos>"; "A photo depicts " takes 16 of the 22


def _image_processor():
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Proc
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as Proc
    return Proc(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    import torch
    from transformers import CLIPConfig, CLIPModel

    tok = byte_tokenizer(["<|startoftext|>", "<|endoftext|>"], bos="<|startoftext|>", eos="<|endoftext|>",
                         pad="<|endoftext|>", max_length=MAX_LEN)
    ids = tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=MAX_LEN, bos_token_id=ids[0],
                         eos_token_id=ids[1], pad_token_id=ids[1]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    _image_processor().save_pretrained(path)
    return path


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8) for i in range(n)]


def test_formula_by_hand():
    img = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    txt = np.array([[1.0, 1.0], [-1.0, 0.0], [4.0, 3.0]])
    # cos = 1/sqrt(2), -1 (clipped to 0), 24/25
    np.testing.assert_allclose(clip_score_from_embeddings(img, txt), [2.5 / np.sqrt(2), 0.0, 2.4], rtol=1e-12)


def test_scores_match_a_manual_cosine(clip_dir):
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    scorer = ClipScorer.load(str(clip_dir), batch_size=2)  # batches of 2 over 3 images: the split must not matter
    images, prompts = _images(3), ["a red fox", "x", "a sign that says 'OPEN'"]
    got = scorer.score(images, prompts)
    assert got.dtype == np.float64 and got.shape == (3,)

    # Independently: the model's own forward pass returns normalised embeddings of both towers.
    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok, proc = AutoTokenizer.from_pretrained(clip_dir), AutoImageProcessor.from_pretrained(clip_dir)
    from PIL import Image

    text = tok([TEXT_PREFIX + p for p in prompts], padding=True, truncation=True, max_length=MAX_LEN,
               return_tensors="pt")
    pixels = proc(images=[Image.fromarray(i) for i in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
    cos = (out.image_embeds * out.text_embeds).sum(-1).double().numpy()
    np.testing.assert_allclose(got, 2.5 * np.maximum(cos, 0.0), rtol=1e-5, atol=1e-6)
    assert (got >= 0).all() and (got <= 2.5).all()


def test_long_prompts_are_truncated_to_the_text_length(clip_dir):
    scorer = ClipScorer.load(str(clip_dir))
    img = _images(1)
    # 22 text bytes fit: the prefix (16) + the first 6 prompt characters.
    a = scorer.score(img, ["abcdef" + "x" * 200])
    b = scorer.score(img, ["abcdef" + "y" * 200])
    c = scorer.score(img, ["abcdeZ" + "x" * 200])
    assert a[0] == pytest.approx(b[0], abs=1e-6)
    assert a[0] != pytest.approx(c[0], abs=1e-6)


def test_missing_model_says_how_to_provide_one(tmp_path):
    for bad in (str(tmp_path / "no-such-clip"), "./nope/deeper", ""):
        with pytest.raises(ClipUnavailable, match="save_pretrained"):
            ClipScorer.load(bad)
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ClipUnavailable, match="not a model directory"):
        ClipScorer.load(str(tmp_path / "file.bin"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClipUnavailable, match="cannot load CLIP model"):
        ClipScorer.load(str(empty))
    assert issubclass(ClipUnavailable, FileNotFoundError)  # the CLI reports it as one line


def test_reward_loads_lazily_and_scores(clip_dir, tmp_path):
    lazy = ClipScoreReward(ClipScoreConfig(model=str(tmp_path / "missing")))  # nothing loads yet
    images = np.stack([i[:32, :32] for i in _images(2)])
    with pytest.raises(ClipUnavailable):
        lazy(images, ["a", "b"], [{}, {}])

    cfg = RewardConfig(weights={"clip_score": 1.0}, clip_score=ClipScoreConfig(model=str(clip_dir)))
    with build_reward(cfg) as reward:
        res = reward(images, ["a cat", "a dog"], [{}, {}])
    direct = ClipScorer.load(str(clip_dir)).score(list(images), ["a cat", "a dog"])
    np.testing.assert_allclose(res.scores, direct, rtol=1e-9)
    np.testing.assert_allclose(res.components["clip_score"], direct, rtol=1e-9)
