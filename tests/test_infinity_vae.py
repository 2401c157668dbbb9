"""Infinity's BSQ tokenizer: strict loading of the released layout, the bitwise multi-scale
quantizer and the sampler's running sum against hand-worked numbers, patchify by hand."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from tinyinfinity_vae import TINY_BSQ, TINY_BSQ_PATCHIFY, build_tiny_bsq, write_tiny_bsq

from varrl.checkpoint import CheckpointError
from varrl.models.infinity import bsq_quant as Q
from varrl.models.infinity.bsq import (
    BSQVAE,
    PRESETS,
    BSQVAEConfig,
    bsq_state_dict,
    canonical_key,
    load_bsq_vae,
    read_bsq_state_dict,
)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_tiny_bsq(tmp_path_factory.mktemp("bsq"))


# -- files --------------------------------------------------------------------------------------------------
def test_released_layout_round_trip(tiny_file):
    raw = torch.load(tiny_file, weights_only=True)
    assert set(raw) == {"vae"}  # the official loader reads state_dict["vae"]
    assert "encoder.conv_in.conv.weight" in raw["vae"] and "decoder.up.2.upsample.conv.conv.bias" in raw["vae"]
    assert raw["vae"]["quantizer.lfq.mask"].tolist() == [32, 16, 8, 4, 2, 1]
    vae = load_bsq_vae(tiny_file)
    assert vae.cfg == TINY_BSQ
    assert (vae.codebook_dim, vae.token_bits, vae.downsample, vae.patchify) == (6, 6, 4, False)
    ref = build_tiny_bsq()
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in vae.state_dict().items())
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training


def test_flat_pth_safetensors_and_unwrapped_names(tmp_path):
    sd = bsq_state_dict(build_tiny_bsq())
    torch.save(sd, tmp_path / "flat.pth")
    save_file(sd, str(tmp_path / "v.safetensors"))
    plain = {k.replace(".conv.weight", ".weight").replace(".conv.bias", ".bias").replace(".norm.weight", ".weight")
             .replace(".norm.bias", ".bias"): v for k, v in sd.items()}
    assert "encoder.conv_in.weight" in plain and "decoder.up.1.upsample.conv.weight" in plain
    torch.save({"vae": plain}, tmp_path / "plain.pth")
    for name in ("flat.pth", "v.safetensors", "plain.pth"):
        assert load_bsq_vae(tmp_path / name).cfg == TINY_BSQ
    assert canonical_key("decoder.up.1.upsample.conv.weight") == "decoder.up.1.upsample.conv.conv.weight"
    assert canonical_key("decoder.up.1.upsample.conv.conv.weight") == "decoder.up.1.upsample.conv.conv.weight"
    assert canonical_key("encoder.down.0.block.0.norm1.bias") == "encoder.down.0.block.0.norm1.norm.bias"


def _save_modified(tmp_path, edit):
    sd = bsq_state_dict(build_tiny_bsq())
    edit(sd)
    torch.save({"vae": sd}, tmp_path / "bad.pth")
    return tmp_path / "bad.pth"


@pytest.mark.parametrize("edit, needle", [
    (lambda sd: sd.pop("decoder.mid.block_2.conv2.conv.bias"), "decoder.mid.block_2.conv2.conv.bias"),
    (lambda sd: sd.pop("encoder.conv_out.conv.weight"), "encoder.conv_out.conv.weight"),
    (lambda sd: sd.__setitem__("encoder.extra.weight", torch.zeros(3)), "encoder.extra.weight"),
    (lambda sd: sd.__setitem__("decoder.mid.block_1.conv1.conv.weight", torch.zeros(64, 64, 1, 1)),
     "decoder.mid.block_1.conv1.conv.weight"),
    (lambda sd: sd.__setitem__("quantize.lfq.mask", torch.ones(5, dtype=torch.long)), "quantize.lfq.mask"),
])
def test_strict_loading_names_the_tensor(tmp_path, edit, needle):
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
        load_bsq_vae(_save_modified(tmp_path, edit))


def test_masks_optional_and_pickles_refused(tmp_path):
    path = _save_modified(tmp_path, lambda sd: [sd.pop(k) for k in ("quantizer.lfq.mask", "quantize.lfq.mask")])
    assert load_bsq_vae(path).codebook_dim == 6
    torch.save({"vae": bsq_state_dict(build_tiny_bsq()), "args": BSQVAEConfig()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="weights only"):
        load_bsq_vae(tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_bsq_vae(tmp_path / "missing.pth")
    torch.save({"step": torch.tensor(3), "config": {"a": 1}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="state dict"):
        read_bsq_state_dict(tmp_path / "other.pth")


def test_presets(tiny_file):
    assert PRESETS["infinity_2b"].token_bits == 32 and PRESETS["infinity_2b"].downsample == 16
    p8 = PRESETS["infinity_8b"]
    assert (p8.codebook_dim, p8.token_bits, p8.patch_size, p8.downsample, p8.patchify) == (14, 56, 8, 16, True)
    with pytest.raises(CheckpointError, match="encoder.conv_in.conv.weight"):  # 128 channels wanted, 32 found
        load_bsq_vae(tiny_file, preset="infinity_vae_d32reg")
    with pytest.raises(CheckpointError, match="unknown BSQ tokenizer preset"):
        load_bsq_vae(tiny_file, preset="d32")


def test_patchify_inferred_from_an_f8_tokenizer(tmp_path):
    vae = load_bsq_vae(write_tiny_bsq(tmp_path, cfg=TINY_BSQ_PATCHIFY))
    assert vae.patchify and (vae.codebook_dim, vae.token_bits, vae.downsample) == (3, 12, 16)
    assert vae.latent_grids([(1, 1), (2, 3)]) == [(2, 2), (4, 6)]


# -- bits and codes by hand ----------------------------------------------------------------------------------
def test_codes_from_bits_scaling():
    s = 1 / math.sqrt(2)
    codes = Q.codes_from_bits(torch.tensor([[[1, 0], [0, 0]]]), 1, 2)
    assert codes.shape == (1, 2, 1, 2)
    torch.testing.assert_close(codes[0, :, 0], torch.tensor([[s, -s], [-s, -s]]), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="bits must be"):
        Q.codes_from_bits(torch.zeros(1, 3, 2), 1, 2)


def test_patchify_by_hand():
    # one token of 4d = 8 bits (d = 2): bit 4c + 2i + j is channel c of the cell at (i, j)
    tok = torch.tensor([[[1, 0, 0, 1, 0, 1, 1, 1]]])
    cells = Q.unpatchify_bits(tok, 1, 1)
    assert cells.shape == (1, 2, 2, 2)
    assert cells[0, :, :, 0].tolist() == [[1, 0], [0, 1]] and cells[0, :, :, 1].tolist() == [[0, 1], [1, 1]]
    assert torch.equal(Q.patchify_bits(cells), tok)
    x = torch.randint(0, 2, (2, 4, 6, 3))
    assert torch.equal(Q.unpatchify_bits(Q.patchify_bits(x), 2, 3), x)


def _u_interp():
    """1-D linear (align_corners=False) resamplings of [1, -1] worked by hand: to 4 points
    [1, .75 - .25, .25 - .75, -1]; that to 3 points samples at 1/6, 1.5, 17/6."""
    U = torch.tensor([1.0, 0.5, -0.5, -1.0])
    V = torch.tensor([5 / 6 * 1 + 1 / 6 * 0.5, 0.0, -(1 / 6 * 0.5 + 5 / 6 * 1)])
    return U, V


def test_running_sum_and_next_inputs_by_hand():
    """d = 1 (codes are +-1), grids 1x1, 2x2, 3x3, 4x4: step 1 all +1, step 2 the checkerboard
    [[+1, -1], [-1, +1]], step 3 all +1, step 4 all -1."""
    vae = BSQVAE(replace(TINY_BSQ, codebook_dim=1))
    grids = [(1, 1), (2, 2), (3, 3), (4, 4)]
    bits = [torch.ones(1, 1, 1, dtype=torch.long), torch.tensor([[[1], [0], [0], [1]]]),
            torch.ones(1, 9, 1, dtype=torch.long), torch.zeros(1, 16, 1, dtype=torch.long)]
    U, V = _u_interp()
    inputs = vae.next_inputs(bits, grids)
    assert [tuple(x.shape) for x in inputs] == [(1, 1, 2, 2), (1, 1, 3, 3), (1, 1, 4, 4)]
    torch.testing.assert_close(inputs[0][0, 0], torch.ones(2, 2))
    torch.testing.assert_close(inputs[1][0, 0], 1 + torch.outer(V, V))  # trilinear, not area ([.75, 0, -.75])
    torch.testing.assert_close(inputs[2][0, 0], 2 + torch.outer(U, U))
    torch.testing.assert_close(vae.summed_codes(bits, grids)[0, 0], 1 + torch.outer(U, U))
    # a prefix: its inputs are the first ones, its sum the coarse latent so far
    assert len(vae.next_inputs(bits[:2], grids)) == 2
    torch.testing.assert_close(vae.summed_codes(bits[:2], grids)[0, 0], 1 + torch.outer(U, U))
    with pytest.raises(ValueError, match="step 2"):
        vae.next_inputs([bits[0], bits[2]], grids)


def test_patchified_next_input_by_hand():
    """d = 1, one token whose 2x2 cells are the checkerboard: upsampled to the 4x4 cells of the next
    2x2 token grid and pixel-unshuffled, token (y, x) channel 2i + j is UU^T[2y + i, 2x + j]."""
    vae = BSQVAE(replace(TINY_BSQ_PATCHIFY, codebook_dim=1))
    U, _ = _u_interp()
    inp = vae.next_inputs([torch.tensor([[[1, 0, 0, 1]]])], [(1, 1), (2, 2)])
    assert len(inp) == 1 and inp[0].shape == (1, 4, 2, 2)
    full = torch.outer(U, U)
    for y in range(2):
        for x in range(2):
            for i in range(2):
                for j in range(2):
                    assert inp[0][0, 2 * i + j, y, x].item() == pytest.approx(full[2 * y + i, 2 * x + j].item())


def test_quantizer_residual_by_hand():
    """d = 2 (s = 1/sqrt(2) ~ 0.71), a 3x3 latent, grids 1x1 then 3x3.
    Channel 0: 0.5 everywhere, 9 in the last cell: mean > 0, bit 1; then 0.5 - s < 0 (bit 0: the
    first step's code is subtracted) except 9 - s (bit 1).
    Channel 1: 1 everywhere, -9 in the last cell: mean -1/9, bit 0 although 8 cells and the centre
    are positive (the residual is area-averaged, not sampled); then 1 + s (bit 1) and -9 + s (bit 0)."""
    s = 1 / math.sqrt(2)
    c0, c1 = torch.full((3, 3), 0.5), torch.ones(3, 3)
    c0[2, 2], c1[2, 2] = 9.0, -9.0
    b1, b2 = Q.multiscale_bits(torch.stack([c0, c1]).unsqueeze(0), [(1, 1), (3, 3)])
    assert b1.tolist() == [[[[1, 0]]]]
    assert b2[0, :, :, 0].tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert b2[0, :, :, 1].tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 0]]
    # the sign is taken after normalising the cell: a tiny residual still gives +-1/sqrt(d)
    q, bits = Q.sign_quantize(torch.tensor([1e-6, -3e-6]).reshape(1, 2, 1, 1, 1))
    assert bits.tolist() == [[[[1, 0]]]]
    torch.testing.assert_close(q.flatten(), torch.tensor([s, -s]))


# -- the whole tokenizer ----------------------------------------------------------------------------------------
def test_encode_decode_round_trip_shapes():
    vae = build_tiny_bsq()
    grids = [(1, 1), (2, 2), (3, 3), (4, 4)]
    img = torch.rand(2, 3, 16, 16)
    bits = vae.encode_bits(img, grids)
    assert [tuple(b.shape) for b in bits] == [(2, 1, 6), (2, 4, 6), (2, 9, 6), (2, 16, 6)]
    assert all(b.dtype == torch.long and set(b.unique().tolist()) <= {0, 1} for b in bits)
    assert 0.2 < torch.cat([b.flatten() for b in bits]).float().mean() < 0.8
    out = vae.decode_bits(bits, grids)
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(vae.decode_bits(bits[:2], grids), vae.decode_latent(vae.summed_codes(bits[:2], grids)))
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 16\]"):
        vae.encode_bits(torch.rand(1, 3, 12, 16), grids)


def test_encode_takes_images_in_0_1():
    vae = build_tiny_bsq()
    img = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(vae.encode_latent(img), vae.encoder(img * 2 - 1))


def test_single_grid_reencoding_is_stable():
    """With one grid the bits are the latent's signs; the latent rebuilt from them re-encodes to
    the same bits, and so does the image decoded from them after a second pass."""
    vae = build_tiny_bsq()
    grids = [(4, 4)]
    bits = vae.encode_bits(torch.rand(2, 3, 16, 16), grids)
    z = vae.summed_codes(bits, grids)
    assert torch.equal(Q.multiscale_bits(z, grids)[0].reshape(2, 16, 6), bits[0])
    assert torch.equal((z > 0).long().permute(0, 2, 3, 1).reshape(2, 16, 6), bits[0])


def test_patchify_encode_decode():
    vae = build_tiny_bsq(cfg=TINY_BSQ_PATCHIFY)
    grids = [(1, 1), (2, 2)]
    img = torch.rand(1, 3, 32, 32)
    bits = vae.encode_bits(img, grids)
    assert [tuple(b.shape) for b in bits] == [(1, 1, 12), (1, 4, 12)]
    cells = Q.multiscale_bits(vae.encode_latent(img), vae.latent_grids(grids))
    assert torch.equal(Q.unpatchify_bits(bits[1], 2, 2), cells[1])
    assert vae.decode_bits(bits, grids).shape == (1, 3, 32, 32)
    assert [tuple(x.shape) for x in vae.next_inputs(bits, grids)] == [(1, 12, 2, 2)]
