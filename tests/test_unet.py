"""Tests of ldm_minimal.unet: the conditional UNet epsilon_theta (Sec. 3.2-3.3, App. E)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ldm_minimal.interop import unet_diffusers_names
from ldm_minimal.unet import UNET_PRESETS, UNet, UNetConfig, timestep_embedding, unet_config


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny(**overrides) -> UNet:
    return UNet(unet_config("tiny", **overrides))


def perturb_zero_layers(model: torch.nn.Module, std: float = 0.05) -> None:
    """Give the zero-initialised layers (and zero biases) random values so that every path carries signal."""
    with torch.no_grad():
        for p in model.parameters():
            if (p == 0).all():
                p.normal_(0.0, std)


# every conditioning mode: (config overrides, forward kwargs builder)
MODES = {
    "unconditional": ({}, lambda b, s: {}),
    "class": ({"num_classes": 10}, lambda b, s: {"y": torch.tensor([3, 10])[:b]}),
    "crossattn": (
        {"context_dim": 24},
        lambda b, s: {
            "context": torch.randn(b, 5, 24),
            "context_mask": torch.tensor([[1, 1, 1, 0, 0], [1] * 5]).bool(),
        },
    ),
    "concat": ({"in_channels": 3 + 4}, lambda b, s: {}),
    "all": (
        {"in_channels": 3 + 4, "num_classes": 10, "context_dim": 24},
        lambda b, s: {
            "y": torch.tensor([3, 10]),
            "context": torch.randn(b, 5, 24),
            "context_mask": torch.tensor([[1, 1, 1, 0, 0], [1] * 5]).bool(),
        },
    ),
}


# ---------------------------------------------------------------- timestep embedding
def test_timestep_embedding_known_values() -> None:
    emb = timestep_embedding(torch.tensor([0, 1]), 4)
    # dim 4: half = 2, frequencies [1, 1e4^(-1/2)] = [1, 0.01]; layout [cos, cos, sin, sin]
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)]])
    torch.testing.assert_close(emb, expected)
    big = timestep_embedding(torch.tensor([999.0, 2.5]), 7)  # odd dim: a zero column at the end
    assert big.shape == (2, 7) and (big[:, -1] == 0).all()
    assert math.isclose(big[1, 0].item(), math.cos(2.5), abs_tol=1e-6)
    assert math.isclose(big[0, 3].item(), math.sin(999.0), abs_tol=1e-4)


# ---------------------------------------------------------------- shapes and init
@pytest.mark.parametrize("size", [8, 16])
@pytest.mark.parametrize("mode", list(MODES))
def test_forward_shapes_for_every_conditioning_mode(mode: str, size: int) -> None:
    overrides, make_kwargs = MODES[mode]
    model = tiny(**overrides)
    x = torch.randn(2, model.cfg.in_channels, size, size)
    eps = model(x, torch.tensor([0, 999]), **make_kwargs(2, size))
    assert eps.shape == (2, 3, size, size)
    assert (eps == 0).all()  # zero-initialised output head: the untrained model predicts eps = 0


def test_non_square_latents_and_scalar_or_float_timesteps() -> None:
    model = tiny()
    perturb_zero_layers(model)
    x = torch.randn(2, 3, 8, 16)
    out_int = model(x, 5)
    assert out_int.shape == (2, 3, 8, 16)
    torch.testing.assert_close(out_int, model(x, torch.tensor([5, 5])))
    torch.testing.assert_close(out_int, model(x, torch.tensor(5.0)))
    assert not torch.allclose(out_int, model(x, torch.tensor([5.5, 5.5])))  # fractional t is used, not rounded


def test_gradients_reach_every_parameter() -> None:
    overrides, make_kwargs = MODES["all"]
    model = tiny(**overrides)
    perturb_zero_layers(model)
    x = torch.randn(2, 7, 8, 8)
    loss = model(x, torch.tensor([10, 700]), **make_kwargs(2, 8)).square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    # the class table only gets gradient on the rows used (3 and the null class 10)
    assert missing == [], missing
    rows = model.class_embed.weight.grad.abs().sum(1).nonzero().flatten().tolist()
    assert rows == [3, 10]


def test_every_condition_changes_the_output() -> None:
    overrides, make_kwargs = MODES["all"]
    model = tiny(**overrides).eval()
    perturb_zero_layers(model)
    x, t = torch.randn(2, 7, 8, 8), torch.tensor([10, 700])
    kw = make_kwargs(2, 8)
    base = model(x, t, **kw)
    x2 = x.clone()
    x2[:, 3:] = torch.randn(2, 4, 8, 8)  # another concat condition, same z_t
    assert not torch.allclose(base, model(x2, t, **kw))
    assert not torch.allclose(base, model(x, t, **{**kw, "y": torch.tensor([4, 10])}))
    assert not torch.allclose(base, model(x, t, **{**kw, "context": torch.randn(2, 5, 24)}))
    # masked (padding) tokens have no influence
    ctx = kw["context"].clone()
    ctx[0, 3:] = 100.0
    torch.testing.assert_close(base, model(x, t, **{**kw, "context": ctx}))


def test_bf16_autocast_runs_and_stays_close() -> None:
    overrides, make_kwargs = MODES["all"]
    model = tiny(**overrides).eval()
    perturb_zero_layers(model)
    x, t, kw = torch.randn(2, 7, 8, 8), torch.tensor([10, 700]), make_kwargs(2, 8)
    ref, ref_maps = model(x, t, **kw, return_attention=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, maps = model(x, t, **kw, return_attention=True)
        fast = model(x, t, **kw)
    assert out.dtype == x.dtype and torch.isfinite(out).all() and torch.isfinite(fast).all()
    scale = ref.abs().max()
    assert (out - ref).abs().max() < 0.05 * scale
    assert (fast - ref).abs().max() < 0.05 * scale
    for name, m in maps.items():
        torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)))
        assert (m - ref_maps[name]).abs().max() < 0.05


# ---------------------------------------------------------------- attention maps
def test_cross_attention_maps_of_every_transformer() -> None:
    overrides, make_kwargs = MODES["crossattn"]
    model = tiny(**overrides)
    kw = make_kwargs(2, 16)
    eps, maps = model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), **kw, return_attention=True)
    n_transformers = sum(1 for m in model.modules() if type(m).__name__ == "SpatialTransformer")
    assert len(maps) == n_transformers == 7  # down: 1 at ds2 + 1 at ds4, mid, up: 2 at ds4 + 2 at ds2
    assert set(maps) >= {"down.ds2.0", "mid.ds4", "up.ds2.1"}
    heads = 64 // 32
    assert maps["down.ds2.0"].shape == (2, heads, 8 * 8, 5)
    assert maps["mid.ds4"].shape == (2, heads, 4 * 4, 5)
    for m in maps.values():
        torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)))  # a distribution over tokens
        assert (m[0, ..., 3:] == 0).all()  # padding tokens of sample 0 get zero probability
    # without a context there is nothing to return
    _, none = tiny()(torch.randn(1, 3, 8, 8), 3, return_attention=True)
    assert none == {}


# ---------------------------------------------------------------- sizes
def test_parameter_counts_of_presets() -> None:
    assert tiny().num_parameters() < 2_000_000
    assert tiny(context_dim=64).num_parameters() < 2_000_000
    counts = {}
    for name in UNET_PRESETS:
        with torch.device("meta"):  # shapes only, no memory
            counts[name] = UNet(unet_config(name)).num_parameters()
    assert 5e6 < counts["small"] < 10e6
    assert 35e6 < counts["default"] < 60e6
    # our "paper-sd" layout has exactly Stable Diffusion v1's UNet parameter count
    assert counts["paper-sd"] == 859_520_964


def test_unknown_preset_and_field() -> None:
    with pytest.raises(ValueError, match=r"Unknown UNet preset 'huge'.*tiny"):
        unet_config("huge")
    with pytest.raises(ValueError, match=r"Unknown UNetConfig field.*context_dimm"):
        unet_config("tiny", context_dimm=3)
    with pytest.raises(ValueError, match=r"not downsampling factors.*\[1, 2, 4\]"):
        UNetConfig(attention_factors=(16,))
    with pytest.raises(ValueError, match=r"not divisible by 8 groups|cannot be split"):
        UNet(UNetConfig(model_channels=20, norm_groups=8, dim_head=None, num_heads=4))


# ---------------------------------------------------------------- errors
def test_input_errors_name_the_fix() -> None:
    model = tiny(context_dim=24, num_classes=5)
    x, t, y, c = torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 5]), torch.randn(2, 4, 24)
    with pytest.raises(ValueError, match=r"4 channels.*in_channels=3.*concat"):
        model(torch.randn(2, 4, 8, 8), t, c, y=y)
    with pytest.raises(ValueError, match=r"6x6 is not divisible by .* = 4"):
        model(torch.randn(2, 3, 6, 6), t, c, y=y)
    with pytest.raises(ValueError, match=r"width 16.*context_dim=24.*context_dim=16"):
        model(x, t, torch.randn(2, 4, 16), y=y)
    with pytest.raises(ValueError, match=r"context is None.*empty prompt"):
        model(x, t, y=y)
    with pytest.raises(ValueError, match=r"y is None.*null class.*torch.full\(\(B,\), 5\)"):
        model(x, t, c)
    with pytest.raises(ValueError, match=r"labels in \[0, 6\].*null class 5"):
        model(x, t, c, y=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(2,\)"):
        model(x, torch.tensor([1, 2, 3]), c, y=y)
    plain = tiny()
    with pytest.raises(ValueError, match=r"no class embedding.*num_classes="):
        plain(x, t, y=y)
    with pytest.raises(ValueError, match=r"no cross-attention.*context_dim=24"):
        plain(x, t, c)


# ---------------------------------------------------------------- learning
def test_overfits_a_fixed_batch() -> None:
    model = tiny(context_dim=16)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    z_t, t, ctx = torch.randn(2, 3, 8, 8), torch.randint(0, 1000, (2,)), torch.randn(2, 6, 16)
    target = torch.randn(2, 3, 8, 8)  # fixed "true noise"
    losses = []
    for _ in range(20):
        loss = F.mse_loss(model(z_t, t, ctx), target)  # || eps - epsilon_theta(z_t, t, tau(y)) ||^2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(target.square().mean().item(), rel=1e-5)  # zero output at init
    assert losses[-1] < 0.7 * losses[0], losses


# ---------------------------------------------------------------- numerical peer
@pytest.mark.parametrize("scale_shift", [True, False])
def test_matches_diffusers_unet_with_the_same_weights(scale_shift: bool) -> None:
    diffusers = pytest.importorskip("diffusers")
    cfg = unet_config(
        "tiny", in_channels=7, context_dim=24, num_classes=10, dim_head=None, num_heads=2,
        use_scale_shift_norm=scale_shift,
    )
    ours = UNet(cfg).eval()
    theirs = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=7, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=24, attention_head_dim=2, norm_num_groups=8, num_class_embeds=11,
        resnet_time_scale_shift="scale_shift" if scale_shift else "default", flip_sin_to_cos=True, freq_shift=0,
    ).eval()
    perturb_zero_layers(theirs)
    their_sd = theirs.state_dict()
    names = unet_diffusers_names(ours)
    assert sorted(names.values()) == sorted(their_sd), "architectures differ"
    ours.load_state_dict({n: their_sd[d] for n, d in names.items()})

    x, t = torch.randn(2, 7, 8, 8), torch.tensor([3, 871])
    ctx, y = torch.randn(2, 5, 24), torch.tensor([2, 10])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        expected = theirs(x, t, ctx, class_labels=y, encoder_attention_mask=mask).sample
        got = ours(x, t, ctx, mask, y)
    assert expected.abs().max() > 1e-2  # a real signal, not two zero outputs
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
