"""The published-VAR architecture: strict loading of reference-layout files, shapes read off the
files, and the math of its parts against numbers worked out by hand."""

import math

import pytest
import torch
from tinyvar import TINY_PATCH_NUMS, build_tiny_var, write_tiny_var

from varrl.checkpoint import CheckpointError
from varrl.models.var import VAR, VarConfig, phi_index, read_state_dict, var_preset
from varrl.models.var.blocks import AdaLNBlock
from varrl.models.var.files import save_state_dict
from varrl.models.var.transformer import block_causal_bias, level_ids
from varrl.policy.load import load_policy
from varrl.policy.sampler import SamplerConfig


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_reference_layout_files_load_strictly(tmp_path, suffix):
    var_file, vae_file = write_tiny_var(tmp_path, suffix, shared_aln=suffix == ".safetensors")
    policy = load_policy(var_file, vae=vae_file)
    cfg = policy.model.cfg
    assert (cfg.depth, cfg.width, cfg.heads, cfg.mlp_hidden, cfg.num_classes) == (2, 64, 2, 128, 10)
    assert cfg.patch_nums == TINY_PATCH_NUMS and cfg.shared_aln == (suffix == ".safetensors") and cfg.attn_l2_norm
    assert policy.tokenizer.cfg.ch == 32 and policy.tokenizer.cfg.phi_count == 4
    assert policy.schedule.image_size == 64
    saved = read_state_dict(var_file)
    assert set(saved) == set(policy.model.state_dict())
    assert all(torch.equal(saved[k], v) for k, v in policy.model.state_dict().items())
    # The unconditional class and the published buffers are part of the layout.
    assert saved["class_emb.weight"].shape[0] == 11
    assert {"lvl_1L", "attn_bias_for_masking", "blocks.0.attn.zero_k_bias"} <= set(saved)


def test_default_tokenizer_file_is_looked_up_beside_the_checkpoint(tmp_path):
    var_file, vae_file = write_tiny_var(tmp_path)
    with pytest.raises(CheckpointError, match="vae_ch160v4096z32.pth"):
        load_policy(var_file)
    vae_file.rename(tmp_path / "vae_ch160v4096z32.pth")
    assert load_policy(var_file).model.cfg.depth == 2


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    model, vae = build_tiny_var()
    save_state_dict(vae, tmp_path / "vae.pth")
    sd = model.state_dict()
    missing = {k: v for k, v in sd.items() if k != "blocks.1.attn.proj.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.proj\.weight"):
        load_policy(tmp_path / "missing.pth", vae=tmp_path / "vae.pth")
    bad = dict(sd, **{"blocks.1.ffn.fc2.weight": torch.zeros(64, 100)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.1\.ffn\.fc2\.weight is \(64, 100\) in the file"):
        load_policy(tmp_path / "bad.pth", vae=tmp_path / "vae.pth")
    vsd = {k: v for k, v in vae.state_dict().items() if k != "decoder.up.2.block.1.conv2.weight"}
    torch.save(vsd, tmp_path / "vae_missing.pth")
    save_state_dict(model, tmp_path / "var.pth")
    with pytest.raises(CheckpointError, match=r"decoder\.up\.2\.block\.1\.conv2\.weight"):
        load_policy(tmp_path / "var.pth", vae=tmp_path / "vae_missing.pth")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


def test_pth_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"word_embed.weight": torch.zeros(2, 2), "x": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="never runs pickled code"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_presets_have_the_published_sizes():
    # Parameter counts of the published table (310M, 600M, 1.0B, 2.0B, 2.3B), built without memory.
    sizes = {}
    for name in ("var_d16", "var_d20", "var_d24", "var_d30", "var_d36"):
        with torch.device("meta"):
            sizes[name] = sum(p.numel() for p in VAR(var_preset(name)).parameters()) / 1e6
    assert [round(sizes[n]) for n in ("var_d16", "var_d20")] == [310, 601]
    assert [round(sizes[n] / 100) for n in ("var_d24", "var_d30", "var_d36")] == [10, 20, 24]
    d36 = var_preset("var_d36")
    assert d36.shared_aln and d36.schedule().image_size == 512 and d36.patch_nums[-1] == 32
    assert var_preset("var_d16").schedule().total_tokens == 680


def test_phi_index_per_scale():
    # K = 4 convs at 1/12, 4/12, 7/12, 10/12; grid t of 10 sits at t/9 and takes the nearest.
    assert [phi_index(t, 10, 4) for t in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    # K = 10 (one per grid): ticks 0.05, 0.15, ..., 0.95 -> grid t uses conv t.
    assert [phi_index(t, 10, 10) for t in range(10)] == list(range(10))
    assert [phi_index(t, 4, 4) for t in range(4)] == [0, 1, 2, 3]  # t/3 = 0, 1/3, 2/3, 1


def test_quantizer_applies_the_indexed_phi_with_ratio_half():
    _, vae = build_tiny_var()
    q = vae.quantizer
    with torch.no_grad():
        q.embedding.weight.fill_(2.0)
        for k, phi in enumerate(q.quant_resi.qresi_ls):
            phi.weight.zero_()
            phi.bias.fill_(10.0 * k)
    # Codes are all 2: phi_k(h) = 0.5 * 2 + 0.5 * 10k; grids of 4 use convs 0, 1, 2, 3.
    for t, side in enumerate(TINY_PATCH_NUMS):
        h = q.code_map(t, torch.zeros(1, side * side, dtype=torch.long))
        assert h.shape == (1, 8, 4, 4)
        assert torch.allclose(h, torch.full_like(h, 1.0 + 5.0 * t), atol=1e-5)


def test_interpolation_modes():
    _, vae = build_tiny_var()
    q = vae.quantizer
    idx = torch.tensor([[0, 1, 2, 3]])  # a 2x2 grid
    with torch.no_grad():
        for phi in q.quant_resi.qresi_ls:  # phi = identity: 0.5 h + 0.5 h
            phi.weight.zero_()
            phi.weight[:, :, 1, 1] = torch.eye(8)
            phi.bias.zero_()
        q.embedding.weight.copy_(torch.arange(64.0)[:, None].repeat(1, 8))
    up = q.code_map(1, idx)[0, 0]
    codes = torch.tensor([[0.0, 1.0], [2.0, 3.0]])[None, None]
    assert torch.allclose(up, torch.nn.functional.interpolate(codes, size=(4, 4), mode="bicubic")[0, 0], atol=1e-5)
    # Bicubic overshoots (unlike bilinear): the top-left cell lies below the smallest code.
    assert up[0, 0] < 0
    _, nxt = q.add_scale(None, 1, idx)  # input of grid 3: f_hat area-averaged to 3x3
    f = up[None, None]
    assert torch.allclose(nxt[0, :, 0], torch.nn.functional.adaptive_avg_pool2d(f, 3).flatten(), atol=1e-5)


def test_adaln_block_by_hand():
    blk = AdaLNBlock(dim=4, heads=1, hidden=2, shared_aln=False, l2_norm=False, eps=1e-6)
    with torch.no_grad():
        for p in blk.parameters():
            p.zero_()
        lin = blk.ada_lin[1]
        # gamma1, gamma2, scale1, scale2, shift1, shift2 (C = 4 each), from the bias alone.
        lin.bias.copy_(torch.tensor([1.0, 0.5, 1.0, 0.0, 0.0, 1.0]).repeat_interleave(4))
        blk.attn.mat_qkv.weight[8:12] = torch.eye(4)  # v = x; one token attends to itself only
        blk.attn.proj.weight.copy_(torch.eye(4))
        blk.ffn.fc1.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]]))
        blk.ffn.fc2.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [0, 0], [0, 0]]))
    x = torch.tensor([[[1.0, -1.0, 1.0, -1.0]]])  # mean 0, variance 1: LN(x) = x
    out = blk(x, torch.zeros(1, 4), None, None)
    # x1 = x + 1 * (2 x) = 3x; LN(x1) + 1 = [2, 0, 2, 0]; fc1 -> [2, 2]; gelu_tanh(2) = g; * 0.5.
    g = 0.5 * 2 * (1 + math.tanh(math.sqrt(2 / math.pi) * (2 + 0.044715 * 8)))
    want = torch.tensor([3 + g / 2, -3 + g / 2, 3.0, -3.0])
    assert torch.allclose(out[0, 0], want, atol=1e-5)
    # Shared AdaLN: the same six vectors as this block's offset on a zero shared projection.
    shared = AdaLNBlock(dim=4, heads=1, hidden=2, shared_aln=True, l2_norm=False, eps=1e-6)
    shared.load_state_dict({k: v for k, v in blk.state_dict().items() if "ada_lin" not in k}, strict=False)
    with torch.no_grad():
        shared.ada_gss.copy_(lin.bias.view(1, 1, 6, 4))
    assert torch.allclose(shared(x, torch.zeros(1, 1, 6, 4), None, None), out, atol=1e-6)


def test_l2_attention_caps_the_logit_scale():
    from varrl.models.var.blocks import SelfAttention

    att = SelfAttention(dim=2, heads=1, l2_norm=True)
    with torch.no_grad():
        att.mat_qkv.weight.copy_(torch.cat([torch.eye(2), torch.eye(2), torch.eye(2)]))
        att.proj.weight.copy_(torch.eye(2))
        att.proj.bias.zero_()
        att.scale_mul_1H11.fill_(math.log(1000.0))  # capped at 100
    x = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])  # unit-direction q/k: logits 100 * cos
    bias = block_causal_bias((1, 1, 1))[:, :, 1:, 1:]  # token 2 sees token 1 and itself
    out = att(x, bias, None)
    w = torch.softmax(torch.tensor([0.0, 100.0]), 0)  # token 2's q . [k1, k2] = [0, 1]
    assert torch.allclose(out[0, 1], w[0] * x[0, 0] + w[1] * x[0, 1], atol=1e-5)
    assert torch.allclose(out[0, 0], x[0, 0], atol=1e-6)


def test_token_embeddings_and_head_by_hand():
    # With every AdaLN projection zero the blocks add nothing (gamma = 0) and the head norm is a
    # plain LayerNorm: logits = head(LN(input embedding)), which pins how the inputs are composed.
    model, vae = build_tiny_var()
    with torch.no_grad():
        for blk in model.blocks:
            blk.ada_lin[1].weight.zero_()
            blk.ada_lin[1].bias.zero_()
        model.head_nm.ada_lin[1].weight.zero_()
        model.head_nm.ada_lin[1].bias.zero_()
    idx = [torch.randint(0, 64, (1, p * p)) for p in TINY_PATCH_NUMS]
    inputs = vae.quantizer.teacher_inputs(idx)  # [1, 29, 8]: grids 2..4 from area-downsampled f_hat
    with torch.no_grad():
        logits = model(model.encode_labels(torch.tensor([4])), inputs)

    def head(x_C):
        return model.head(torch.nn.functional.layer_norm(x_C, (64,), eps=1e-6))

    first = model.class_emb.weight[4] + model.pos_start[0, 0] + model.lvl_embed.weight[0] + model.pos_1LC[0, 0]
    assert torch.allclose(logits[0, 0], head(first), atol=1e-4)
    j = 1 + 4 + 2  # third token of grid 3 (flat position 7); its input is row 6 of the teacher inputs
    x7 = model.word_embed(inputs[0, 6]) + model.lvl_embed.weight[2] + model.pos_1LC[0, j]
    assert torch.allclose(logits[0, j], head(x7), atol=1e-4)


def test_block_causal_mask_and_levels():
    assert level_ids((1, 2)).tolist() == [[0, 1, 1, 1, 1]]
    bias = block_causal_bias((1, 2))[0, 0]
    assert bias[0].tolist() == [0.0] + [float("-inf")] * 4
    assert (bias[1:] == 0).all()  # grid 2 sees grid 1 and all of itself


def test_cfg_ramp_table():
    s = SamplerConfig(cfg=1.5)
    assert [round(s.guidance(t, 10), 6) for t in range(10)] == [0.0, 0.166667, 0.333333, 0.5, 0.666667, 0.833333,
                                                                1.0, 1.166667, 1.333333, 1.5]


def test_teacher_forcing_never_drops_the_label():
    model, _ = build_tiny_var()
    model.train()  # even in train mode: the published training-time label dropout is not part of it
    labels = torch.tensor([3, 3, 3, 3])
    x = torch.randn(4, model.schedule.total_tokens - 1, 8)
    lg = model(model.encode_labels(labels), x[:1].expand(4, -1, -1))
    assert torch.allclose(lg, lg[:1].expand_as(lg), atol=1e-5)
    uncond = model(model.encode_labels(torch.tensor([10])), x[:1])
    assert not torch.allclose(lg[:1], uncond)


def test_config_fields_are_documented():
    assert VarConfig().schedule().image_size == 256
