"""Reconstruction metrics on known inputs, and a short autoencoder training run through the real loop."""

from __future__ import annotations

import json

import pytest
import torch

from ldm_minimal.evaluation.metrics import ReconstructionMetrics, high_frequency_energy, psnr, sharpness_ratio, ssim


def test_psnr_ssim_known_values():
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert torch.all(ssim(x, x) > 0.999)
    # uniform error of 0.1 in [-1, 1] = 0.05 in [0, 1] -> PSNR = 10 log10(1 / 0.0025) = 26.02 dB
    y = (x + 0.1).clamp(-1, 1)
    x2 = x.clamp(-1, 0.9)
    assert psnr(x2 + 0.1, x2).mean().item() == pytest.approx(26.02, abs=0.05)
    assert torch.all(ssim(y, x) < 1)


def test_blur_lowers_sharpness_and_noise_raises_it():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(8, 3, 32, 32, generator=g) > 0.5).float() * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert sharpness_ratio(blurred, x) < 0.5
    assert sharpness_ratio(x, x) == pytest.approx(1.0)
    smooth = torch.zeros(2, 3, 32, 32)
    assert torch.all(high_frequency_energy(smooth) == 0)


def test_reconstruction_metrics_accumulate():
    m = ReconstructionMetrics()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    m.update(x, x)
    m.update(x, x * 0.5)
    out = m.compute()
    assert out["n"] == 8 and out["ssim"] < 1 and out["psnr"] > 0


def test_autoencoder_training_loop_learns_and_writes_a_run(tmp_path):
    from ldm_minimal.autoencoder import build_autoencoder
    from ldm_minimal.autoencoder import load_autoencoder
    from ldm_minimal.training import AETrainConfig, evaluate_autoencoder, make_batches, train_autoencoder

    cfg = AETrainConfig(model="tiny-vq-f4", model_overrides={"ch": 16, "n_embed": 64}, steps=40, batch_size=8,
                        lr=2e-3, perceptual="none", disc_start=30, log_every=10)
    untrained = evaluate_autoencoder(build_autoencoder("tiny-vq-f4", ch=16, n_embed=64),
                                     make_batches("shapes", 32, 16, 0, "test"), 2)
    model, summary = train_autoencoder(cfg, out_dir=tmp_path / "run", progress=False)
    trained = evaluate_autoencoder(model, make_batches("shapes", 32, 16, 0, "test"), 2)
    assert trained["psnr"] > untrained["psnr"] + 3, (untrained, trained)
    assert 1 <= trained["codes_used"] <= 64 and trained["perplexity"] >= 1
    run = tmp_path / "run"
    for name in ("metrics.jsonl", "reconstructions.png", "autoencoder.safetensors", "config.json", "summary.json"):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 39
    assert "logits_fake" in rows[-1], "the discriminator must be active after disc_start"
    assert "logits_fake" not in rows[0]
    loaded, _ = load_autoencoder(run / "autoencoder.safetensors")
    x = next(make_batches("shapes", 32, 4, 0, "test"))
    with torch.no_grad():
        assert torch.allclose(model.eval().decode(model.encode(x)), loaded.decode(loaded.encode(x)), atol=1e-6)
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_autoencoder(cfg, out_dir=run, progress=False)
