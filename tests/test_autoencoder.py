"""Tests of the first-stage autoencoders E, D (paper Sec. 3.1): shapes for every f, the latent interface,
straight-through gradients of the VQ model, presets and the bad-input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldm_minimal.autoencoder import (
    AUTOENCODER_PRESETS,
    AutoencoderConfig,
    AutoencoderKL,
    IdentityFirstStage,
    VQModel,
    autoencoder_config,
    build_autoencoder,
    num_groups,
)
from ldm_minimal.interop import autoencoder_diffusers_names
from ldm_minimal.regularizers import DiagonalGaussian

FACTORS = [1, 2, 4, 8, 16]




def _images(b: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def _smooth_images(b: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Compressible pictures: random 4x4 colour fields upsampled bilinearly (values in [-1, 1])."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=True)


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    """The tiny presets at half width (ch=16) to keep the CPU tests fast; widths do not change any shape."""
    torch.manual_seed(0)
    return {f"{k}-f{f}": build_autoencoder(f"tiny-{k}-f{f}", ch=16).eval() for k in ("kl", "vq") for f in FACTORS}


# ------------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("f", FACTORS)
def test_kl_shapes_for_every_f(models, f):
    model = models[f"kl-f{f}"]
    assert isinstance(model, AutoencoderKL) and model.f == f
    x = _images()
    with torch.no_grad():
        posterior = model.encode(x)
        assert isinstance(posterior, DiagonalGaussian)
        assert posterior.mean.shape == (2, model.latent_channels, 32 // f, 32 // f)
        x_hat, post = model(x)
    assert x_hat.shape == x.shape
    assert post.kl().shape == (2,)


@pytest.mark.parametrize("f", FACTORS)
def test_vq_shapes_for_every_f(models, f):
    model = models[f"vq-f{f}"]
    assert isinstance(model, VQModel) and model.f == f
    x = _images()
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, model.latent_channels, 32 // f, 32 // f)
        x_hat, qloss, info = model(x)
    assert x_hat.shape == x.shape and qloss.ndim == 0
    assert info["indices"].shape == (2, 32 // f, 32 // f)
    assert 1 <= int(info["used_codes"]) <= z.shape[0] * z.shape[2] * z.shape[3]
    assert 1.0 <= float(info["perplexity"]) <= int(info["used_codes"]) + 1e-4


def test_f16_gives_2x2_latent_and_expected_latent_channels(models):
    with torch.no_grad():
        assert models["kl-f16"].encode_latent(_images()).shape == (2, 8, 2, 2)
    assert [models[f"kl-f{f}"].latent_channels for f in FACTORS] == [3, 3, 3, 4, 8]


def test_decoder_mirrors_encoder_with_one_extra_block_per_level():
    cfg = autoencoder_config("tiny-kl-f8", num_res_blocks=2)
    model = AutoencoderKL(cfg)
    assert [len(level.blocks) for level in model.encoder.levels] == [2] * 4
    assert [len(level.blocks) for level in model.decoder.levels] == [3] * 4
    # widths: encoder goes up ch*(1,2,2,4), decoder comes back down
    assert [lvl.blocks[-1].conv2.out_channels for lvl in model.encoder.levels] == [32, 64, 64, 128]
    assert [lvl.blocks[-1].conv2.out_channels for lvl in model.decoder.levels] == [128, 64, 64, 32]


def test_attention_only_at_requested_factors():
    model = build_autoencoder("tiny-vq-f4", attn_resolutions=(4,))
    has_attn = [any(not isinstance(a, torch.nn.Identity) for a in lvl.attns) for lvl in model.encoder.levels]
    assert has_attn == [False, False, True]
    assert model.encoder.mid.attn_1 is not None


def test_group_norm_helper_handles_tiny_widths():
    assert num_groups(128) == 32 and num_groups(256) == 32  # the reference's 32 groups at paper widths
    assert num_groups(32) == 8 and num_groups(96) == 24 and num_groups(3) == 1 and num_groups(6) == 1
    for c in range(1, 200):
        assert c % num_groups(c) == 0


# ------------------------------------------------------------------------------------------------ latent interface


def test_kl_encode_latent_sample_mode_and_generator(models):
    model = models["kl-f4"]
    x = _images()
    with torch.no_grad():
        mode = model.encode_latent(x, sample=False)
        torch.testing.assert_close(mode, model.encode(x).mode())
        a = model.encode_latent(x, generator=torch.Generator().manual_seed(3))
        b = model.encode_latent(x, generator=torch.Generator().manual_seed(3))
        c = model.encode_latent(x, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, mode)
        assert model.decode_latent(a).shape == x.shape
        x1, _ = model(x, sample_posterior=False)
        torch.testing.assert_close(x1, model.decode_latent(mode))


def test_vq_decode_latent_quantises_first(models):
    model = models["vq-f4"]
    x = _images()
    with torch.no_grad():
        z = model.encode_latent(x)
        x_hat, _, info = model(x)
        # "VQ absorbed into the decoder": decoding the continuous latent quantises it
        torch.testing.assert_close(model.decode_latent(z), x_hat)
        torch.testing.assert_close(model.decode_code(info["indices"]), x_hat)
        # without quantisation the decoder sees a different input
        assert not torch.allclose(model.decode(z, quantize=False), x_hat)
        # a small perturbation of z that keeps the same codes decodes identically
        z_q, _, _ = model.quantize(z)
        torch.testing.assert_close(model.decode_latent(z_q + 1e-6 * torch.randn_like(z_q)), x_hat)


def test_identity_first_stage():
    ident = IdentityFirstStage(3)
    x = _images()
    assert ident.f == 1 and ident.latent_channels == 3
    assert torch.equal(ident.decode_latent(ident.encode_latent(x)), x)
    with pytest.raises(ValueError, match="channels"):
        ident.encode_latent(torch.zeros(1, 1, 8, 8))


def test_last_layer_is_decoder_output_conv(models):
    for model in models.values():
        assert model.last_layer is model.decoder.conv_out.weight
        assert model.last_layer.shape[0] == 3


# ------------------------------------------------------------------------------------------------ gradients


def test_vq_straight_through_gradient_reaches_encoder():
    torch.manual_seed(0)
    model = build_autoencoder("tiny-vq-f4", ch=16, restart_dead_codes=False).eval()
    x = _images(b=2, seed=1)
    enc_params = list(model.encoder.parameters()) + list(model.quant_conv.parameters())

    # the real path: E -> quantise (straight-through) -> D, reconstruction loss
    x_hat, _, _ = model(x)
    grads_st = torch.autograd.grad(F.l1_loss(x_hat, x), enc_params)
    assert sum(float(g.abs().sum()) for g in grads_st) > 0

    # reference: decode from a leaf placed at z_q, then push dL/dz_q through the encoder as if it were dL/dz
    z = model.encode(x)
    z_q, _, _ = model.quantize(z)
    leaf = z_q.detach().requires_grad_(True)
    (g_zq,) = torch.autograd.grad(F.l1_loss(model.decode(leaf, quantize=False), x), leaf)
    grads_ref = torch.autograd.grad(z, enc_params, grad_outputs=g_zq)
    for a, b in zip(grads_st, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_kl_gradient_reaches_encoder_through_sample():
    torch.manual_seed(0)
    model = build_autoencoder("tiny-kl-f8", ch=16)
    x_hat, posterior = model(_images(), generator=torch.Generator().manual_seed(0))
    (F.mse_loss(x_hat, _images()) + 1e-6 * posterior.kl().mean()).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0


def test_tiny_kl_overfits_a_small_batch():
    torch.manual_seed(0)
    model = build_autoencoder("tiny-kl-f4", ch=16)
    x = _smooth_images(b=4, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        x_hat, post = model(x, sample_posterior=False)
        loss = F.mse_loss(x_hat, x) + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.3 * losses[0]


def test_forward_under_bf16_autocast():
    torch.manual_seed(0)
    for name in ("tiny-kl-f4", "tiny-vq-f4"):
        model = build_autoencoder(name)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(_images())
        assert torch.isfinite(out[0].float()).all()
        assert torch.isfinite(out[1].kl() if name.startswith("tiny-kl") else out[1]).all()


# ------------------------------------------------------------------------------------------------ presets


def test_paper_presets_match_reference_configs():
    expected = {  # name: (ch_mult, z, f, n_embed or None)
        "kl-f4": ((1, 2, 4), 3, 4, None),
        "kl-f8": ((1, 2, 4, 4), 4, 8, None),
        "vq-f4": ((1, 2, 4), 3, 4, 8192),
        "vq-f8": ((1, 2, 2, 4), 4, 8, 16384),
        "vq-f16": ((1, 1, 2, 2, 4), 8, 16, 16384),
    }
    for name, (mult, z, f, n) in expected.items():
        cfg = autoencoder_config(name)
        assert (cfg.ch, cfg.num_res_blocks, cfg.ch_mult, cfg.z_channels, cfg.embed_dim, cfg.f) == (128, 2, mult, z, z, f)
        if n is not None:
            assert cfg.kind == "vq" and cfg.n_embed == n and cfg.beta == 0.25


def test_config_overrides_and_copies():
    cfg = autoencoder_config("tiny-vq-f8", n_embed=64)
    assert cfg.n_embed == 64 and AUTOENCODER_PRESETS["tiny-vq-f8"].n_embed != 64
    model = build_autoencoder(cfg, beta=0.5)
    assert model.quantizer.n_embed == 64 and model.quantizer.beta == 0.5


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_autoencoder("kl-f99")
    msg = str(err.value)
    assert "kl-f99" in msg
    for name in ("kl-f4", "kl-f8", "vq-f16", "tiny-kl-f1", "tiny-vq-f16"):
        assert name in msg


def test_bad_config_errors():
    with pytest.raises(ValueError, match="Valid fields"):
        autoencoder_config("tiny-kl-f4", chanels=8)
    with pytest.raises(ValueError, match="'kl' or 'vq'"):
        AutoencoderConfig(kind="vae")
    with pytest.raises(ValueError, match=r"factors \[1, 2, 4\]"):
        autoencoder_config("tiny-kl-f4", attn_resolutions=(32,))
    with pytest.raises(ValueError, match="kind='vq'"):
        VQModel(autoencoder_config("tiny-kl-f4"))
    with pytest.raises(ValueError, match="num_res_blocks must be >= 1"):
        autoencoder_config("tiny-kl-f4", num_res_blocks=0)
    with pytest.raises(TypeError, match="preset name"):
        build_autoencoder(4)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_wrong_channel_count(models, kind):
    with pytest.raises(ValueError, match="1 channels but the model expects 3") as err:
        models[f"{kind}-f4"].encode(torch.zeros(2, 1, 32, 32))
    assert "repeat(1, 3, 1, 1)" in str(err.value)  # the fix is named


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_size_not_divisible_by_f(models, kind):
    with pytest.raises(ValueError, match="not divisible by the downsampling factor f=8") as err:
        models[f"{kind}-f8"].encode_latent(torch.zeros(1, 3, 36, 36))
    assert "32x32" in str(err.value)
    models[f"{kind}-f1"].encode_latent(torch.zeros(1, 3, 7, 9))  # f = 1 accepts any size


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_values_outside_range(models, kind):
    model = models[f"{kind}-f4"]
    with pytest.raises(ValueError, match=r"\[0, 255\] data: use x / 127.5 - 1"):
        model.encode(torch.full((1, 3, 32, 32), 200.0))
    with pytest.raises(ValueError, match=r"expects images in \[-1, 1\]"):
        model.encode(torch.full((1, 3, 32, 32), -3.0))


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_decode_wrong_latent_channels(models, kind):
    model = models[f"{kind}-f4"]
    with pytest.raises(ValueError, match=r"latents of shape \(B, 3, h, w\)") as err:
        model.decode_latent(torch.zeros(1, 4, 8, 8))
    assert "encode" in str(err.value)
    with pytest.raises(ValueError, match="latents of shape"):
        model.decode_latent(torch.zeros(3, 8, 8))


# ------------------------------------------------------------------------------------------------ numerical peer


@pytest.mark.parametrize("case", ["paper-width", "tiny-with-attention"])
def test_kl_autoencoder_matches_diffusers(case):
    """diffusers' AutoencoderKL reproduces the CompVis one; with the same weights ours must give the same numbers.

    diffusers uses one GroupNorm group count everywhere: ch=128 gives our per-width rule's 32 groups; the tiny widths
    need norm_groups=8 (which the peer benchmark sets). The second case also has attention at a level."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    if case == "paper-width":
        cfg = AutoencoderConfig("kl", ch=128, ch_mult=(1, 2), num_res_blocks=1, z_channels=3, embed_dim=3)
        groups, attn = 32, ()
    else:
        cfg = autoencoder_config("tiny-kl-f4", attn_resolutions=(4,), norm_groups=8)
        groups, attn = 8, (False, False, True)
    ours = AutoencoderKL(cfg).eval()
    with torch.no_grad():  # random norms and biases too, so a wrong mapping of any tensor shows
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    peer = diffusers.AutoencoderKL(
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
        down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn or [False] * 2),
        up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn or [False] * 2)),
        layers_per_block=cfg.num_res_blocks, latent_channels=3, norm_num_groups=groups,
    ).eval()
    peer_state = peer.state_dict()
    names = autoencoder_diffusers_names(ours)
    assert sorted(names.values()) == sorted(peer_state), "architectures differ"
    # 1x1 conv (C, C, 1, 1) -> linear (C, C)
    peer.load_state_dict({names[k]: v.reshape(peer_state[names[k]].shape) for k, v in ours.state_dict().items()})
    x = _images(b=2, size=16)
    with torch.no_grad():
        post = ours.encode(x)
        peer_post = peer.encode(x).latent_dist
        torch.testing.assert_close(post.mean, peer_post.mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(post.logvar, peer_post.logvar, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.decode(post.mean), peer.decode(peer_post.mean).sample, rtol=1e-4, atol=1e-5)


def test_norm_groups_sets_every_group_norm_and_is_checked():
    cfg = autoencoder_config("tiny-kl-f4")
    default = {m.num_groups for m in AutoencoderKL(cfg).modules() if isinstance(m, torch.nn.GroupNorm)}
    assert default == {8, 16}  # num_groups(width): 8 at width 32, 16 at width 64
    fixed = AutoencoderKL(autoencoder_config("tiny-kl-f4", norm_groups=8))
    assert {m.num_groups for m in fixed.modules() if isinstance(m, torch.nn.GroupNorm)} == {8}
    with pytest.raises(ValueError, match="norm_groups=5 must be a positive divisor"):
        autoencoder_config("tiny-kl-f4", norm_groups=5)


def test_weights_are_channels_last_on_the_cpu_and_outputs_contiguous():
    """ChannelsLastOnCPU: 4-D weights channels-last on the CPU (faster oneDNN convolutions, docs/performance.md);
    opting out restores the usual layout; outputs are contiguous either way, and the numbers are the same."""
    torch.manual_seed(0)
    model = AutoencoderKL(autoencoder_config("tiny-kl-f4")).eval()
    convs = [p for p in model.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    x = _images(b=2, size=16)
    with torch.no_grad():
        z, x_hat = model.encode(x).mean, model.decode(model.encode(x).mean)
    assert x_hat.is_contiguous() and model.encode_latent(x).is_contiguous()
    x_hat.view(2, -1)  # a caller's .view() works
    model.cpu_channels_last = False
    model.prefer_layout()
    assert all(p.is_contiguous() for p in convs)
    with torch.no_grad():
        torch.testing.assert_close(model.decode(model.encode(x).mean), x_hat, rtol=1e-5, atol=1e-5)
    model.cpu_channels_last = True
    model.float()  # .to()/.float()/... re-apply the preferred layout
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
