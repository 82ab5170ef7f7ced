"""Tests of the latent regularisers: the KL posterior and the vector quantiser (paper Sec. 3.1)."""

from __future__ import annotations

import math

import pytest
import torch

from ldm_minimal.regularizers import DiagonalGaussian, VectorQuantizer




def _gaussian(b: int = 2, c: int = 3, h: int = 2, w: int = 2, seed: int = 0) -> DiagonalGaussian:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(b, c, h, w, generator=g)
    logvar = torch.randn(b, c, h, w, generator=g) * 0.7
    return DiagonalGaussian(torch.cat([mean, logvar], dim=1))


# ------------------------------------------------------------------------------------------------ DiagonalGaussian


def test_kl_closed_form_matches_monte_carlo():
    q = _gaussian()
    n = 200_000
    g = torch.Generator().manual_seed(1)
    # z_i ~ q, i = 1..n; KL(q || p) = E_q[log q(z) - log p(z)]
    eps = torch.randn((n, *q.shape), generator=g, dtype=torch.float64)
    mean, std, logvar = q.mean.double(), q.std.double(), q.logvar.double()
    z = mean + std * eps
    log_q = -0.5 * (math.log(2 * math.pi) + logvar + eps**2)
    log_p = -0.5 * (math.log(2 * math.pi) + z**2)
    mc = (log_q - log_p).sum(dim=(2, 3, 4)).mean(0)  # (B,)
    closed = q.kl().double()
    assert closed.shape == (2,)
    torch.testing.assert_close(closed, mc, rtol=0.02, atol=0.05)


def test_kl_to_other_gaussian_and_zero_for_standard_normal():
    std_normal = DiagonalGaussian(torch.zeros(2, 6, 3, 3))
    torch.testing.assert_close(std_normal.kl(), torch.zeros(2))
    q = _gaussian()
    # KL to N(0, I) given explicitly equals the default closed form
    torch.testing.assert_close(q.kl(DiagonalGaussian(torch.zeros(2, 6, 2, 2))), q.kl())
    # KL(q || q) = 0
    torch.testing.assert_close(q.kl(q), torch.zeros(2), atol=1e-5, rtol=0)


def test_nll_matches_log_density():
    q = _gaussian()
    x = torch.randn(q.shape)
    expected = -torch.distributions.Normal(q.mean, q.std).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(q.nll(x), expected, rtol=1e-5, atol=1e-4)


def test_sample_is_reproducible_with_generator_and_has_right_moments():
    q = _gaussian()
    a = q.sample(torch.Generator().manual_seed(7))
    b = q.sample(torch.Generator().manual_seed(7))
    c = q.sample(torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(q.mode(), q.mean)
    # many samples: empirical mean and std match mu and sigma
    big = DiagonalGaussian(torch.cat([torch.full((4000, 1, 1, 1), 2.0), torch.full((4000, 1, 1, 1), math.log(0.25))], 1))
    s = big.sample(torch.Generator().manual_seed(0))
    assert abs(float(s.mean()) - 2.0) < 0.05
    assert abs(float(s.std()) - 0.5) < 0.05


def test_sample_gradient_reaches_mean_and_logvar():
    params = torch.randn(1, 4, 2, 2, requires_grad=True)
    DiagonalGaussian(params).sample(torch.Generator().manual_seed(0)).sum().backward()
    assert params.grad[:, :2].abs().sum() > 0 and params.grad[:, 2:].abs().sum() > 0


def test_logvar_is_clamped():
    mean = torch.zeros(1, 2, 1, 1)
    logvar = torch.tensor([-100.0, 100.0]).view(1, 2, 1, 1)
    q = DiagonalGaussian(torch.cat([mean, logvar], 1))
    assert q.logvar.flatten().tolist() == [-30.0, 20.0]
    assert torch.isfinite(q.var).all() and torch.isfinite(q.kl()).all()
    assert float(q.std.min()) > 0


def test_bf16_parameters_give_float32_statistics():
    q = DiagonalGaussian(torch.randn(2, 4, 2, 2).bfloat16())
    assert q.mean.dtype == torch.float32 and q.kl().dtype == torch.float32


def test_odd_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="even channel count"):
        DiagonalGaussian(torch.zeros(1, 3, 2, 2))


# ------------------------------------------------------------------------------------------------ VectorQuantizer


def test_vq_init_and_nearest_code():
    vq = VectorQuantizer(16, 2, restart_dead_codes=False)
    assert vq.embedding.weight.abs().max() <= 1 / 16
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.randn(16, 2))
    z = torch.randn(3, 2, 4, 5)
    z_q, _, info = vq.eval()(z)
    assert z_q.shape == z.shape and info["indices"].shape == (3, 4, 5)
    # brute force nearest code
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    brute = torch.cdist(flat, vq.embedding.weight).argmin(1)
    assert torch.equal(info["indices"].flatten(), brute)
    torch.testing.assert_close(z_q.permute(0, 2, 3, 1).reshape(-1, 2), vq.embedding.weight[brute])


def test_commitment_weighting_encoder_gets_beta_codebook_gets_full_gradient():
    beta = 0.25
    vq = VectorQuantizer(4, 3, beta=beta, restart_dead_codes=False)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.eye(4, 3) * 2.0)
    z = (torch.randn(2, 3, 2, 2) + 1.0).requires_grad_(True)
    z_q, loss, info = vq(z)
    loss.backward()
    e = vq.embedding.weight.detach()
    idx = info["indices"]
    target = e[idx].permute(0, 3, 1, 2)  # (B, D, h, w): the chosen codes
    n = z.numel()
    # d/dz [beta * mean((z - sg[e])^2)] = beta * 2 (z - e) / n
    torch.testing.assert_close(z.grad, beta * 2.0 * (z.detach() - target) / n)
    # d/de_k [mean((e - sg[z])^2)] = 2 * sum over assigned z of (e_k - z) / n   (weight 1, not beta)
    expected = torch.zeros_like(e)
    flat_z = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    expected.index_add_(0, idx.flatten(), 2.0 * (e[idx.flatten()] - flat_z) / n)
    torch.testing.assert_close(vq.embedding.weight.grad, expected)


def test_straight_through_passes_gradient_unchanged():
    vq = VectorQuantizer(8, 2, restart_dead_codes=False)
    z = torch.randn(1, 2, 3, 3, requires_grad=True)
    z_q, _, _ = vq(z)
    w = torch.randn_like(z_q)
    (z_q * w).sum().backward()
    torch.testing.assert_close(z.grad, w)  # dL/dz := dL/dz_q


def test_perplexity_and_used_codes_on_constructed_inputs():
    k = 8
    vq = VectorQuantizer(k, k, restart_dead_codes=False).eval()
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.eye(k))
    # every position on code 0 -> perplexity 1, one code used
    z = torch.zeros(2, k, 2, 2)
    z[:, 0] = 1.0
    _, _, info = vq(z)
    assert int(info["used_codes"]) == 1
    assert float(info["perplexity"]) == pytest.approx(1.0, abs=1e-5)
    # 4 codes used equally often -> perplexity 4
    z = torch.zeros(1, k, 2, 4)
    for pos, code in enumerate([0, 1, 2, 3, 0, 1, 2, 3]):
        z[0, code, pos // 4, pos % 4] = 1.0
    _, _, info = vq(z)
    assert int(info["used_codes"]) == 4
    assert float(info["perplexity"]) == pytest.approx(4.0, rel=1e-5)
    # shares (1/2, 1/4, 1/4) -> exp(entropy) = exp(1.5 ln 2) = 2^1.5
    z = torch.zeros(1, k, 1, 4)
    for pos, code in enumerate([5, 5, 6, 7]):
        z[0, code, 0, pos] = 1.0
    _, _, info = vq(z)
    assert int(info["used_codes"]) == 3
    assert float(info["perplexity"]) == pytest.approx(2**1.5, rel=1e-5)


def _train_far_codebook(restart: bool, steps: int = 30, seed: int = 0) -> tuple[int, VectorQuantizer]:
    """Codebook initialised far from the data; train it on the VQ loss only; count used codes afterwards."""
    torch.manual_seed(seed)
    k, d = 64, 4
    vq = VectorQuantizer(k, d, restart_dead_codes=restart, dead_threshold=0.5, usage_decay=0.5)
    with torch.no_grad():  # all codes near (10, 10, 10, 10), the data near 0
        vq.embedding.weight.copy_(10.0 + torch.rand(k, d))
    opt = torch.optim.Adam(vq.parameters(), lr=1e-2)
    vq.train()
    for _ in range(steps):
        z = torch.randn(16, d, 4, 4)
        _, loss, _ = vq(z)
        opt.zero_grad()
        loss.backward()
        opt.step()
    vq.eval()
    _, _, info = vq(torch.randn(64, d, 4, 4))
    return int(info["used_codes"]), vq


def test_dead_code_restart_revives_unused_codes():
    used_without, vq_without = _train_far_codebook(restart=False)
    used_with, vq_with = _train_far_codebook(restart=True)
    assert used_without <= 3  # a far-away codebook collapses onto the nearest code(s)
    assert used_with >= 40 and used_with >= 10 * used_without
    assert vq_without.codebook_usage()["n_restarts"] == 0
    stats = vq_with.codebook_usage()
    assert stats["n_restarts"] > 0
    assert stats["perplexity"] > 10 * vq_without.codebook_usage()["perplexity"]
    assert stats["dead_codes"] < vq_without.codebook_usage()["dead_codes"]


def test_no_restart_or_usage_update_in_eval_mode():
    vq = VectorQuantizer(16, 2, dead_threshold=0.9, usage_decay=0.0).eval()
    before = vq.embedding.weight.detach().clone()
    usage = vq.usage.clone()
    _, _, info = vq(torch.randn(4, 2, 2, 2) + 5.0)
    assert torch.equal(vq.embedding.weight, before) and torch.equal(vq.usage, usage)
    assert int(info["restarted"]) == 0 and int(vq.n_restarts) == 0


def test_usage_is_tracked_without_restarts():
    vq = VectorQuantizer(4, 4, restart_dead_codes=False, usage_decay=0.0).train()
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.eye(4))
    z = torch.zeros(1, 4, 1, 4)
    z[0, 0, 0, :3] = 1.0
    z[0, 1, 0, 3] = 1.0
    vq(z)
    torch.testing.assert_close(vq.usage, torch.tensor([0.75, 0.25, 0.0, 0.0]))
    assert vq.codebook_usage()["dead_codes"] == 2 and int(vq.n_restarts) == 0


def test_vq_bad_shape_and_arguments():
    vq = VectorQuantizer(8, 3)
    with pytest.raises(ValueError, match=r"\(B, 3, h, w\)"):
        vq(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="beta"):
        VectorQuantizer(8, 3, beta=-1.0)
    with pytest.raises(ValueError, match="integer tensor"):
        vq.get_codebook_entry(torch.zeros(1, 2, 2))


def test_vq_under_bf16_autocast_uses_float32():
    vq = VectorQuantizer(8, 3)
    z = torch.randn(2, 3, 2, 2).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, loss, info = vq(z)
    assert loss.dtype == torch.float32 and z_q.dtype == torch.float32
    assert torch.isfinite(loss)
