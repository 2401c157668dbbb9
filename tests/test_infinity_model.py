"""The Infinity transformer: schedules, 2-D RoPE by hand, teacher forcing == cached sampling, the
text path, presets, and strict loading of the released file layouts."""

import math

import pytest
import torch
from tinyinfinity import build_tiny_infinity, write_tiny_infinity

from varrl.checkpoint import CheckpointError
from varrl.models.infinity.blocks import apply_rope, rope_angles, rope_positions
from varrl.models.infinity.files import (
    build_infinity,
    infer_infinity_config,
    is_infinity_path,
    read_infinity_state_dict,
)
from varrl.models.infinity.schedules import ScheduleError, infinity_grids, infinity_schedule, rope_grid, template_ratio
from varrl.models.infinity.transformer import Infinity, InfinityConfig, infinity_preset

GRIDS = ((1, 1), (2, 2), (3, 3))


# -- schedules ----------------------------------------------------------------------------------------
def test_square_schedules_and_their_resolutions():
    s = infinity_schedule("0.06M")
    assert [h for h, _ in s.grids] == [1, 2, 4, 6, 8, 12, 16] and s.image_size == 256
    big = infinity_schedule("1M")
    assert big.num_steps == 13 and big.final_grid == (64, 64) and big.image_size == 1024
    assert big.resolve_step("256px") == 7 and big.resolve_step("512px") == 10
    assert infinity_schedule("256px") == s and infinity_schedule("0.25M").image_size == 512


def test_aspect_ratios_pick_the_nearest_template():
    assert template_ratio(1.0) == 1.0 and template_ratio(0.55) == 0.571 and template_ratio(2.2) == 2.0
    assert template_ratio(10.0) == 3.0
    tall, wide = infinity_schedule("1M", 2.0), infinity_schedule("1M", 0.5)
    assert tall.final_grid == (90, 45) and (tall.image_size, tall.width_px) == (1440, 720)
    assert wide.final_grid == (45, 90) and wide.grids == tuple((w, h) for h, w in tall.grids)
    # step 7 covers about 256x256 px at every ratio, and is named so
    assert tall.grids[6] == (22, 11) and tall.resolve_step("256px") == 7 and wide.resolve_step("1024px") == 13
    assert rope_grid(0.5) == (45, 90) and rope_grid(1.25) == (70, 56)
    assert infinity_grids("0.06M", 1.333)[-1] == (20, 15)
    with pytest.raises(ScheduleError, match="0.06M"):
        infinity_schedule("2M")
    with pytest.raises(ScheduleError, match="positive"):
        template_ratio(0)


# -- RoPE by hand ---------------------------------------------------------------------------------------
def test_rope_positions_scale_to_the_template_and_round_half_to_even():
    assert rope_positions(4, 64).tolist() == [0, 16, 32, 48]
    assert rope_positions(6, 64).tolist() == [0, 11, 21, 32, 43, 53]  # 10.67, 21.33, 42.67, 53.33
    p = rope_positions(28, 70)  # 2.5 per cell: 2.5 -> 2, 7.5 -> 8 (half to even, as the release)
    assert p[1].item() == 2 and p[3].item() == 8


def test_rope_rotates_row_pairs_by_row_and_column_pairs_by_column():
    # head width 8: 4 pairs; pairs 0,1 turn with the row, 2,3 with the column, at frequencies 1 and 1/100
    ang = rope_angles(8, ((2, 2),), (2, 2))  # positions = indices on a 2x2 template
    assert torch.allclose(ang[1], torch.tensor([0.0, 0.0, 1.0, 0.01]))  # token 1: row 0, column 1
    assert torch.allclose(ang[3], torch.tensor([1.0, 0.01, 1.0, 0.01]))  # token 3: row 1, column 1
    x = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 8)
    a = ang[2:3]  # row 1, column 0
    out = apply_rope(x, a.cos(), a.sin()).flatten()
    want = [math.cos(1), math.sin(1), -math.sin(0.01), math.cos(0.01), 1.0, 0.0, 0.0, 0.0]
    assert torch.allclose(out, torch.tensor(want), atol=1e-6)


def test_rope_preserves_norms_and_needs_a_head_width_divisible_by_4():
    ang = rope_angles(16, GRIDS, (3, 3))
    x = torch.randn(2, 3, ang.shape[0], 16)
    assert torch.allclose(apply_rope(x, ang.cos(), ang.sin()).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_angles(6, GRIDS, (3, 3))


# -- the transformer ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return build_tiny_infinity()


def context(model, B=2, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, T, model.cfg.text_dim, generator=g)
    return model.encode_text(feats, torch.ones(B, T, dtype=torch.bool))


def test_teacher_forcing_equals_scale_by_scale_sampling(model):
    ctx = context(model)
    inputs = torch.randn(2, 13, model.cfg.bits)
    with torch.no_grad():
        full = model(ctx, inputs, GRIDS, (3, 3))
        lay, caches, parts = model.layout(GRIDS, (3, 3), "cpu"), model.new_cache(), []
        for k in range(3):
            x_in = None if k == 0 else inputs[:, lay["offsets"][k] - 1: lay["offsets"][k + 1] - 1]
            x = model.embed(ctx, x_in, lay, k, k + 1)
            parts.append(model.logits(model.run_blocks(x, ctx, lay, k, k + 1, 0, model.cfg.depth, caches), ctx))
    assert full.shape == (2, 14, 2 * model.cfg.bits)
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-5


def test_attention_is_block_causal(model):
    ctx = context(model)
    inputs = torch.randn(2, 13, model.cfg.bits)
    changed = inputs.clone()
    changed[:, 4:] += 1.0  # step 3's inputs (tokens 5..13 of the sequence)
    with torch.no_grad():
        a, b = model(ctx, inputs, GRIDS, (3, 3)), model(ctx, changed, GRIDS, (3, 3))
    assert torch.equal(a[:, :5], b[:, :5]) and not torch.allclose(a[:, 5:], b[:, 5:])


def test_masked_text_tokens_do_not_count(model):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(1, 4, model.cfg.text_dim, generator=g)
    padded = torch.cat((feats, torch.randn(1, 3, model.cfg.text_dim, generator=g) * 9), dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    with torch.no_grad():
        a = model.encode_text(feats, torch.ones(1, 4, dtype=torch.bool))
        b = model.encode_text(padded, mask)
        inputs = torch.randn(1, 4, model.cfg.bits)
        la, lb = model(a, inputs, GRIDS[:2], (3, 3)), model(b, inputs, GRIDS[:2], (3, 3))
    assert torch.allclose(a["cond"], b["cond"], atol=1e-6) and torch.allclose(la, lb, atol=1e-5)


def test_unconditional_text_is_the_first_len_rows_of_cfg_uncond(model):
    feats, mask = model.uncond_text([3, 5])
    assert feats.shape == (2, 5, model.cfg.text_dim) and mask.sum(1).tolist() == [3, 5]
    assert torch.equal(feats[0, :3], model.cfg_uncond[:3]) and torch.equal(feats[1], model.cfg_uncond[:5])
    with pytest.raises(ValueError, match="exceeds"):
        model.uncond_text([model.cfg.text_maxlen + 1])


@pytest.mark.parametrize("name,billions", [("infinity_125m", 0.125), ("infinity_2b", 2.2), ("infinity_8b", 8.4)])
def test_presets_have_the_released_sizes(name, billions):
    with torch.device("meta"):
        m = Infinity(infinity_preset(name))
    assert abs(sum(p.numel() for p in m.parameters()) / 1e9 - billions) < 0.05
    assert m.head.out_features == 2 * m.cfg.bits and infer_infinity_config(m.state_dict(), name) == m.cfg


# -- files ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", [".pth", ".safetensors", "shards"])
def test_released_layouts_load_back_strictly(tmp_path, layout, model):
    path = write_tiny_infinity(tmp_path, layout)
    assert is_infinity_path(path)
    sd = read_infinity_state_dict(path)
    assert any(k.startswith("block_chunks.1.module.1.sa.") for k in sd)
    loaded = build_infinity(sd, str(path))
    assert loaded.cfg == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_flat_block_layout_is_read_too(tmp_path):
    path = write_tiny_infinity(tmp_path, ".safetensors", block_chunks=1)
    sd = read_infinity_state_dict(path)
    assert "blocks.3.ca.mat_kv.weight" in sd and build_infinity(sd, "x").cfg.block_chunks == 1


def test_missing_misshaped_and_unexpected_tensors_are_named(model):
    sd = dict(model.state_dict())
    del sd["block_chunks.0.module.1.ffn.fc2.bias"]
    with pytest.raises(CheckpointError, match=r"block_chunks\.0\.module\.1\.ffn\.fc2\.bias"):
        build_infinity(sd, "file.pth")
    sd = dict(model.state_dict())
    sd["lvl_embed.weight"] = torch.zeros(14, 64)
    with pytest.raises(CheckpointError, match="lvl_embed.weight is"):
        build_infinity(sd, "file.pth")
    sd = {**model.state_dict(), "extra.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError, match="extra.weight"):
        build_infinity(sd, "file.pth")
    sd = {k: v for k, v in model.state_dict().items() if k != "word_embed.weight"}
    with pytest.raises(CheckpointError, match="'word_embed.weight' is missing"):
        build_infinity(sd, "file.pth")


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_a_pickled_payload_is_refused(tmp_path, model):
    path = tmp_path / "evil.pth"
    torch.save({**model.state_dict(), "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights only"):
        read_infinity_state_dict(path)
    assert not is_infinity_path(path)


def test_a_shard_index_naming_a_missing_file_is_an_error(tmp_path):
    folder = write_tiny_infinity(tmp_path, "shards")
    next(folder.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="names shard model-00002"):
        read_infinity_state_dict(folder)


def test_config_shapes_are_checked():
    with pytest.raises(ValueError, match="chunks"):
        Infinity(InfinityConfig(depth=3, width=32, heads=2, mlp_hidden=64, bits=4, text_dim=16, pool_heads=2,
                                block_chunks=2))
