from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from varrl.models.quantizer import MultiScaleQuantizer

SIDES = (1, 2, 3, 4)


def _quantizer(seed: int = 0, sides=SIDES, vocab: int = 16, dim: int = 4) -> MultiScaleQuantizer:
    torch.manual_seed(seed)
    q = MultiScaleQuantizer(vocab, dim, sides)
    with torch.no_grad():  # the codebook keeps its own initialisation (its running state matches it)
        for p in q.phis.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return q.eval()  # eval: forward leaves the codebook as it is (no running codebook update)


def test_lookup_nearest_code_hand_made():
    q = MultiScaleQuantizer(4, 2, (1, 2))
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    # columns: (0.9, 0.1) -> code 1, (0.1, 0.2) -> code 0, (-0.6, -0.7) -> code 3, (0.2, 0.7) -> code 2
    z = torch.tensor([[[0.9, 0.1, -0.6, 0.2], [0.1, 0.2, -0.7, 0.7]]])  # [B=1, C=2, l=4]
    assert q.lookup(z).tolist() == [[1, 0, 3, 2]]
    assert q.lookup(torch.cat([z, z.flip(-1)])).tolist() == [[1, 0, 3, 2], [2, 3, 0, 1]]


def test_forward_value_and_straight_through_gradient():
    q = _quantizer()
    f = torch.randn(2, 4, 4, 4, requires_grad=True)
    f_st, idx, loss = q(f)
    assert [tuple(i.shape) for i in idx] == [(2, 1), (2, 4), (2, 9), (2, 16)]
    assert all(i.dtype == torch.long and 0 <= int(i.min()) and int(i.max()) < 16 for i in idx)
    with torch.no_grad():
        rebuilt = q.idx_to_fhat(idx)
    assert (f_st.detach() - rebuilt).abs().max().item() <= 1e-6
    assert loss.ndim == 0 and loss.item() > 0
    f_st.sum().backward()
    torch.testing.assert_close(f.grad, torch.ones_like(f))  # identity gradient to the encoder


def test_vq_loss_reaches_phis_and_encoder():
    q = _quantizer()
    f = torch.randn(2, 4, 4, 4, requires_grad=True)
    _, _, loss = q(f)
    loss.backward()
    assert q.phis[0].conv.weight.grad is not None and float(q.phis[0].conv.weight.grad.abs().sum()) > 0
    assert f.grad is not None and float(f.grad.abs().sum()) > 0  # the commitment term


def test_eval_forward_keeps_codebook_train_forward_moves_used_codes_only():
    q = _quantizer()
    before = q.embedding.weight.detach().clone()
    f = torch.randn(2, 4, 4, 4)
    q(f)
    assert torch.equal(q.embedding.weight.detach(), before)
    q.train()
    _, idx, _ = q(f)
    after = q.embedding.weight.detach()
    used = torch.unique(torch.cat([i.flatten() for i in idx])).tolist()
    unused = [v for v in range(16) if v not in used]
    assert used and unused
    assert any(not torch.allclose(after[v], before[v]) for v in used)
    torch.testing.assert_close(after[unused], before[unused], rtol=1e-3, atol=1e-4)


def test_encode_matches_forward_indices():
    q = _quantizer()
    f = torch.randn(3, 4, 4, 4)
    _, idx_fwd, _ = q(f)
    idx_enc = q.encode(f)
    assert len(idx_enc) == len(SIDES)
    for a, b in zip(idx_fwd, idx_enc):
        assert torch.equal(a, b)


def test_teacher_inputs_shape_and_first_chunk():
    q = _quantizer()
    f = torch.randn(2, 4, 4, 4)
    idx = q.encode(f)
    with torch.no_grad():
        ti = q.teacher_inputs(idx)
        total = sum(s * s for s in SIDES)  # 1 + 4 + 9 + 16 = 30
        assert ti.shape == (2, total - 1, 4)
        first = F.interpolate(q.code_map(0, idx[0]), size=(2, 2), mode="area").flatten(2).transpose(1, 2)
        torch.testing.assert_close(ti[:, :4], first)
        # code_map at scale 0 is the single code, upsampled to a constant map, through phi 0
        assert q.code_map(0, idx[0]).shape == (2, 4, 4, 4)


def test_add_scale_chain_equals_teacher_inputs():
    q = _quantizer()
    idx = q.encode(torch.randn(2, 4, 4, 4))
    with torch.no_grad():
        f_hat, chunks = None, []
        for k, i in enumerate(idx):
            f_hat, nxt = q.add_scale(f_hat, k, i)
            if k + 1 < len(idx):
                assert nxt.shape == (2, SIDES[k + 1] ** 2, 4)
                chunks.append(nxt)
            else:
                assert nxt is None
        torch.testing.assert_close(torch.cat(chunks, 1), q.teacher_inputs(idx))
        torch.testing.assert_close(f_hat, q.idx_to_fhat(idx))


def test_phi_sharing_over_scales():
    q = MultiScaleQuantizer(8, 4, (1, 2, 3, 4, 5, 6, 7, 8), n_phi=4)
    # ticks at 1/12, 13/36, 23/36, 11/12; scale k sits at k/7
    expected = [0, 0, 1, 1, 2, 2, 3, 3]
    got = [next(j for j, p in enumerate(q.phis) if p is q.phi(k)) for k in range(8)]
    assert got == expected
    assert q.phi(0) is q.phis[0] and q.phi(7) is q.phis[3]
    single = MultiScaleQuantizer(8, 4, (1,), n_phi=4)
    assert single.phi(0) is single.phis[0]


def test_restart_dead_codes_moves_only_unused():
    q = _quantizer(vocab=5, dim=3)
    before = q.embedding.weight.detach().clone()
    q.ema_count.copy_(torch.tensor([3.0, 0.01, 1.0, 0.0, 7.0]))
    z = torch.arange(12, dtype=torch.float32).view(4, 3) + 100.0
    assert q.restart_dead_codes_(0.05) == 0  # no training batch seen yet: nothing to restart onto
    q.recent_residuals = z
    n = q.restart_dead_codes_(0.05, generator=torch.Generator().manual_seed(0))
    after = q.embedding.weight.detach().clone()
    assert n == 2
    for live in (0, 2, 4):
        assert torch.equal(after[live], before[live])
    for dead in (1, 3):
        assert any(torch.equal(after[dead], row) for row in z)
        assert q.ema_count[dead] == 1.0 and torch.equal(q.ema_sum[dead], after[dead])
    assert q.restart_dead_codes_(0.05) == 0  # the restarted codes now count as used
    assert torch.equal(q.embedding.weight.detach(), after)


@pytest.mark.parametrize("sides", [(1, 2), (1, 3, 5)])
def test_idx_to_fhat_shape(sides):
    q = _quantizer(sides=sides)
    S = sides[-1]
    idx = q.encode(torch.randn(1, 4, S, S))
    assert q.idx_to_fhat(idx).shape == (1, 4, S, S)
