"""Tests of the inpainting and super-resolution pipelines (paper Sec. 4.4-4.5) on micro models."""

from __future__ import annotations

import pytest
import torch

from ldm_minimal.masks import box_mask
from ldm_minimal.pipelines import bicubic_upscale, inpaint, inpaint_baseline, latent_mask, upscale
from test_latent_diffusion import gen, micro, shapes_batch


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return shapes_batch(n=2)["image"]


@pytest.fixture(scope="module")
def hole() -> torch.Tensor:
    m = box_mask(32, (6, 9, 21, 27), batch_size=2)  # (2, 1, 32, 32), 1 = hole
    m[1] = 0
    m[1, :, 20:30, 2:12] = 1
    return m


def test_inpaint_is_exact_on_the_known_region(images, hole):
    m = micro("shapes-inpaint")
    m.set_scale_factor_from(images)
    out = inpaint(m, images, hole, steps=2, progress=False, generator=gen(0))
    assert out.shape == images.shape
    known = hole.expand_as(images) == 0
    assert torch.equal(out[known], images[known])
    # the hole is the model's sample for the same inputs
    x_hat = m.sample({"image": images, "mask": hole}, steps=2, progress=False, generator=gen(0))
    assert torch.equal(out[~known], x_hat[~known])
    # a shared (1, 1, H, W) mask and a boolean mask work too
    shared = inpaint(m, images, hole[:1].bool(), steps=1, progress=False)
    assert torch.equal(shared[:, :, :9], images[:, :, :9])


def test_inpaint_baseline_keeps_the_known_region(images, hole):
    m = micro("shapes-uncond")
    m.set_scale_factor_from(images)
    out = inpaint_baseline(m, images, hole, steps=3, progress=False, generator=gen(0))
    known = hole.expand_as(images) == 0
    assert out.shape == images.shape and torch.equal(out[known], images[known])
    assert not torch.equal(out[~known], images[~known])  # the hole was generated
    # in latent space the sampler ends on the known latent exactly
    z0 = m.encode(images, sample=False)
    m_lat = latent_mask(hole, m.f)
    _, res = m.sample(2, steps=3, inpaint={"z0": z0, "mask": m_lat}, return_trajectory=True, progress=False)
    keep = m_lat.expand_as(z0) == 0
    assert torch.equal(res.samples[keep], z0[keep])


def test_inpaint_baseline_on_the_pixel_model(images, hole):
    m = micro("shapes-pixel")
    out = inpaint_baseline(m, images, hole, steps=2, progress=False)
    known = hole.expand_as(images) == 0
    assert torch.equal(out[known], images[known])


def test_latent_mask_marks_a_cell_with_any_hole_pixel():
    mask = torch.zeros(1, 1, 32, 32)
    mask[0, 0, 5, 30] = 1  # one pixel in latent cell (1, 7) for f = 4
    lat = latent_mask(mask, 4)
    assert lat.shape == (1, 1, 8, 8) and int(lat.sum()) == 1 and lat[0, 0, 1, 7] == 1


def test_inpaint_bad_inputs(images, hole):
    m = micro("shapes-inpaint")
    with pytest.raises(ValueError, match="mask has size 16x16 but the image is 32x32"):
        inpaint(m, images, torch.zeros(2, 1, 16, 16), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"mask values must be in \[0, 1\].*mask / 255"):
        inpaint(m, images, hole * 255, steps=1, progress=False)
    with pytest.raises(ValueError, match="batch size 3 but there are 2 images"):
        inpaint(m, images, torch.zeros(3, 1, 32, 32), steps=1, progress=False)
    with pytest.raises(ValueError, match="not divisible by the downsampling factor f=4"):
        inpaint(m, images[..., :30, :30], hole[..., :30, :30], steps=1, progress=False)
    with pytest.raises(ValueError, match="conditioner='inpaint'.*inpaint_baseline"):
        inpaint(micro("shapes-uncond"), images, hole, steps=1, progress=False)
    with pytest.raises(ValueError, match="unconditional model"):
        inpaint_baseline(m, images, hole, steps=1, progress=False)


def test_upscale_output_size(images):
    m = micro("shapes-sr")
    m.set_scale_factor_from(images)
    low = torch.nn.functional.avg_pool2d(images, 4)  # (2, 3, 8, 8)
    out = upscale(m, low, steps=2, progress=False, generator=gen(0))
    assert out.shape == (2, 3, 32, 32) and float(out.abs().max()) <= 1
    # convolutional: a 16 x 16 input gives 64 x 64
    assert upscale(m, torch.zeros(1, 3, 16, 16), steps=1, progress=False).shape == (1, 3, 64, 64)


def test_bicubic_baseline(images):
    low = torch.nn.functional.avg_pool2d(images, 4)
    up = bicubic_upscale(low)
    assert up.shape == (2, 3, 32, 32) and float(up.min()) >= -1 and float(up.max()) <= 1
    # constant images stay constant
    assert torch.allclose(bicubic_upscale(torch.full((1, 3, 4, 4), 0.3)), torch.full((1, 3, 16, 16), 0.3), atol=1e-5)


def test_upscale_bad_inputs(images):
    m = micro("shapes-sr")
    with pytest.raises(ValueError, match=r"lowres has size 5x5.*20x20.*multiples of 2"):
        upscale(m, torch.zeros(1, 3, 5, 5), steps=1, progress=False)
    with pytest.raises(ValueError, match="channels"):
        upscale(m, torch.zeros(1, 1, 8, 8), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        upscale(m, torch.full((1, 3, 8, 8), 200.0), steps=1, progress=False)
    with pytest.raises(ValueError, match="conditioner='lowres'.*bicubic_upscale"):
        upscale(micro("shapes-uncond"), torch.zeros(1, 3, 8, 8), steps=1, progress=False)


def test_inpaint_baseline_runs_on_a_text_model_under_its_null_condition(images, hole):
    m = micro("shapes-t2i")  # trained with condition dropout: its null condition is an unconditional model
    m.set_scale_factor_from(images)
    out = inpaint_baseline(m, images, hole, steps=2, progress=False, generator=gen(0))
    known = hole.expand_as(images) == 0
    assert out.shape == images.shape and torch.equal(out[known], images[known])
    assert not torch.equal(out[~known], images[~known])  # the hole was redrawn
