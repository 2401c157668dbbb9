"""The patch VQ-VAE: PCA initialisation makes the untrained autoencoder the linear PCA one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from varrl.models.tokenizer import TokenizerConfig, VQTokenizer

CFG = dict(image_size=32, sides=(1, 2, 4), vocab_size=64, code_dim=8, channels=16, res_blocks=1, refine_channels=4)


def _patches(img_B3HW: np.ndarray, p: int) -> np.ndarray:
    """Rows of p*p*3 values in pixel_unshuffle's channel order (c, i, j)."""
    B, C, H, W = img_B3HW.shape
    x = img_B3HW.reshape(B, C, H // p, p, W // p, p).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, C * p * p)


def test_pca_init_reconstructs_the_pca_projection():
    torch.manual_seed(0)
    tok = VQTokenizer(TokenizerConfig(**CFG))
    img = torch.rand(12, 3, 32, 32) ** 3  # skewed, so the components are not degenerate
    kept = tok.init_pca_(img)
    X = _patches(img.numpy() * 2 - 1, 8).astype(np.float64)
    mu = X.mean(0)
    _, S, Vt = np.linalg.svd(X - mu, full_matrices=False)
    assert kept == pytest.approx((S[:8] ** 2).sum() / (S ** 2).sum(), rel=1e-4)
    expected = (X - mu) @ Vt[:8].T @ Vt[:8] + mu  # PCA reconstruction in [-1, 1]
    with torch.no_grad():
        f = tok.encoder(img * 2 - 1)  # the residual branches start at zero: f is the PCA code
        rec = tok.decoder(f)
    got = _patches(rec.numpy(), 8)
    assert np.abs(got - expected).max() < 1e-4


def test_untrained_branches_start_at_zero():
    tok = VQTokenizer(TokenizerConfig(**CFG))
    for net in (tok.encoder.net, tok.decoder.net, tok.decoder.refine):
        assert torch.count_nonzero(net[-1].weight) == 0 and torch.count_nonzero(net[-1].bias) == 0


def test_encode_decode_shapes_and_range():
    tok = VQTokenizer(TokenizerConfig(**CFG)).eval()
    img = torch.rand(3, 3, 32, 32)
    idx = tok.encode(img)
    assert [tuple(i.shape) for i in idx] == [(3, 1), (3, 4), (3, 16)]
    out = tok.decode(idx)
    assert out.shape == (3, 3, 32, 32) and out.min() >= 0 and out.max() <= 1


def test_config_rejects_image_size_not_multiple_of_last_grid():
    with pytest.raises(ValueError, match="multiple of the last grid side"):
        TokenizerConfig(image_size=30, sides=(1, 2, 4))
