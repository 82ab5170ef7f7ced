"""Checkpoints: round trip, atomic refusal to overwrite, and clear errors for corrupt or mismatched files."""

from __future__ import annotations

import pytest
import torch

from ldm_minimal.autoencoder import build_autoencoder, autoencoder_config
from ldm_minimal.autoencoder import load_autoencoder
from ldm_minimal.checkpoint import CheckpointError, read_checkpoint, save_checkpoint


def test_round_trip_rebuilds_the_same_model(tmp_path):
    cfg = autoencoder_config("tiny-kl-f4")
    model = build_autoencoder(cfg).eval()
    path = save_checkpoint(tmp_path / "ae.safetensors", model, kind="autoencoder", config=cfg, info={"steps": 3})
    loaded, meta = load_autoencoder(path)
    assert meta["info"]["steps"] == 3 and meta["config"]["ch_mult"] == [1, 2, 2]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.decode(model.encode(x).mode()), loaded.decode(loaded.encode(x).mode()))


def test_float16_shipping_halves_the_file_and_loads_as_float32(tmp_path):
    cfg = autoencoder_config("tiny-vq-f4")
    model = build_autoencoder(cfg)
    p32 = save_checkpoint(tmp_path / "a.safetensors", model, kind="autoencoder", config=cfg)
    p16 = save_checkpoint(tmp_path / "b.safetensors", model, kind="autoencoder", config=cfg, dtype=torch.float16)
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    loaded, _ = load_autoencoder(p16)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_refuses_to_overwrite(tmp_path):
    cfg = autoencoder_config("tiny-kl-f2")
    model = build_autoencoder(cfg)
    path = save_checkpoint(tmp_path / "ae.safetensors", model, kind="autoencoder", config=cfg)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        save_checkpoint(path, build_autoencoder(cfg), kind="autoencoder", config=cfg)
    assert path.read_bytes() == before
    save_checkpoint(path, model, kind="autoencoder", config=cfg, overwrite=True)
    assert not list(tmp_path.glob(".*.tmp")), "temporary files must not be left behind"


def test_truncated_file_gives_a_clear_error(tmp_path):
    cfg = autoencoder_config("tiny-kl-f2")
    path = save_checkpoint(tmp_path / "ae.safetensors", build_autoencoder(cfg), kind="autoencoder", config=cfg)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_autoencoder(path)
    assert str(path) in str(e.value)


def test_missing_file_and_foreign_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="without ldm-minimal metadata"):
        read_checkpoint(tmp_path / "foreign.safetensors")


def test_architecture_mismatch_names_file_and_tensor(tmp_path):
    cfg = autoencoder_config("tiny-kl-f4")
    path = save_checkpoint(tmp_path / "ae.safetensors", build_autoencoder(cfg), kind="autoencoder", config=cfg)
    state, meta = read_checkpoint(path)
    other = build_autoencoder(autoencoder_config("tiny-kl-f4", ch=16))
    from ldm_minimal.checkpoint import load_state_into

    with pytest.raises(CheckpointError, match="shape mismatches") as e:
        load_state_into(other, state, path)
    assert str(path) in str(e.value) and "different architecture" in str(e.value)
