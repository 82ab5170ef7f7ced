"""The checkpoints shipped in data/checkpoints/: hashes match the manifest, and each loads and works."""

from __future__ import annotations

import json

import pytest
import torch

from ldm_minimal.checkpoint import MANIFEST_NAME, load_autoencoder, read_checkpoint, sha256_of
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
    assert all(v.dtype == torch.float16 for v in read_checkpoint(CKPT_DIR / name)[0].values() if v.is_floating_point())


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if e.get("kind") == "autoencoder"))
def test_shipped_autoencoder_reconstructs_held_out_shapes(name):
    from ldm_minimal.data import ShapesConfig, ShapesDataset, collate
    from ldm_minimal.metrics import psnr
    from ldm_minimal.train_autoencoder import reconstruct

    model, _ = load_autoencoder(CKPT_DIR / name)
    ds = ShapesDataset(ShapesConfig(resolution=32, seed=10_000), length=32)
    x = collate([ds[i] for i in range(32)])["image"]
    quality = psnr(reconstruct(model, x), x).mean().item()
    # the manifest's figure was measured on 512 held-out images; 32 of them must come close
    assert quality > MANIFEST[name]["quality"]["psnr"] - 1.5, quality
    assert quality > 18.0
