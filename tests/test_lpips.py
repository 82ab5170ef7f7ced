"""LPIPS: calibrated heads from the lpips wheel, the VGG16 trunk, offline behaviour, and (with torchvision) equality
with the reference package."""

from __future__ import annotations

import importlib.util
import urllib.error

import pytest
import torch

from ldm_minimal import lpips as L
from ldm_minimal.lpips import LPIPS, PerceptualWeightsUnavailable, load_lpips_heads, lpips_heads_path


@pytest.fixture(scope="module")
def lp() -> LPIPS:
    return LPIPS(backbone="random")


def _images(b: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish images: low-resolution noise upsampled, so that they look a bit like pictures
    low = torch.rand(b, 3, size // 4, size // 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def test_heads_load_from_the_wheel():
    path = lpips_heads_path()
    assert path.is_file() and path.name == "vgg.pth" and path.parent.name == "v0.1"
    heads = load_lpips_heads()
    assert list(heads) == [f"lin{i}.model.1.weight" for i in range(5)]
    assert [h.shape[1] for h in heads.values()] == [64, 128, 256, 512, 512]
    for h in heads.values():
        assert h.shape[0] == 1 and h.shape[2:] == (1, 1) and h.dtype == torch.float32
        assert (h >= 0).all() and h.sum() > 0  # calibrated weights are non-negative


def test_module_uses_the_wheel_heads(lp: LPIPS):
    heads = load_lpips_heads()
    for i, head in enumerate(lp.heads):
        torch.testing.assert_close(head.weight, heads[f"lin{i}.model.1.weight"])


def test_missing_lpips_package_gives_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lpips" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install lpips"):
        lpips_heads_path()


def test_trunk_names_match_torchvision_vgg16(lp: LPIPS):
    keys = list(L.vgg16_features().state_dict())
    conv_idx = sorted({int(k.split(".")[0]) for k in keys})
    assert conv_idx == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert len(L.vgg16_features()) == 30
    # at 32x32, relu5_3 is 2x2 (four 2x2 max-pools)
    feats = lp.features(_images(1))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 512]
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]


def test_identity_symmetry_and_growth_with_noise(lp: LPIPS):
    x = _images(2)
    d0 = lp(x, x)
    assert d0.shape == (2,)
    assert torch.all(d0.abs() < 1e-6)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    y = (x + 0.2 * noise).clamp(-1, 1)
    torch.testing.assert_close(lp(x, y), lp(y, x), atol=1e-6, rtol=1e-5)
    dists = [lp(x, (x + s * noise).clamp(-1, 1)).mean().item() for s in (0.03, 0.2, 0.8)]
    assert all(a < b for a, b in zip(dists, dists[1:])), dists
    assert dists[0] > 0


def test_frozen_but_differentiable(lp: LPIPS):
    assert not any(p.requires_grad for p in lp.parameters())
    lp.train()
    assert not lp.training  # stays in eval mode
    x = _images(2)
    y = (x + 0.1).clamp(-1, 1).requires_grad_(True)
    lp(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in lp.parameters())


def test_random_trunk_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = LPIPS(backbone="random", seed=0)
    after = torch.rand(3)
    torch.testing.assert_close(before, after)  # the global generator was not consumed
    b = LPIPS(backbone="random", seed=0)
    c = LPIPS(backbone="random", seed=1)
    torch.testing.assert_close(a.trunk[0].weight, b.trunk[0].weight)
    assert not torch.equal(a.trunk[0].weight, c.trunk[0].weight)
    # He (fan_out) init: std = sqrt(2 / (out * 3 * 3))
    w = a.trunk[28].weight
    assert abs(w.std().item() - (2 / (512 * 9)) ** 0.5) < 1e-3
    assert torch.all(a.trunk[28].bias == 0)


def test_imagenet_offline_raises_a_helpful_error(monkeypatch):
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PerceptualWeightsUnavailable) as info:
        LPIPS(backbone="imagenet")
    assert calls == [L.VGG16_URL]
    assert isinstance(info.value, RuntimeError)
    msg = str(info.value)
    for needle in (L.VGG16_URL, "URLError", "Name or service not known", "checkpoints", L.VGG16_FILENAME,
                   "lpips-random", "'none'", "blurrier"):
        assert needle in msg, needle


def test_local_pth_file_loads(tmp_path, lp: LPIPS):
    # a file laid out like torchvision's vgg16 state dict (features.* and classifier.*)
    trunk_state = {k: -v for k, v in lp.trunk.state_dict().items()}  # any weights that differ from the fixture's
    state = {f"features.{k}": v for k, v in trunk_state.items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    m = LPIPS(backbone=str(path))
    for k, v in trunk_state.items():
        torch.testing.assert_close(m.trunk.state_dict()[k], v)
    x = _images(2)
    assert m(x, x.flip(-1)).shape == (2,)

    bad = tmp_path / "bad.pth"
    torch.save({"something.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="features.0.weight"):
        LPIPS(backbone=str(bad))


def test_bad_options_and_inputs(lp: LPIPS):
    with pytest.raises(FileNotFoundError, match="'imagenet'.*'random'"):
        LPIPS(backbone="imagenett")
    with pytest.raises(FileNotFoundError, match="heads"):
        LPIPS(backbone="random", heads="calibrated")
    x = _images(2)
    with pytest.raises(ValueError, match="same shape"):
        lp(x, x[:1])
    with pytest.raises(ValueError, match="at least 16x16"):
        lp(x[..., :8, :8], x[..., :8, :8])
    with pytest.raises(ValueError, match="repeat"):
        lp(x[:, :1], x[:, :1])


def test_uniform_heads_give_the_unweighted_baseline():
    m = LPIPS(backbone="random", heads="uniform")
    x = _images(2)
    y = x.flip(-1)
    per = m(x, y, per_layer=True)  # (B, 5)
    feats_x, feats_y = m.features(x), m.features(y)
    manual = torch.stack(
        [(L.unit_normalize(a) - L.unit_normalize(b)).pow(2).sum(1).mean((1, 2)) for a, b in zip(feats_x, feats_y)], 1
    )
    torch.testing.assert_close(per, manual)


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.needs_torchvision
@pytest.mark.skipif(not _torchvision_importable(), reason="torchvision cannot be imported (lpips needs it)")
def test_equals_the_lpips_package():
    import lpips

    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    ours = LPIPS(backbone="random")
    # copy the reference's (random) trunk into ours: net.sliceK.<idx>.weight -> <idx>.weight
    state = {k.split(".", 2)[2]: v for k, v in ref.net.state_dict().items()}
    ours.trunk.load_state_dict(state)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    y = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        expected = ref(x, y).flatten()
        torch.testing.assert_close(ours(x, y), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours(x, x), ref(x, x).flatten(), atol=1e-5, rtol=1e-4)


def test_equals_the_lpips_package_code_with_a_stand_in_torchvision(monkeypatch):
    """Runs here, without torchvision: lpips only takes ``models.vgg16(...).features`` from it, so we hand it our
    own (torchvision-compatible) trunk through a stand-in module and compare the package's real forward code
    (its scaling layer, feature normalisation, heads loading and spatial average) with ours."""
    import sys
    import types

    trunk = L.vgg16_features()
    L.random_init_(trunk, seed=3)
    fake_models = types.ModuleType("torchvision.models")
    fake_models.vgg16 = lambda pretrained=False, **kw: types.SimpleNamespace(features=trunk)
    fake_tv = types.ModuleType("torchvision")
    fake_tv.models = fake_models
    monkeypatch.setitem(sys.modules, "torchvision", fake_tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", fake_models)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        import lpips
    except ImportError as err:  # e.g. scipy missing: lpips' trainer imports it
        pytest.skip(f"lpips cannot be imported even with a stand-in torchvision: {err}")
    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        sys.modules.pop(name)  # do not leave the package imported against the stand-in

    ours = LPIPS(backbone="random", seed=3)
    x, y = _images(2, seed=4), _images(2, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, y), ref(x, y).flatten(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours(x, x), ref(x, x).flatten(), atol=1e-5, rtol=1e-4)
    assert ref(x, y).min() > 1e-3  # a real, non-trivial comparison
