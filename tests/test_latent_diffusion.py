"""Tests of the LatentDiffusion wrapper (paper Sec. 3-4): scale factor, first stages, condition dropout, training
smoke runs for every conditioning mode, sampling shapes and bad-input errors.

Speed: the presets are built once (to check that they build and derive the UNet's channels); everything that
trains or samples uses "micro" versions of them (a 16-channel, 2-level UNet and an 8-channel f = 4 autoencoder).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from ldm_minimal.autoencoder import build_autoencoder
from ldm_minimal.data.shapes import NUM_CLASSES, SHAPES, shapes_preset
from ldm_minimal.data.torch_datasets import ShapesDataset, collate
from ldm_minimal.diffusion import DiffusionConfig
from ldm_minimal.latent_diffusion import LatentDiffusion
from ldm_minimal.latent_diffusion_config import LDM_PRESETS, LatentDiffusionConfig, ldm_config

MICRO_UNET = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_factors=(2,), dim_head=16,
                  norm_groups=4)
MICRO_COND = {"shapes-t2i": dict(width=32, layers=1, heads=2), "shapes-layout": dict(width=32)}
MODES = ["shapes-t2i", "shapes-class", "shapes-layout", "shapes-semantic", "shapes-sr", "shapes-inpaint",
         "shapes-uncond", "shapes-pixel"]


@functools.lru_cache(maxsize=None)
def micro_ae(kind: str = "kl") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_autoencoder(f"tiny-{kind}-f4", ch=8)


def micro(name: str, first_stage: torch.nn.Module | None = None, **overrides) -> LatentDiffusion:
    """A CPU-fast version of preset ``name``: micro UNet, micro autoencoder, small text/layout encoders."""
    cfg = ldm_config(name, unet_overrides=dict(MICRO_UNET), **overrides)
    cfg.conditioner_kwargs.update(MICRO_COND.get(name, {}))
    torch.manual_seed(0)
    if cfg.first_stage == "identity":
        return LatentDiffusion(cfg)
    return LatentDiffusion(cfg, first_stage=first_stage if first_stage is not None else micro_ae())


@functools.lru_cache(maxsize=None)
def _batch(world: str, n: int) -> dict:
    ds = ShapesDataset(shapes_preset(world), length=n)
    return collate([ds[i] for i in range(n)])


def shapes_batch(world: str = "shapes32", n: int = 8) -> dict:
    return dict(_batch(world, n))  # a shallow copy: tests never change the cached tensors


def conditions_for(name: str, n: int = 2) -> dict | int:
    """The sampling input of a mode: a batch of conditions, or a number for unconditional models."""
    if name in ("shapes-uncond", "shapes-pixel"):
        return n
    b = shapes_batch(LDM_PRESETS[name].world, n)
    if name == "shapes-inpaint":
        mask = torch.zeros(n, 1, 32, 32)
        mask[..., 8:24, 4:20] = 1
        return {"image": b["image"], "mask": mask}
    if name == "shapes-sr":
        return {"lowres": torch.nn.functional.avg_pool2d(b["image"], 4)}
    return b


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)




# ----------------------------------------------------------------------------------------------------------------
# Presets and configuration


def test_every_preset_builds_and_derives_the_unet_channels():
    assert NUM_CLASSES == LDM_PRESETS["shapes-class"].conditioner_kwargs["num_classes"]
    assert 1 + len(SHAPES) == LDM_PRESETS["shapes-semantic"].conditioner_kwargs["num_labels"]
    for name in LDM_PRESETS:
        m = LatentDiffusion(name)
        u, c = m.unet.cfg, m.conditioner
        assert u.out_channels == m.latent_channels, name
        assert u.in_channels == m.latent_channels + m.concat_channels, name
        assert (u.context_dim is not None) == (c is not None and c.mode == "crossattn"), name
        assert (u.num_classes is not None) == (c is not None and c.mode == "class"), name
        if c is not None and c.mode == "crossattn":
            assert u.context_dim == c.context_dim
        counts = m.parameter_counts()
        assert counts["unet"] < 2_100_000, (name, counts)  # tiny (CPU) size
        # f = 4 latents are 8 x 8; the pixel model works on 32 x 32 pixels
        assert m.latent_size == ((32, 32) if name == "shapes-pixel" else (8, 8))
    assert LatentDiffusion("shapes-inpaint").concat_channels == 3 + 1  # masked-image latent + mask
    assert LatentDiffusion("shapes-sr").concat_channels == 3  # the 8 x 8 low-resolution image = latent size
    assert LatentDiffusion("shapes-semantic").concat_channels == 1 + len(SHAPES)


def test_unknown_names_and_bad_config_values():
    with pytest.raises(ValueError, match="shapes-t2i.*shapes-uncond|shapes-class"):
        ldm_config("shapes-nope")
    with pytest.raises(ValueError, match="Unknown LatentDiffusionConfig field"):
        ldm_config("shapes-uncond", colour="red")
    with pytest.raises(ValueError, match="derives"):
        LatentDiffusionConfig(unet_overrides={"in_channels": 7})
    with pytest.raises(ValueError, match=r"cond_drop_prob.*\[0, 1\]"):
        LatentDiffusionConfig(cond_drop_prob=1.5)
    with pytest.raises(ValueError, match="first stage"):
        LatentDiffusion(ldm_config("shapes-uncond", first_stage="no-such-autoencoder"))
    with pytest.raises(ValueError, match="image_size=30 .*divisible"):
        micro("shapes-uncond", image_size=30)


def test_ldm_config_copies_and_round_trips():
    cfg = ldm_config("shapes-t2i", cond_drop_prob=0.2)
    cfg.conditioner_kwargs["width"] = 7
    assert LDM_PRESETS["shapes-t2i"].conditioner_kwargs["width"] != 7  # the preset table is untouched
    cfg = ldm_config("shapes-class", diffusion=DiffusionConfig(T=100))
    again = LatentDiffusionConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.diffusion.T == 100


# ----------------------------------------------------------------------------------------------------------------
# The latent space: scale factor, first stages


def test_scale_factor_is_computed_from_data_and_stored():
    m = micro("shapes-uncond")
    x = shapes_batch()["image"]
    assert float(m.scale_factor) == 1.0 and not bool(m.scale_factor_set)
    sf = m.set_scale_factor_from(x, generator=gen(3))
    assert bool(m.scale_factor_set) and math.isclose(float(m.scale_factor), sf, rel_tol=1e-6)
    # the latents of the batch it was computed from have unit std after scaling (same posterior sample)
    z = m.encode(x, sample=True, generator=gen(3))
    assert abs(float(z.flatten().std()) - 1.0) < 1e-4
    raw = m.first_stage.encode_latent(x, sample=True, generator=gen(3))
    assert abs(float(raw.std()) - 1.0) > 0.01  # it really rescaled something
    # stored with the model
    state = m.state_dict()
    assert "scale_factor" in state and "scale_factor_set" in state
    fresh = micro("shapes-uncond")
    fresh.load_state_dict(state)
    assert float(fresh.scale_factor) == pytest.approx(sf) and bool(fresh.scale_factor_set)


def test_training_sets_the_scale_factor_once_from_the_first_batch():
    m = micro("shapes-uncond")
    b1, b2 = shapes_batch("shapes32", 8), shapes_batch("single32", 8)
    m.training_loss(b1, generator=gen(0))
    sf = float(m.scale_factor)
    m2 = micro("shapes-uncond")
    assert sf == pytest.approx(m2.set_scale_factor_from(b1["image"], generator=gen(0)))
    m.training_loss(b2, generator=gen(1))
    assert float(m.scale_factor) == sf  # not recomputed


def test_fixed_scale_factor_is_used_as_given():
    m = micro("shapes-uncond", scale_factor=0.18215)
    assert bool(m.scale_factor_set)
    m.training_loss(shapes_batch(), generator=gen(0))
    assert float(m.scale_factor) == pytest.approx(0.18215)


def test_encode_decode_round_trip_matches_the_first_stage():
    m = micro("shapes-uncond")
    x = shapes_batch(n=4)["image"]
    m.set_scale_factor_from(x, generator=gen(0))
    assert float(m.scale_factor) != pytest.approx(1.0, abs=1e-3)
    fs = m.first_stage
    with torch.no_grad():
        expected = fs.decode_latent(fs.encode_latent(x, sample=False))
        z = m.encode(x, sample=False)
        assert torch.allclose(z, m.scale_factor * fs.encode_latent(x, sample=False))
        assert torch.allclose(m.decode(z), expected, atol=1e-5)
    # KL latents are posterior samples in training (reproducible with a generator), the mode otherwise
    s1, s2 = m.encode(x, generator=gen(1)), m.encode(x, generator=gen(1))
    assert torch.equal(s1, s2) and not torch.allclose(s1, z)


def test_vq_first_stage_gives_pre_quantisation_latents_and_stays_frozen():
    vq = micro_ae("vq")
    m = micro("shapes-uncond", first_stage=vq)
    x = shapes_batch(n=4)["image"]
    m.set_scale_factor_from(x)
    with torch.no_grad():
        z = m.encode(x) / m.scale_factor
        pre = vq.encode(x)
        zq, _, _ = vq.quantize(pre)
    assert torch.allclose(z, pre, atol=1e-6) and not torch.allclose(z, zq)
    m.train()
    assert not vq.training and not vq.quantizer.training  # a training quantiser would restart codes
    vq.train()  # a direct call is a no-op too
    assert not vq.training


def test_first_stage_is_frozen_and_excluded_from_training():
    m = micro("shapes-t2i")
    m.train()
    assert not m.first_stage.training and m.unet.training and m.conditioner.training
    assert not any(p.requires_grad for p in m.first_stage.parameters())
    trainable = {id(p) for p in m.trainable_parameters()}
    assert all(id(p) in trainable for p in m.unet.parameters())
    assert all(id(p) in trainable for p in m.conditioner.parameters())  # the joint text encoder trains too
    assert not any(id(p) in trainable for p in m.first_stage.parameters())
    m.eval()
    assert not m.unet.training


def test_identity_first_stage_is_the_pixel_space_dm():
    m = micro("shapes-pixel")
    x = shapes_batch(n=4)["image"]
    assert m.f == 1 and m.latent_size == (32, 32)
    assert torch.equal(m.encode(x), x)  # scale 1, no compression
    loss, logs = m.training_loss(shapes_batch(n=4), generator=gen(0))
    assert math.isfinite(logs["loss"]) and logs["scale_factor"] == 1.0
    out = m.sample(2, steps=2, progress=False, generator=gen(0))
    assert out.shape == (2, 3, 32, 32)


# ----------------------------------------------------------------------------------------------------------------
# Condition dropout


def test_condition_dropout_replaces_about_p_of_the_rows():
    m = micro("shapes-class", cond_drop_prob=0.5)
    n = 2000
    cond = {"y": torch.randint(0, NUM_CLASSES, (n,), generator=gen(1))}
    dropped, keep = m.drop_conditions(cond, generator=gen(2))
    is_null = dropped["y"] == NUM_CLASSES
    assert torch.equal(is_null, ~keep)  # exactly the dropped rows hold the null class
    assert torch.equal(dropped["y"][keep], cond["y"][keep])
    frac = float(is_null.float().mean())
    assert abs(frac - 0.5) < 4 * math.sqrt(0.25 / n), frac  # 4 standard deviations
    # reproducible with the generator; p = 0 drops nothing
    assert torch.equal(m.drop_conditions(cond, generator=gen(2))[1], keep)
    assert bool(m.drop_conditions(cond, generator=gen(2), p=0.0)[1].all())


def test_condition_dropout_on_text_uses_the_empty_caption():
    m = micro("shapes-t2i", cond_drop_prob=0.5)
    captions = shapes_batch(n=16)["caption"]
    with torch.no_grad():
        cond = m.condition({"caption": captions})
        dropped, keep = m.drop_conditions(cond, generator=gen(0))
        null = m.null_condition(16)
    assert 0 < int(keep.sum()) < 16
    for i in range(16):
        src = cond if keep[i] else null
        assert torch.equal(dropped["context"][i], src["context"][i])
        assert torch.equal(dropped["context_mask"][i], src["context_mask"][i])


def test_training_loss_applies_condition_dropout():
    """With p = 1 every row is trained on the null condition: the loss equals the loss computed by hand."""
    m = micro("shapes-class", cond_drop_prob=1.0)
    batch = shapes_batch("single32", 4)
    m.set_scale_factor_from(batch["image"])
    loss, logs = m.training_loss(batch, generator=gen(5))
    assert logs["cond_kept"] == 0.0
    g = gen(5)  # the same draws in the same order: posterior sample, dropout, then t and eps
    z0 = m.encode(batch["image"], generator=g)
    torch.rand(4, generator=g)
    null = m.null_condition(4)
    expected = m.diffusion.training_losses(m.model_fn, z0, generator=g, **null)
    assert torch.allclose(loss, expected)


# ----------------------------------------------------------------------------------------------------------------
# Smoke training of every conditioning mode: a fixed batch, fixed (t, eps) per step, the loss must drop


@pytest.mark.parametrize("name", MODES)
def test_smoke_training_reduces_the_loss(name):
    m = micro(name)
    batch = shapes_batch(LDM_PRESETS[name].world, 8)
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-3)
    m.train()
    losses = []
    for _ in range(30):
        # the same generator seed every step: the same posterior sample, dropout, mask, t and eps
        loss, logs = m.training_loss(batch, generator=gen(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["loss"])
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (name, first, last)


def test_frozen_text_encoder_trains_the_unet_only():
    m = micro("shapes-t2i-minilm")
    assert m.conditioner.context_dim == 384 and m.unet.cfg.context_dim == 384
    m.train()
    assert not m.conditioner.encoder.training
    assert {id(p) for p in m.trainable_parameters()} == {id(p) for p in m.unet.parameters()}
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-3)
    batch = shapes_batch(n=4)
    before = [p.clone() for p in m.conditioner.parameters()][:3]
    for _ in range(2):
        loss, _ = m.training_loss(batch, generator=gen(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.isfinite(float(loss.detach()))
    assert all(torch.equal(a, b) for a, b in zip(before, list(m.conditioner.parameters())[:3]))


# ----------------------------------------------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("name", MODES)
def test_sampling_shapes_with_guidance(name):
    m = micro(name)
    m.set_scale_factor_from(shapes_batch()["image"])
    out = m.sample(conditions_for(name, 2), steps=3, guidance_scale=2.0, progress=False, generator=gen(0))
    assert out.shape == (2, 3, 32, 32)
    assert float(out.min()) >= -1 and float(out.max()) <= 1
    again = m.sample(conditions_for(name, 2), steps=3, guidance_scale=2.0, progress=False, generator=gen(0))
    assert torch.equal(out, again)  # DDIM eta = 0 with a seeded x_T


def test_guidance_runs_one_batched_call_on_cond_and_null():
    m = micro("shapes-class")
    batch_sizes = []
    hook = m.unet.register_forward_pre_hook(lambda mod, args: batch_sizes.append(args[0].shape[0]))
    try:
        cond = {"class_id": torch.tensor([0, 5, 9])}
        m.sample(cond, steps=2, guidance_scale=3.0, progress=False)
        assert batch_sizes == [6, 6]  # [uncond; cond] in one call per step
        batch_sizes.clear()
        m.sample(cond, steps=2, guidance_scale=1.0, progress=False)
        assert batch_sizes == [3, 3]
    finally:
        hook.remove()


def test_ddpm_sampler_and_trajectory():
    m = micro("shapes-uncond", diffusion=DiffusionConfig(T=20))
    images, result = m.sample(2, sampler="ddpm", return_trajectory=True, progress=False, generator=gen(0))
    assert images.shape == (2, 3, 32, 32)
    assert len(result.trajectory) == 20 and result.samples.shape == (2, 3, 8, 8)
    images, result = m.sample(1, steps=4, return_trajectory=True, progress=False)
    assert len(result.trajectory) == 4


def test_sampling_beyond_the_training_resolution():
    m = micro("shapes-uncond")
    assert m.sample(1, steps=2, latent_size=16, progress=False).shape == (1, 3, 64, 64)
    assert m.sample(1, steps=2, latent_size=(8, 16), progress=False).shape == (1, 3, 32, 64)
    # a concat condition made at the training latent size follows the larger latent
    s = micro("shapes-semantic")
    out = s.sample({"semantic": shapes_batch(n=1)["semantic"]}, steps=2, latent_size=16, progress=False)
    assert out.shape == (1, 3, 64, 64)
    # a larger input gives a larger latent by itself (the SR model on a 16 x 16 low-resolution image)
    sr = micro("shapes-sr")
    assert sr.sample({"lowres": torch.zeros(1, 3, 16, 16)}, steps=2, progress=False).shape == (1, 3, 64, 64)


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_images_give_clear_errors():
    m = micro("shapes-uncond")
    x = shapes_batch(n=2)["image"]
    with pytest.raises(ValueError, match="not divisible by the downsampling factor f=4"):
        m.encode(x[..., :30, :30])
    with pytest.raises(ValueError, match=r"36x36 .*divisible by 2.*multiples of 8"):
        m.encode(torch.zeros(1, 3, 36, 36))  # 9 x 9 latents cannot be halved by the UNet
    with pytest.raises(ValueError, match="channels"):
        m.encode(x[:, :1])
    with pytest.raises(ValueError, match=r"\[-1, 1\].*x \* 2 - 1|x / 127.5 - 1"):
        m.encode((x + 1) * 127.5)
    with pytest.raises(ValueError, match="'image'"):
        m.training_loss({"caption": ["a red circle"]})
    with pytest.raises(ValueError, match="decode expects latents"):
        m.decode(torch.zeros(1, 4, 8, 8))


def test_bad_sampling_requests_give_clear_errors():
    m = micro("shapes-uncond")
    with pytest.raises(ValueError, match="ddim.*ddpm|ddpm.*ddim"):
        m.sample(1, sampler="euler", progress=False)
    with pytest.raises(ValueError, match="unconditional: call sample\\(n\\)"):
        m.sample({"caption": ["a red circle"]}, progress=False)
    with pytest.raises(ValueError, match="divisible by 2"):
        m.sample(1, latent_size=9, progress=False)
    with pytest.raises(ValueError, match=">= 1"):
        m.sample(0, progress=False)
    with pytest.raises(ValueError, match="guidance_scale"):
        micro("shapes-class").sample({"class_id": torch.tensor([1])}, guidance_scale=-1.0, progress=False)
    inp = micro("shapes-inpaint")
    with pytest.raises(ValueError, match="needs its inputs.*'mask'"):
        inp.sample(2, progress=False)
    x = shapes_batch(n=2)["image"]
    with pytest.raises(ValueError, match="mask has size 16x16 but the image is 32x32"):
        inp.sample({"image": x, "mask": torch.zeros(2, 1, 16, 16)}, steps=1, progress=False)
    with pytest.raises(ValueError, match="concat condition has shape"):
        inp.model_fn(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), concat=torch.zeros(2, 4, 4, 4))


def test_layout_boxes_are_normalised_by_the_size_of_the_image_made():
    m = micro("shapes-layout")
    obj = '{"shape": "circle", "colour": "red", "size": "large", "position": "top left", "bbox": [0, 0, 10, 10]}'
    objects = [f"[{obj}]"]
    small = m.condition({"objects": objects})["context"]
    same = m.condition({"objects": objects, "image": torch.zeros(1, 3, 32, 32)})["context"]
    big = m.condition({"objects": objects}, latent_size=16)["context"]  # a 64 x 64 image: the box is smaller
    assert torch.equal(small, same) and not torch.allclose(small, big)


def test_frozen_first_stage_survives_deepcopy():
    import copy

    m = micro("shapes-uncond")
    ema = copy.deepcopy(m)
    ema.train()
    assert not ema.first_stage.training and ema.unet.training
    assert ema.first_stage is not m.first_stage


def test_first_stage_from_a_checkpoint_path(tmp_path):
    from ldm_minimal.checkpoint import save_checkpoint

    ae = micro_ae()
    path = save_checkpoint(tmp_path / "ae.safetensors", ae, kind="autoencoder", config=ae.cfg)
    m = LatentDiffusion(ldm_config("shapes-uncond", first_stage=str(path), unet_overrides=dict(MICRO_UNET)))
    x = shapes_batch(n=2)["image"]
    with torch.no_grad():
        assert torch.allclose(m.first_stage.encode_latent(x, sample=False), ae.encode_latent(x, sample=False))
    assert not m.first_stage.training and not any(p.requires_grad for p in m.first_stage.parameters())
