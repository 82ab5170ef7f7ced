"""The checkpoints shipped in data/checkpoints/: hashes match the manifest, and each loads and works."""

from __future__ import annotations

import json

import pytest
import torch

from ldm_minimal.autoencoder import load_autoencoder
from ldm_minimal.checkpoint import MANIFEST_NAME, read_checkpoint, sha256_of
from ldm_minimal.utils import DATA_DIR

CKPT_DIR = DATA_DIR / "checkpoints"
MANIFEST = json.loads((CKPT_DIR / MANIFEST_NAME).read_text())["checkpoints"] if (CKPT_DIR / MANIFEST_NAME).exists() else {}


def test_manifest_lists_every_shipped_file():
    shipped = {p.name for p in CKPT_DIR.glob("*.safetensors")}
    assert shipped, "no checkpoints are shipped"
    assert shipped == set(MANIFEST), f"files and manifest disagree: {shipped ^ set(MANIFEST)}"
    total = sum(p.stat().st_size for p in CKPT_DIR.glob("*.safetensors"))
    assert total <= 60 * 2**20, f"shipped checkpoints take {total / 2**20:.1f} MiB (budget 60 MiB)"


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_shipped_checkpoint_hash_and_provenance(name):
    entry = MANIFEST[name]
    assert sha256_of(CKPT_DIR / name) == entry["sha256"], f"{name} does not match its manifest hash"
    for key in ("command", "steps", "wall_time_s", "machine", "quality"):
        assert key in entry, f"manifest entry of {name} lacks {key}"
    _, meta = read_checkpoint(CKPT_DIR / name)
    tensors = read_checkpoint(CKPT_DIR / name)[0]
    # float16 weights; a latent diffusion model keeps its scale factor 1 / std(z) in float32
    assert all(v.dtype == torch.float16 for k, v in tensors.items() if v.is_floating_point() and k != "scale_factor")


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if e.get("kind") == "autoencoder"))
def test_shipped_autoencoder_reconstructs_held_out_shapes(name):
    from ldm_minimal.data import ShapesConfig, ShapesDataset, collate
    from ldm_minimal.evaluation.metrics import psnr
    from ldm_minimal.training import reconstruct

    model, _ = load_autoencoder(CKPT_DIR / name)
    ds = ShapesDataset(ShapesConfig(resolution=32, seed=10_000), length=32)
    x = collate([ds[i] for i in range(32)])["image"]
    quality = psnr(reconstruct(model, x), x).mean().item()
    # the manifest's figure was measured on 512 held-out images; 32 of them must come close
    assert quality > MANIFEST[name]["quality"]["psnr"] - 1.5, quality
    assert quality > 18.0


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if e.get("kind") == "ldm"))
def test_shipped_latent_diffusion_model_loads_and_samples(name):
    from ldm_minimal.latent_diffusion_io import load_ldm
    from ldm_minimal.data import ShapesDataset, collate, shapes_preset

    ldm, meta = load_ldm(CKPT_DIR / name)
    cond = ldm.cfg.conditioner
    if cond in ("text-joint", "text-frozen"):
        batch = {"caption": ["a large red circle in the center", "grinning face"]}
    elif cond == "class":
        batch = {"class_id": torch.tensor([0, 39])}
    else:  # layouts and concat conditions (low-resolution image, masked image): from held-out pictures
        ds = ShapesDataset(shapes_preset("shapes32", seed=1_000_000), length=2)
        batch = collate([ds[i] for i in range(2)])
        if cond == "inpaint":
            batch = {"image": batch["image"], "mask": torch.zeros(2, 1, 32, 32).index_fill_(3, torch.arange(8, 24), 1.0)}
        elif cond == "lowres":
            batch = {"lowres": torch.nn.functional.avg_pool2d(batch["image"], 4)}
    x = ldm.sample(batch, steps=3, guidance_scale=2.0 if cond and "text" in cond else 1.0,
                   generator=torch.Generator().manual_seed(0), progress=False)
    assert x.shape == (2, 3, ldm.cfg.image_size, ldm.cfg.image_size) and torch.isfinite(x).all()
    assert float(ldm.scale_factor) != 1.0 and bool(ldm.scale_factor_set)
    assert MANIFEST[name]["quality"], f"{name} has no measured quality in the manifest"
