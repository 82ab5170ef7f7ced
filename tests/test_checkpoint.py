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


def test_a_config_that_does_not_fit_its_tensors_fails_before_anything_is_built(tmp_path):
    """A 5 kB file whose config claims width 200000 is checked against its tensor shapes on the meta device, fast,
    instead of allocating the model its config describes (about 160 GB)."""
    import time

    from ldm_minimal.latent_diffusion_io import load_ldm

    small = autoencoder_config("tiny-kl-f4")
    tensors = {k: v for k, v in list(build_autoencoder(small).state_dict().items())[:4]}
    huge = save_checkpoint(tmp_path / "huge.safetensors", tensors, kind="autoencoder",
                           config={**small.__dict__, "ch": 200000})
    assert huge.stat().st_size < 20_000
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="huge.safetensors does not fit the autoencoder its config describes"):
        load_autoencoder(huge)
    assert time.perf_counter() - t0 < 1.0

    # the same for a latent diffusion model whose UNet claims model_channels 200000
    ldm_file = tmp_path / "shapes32-t2i-huge.safetensors"
    from ldm_minimal.checkpoint import read_metadata, shipped_checkpoint

    meta = read_metadata(shipped_checkpoint("t2i"))
    config = meta["config"]
    config["ldm"]["unet_overrides"] = {**config["ldm"].get("unet_overrides", {}), "model_channels": 200000}
    save_checkpoint(ldm_file, {"scale_factor": torch.tensor(1.0)}, kind="ldm", config=config)
    with pytest.raises(CheckpointError):  # the first call imports the text encoder's library (seconds, once)
        load_ldm(ldm_file)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="does not fit the latent diffusion model its config describes"):
        load_ldm(ldm_file)
    assert time.perf_counter() - t0 < 1.0


def test_a_folder_given_as_a_checkpoint_names_the_model_inside(tmp_path):
    from ldm_minimal.checkpoint import resolve_checkpoint

    run = tmp_path / "runs" / "ae"
    run.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_autoencoder(run)
    cfg = autoencoder_config("tiny-kl-f2")
    save_checkpoint(run / "model.safetensors", build_autoencoder(cfg), kind="autoencoder", config=cfg)
    for call in (read_checkpoint, load_autoencoder, lambda p: resolve_checkpoint(p, "t2i")):
        with pytest.raises(CheckpointError, match=f"is a folder.*Did you mean {run / 'model.safetensors'}"):
            call(run)


def test_a_safetensors_header_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """A safetensors file starts with its header length (little-endian): a length of 128 + 256 k starts with 0x80."""
    cfg = autoencoder_config("tiny-kl-f2")
    for pad in range(0, 300, 7):
        path = save_checkpoint(tmp_path / "ae.safetensors", build_autoencoder(cfg), kind="autoencoder", config=cfg,
                               info={"pad": "x" * pad}, overwrite=True)
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.skip("no header length ending in 0x80 was produced")
    load_autoencoder(path)


def test_the_shape_check_on_the_meta_device_survives_a_text_encoder_forward_first():
    """Found by the full suite: after a transformers BERT forward (the frozen MiniLM conditioner), torch's device
    context no longer caught ``torch.linspace`` (its cached list of factory functions lacked it), so building the
    noise schedule on the meta device mixed meta and CPU tensors and every later load_ldm failed. The schedule is now
    made on the CPU explicitly. Run in a fresh process, so that the order of the other tests cannot hide it."""
    import subprocess
    import sys

    code = (
        "from ldm_minimal.conditioning.text import FrozenTextConditioner\n"
        "from ldm_minimal.latent_diffusion_io import load_ldm\n"
        "FrozenTextConditioner('minilm')({'caption': ['a red circle']})\n"
        "ldm, _ = load_ldm('data/checkpoints/shapes32-t2i.safetensors')\n"
        "print('loaded', ldm.diffusion.alphas_cumprod.device)\n"
    )
    from ldm_minimal.utils import REPO_ROOT

    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded cpu" in done.stdout


def test_a_model_with_a_frozen_pretrained_text_encoder_saves_and_loads():
    """The meta-device shape check must not build a frozen pretrained encoder there (transformers' from_pretrained
    refuses the meta device): such a conditioner, whose weights the file does not hold, is built once for real."""
    import tempfile

    from ldm_minimal.latent_diffusion import LatentDiffusion
    from ldm_minimal.latent_diffusion_config import ldm_config
    from ldm_minimal.latent_diffusion_io import load_ldm, save_ldm

    cfg = ldm_config("shapes-t2i", conditioner="text-frozen", conditioner_kwargs={"name_or_path": "minilm"},
                     first_stage="tiny-kl-f4", unet="tiny")
    ldm = LatentDiffusion(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        save_ldm(f"{d}/m.safetensors", ldm)
        back, _ = load_ldm(f"{d}/m.safetensors")
    batch = {"caption": ["a red circle", "a small blue star"]}
    z, t = torch.randn(2, ldm.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    assert torch.equal(back.model_fn(z, t, **back.condition(batch)), ldm.model_fn(z, t, **ldm.condition(batch)))
