"""HPSv3: resize rule and input text by hand; a tiny random Qwen2-VL + head in the released key
layout, loaded through the real path and checked against transformers' own multimodal forward."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from tinyhf import byte_tokenizer  # noqa: E402

from varrl.rewards import RewardConfig, build_reward  # noqa: E402
from varrl.rewards.hpsv3 import (  # noqa: E402
    REWARD_TOKEN,
    HpsUnavailable,
    HpsV3Config,
    HpsV3Scorer,
    backbone_key,
    hps_resize,
    hps_text,
)

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]


def test_resize_by_hand():
    # Square: round(128/28)=5 -> 140x140 is below 200,704 px, so scale by sqrt(200704/128^2) = 3.5: 448.
    assert hps_resize(128, 128) == (448, 448)
    assert hps_resize(512, 512) == (448, 448)
    # 1024x768: 1036x756 is above, beta = sqrt(786432/200704) = 1.9795; 1024/beta = 517.3 -> 504,
    # 768/beta = 387.98 -> 364 (floors to multiples of 28).
    assert hps_resize(1024, 768) == (504, 364)
    # 64x96: 56x84 below, beta = sqrt(200704/6144) = 5.7155; 365.8 -> 392, 548.7 -> 560 (ceilings).
    assert hps_resize(64, 96) == (392, 560)
    with pytest.raises(ValueError, match="aspect ratio"):
        hps_resize(10, 2100)


def test_input_text_layout():
    text = hps_text("a red fox")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|><|vision_end|>\nYou are tasked with evaluating")
    assert ("Textual prompt - a red fox\n\n\n\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
            in text)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert text.count(REWARD_TOKEN) == 1 and text.count("<|image_pad|>") == 1


def test_checkpoint_key_mapping():
    assert backbone_key("visual.blocks.0.attn.qkv.weight") == "visual.blocks.0.attn.qkv.weight"
    assert backbone_key("model.layers.0.mlp.up_proj.weight") == "language_model.layers.0.mlp.up_proj.weight"
    assert backbone_key("model.embed_tokens.weight") == "language_model.embed_tokens.weight"
    assert backbone_key("model.visual.merger.ln_q.bias") == "visual.merger.ln_q.bias"
    assert backbone_key("model.language_model.norm.weight") == "language_model.norm.weight"
    assert backbone_key("lm_head.weight") is None


def _tiny_head(hidden: int, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    head = nn.Sequential(nn.Linear(hidden, 8), nn.ReLU(), nn.Dropout(0.05), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    return {f"rm_head.{k}": v.detach() * 3 for k, v in head.state_dict().items()}


@pytest.fixture(scope="module")
def hps_files(tmp_path_factory):
    """`full`: backbone dir without weights + a released-layout checkpoint; `weights`: a saved model
    whose vocabulary already holds the reward token (for the head-only checkpoint)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    except ImportError:  # transformers 4.x: the PIL-based processor has the plain name
        from transformers import Qwen2VLImageProcessor as Qwen2VLImageProcessorPil

    root = tmp_path_factory.mktemp("hps")
    tok = byte_tokenizer(QWEN_SPECIAL, eos="<|im_end|>", pad="<|endoftext|>", max_length=8192)
    ids = dict(zip(QWEN_SPECIAL, tok.convert_tokens_to_ids(QWEN_SPECIAL)))
    vocab = len(tok) + 1  # + <|Reward|>, as the released embedding matrix
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"])
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg)
    with torch.no_grad():  # larger weights: sharper attention, so the score depends on image and prompt
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    weights = root / "weights"
    model.save_pretrained(weights)  # writes the 4.45 key layout

    full = root / "Qwen2-VL-tiny"
    full.mkdir()
    config = json.loads((weights / "config.json").read_text())
    config.setdefault("text_config", {})["vocab_size"] = vocab + 7  # the stock config pads the vocabulary
    (full / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(full)
    Qwen2VLImageProcessorPil().save_pretrained(full)
    state = load_file(str(weights / "model.safetensors"))
    save_file({**state, **_tiny_head(32, seed=1)}, str(root / "HPSv3.safetensors"))

    tok.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    tok.save_pretrained(weights)
    Qwen2VLImageProcessorPil().save_pretrained(weights)
    torch.save(_tiny_head(32, seed=1), root / "head.pt")
    return {"root": root, "backbone": full, "checkpoint": root / "HPSv3.safetensors", "weights": weights,
            "head": root / "head.pt"}


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.integers(0, 256, (96, 64, 3), dtype=np.uint8)]


def test_scores_match_transformers_forward(hps_files):
    import torch
    from PIL import Image
    from transformers import Qwen2VLModel

    scorer = HpsV3Scorer.load(str(hps_files["backbone"]), str(hps_files["checkpoint"]), device="cpu")
    prompts = ["a red fox in the snow", "x"]
    out = scorer.predict(_images(), prompts)
    assert out.shape == (2, 2) and out.dtype == np.float64
    assert abs(out[0, 0] - out[1, 0]) > 0.01  # the inputs matter, so the comparisons below can fail

    # Reference: transformers' own loading and multimodal forward (which scatters the image features
    # itself), given the plain positions HPSv3 uses, then the head at the reward token.
    ref_model = Qwen2VLModel.from_pretrained(hps_files["weights"]).eval()
    ref_head = torch.nn.Sequential(torch.nn.Linear(32, 8), torch.nn.ReLU(), torch.nn.Dropout(0.05),
                                   torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    ref_head.load_state_dict({k[len("rm_head."):]: v for k, v in _tiny_head(32, seed=1).items()})
    for i in range(2):
        ids, mask, pixels, grid = scorer._inputs(_images()[i: i + 1], prompts[i: i + 1])
        assert grid.tolist() == [[[1, 32, 32]], [[1, 40, 28]]][i]  # patches of 14 px: 448x448 and 560x392
        size = [(448, 448), (392, 560)][i]  # PIL (width, height), bicubic as the reference
        want_px = scorer.image_processor(images=[Image.fromarray(_images()[i]).resize(size, Image.BICUBIC)],
                                         return_tensors="pt")["pixel_values"]
        assert torch.equal(pixels, want_px)
        pos = torch.arange(ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        with torch.no_grad():
            hidden = ref_model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid,
                               position_ids=pos).last_hidden_state
            want = ref_head(hidden[ids == scorer.reward_id]).double().numpy()[0]
        np.testing.assert_allclose(out[i], want, rtol=1e-4, atol=1e-5)
    # Batched (right-padded) and one at a time agree.
    np.testing.assert_allclose(scorer.score(_images()[1:], prompts[1:]), out[1:, 0], rtol=1e-4, atol=1e-5)


def test_head_only_checkpoint_uses_backbone_weights(hps_files):
    full = HpsV3Scorer.load(str(hps_files["backbone"]), str(hps_files["checkpoint"]), device="cpu")
    head_only = HpsV3Scorer.load(str(hps_files["weights"]), str(hps_files["head"]), device="cpu")
    np.testing.assert_allclose(head_only.score(_images(), ["a", "b"]), full.score(_images(), ["a", "b"]), rtol=1e-5)


def test_bad_files_give_clear_errors(hps_files, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    backbone, ckpt = str(hps_files["backbone"]), str(hps_files["checkpoint"])
    with pytest.raises(HpsUnavailable, match="backbone directory"):
        HpsV3Scorer.load(str(tmp_path / "nope"), ckpt)
    with pytest.raises(HpsUnavailable, match="HPSv3.safetensors"):
        HpsV3Scorer.load(backbone, str(tmp_path / "missing.safetensors"))
    state = load_file(ckpt)
    save_file({k: v for k, v in state.items() if k != "rm_head.5.weight"}, str(tmp_path / "nohead.safetensors"))
    with pytest.raises(HpsUnavailable, match=r"rm_head\.5\.weight"):
        HpsV3Scorer.load(backbone, str(tmp_path / "nohead.safetensors"))
    state["model.norm.weight"] = torch.ones(31)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(HpsUnavailable, match="does not fit the Qwen2-VL backbone.*norm.weight"):
        HpsV3Scorer.load(backbone, str(tmp_path / "bad.safetensors"))
    # A head-only file needs the backbone's own weights, which this directory lacks.
    with pytest.raises(HpsUnavailable, match="cannot load the HPSv3 backbone"):
        HpsV3Scorer.load(backbone, str(hps_files["head"]))


def test_reward_is_lazy_and_reports_sigma(hps_files):
    cfg = RewardConfig(weights={"hpsv3": 1.0}, hpsv3=HpsV3Config(backbone=str(hps_files["backbone"]),
                                                                 checkpoint=str(hps_files["checkpoint"]), device="cpu"))
    reward = build_reward(cfg)
    images = np.stack([_images()[0], _images(1)[0]])
    res = reward(images, ["a", "b"], [{}, {}])
    direct = HpsV3Scorer.load(str(hps_files["backbone"]), str(hps_files["checkpoint"]), device="cpu")
    np.testing.assert_allclose(res.scores, direct.score(list(images), ["a", "b"]), rtol=1e-6)
    assert res.components["hpsv3/sigma"].shape == (2,)


def test_benchmark_generates_scores_and_rescores_the_folder(hps_files, tmp_path):
    from PIL import Image

    from varrl.eval.hpsv3_bench import run_hpsv3_benchmark

    for cat, prompts in (("Animals", "a fox\na heron\n"), ("Food", "a bowl of ramen\n")):
        (tmp_path / "data" / cat).mkdir(parents=True)
        (tmp_path / "data" / cat / "prompts.txt").write_text(prompts)
    scorer = HpsV3Scorer.load(str(hps_files["backbone"]), str(hps_files["checkpoint"]), device="cpu")

    def generate(prompts: list[str], b: int) -> list[np.ndarray]:  # a deterministic "generator"
        rng = np.random.default_rng(b)
        return [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in prompts]

    gen = run_hpsv3_benchmark(generate, tmp_path / "data", tmp_path / "gen", scorer, batch=2, name="noise")
    rows = [json.loads(x) for x in (tmp_path / "gen" / "scores.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == ["00000", "00001", "00000"] and gen["scored"] == 3
    animals = np.mean([r["hpsv3"] for r in rows[:2]])
    assert gen["overall"] == pytest.approx((animals + rows[2]["hpsv3"]) / 2)
    assert (tmp_path / "gen" / "Animals" / "00001.txt").read_text() == "a heron"
    assert "| noise |" in (tmp_path / "gen" / "metrics.md").read_text()

    # Score the saved folder as another generator's images: same numbers; a missing and a broken file are reported.
    (tmp_path / "gen" / "Animals" / "00001.png").unlink()
    (tmp_path / "gen" / "Food" / "00000.png").write_bytes(b"not a png")
    again = run_hpsv3_benchmark(tmp_path / "gen", tmp_path / "data", tmp_path / "again", scorer)
    assert again["missing"] == ["Animals/00001"] and again["unreadable"] == ["Food/00000"]
    assert again["overall"] == pytest.approx(rows[0]["hpsv3"], rel=1e-5)
    assert Image.open(tmp_path / "gen" / "Animals" / "00000.png").size == (48, 48)


def test_benchmark_with_a_varrl_policy(hps_files, tiny_policy, tmp_path):
    from varrl.eval.hpsv3_bench import policy_generator, run_hpsv3_benchmark
    from varrl.policy.sampler import SamplerConfig

    (tmp_path / "data" / "Design").mkdir(parents=True)
    (tmp_path / "data" / "Design" / "prompts.txt").write_text("a poster that says 'HI'\na logo\n")
    scorer = HpsV3Scorer.load(str(hps_files["backbone"]), str(hps_files["checkpoint"]), device="cpu")
    gen = policy_generator(tiny_policy, SamplerConfig(), seed=3)
    a = run_hpsv3_benchmark(gen, tmp_path / "data", tmp_path / "a", scorer, batch=1)
    b = run_hpsv3_benchmark(gen, tmp_path / "data", tmp_path / "b", scorer, batch=1)
    assert a["scored"] == 2 and a["overall"] == pytest.approx(b["overall"])  # seeded per batch
    assert (tmp_path / "a" / "Design" / "00001.png").is_file()


def test_bfloat16_backbone_agrees_with_float32(hps_files):
    import torch

    fp32 = HpsV3Scorer.load(str(hps_files["backbone"]), str(hps_files["checkpoint"]), device="cpu")
    bf16 = HpsV3Scorer.load(str(hps_files["backbone"]), str(hps_files["checkpoint"]), device="cpu", dtype="bfloat16")
    assert bf16.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert bf16.head[0].weight.dtype == torch.float32  # the head stays fp32, as released
    assert torch.get_default_dtype() == torch.float32  # restored after building
    want = fp32.score(_images(), ["a", "b"])
    assert abs(want[0] - want[1]) > 0.1  # the tolerance below is small against the spread of the scores
    np.testing.assert_allclose(bf16.score(_images(), ["a", "b"]), want, atol=0.05)


def test_varrl_eval_hpsv3_cli(hps_files, tiny_model_dir, tmp_path, capsys):
    from varrl.cli import main

    (tmp_path / "data" / "Plants").mkdir(parents=True)
    (tmp_path / "data" / "Plants" / "p1.txt").write_text("a fern")
    hps = ["--hpsv3-backbone", str(hps_files["backbone"]), "--hpsv3-checkpoint", str(hps_files["checkpoint"])]
    rc = main(["eval", "--benchmark", "hpsv3", "--data", str(tmp_path / "data"), "--checkpoint", str(tiny_model_dir),
               "--out", str(tmp_path / "out"), "--device", "cpu", *hps])
    assert rc == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["scored"] == 1 and list(metrics["by_category"]) == ["Plants"]
    assert "| Model | Overall | Characters |" in capsys.readouterr().out
    assert (tmp_path / "out" / "Plants" / "p1.png").is_file()
    # Missing model files: one line, exit code 2.
    rc = main(["eval", "--benchmark", "hpsv3", "--data", str(tmp_path / "data"), "--images", str(tmp_path / "out"),
               "--hpsv3-backbone", str(tmp_path / "none"), "--hpsv3-checkpoint", "x.safetensors"])
    assert rc == 2 and "Qwen2-VL-7B-Instruct" in capsys.readouterr().err


def test_pickled_code_in_a_pth_checkpoint_is_refused(hps_files, tmp_path):
    import pickle

    class Code:  # unpickling this would run code: weights_only loading must refuse it
        def __reduce__(self):
            return (print, ("ran",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"rm_head.0.weight": Code()}, f, protocol=2)
    with pytest.raises(HpsUnavailable, match="as tensors"):
        HpsV3Scorer.load(str(hps_files["backbone"]), str(tmp_path / "evil.pth"))
