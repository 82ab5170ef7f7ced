"""Tests for ldm_minimal.samplers: DDPM, DDIM, classifier-free guidance and the inpainting baseline.

The numerical peer is diffusers (a test-only dependency): its DDPMScheduler / DDIMScheduler, configured to the
same schedule and fed the same model, x_T and per-step noise, must reproduce our whole trajectories.
Tolerances (torch.testing.assert_close: |a - b| <= atol + rtol * |b|): in float64, with diffusers' tables
replaced by our float64 schedule, every x_t and x0_pred agrees with atol = rtol = 1e-9 (observed: <= 1.2e-12
absolute). With diffusers' own float32 schedule and float32 tensors, atol = rtol = 1e-3 (observed: <= 1.1e-3
absolute on x0_pred values of magnitude up to ~50 at t = 981, where 1 / sqrt(alpha_bar) = 50 amplifies float32
rounding of the schedule); an off-by-one timestep changes x0_pred by ~1 %, far outside either tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ldm_minimal.diffusion import DiffusionConfig, GaussianDiffusion
from ldm_minimal.guidance import guided_model_output
from ldm_minimal.samplers import (
    SampleResult,
    _randn,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
)

SHAPE = (2, 4, 8, 8)




@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion("ldm")


def fixed_eps_model(dtype=torch.float64):
    """A deterministic stand-in for eps_theta: a fixed random 3x3 conv, squashed, plus a t-dependent term."""
    g = torch.Generator().manual_seed(1234)
    w = (torch.randn(4, 4, 3, 3, generator=g) * 0.3).to(dtype)

    def model_fn(x, t, **kw):
        tt = t.to(x.dtype).reshape(-1, 1, 1, 1)
        return torch.tanh(F.conv2d(x, w.to(x.dtype), padding=1)) + 0.3 * x * torch.cos(tt / 300.0)

    return model_fn


def x_T(dtype=torch.float64, seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ------------------------------------------------------------------------------------------ timesteps and errors
def test_ddim_timesteps_leading_with_offset_and_s_equals_t():
    assert ddim_timesteps(1000, 50) == list(range(1, 1000, 20))  # 1, 21, ..., 981 like the reference
    assert ddim_timesteps(1000, 1) == [1]
    assert ddim_timesteps(1000, 3) == [1, 334, 667]  # exactly S steps (CompVis would take 4 here)
    assert ddim_timesteps(1000, 999) == list(range(1, 1000))
    # S = T: the offset would reach index T, so it is dropped
    assert ddim_timesteps(1000, 1000) == list(range(0, 1000))
    for s in (1, 7, 10, 50, 333, 500, 501, 999, 1000):
        ts = ddim_timesteps(1000, s)
        assert len(ts) == s and len(set(ts)) == s and 0 <= min(ts) and max(ts) <= 999


def test_bad_sampler_arguments_raise_clear_errors(diffusion):
    m = fixed_eps_model()
    xT = x_T()
    with pytest.raises(ValueError, match=r"1 <= S <= T=1000"):
        ddim_sample(m, diffusion, None, x_T=xT, steps=1001, progress=False)
    with pytest.raises(ValueError, match=r"1 <= S <= T=1000"):
        ddim_sample(m, diffusion, None, x_T=xT, steps=0, progress=False)
    with pytest.raises(TypeError, match="integer"):
        ddim_sample(m, diffusion, None, x_T=xT, steps=50.0, progress=False)
    for eta in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"eta=.* is outside \[0, 1\]"):
            ddim_sample(m, diffusion, None, x_T=xT, eta=eta, progress=False)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        ddim_sample(m, diffusion, None, x_T=xT, guidance_scale=-1.0, progress=False)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        ddpm_sample(m, diffusion, None, x_T=xT, guidance_scale=-0.5, progress=False)
    with pytest.raises(ValueError, match="guidance_scale"):
        guided_model_output(m, xT, torch.zeros(2, dtype=torch.long), {}, {}, -2.0)
    with pytest.raises(ValueError, match="shape"):
        ddim_sample(m, diffusion, (1, 4, 8, 8), x_T=xT, progress=False)
    with pytest.raises(ValueError, match="Give the latent shape"):
        ddim_sample(m, diffusion, None, progress=False)


# ------------------------------------------------------------------------------------------ guidance
class CountingModel:
    """Records every call's batch size; the output depends on the condition so the branches differ."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, x, t, context=None, y=None):
        self.batches.append(x.shape[0])
        return 0.5 * x + context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1) + 0.1 * y.reshape(-1, 1, 1, 1)


def _conds(b=2):
    g = torch.Generator().manual_seed(3)
    cond = {"context": torch.randn(b, 5, 6, generator=g), "y": torch.tensor([1.0, 2.0][:b])}
    uncond = {"context": torch.zeros(b, 5, 6), "y": torch.zeros(b)}
    return cond, uncond


def test_guidance_scale_one_and_zero_and_one_batched_call():
    m = CountingModel()
    x, t = torch.randn(2, 4, 3, 3), torch.tensor([5, 5])
    cond, uncond = _conds()
    out_c = m(x, t, **cond)
    out_u = m(x, t, **uncond)
    m.batches.clear()
    assert torch.equal(guided_model_output(m, x, t, cond, uncond, 1.0), out_c)
    assert torch.equal(guided_model_output(m, x, t, cond, uncond, 0.0), out_u)
    assert m.batches == [2, 2]  # one plain call each
    m.batches.clear()
    guided = guided_model_output(m, x, t, cond, uncond, 3.0)
    assert m.batches == [4]  # ONE batched call on [uncond, cond]
    assert torch.allclose(guided, out_u + 3.0 * (out_c - out_u), atol=1e-6)
    assert not torch.allclose(guided, out_c)
    # a batch-1 null condition is shared by the whole batch
    uncond1 = {"context": torch.zeros(1, 5, 6), "y": torch.zeros(1)}
    assert torch.allclose(guided_model_output(m, x, t, cond, uncond1, 3.0), guided, atol=1e-6)


def test_guidance_condition_errors():
    m = CountingModel()
    x, t = torch.randn(2, 4, 3, 3), torch.tensor([5, 5])
    cond, uncond = _conds()
    with pytest.raises(ValueError, match="same keys"):
        guided_model_output(m, x, t, cond, {"context": uncond["context"]}, 2.0)
    with pytest.raises(ValueError, match="batch size 3"):
        guided_model_output(m, x, t, cond, {"context": torch.zeros(3, 5, 6), "y": torch.zeros(2)}, 2.0)
    with pytest.raises(ValueError, match="pad both token sequences"):
        guided_model_output(m, x, t, cond, {"context": torch.zeros(2, 4, 6), "y": torch.zeros(2)}, 2.0)
    with pytest.warns(UserWarning, match="uncond is None"):
        guided_model_output(m, x, t, cond, None, 2.0)


def test_samplers_make_one_batched_call_per_step_under_guidance(diffusion):
    cond, uncond = _conds()
    m = CountingModel()
    res = ddim_sample(m, diffusion, (2, 4, 3, 3), steps=7, cond=cond, uncond=uncond, guidance_scale=4.0,
                      generator=torch.Generator().manual_seed(0), progress=False)
    assert m.batches == [4] * 7 and res.samples.shape == (2, 4, 3, 3)
    small = GaussianDiffusion(DiffusionConfig(T=20))
    m.batches.clear()
    ddpm_sample(m, small, (2, 4, 3, 3), cond=cond, uncond=uncond, guidance_scale=4.0, progress=False)
    assert m.batches == [4] * 20


# ------------------------------------------------------------------------------------------ DDIM behaviour
def test_ddim_eta0_is_deterministic_and_eta1_is_not(diffusion):
    m = fixed_eps_model()
    xT = x_T()
    a = ddim_sample(m, diffusion, None, x_T=xT, steps=20, generator=torch.Generator().manual_seed(1), progress=False)
    b = ddim_sample(m, diffusion, None, x_T=xT, steps=20, generator=torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(a.samples, b.samples)
    c = ddim_sample(m, diffusion, None, x_T=xT, steps=20, eta=1.0, generator=torch.Generator().manual_seed(1),
                    progress=False)
    d = ddim_sample(m, diffusion, None, x_T=xT, steps=20, eta=1.0, generator=torch.Generator().manual_seed(2),
                    progress=False)
    assert not torch.allclose(c.samples, d.samples)
    e = ddim_sample(m, diffusion, None, x_T=xT, steps=20, eta=1.0, generator=torch.Generator().manual_seed(1),
                    progress=False)
    assert torch.equal(c.samples, e.samples)  # same seed, same samples


def test_trajectory_and_result_layout(diffusion):
    m = fixed_eps_model(torch.float32)
    res = ddim_sample(m, diffusion, SHAPE, steps=5, generator=torch.Generator().manual_seed(0),
                      return_trajectory=True, progress=False)
    assert isinstance(res, SampleResult) and res.samples.dtype == torch.float32
    assert res.timesteps == [801, 601, 401, 201, 1]
    assert [t for t, _, _ in res.trajectory] == res.timesteps
    for _, xt, x0 in res.trajectory:
        assert xt.shape == SHAPE and x0.shape == SHAPE and xt.device.type == "cpu"
    # the first state is the starting noise drawn with the generator
    assert torch.equal(res.trajectory[0][1], torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)))
    assert ddim_sample(m, diffusion, SHAPE, steps=5, progress=False).trajectory is None


def test_ddim_s_equals_t_eta1_takes_ddpm_steps(diffusion):
    """DDIM on the full grid with eta = 1 IS ancestral DDPM, step for step.

    The only difference is the documented last step: DDPM ends on z0_hat (alpha_bar = 1) while DDIM, like the
    reference, stops at alpha_bar_0, so its step at t = 0 leaves x unchanged.
    """
    m = fixed_eps_model()
    xT = x_T()
    a = ddpm_sample(m, diffusion, None, x_T=xT, generator=torch.Generator().manual_seed(5),
                    return_trajectory=True, progress=False)
    b = ddim_sample(m, diffusion, None, x_T=xT, steps=1000, eta=1.0, generator=torch.Generator().manual_seed(5),
                    return_trajectory=True, progress=False)
    assert len(a.trajectory) == len(b.trajectory) == 1000
    for (ta, xa, pa), (tb, xb, pb) in zip(a.trajectory, b.trajectory):
        assert ta == tb
        torch.testing.assert_close(xb, xa, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(pb, pa, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(b.samples, a.trajectory[-1][1], rtol=1e-12, atol=1e-12)  # stays at alpha_bar_0
    torch.testing.assert_close(a.samples, a.trajectory[-1][2], rtol=1e-12, atol=1e-12)  # DDPM returns z0_hat


def _gaussian_eps_model(diffusion, mu, s):
    """The exact minimiser of Eq. (2) for data z0 ~ N(mu, s^2): eps*(z_t) = E[eps | z_t]."""

    def model_fn(x, t, **kw):
        a = diffusion.alphas_cumprod64.to(x.device)[t].reshape(-1, 1, 1, 1).to(x.dtype)
        # E[eps | z_t] = sqrt(1 - a) (z_t - sqrt(a) mu) / (a s^2 + 1 - a)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s * s + 1 - a)

    return model_fn


def _exact_sampler_marginal(diffusion, mu, s, steps):
    """Mean and std of the sampler's output, propagated exactly (every step is affine-Gaussian here).

    pairs: (alpha_bar_t, alpha_bar_prev, sigma^2, kind). Independent of the sampler code under test.
    """
    m, v = 0.0, 1.0
    for a, ap, var in steps:
        k = math.sqrt(1 - a) / (a * s * s + 1 - a)  # eps = k (x - sqrt(a) mu)
        # x0_hat = (x - sqrt(1-a) eps) / sqrt(a) = A x + B
        A = (1 - math.sqrt(1 - a) * k) / math.sqrt(a)
        B = math.sqrt(1 - a) * k * mu
        # next mean: sqrt(ap) x0_hat + sqrt(1 - ap - var) eps (DDIM form; DDPM is the eta = 1 case)
        c = math.sqrt(max(1 - ap - var, 0.0))
        L = math.sqrt(ap) * A + c * k
        m, v = L * m + math.sqrt(ap) * B - c * k * math.sqrt(a) * mu, L * L * v + var
    return m, math.sqrt(v)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim_T_eta1"])
def test_marginals_match_the_data_for_1d_gaussian(diffusion, sampler):
    """With the optimal eps model for N(0.5, 1) data, many samples have the data's mean and std.

    Tolerance: the exact (propagated) mean/std of the discretised sampler differs from the data by at most
    0.6 % (the "fixed_small" variance ignores Var[z0 | z_t]; for DDIM the output sits at alpha_bar_0, not 1), so
    we allow 0.01 for that plus 5 standard errors of the estimates (se_mean = s/sqrt(n), se_std = s/sqrt(2n)).
    The samples must also agree with the exact propagated marginal within 5 standard errors.
    """
    mu, s, n = 0.5, 1.0, 40_000
    model = _gaussian_eps_model(diffusion, mu, s)
    g = torch.Generator().manual_seed(0)
    shape = (n, 1, 1, 1)
    abar = [diffusion.alpha_bar(t) for t in range(1000)]
    if sampler == "ddpm":
        out = ddpm_sample(model, diffusion, shape, generator=g, x_T=torch.randn(shape, generator=g, dtype=torch.float64),
                          progress=False).samples
        steps = [(abar[t], 1.0 if t == 0 else abar[t - 1],
                  0.0 if t == 0 else (1 - abar[t - 1]) / (1 - abar[t]) * (1 - abar[t] / abar[t - 1]))
                 for t in range(999, -1, -1)]
    else:
        out = ddim_sample(model, diffusion, shape, steps=1000, eta=1.0, generator=g,
                          x_T=torch.randn(shape, generator=g, dtype=torch.float64), progress=False).samples
        steps = [(abar[t], abar[max(t - 1, 0)],
                  0.0 if t == 0 else (1 - abar[t - 1]) / (1 - abar[t]) * (1 - abar[t] / abar[t - 1]))
                 for t in range(999, -1, -1)]
    exact_m, exact_s = _exact_sampler_marginal(diffusion, mu, s, steps)
    se_m, se_s = s / math.sqrt(n), s / math.sqrt(2 * n)
    emp_m, emp_s = out.mean().item(), out.std().item()
    assert abs(exact_m - mu) < 0.01 and abs(exact_s - s) < 0.01  # discretisation bias is small
    assert abs(emp_m - exact_m) < 5 * se_m and abs(emp_s - exact_s) < 5 * se_s
    assert abs(emp_m - mu) < 0.01 + 5 * se_m and abs(emp_s - s) < 0.01 + 5 * se_s


# ------------------------------------------------------------------------------------------ diffusers agreement
def _diffusers_f64(sched, diffusion):
    """Replace diffusers' float32 schedule tables by our float64 ones (same formula, more digits)."""
    sched.betas = diffusion.betas64.clone()
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = diffusion.alphas_cumprod64.clone()
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = sched.alphas_cumprod[0]
    if hasattr(sched, "one"):
        sched.one = torch.tensor(1.0, dtype=torch.float64)
    return sched


def _ddim_scheduler(diffusion, steps_offset=1, f64=True, **kw):
    from diffusers import DDIMScheduler

    cfg = diffusion.cfg
    sched = DDIMScheduler(num_train_timesteps=cfg.T, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                          beta_schedule="scaled_linear", steps_offset=steps_offset, set_alpha_to_one=False,
                          timestep_spacing="leading", **{"clip_sample": False, **kw})
    return _diffusers_f64(sched, diffusion) if f64 else sched


def _run_diffusers_ddim(sched, model, xT, steps, eta, seed, dtype):
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x, traj = xT.clone(), []
    for t in sched.timesteps.tolist():
        out = model(x, torch.full((x.shape[0],), t, dtype=torch.long))
        noise = _randn(tuple(x.shape), g, x.device, dtype) if eta > 0 else None  # the noise our sampler draws
        step = sched.step(out, t, x, eta=eta, variance_noise=noise)
        traj.append((t, x, step.pred_original_sample))
        x = step.prev_sample
    return x, traj


def _assert_same_trajectory(ours, theirs, final_ours, final_theirs, tol):
    assert [t for t, _, _ in ours] == [t for t, _, _ in theirs]
    for (t, xa, pa), (_, xb, pb) in zip(ours, theirs):
        torch.testing.assert_close(xa, xb.to(xa.dtype), rtol=tol, atol=tol, msg=lambda m: f"x_t at t={t}: {m}")
        torch.testing.assert_close(pa, pb.to(pa.dtype), rtol=tol, atol=tol, msg=lambda m: f"x0 at t={t}: {m}")
    torch.testing.assert_close(final_ours, final_theirs.to(final_ours.dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers_float64(diffusion, steps, eta):
    model, xT = fixed_eps_model(), x_T()
    ours = ddim_sample(model, diffusion, None, x_T=xT, steps=steps, eta=eta,
                       generator=torch.Generator().manual_seed(11), return_trajectory=True, progress=False)
    final, traj = _run_diffusers_ddim(_ddim_scheduler(diffusion), model, xT, steps, eta, 11, torch.float64)
    _assert_same_trajectory(ours.trajectory, traj, ours.samples, final, tol=1e-9)


def test_ddim_s_equals_t_matches_diffusers_without_offset_where_diffusers_with_offset_crashes(diffusion):
    """Documented difference: at S = T, diffusers(steps_offset=1) (like CompVis) indexes alpha_bar[T] and fails;
    ours drops the offset there and then equals diffusers(steps_offset=0)."""
    model, xT = fixed_eps_model(), x_T()
    with pytest.raises(IndexError):
        _run_diffusers_ddim(_ddim_scheduler(diffusion, steps_offset=1), model, xT, 1000, 0.0, 0, torch.float64)
    ours = ddim_sample(model, diffusion, None, x_T=xT, steps=1000, eta=1.0,
                       generator=torch.Generator().manual_seed(4), return_trajectory=True, progress=False)
    final, traj = _run_diffusers_ddim(_ddim_scheduler(diffusion, steps_offset=0), model, xT, 1000, 1.0, 4,
                                      torch.float64)
    _assert_same_trajectory(ours.trajectory, traj, ours.samples, final, tol=1e-9)


def test_ddpm_matches_diffusers_float64(diffusion, monkeypatch):
    from diffusers import DDPMScheduler
    import diffusers.schedulers.scheduling_ddpm as ddpm_module

    # diffusers draws its noise with randn_tensor in the model's dtype; make it draw exactly our noise
    monkeypatch.setattr(ddpm_module, "randn_tensor",
                        lambda shape, generator=None, device=None, dtype=None: _randn(tuple(shape), generator, device, dtype))
    cfg = diffusion.cfg
    sched = _diffusers_f64(DDPMScheduler(num_train_timesteps=cfg.T, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                                         beta_schedule="scaled_linear", variance_type="fixed_small",
                                         clip_sample=False), diffusion)
    sched.set_timesteps(1000)
    model, xT = fixed_eps_model(), x_T()
    g = torch.Generator().manual_seed(21)
    x, traj = xT.clone(), []
    for t in sched.timesteps.tolist():
        step = sched.step(model(x, torch.full((x.shape[0],), t, dtype=torch.long)), t, x, generator=g)
        traj.append((t, x, step.pred_original_sample))
        x = step.prev_sample
    ours = ddpm_sample(model, diffusion, None, x_T=xT, generator=torch.Generator().manual_seed(21),
                       return_trajectory=True, progress=False)
    _assert_same_trajectory(ours.trajectory, traj, ours.samples, x, tol=1e-9)


def test_ddim_matches_diffusers_float32_own_schedule(diffusion):
    """Plain float32 on both sides, diffusers with its own float32 schedule: agreement to 1e-3."""
    model, xT = fixed_eps_model(torch.float32), x_T(torch.float32)
    ours = ddim_sample(model, diffusion, None, x_T=xT, steps=50, eta=1.0, generator=torch.Generator().manual_seed(3),
                       return_trajectory=True, progress=False)
    final, traj = _run_diffusers_ddim(_ddim_scheduler(diffusion, f64=False), model, xT, 50, 1.0, 3, torch.float32)
    _assert_same_trajectory(ours.trajectory, traj, ours.samples, final, tol=1e-3)


def test_ddim_v_prediction_and_clipping_match_diffusers():
    d = GaussianDiffusion(DiffusionConfig(beta_start=0.00085, beta_end=0.012, parameterization="v"))
    model, xT = fixed_eps_model(), x_T()
    ours = ddim_sample(model, d, None, x_T=xT, steps=25, eta=0.5, generator=torch.Generator().manual_seed(9),
                       return_trajectory=True, progress=False, clip_x0=True)
    sched = _ddim_scheduler(d, prediction_type="v_prediction", clip_sample=True)
    final, traj = _run_diffusers_ddim(sched, model, xT, 25, 0.5, 9, torch.float64)
    _assert_same_trajectory(ours.trajectory, traj, ours.samples, final, tol=1e-9)
    assert max(p.abs().max().item() for _, _, p in ours.trajectory) <= 1.0


# ------------------------------------------------------------------------------------------ inpainting baseline
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_inpainting_baseline_keeps_the_known_region(sampler):
    d = GaussianDiffusion(DiffusionConfig(T=100))
    model = fixed_eps_model(torch.float32)
    z0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8)) * 2.0
    mask = torch.zeros(SHAPE[0], 1, *SHAPE[2:])
    mask[..., 2:6, 3:7] = 1.0  # the hole to generate
    kw = dict(generator=torch.Generator().manual_seed(0), inpaint={"z0": z0, "mask": mask}, progress=False,
              return_trajectory=True)
    res = (ddim_sample(model, d, SHAPE, steps=10, eta=0.5, **kw) if sampler == "ddim"
           else ddpm_sample(model, d, SHAPE, **kw))
    keep = (1 - mask).bool().expand(SHAPE)
    assert torch.equal(res.samples[keep], z0[keep])  # exactly the known latent at the end
    assert not torch.allclose(res.samples[~keep], z0[~keep], atol=0.1)  # the hole is generated
    # during sampling the known region sits at the right noise level: close to sqrt(abar) z0 late in sampling
    t_last, x_last, _ = res.trajectory[-1]
    a = d.alpha_bar(t_last)
    err = (x_last[keep] - math.sqrt(a) * z0[keep]).pow(2).mean().sqrt().item()
    assert err < 3 * math.sqrt(1 - a)


def test_inpainting_bad_mask_raises(diffusion):
    model = fixed_eps_model(torch.float32)
    z0 = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="latent resolution"):
        ddim_sample(model, diffusion, SHAPE, steps=2, inpaint={"z0": z0, "mask": torch.zeros(2, 1, 16, 16)},
                    progress=False)
    with pytest.raises(ValueError, match="1 = hole"):
        ddim_sample(model, diffusion, SHAPE, steps=2, inpaint={"z0": z0}, progress=False)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        ddim_sample(model, diffusion, SHAPE, steps=2, inpaint={"z0": z0, "mask": torch.full((2, 1, 8, 8), 2.0)},
                    progress=False)


def test_bf16_model_output_is_cast_up(diffusion):
    model = fixed_eps_model(torch.float32)
    res = ddim_sample(lambda x, t: model(x, t).to(torch.bfloat16), diffusion, SHAPE, steps=5,
                      generator=torch.Generator().manual_seed(0), progress=False)
    ref = ddim_sample(model, diffusion, SHAPE, steps=5, generator=torch.Generator().manual_seed(0), progress=False)
    assert res.samples.dtype == torch.float32 and torch.isfinite(res.samples).all()
    assert (res.samples - ref.samples).abs().max() < 0.1
