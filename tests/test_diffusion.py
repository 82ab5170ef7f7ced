"""Tests for ldm_minimal.diffusion: schedules, q(z_t | z_0), parameterizations and the training objective."""

from __future__ import annotations

import math

import pytest
import torch

from ldm_minimal.diffusion import (
    DIFFUSION_PRESETS,
    DiffusionConfig,
    GaussianDiffusion,
    diffusion_config,
    make_beta_schedule,
)


# ------------------------------------------------------------------------------------------ schedules
def test_scaled_linear_is_the_ldm_default_with_the_papers_endpoints():
    betas = make_beta_schedule("scaled_linear")
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(0.0015, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.0195, rel=1e-12)
    # linear in sqrt(beta): constant differences of sqrt(beta)
    d = betas.sqrt().diff()
    assert torch.allclose(d, d[0].expand_as(d), rtol=1e-9, atol=0)
    abar = torch.cumprod(1 - betas, 0)
    assert abar[-1].item() == pytest.approx(1.42e-4, rel=0.01)
    sd = torch.cumprod(1 - make_beta_schedule("scaled_linear", 1000, 0.00085, 0.012), 0)
    assert sd[-1].item() == pytest.approx(4.66e-3, rel=0.01)


@pytest.mark.parametrize("name", ["scaled_linear", "linear", "cosine"])
def test_schedules_are_valid_and_monotone(name):
    betas = make_beta_schedule(name, 1000, 0.0001, 0.02)
    assert betas.dtype == torch.float64
    assert (betas > 0).all() and (betas <= 0.999).all()
    assert (betas.diff() >= 0).all(), "betas should be non-decreasing"
    abar = torch.cumprod(1 - betas, 0)
    assert (abar.diff() < 0).all(), "alpha_bar should strictly decrease"
    assert abar[-1] < 0.01


def test_linear_and_cosine_shapes():
    lin = make_beta_schedule("linear", 1000, 1e-4, 0.02)
    assert torch.allclose(lin, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    cos = make_beta_schedule("cosine", 1000)
    assert cos.max().item() == pytest.approx(0.999)  # the clip is active at the very end
    # alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2) / cos^2((s/(1+s)) pi/2) at t = T/2
    f = lambda u: math.cos((u + 8e-3) / (1 + 8e-3) * math.pi / 2) ** 2  # noqa: E731
    abar = torch.cumprod(1 - cos, 0)
    assert abar[499].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-9)


def test_schedules_agree_with_diffusers():
    from diffusers import DDPMScheduler

    for ours, theirs, (b0, b1) in [
        ("scaled_linear", "scaled_linear", (0.0015, 0.0195)),
        ("linear", "linear", (1e-4, 0.02)),
        ("cosine", "squaredcos_cap_v2", (1e-4, 0.02)),
    ]:
        sched = DDPMScheduler(num_train_timesteps=1000, beta_start=b0, beta_end=b1, beta_schedule=theirs)
        ab_ours = torch.cumprod(1 - make_beta_schedule(ours, 1000, b0, b1), 0)
        # diffusers builds its schedule in float32
        assert torch.allclose(ab_ours.float(), sched.alphas_cumprod, rtol=1e-4, atol=1e-7), ours


def test_schedule_errors_name_the_fix():
    with pytest.raises(ValueError, match="Valid beta schedules: cosine, linear, scaled_linear"):
        make_beta_schedule("sqrt_linear")
    with pytest.raises(ValueError, match="beta_start"):
        make_beta_schedule("linear", 1000, 0.02, 0.0001)
    with pytest.raises(ValueError, match="positive integer"):
        make_beta_schedule("linear", 0)


def test_config_presets_and_errors():
    assert diffusion_config("ldm") == DiffusionConfig()
    sd = diffusion_config("sd")
    assert (sd.beta_start, sd.beta_end, sd.schedule) == (0.00085, 0.012, "scaled_linear")
    assert diffusion_config("ldm", parameterization="v").parameterization == "v"
    assert diffusion_config("ldm") is not DIFFUSION_PRESETS["ldm"]  # presets are not handed out for mutation
    with pytest.raises(ValueError, match="Valid diffusion presets: ldm, sd"):
        diffusion_config("sd2")
    with pytest.raises(ValueError, match="Valid parameterizations: eps, v"):
        DiffusionConfig(parameterization="x0")
    with pytest.raises(ValueError, match="Valid loss types: l1, mse"):
        DiffusionConfig(loss_type="huber")
    with pytest.raises(ValueError, match="Valid beta schedules"):
        DiffusionConfig(schedule="quadratic")


def test_buffers_are_float32_from_float64_and_not_checkpointed():
    d = GaussianDiffusion("ldm")
    assert d.alphas_cumprod.dtype == torch.float32 and d.alphas_cumprod64.dtype == torch.float64
    assert torch.allclose(d.alphas_cumprod.double(), d.alphas_cumprod64, rtol=1e-6, atol=0)
    assert d.state_dict() == {}  # derived from the config; nothing to save
    assert d.posterior_variance[0].item() == 0.0  # beta~ at the first step: q(z_{-1}|z_0, z_0) is a point mass
    assert d.alpha_bar(-1) == 1.0 and d.alpha_bar(999) == pytest.approx(1.42e-4, rel=0.01)


# ------------------------------------------------------------------------------------------ q(z_t | z_0)
def test_q_sample_statistics():
    d = GaussianDiffusion("ldm")
    g = torch.Generator().manual_seed(0)
    z0 = torch.full((4, 4, 64, 64), 1.5)  # 65536 values
    for t in (0, 250, 999):
        noise = torch.randn(z0.shape, generator=g)
        zt = d.q_sample(z0, torch.full((4,), t), noise)
        abar = d.alpha_bar(t)
        n = zt.numel()
        sd = math.sqrt(1 - abar)
        # mean within 5 standard errors, std within 5 standard errors (se of a std ~ sd / sqrt(2n))
        assert abs(zt.mean().item() - math.sqrt(abar) * 1.5) < 5 * sd / math.sqrt(n) + 1e-6
        assert abs(zt.std().item() - sd) < 5 * sd / math.sqrt(2 * n) + 1e-6


def test_q_sample_gathers_per_sample_timesteps_any_int_dtype():
    d = GaussianDiffusion("ldm")
    z0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    noise = torch.randn_like(z0)
    t = torch.tensor([0, 500, 999], dtype=torch.int32)
    zt = d.q_sample(z0, t, noise)
    for i, ti in enumerate(t.tolist()):
        a = d.alpha_bar(ti)
        assert torch.allclose(zt[i], math.sqrt(a) * z0[i] + math.sqrt(1 - a) * noise[i], atol=1e-6)
    # a Python int t uses the float64 schedule exactly
    zt_int = d.q_sample(z0, 500, noise)
    a = d.alpha_bar(500)
    assert torch.allclose(zt_int, math.sqrt(a) * z0 + math.sqrt(1 - a) * noise, atol=1e-14)


def test_bad_timesteps_raise_clear_errors():
    d = GaussianDiffusion("ldm")
    z0 = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        d.q_sample(z0, torch.tensor([0, 1000]), z0)
    with pytest.raises(ValueError, match="shape \\(B,\\)"):
        d.q_sample(z0, torch.tensor([3]), z0)
    with pytest.raises(TypeError, match="integer tensor"):
        d.q_sample(z0, torch.tensor([0.5, 1.0]), z0)
    with pytest.raises(ValueError, match="out of range"):
        d.q_sample(z0, -1, z0)


@pytest.mark.parametrize("param", ["eps", "v"])
def test_parameterizations_round_trip(param):
    d = GaussianDiffusion(DiffusionConfig(parameterization=param))
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    for t in (torch.tensor([0, 10, 500, 999]), 700):
        zt = d.q_sample(z0, t, eps)
        out = eps if param == "eps" else d.v_target(z0, t, eps)
        tol = 1e-5 if isinstance(t, torch.Tensor) else 1e-10  # float32 buffers vs float64 scalars
        assert torch.allclose(d.predict_x0(zt, t, out), z0, atol=tol * 100)  # /sqrt(abar) amplifies at t=999
        assert torch.allclose(d.predict_eps(zt, t, out), eps, atol=tol)
        if param == "v":
            assert torch.allclose(d.predict_v(zt, t, z0, eps), out, atol=1e-12)


def test_v_is_a_rotation_of_eps_and_x0():
    d = GaussianDiffusion("ldm")
    z0, eps = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    v = d.v_target(z0, 300, eps)
    a = d.alpha_bar(300)
    # ||v||^2 + ||z_t||^2 = ||eps||^2 + ||z0||^2 (a rotation by phi with cos(phi) = sqrt(alpha_bar))
    zt = d.q_sample(z0, 300, eps)
    assert torch.allclose(v.pow(2) + zt.pow(2), eps.pow(2) + z0.pow(2), atol=1e-5)
    assert torch.allclose(v, math.sqrt(a) * eps - math.sqrt(1 - a) * z0)


# ------------------------------------------------------------------------------------------ the objective
@pytest.mark.parametrize("param", ["eps", "v"])
@pytest.mark.parametrize("loss_type", ["mse", "l1"])
def test_loss_is_minimised_by_the_true_noise(param, loss_type):
    d = GaussianDiffusion(DiffusionConfig(parameterization=param, loss_type=loss_type))
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(8, 4, 8, 8, generator=g)
    noise = torch.randn(8, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)

    def oracle(delta: float):
        def model_fn(z_t, t_, **kw):
            target = noise if param == "eps" else d.v_target(z0, t_, noise)
            return target + delta

        return model_fn

    best = d.training_losses(oracle(0.0), z0, t=t, noise=noise)
    assert best.ndim == 0 and best.item() < 1e-10
    worse = d.training_losses(oracle(0.1), z0, t=t, noise=noise)
    expected = 0.01 if loss_type == "mse" else 0.1
    assert worse.item() == pytest.approx(expected, rel=1e-4)


def test_training_losses_draws_with_the_generator_and_passes_model_kwargs():
    d = GaussianDiffusion("ldm")
    z0 = torch.randn(6, 2, 4, 4)
    seen = {}

    def model_fn(z_t, t, context=None):
        seen["t"], seen["context"] = t.clone(), context
        return torch.zeros_like(z_t)

    ctx = torch.ones(6, 3, 5)
    l1 = d.training_losses(model_fn, z0, generator=torch.Generator().manual_seed(7), context=ctx)
    t1 = seen["t"]
    l2 = d.training_losses(model_fn, z0, generator=torch.Generator().manual_seed(7), context=ctx)
    assert seen["context"] is ctx
    assert torch.equal(t1, seen["t"]) and l1.item() == l2.item()
    assert t1.dtype == torch.long and t1.min() >= 0 and t1.max() <= 999
    # zero prediction: the loss is the mean squared noise, ~ 1
    assert 0.7 < l1.item() < 1.3
    l3 = d.training_losses(model_fn, z0, generator=torch.Generator().manual_seed(8), context=ctx)
    assert l3.item() != l1.item()


def test_training_losses_bf16_output_and_gradients():
    d = GaussianDiffusion("ldm")
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    z0 = torch.randn(4, 2, 8, 8)

    def model_fn(z_t, t):
        return conv(z_t).to(torch.bfloat16)  # what a network under bf16 autocast returns

    loss = d.training_losses(model_fn, z0, generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one value per latent element"):
        d.training_losses(lambda z, t: z[:, :1], z0)
