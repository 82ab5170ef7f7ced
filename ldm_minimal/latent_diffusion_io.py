"""Saving and loading latent diffusion models: ``save_ldm``, ``load_ldm``, and ``load_model`` for any checkpoint.

A latent diffusion checkpoint is one self-contained safetensors file in the ldm-minimal format
(``ldm_minimal.checkpoint``, kind "ldm"): the weights of epsilon_theta, of a trained tau_theta and of the frozen
first stage, the scale factor, and in its metadata the model's ``LatentDiffusionConfig`` with the first stage's
own config, so ``load_ldm`` rebuilds the model from the file alone. ``load_model`` loads an autoencoder
(``autoencoder.load_autoencoder``) or a latent diffusion model, by the kind stored in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldm_minimal.autoencoder import (AutoencoderConfig, AutoencoderKL, IdentityFirstStage, VQModel, build_autoencoder,
                                     load_autoencoder)
from ldm_minimal.checkpoint import (CheckpointError, check_config_fits, mismatch_details, read_checkpoint,
                                    read_metadata, save_checkpoint, to_jsonable)
from ldm_minimal.conditioning import CONDITIONERS, build_conditioner
from ldm_minimal.latent_diffusion import LatentDiffusion
from ldm_minimal.latent_diffusion_config import LatentDiffusionConfig

__all__ = ["ldm_state_dict", "save_ldm", "load_ldm", "load_model"]


def ldm_state_dict(ldm: LatentDiffusion) -> dict[str, Tensor]:
    """The tensors a latent diffusion checkpoint stores: everything but a frozen conditioner's weights.

    A *frozen pretrained* text encoder (MiniLM, CLIP) is not stored: it is rebuilt from its own source, named in
    the config.
    """
    cond = ldm.conditioner
    skip_conditioner = cond is not None and not getattr(cond, "trainable", False)
    return {k: v for k, v in ldm.state_dict().items() if not (skip_conditioner and k.startswith("conditioner."))}


def _first_stage_spec(ldm: LatentDiffusion) -> dict[str, Any]:
    fs = ldm.first_stage
    cfg = getattr(fs, "cfg", None)
    if cfg is None:  # IdentityFirstStage (f = 1, the pixel-space model)
        return {"kind": "identity", "channels": int(fs.latent_channels)}
    return {"kind": "autoencoder", "config": to_jsonable(cfg)}


def save_ldm(
    path: str | Path,
    ldm: LatentDiffusion,
    *,
    info: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    state: dict[str, Tensor] | None = None,
) -> Path:
    """Save a ``LatentDiffusion`` as one self-contained safetensors file (kind "ldm").

    ``state`` replaces the model's own weights (the trainer passes the EMA weights here). The first stage's config
    is stored with the model's config, so ``load_ldm`` rebuilds everything from the file alone.
    """
    tensors = ldm_state_dict(ldm) if state is None else state
    config = {"ldm": ldm.cfg.to_dict(), "first_stage": _first_stage_spec(ldm)}
    return save_checkpoint(path, tensors, kind="ldm", config=config, info=info, dtype=dtype, overwrite=overwrite)


def load_ldm(path: str | Path, device: torch.device | str = "cpu") -> tuple[LatentDiffusion, dict[str, Any]]:
    """Rebuild a ``LatentDiffusion`` from a file written by ``save_ldm`` (float32, eval mode). Returns (model, meta)."""
    meta = read_metadata(path)
    if meta.get("kind") != "ldm":
        hint = " Load it with load_autoencoder()." if meta.get("kind") == "autoencoder" else ""
        raise CheckpointError(f"Checkpoint {path} holds a {meta.get('kind')!r}, not a latent diffusion model.{hint}")
    try:
        cfg = LatentDiffusionConfig.from_dict(meta["config"]["ldm"])
        fs_spec = meta["config"]["first_stage"]
        fs_config = None
        if fs_spec["kind"] != "identity":
            raw = fs_spec["config"]
            fs_config = AutoencoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

        def first_stage() -> nn.Module:
            return (IdentityFirstStage(int(fs_spec.get("channels", 3))) if fs_config is None
                    else build_autoencoder(fs_config))

        # A conditioner whose weights the file does not hold (trainable = False: none at all, or a frozen pretrained
        # encoder that loads from its own source, which transformers refuses to do on the meta device) is built for
        # real, once, and shared by the check and the model; what it reads of the first stage is read off a meta one.
        tau = None
        if cfg.conditioner is not None and not CONDITIONERS[cfg.conditioner].trainable:
            with torch.device("meta"):
                probe = first_stage()
            tau = build_conditioner(cfg.conditioner, first_stage=probe, **cfg.conditioner_kwargs)

        def build() -> LatentDiffusion:
            return LatentDiffusion(cfg, first_stage=first_stage(), conditioner=tau)

        # the model the config describes, on the meta device (no memory), must have the file's tensor shapes
        check_config_fits(path, build, "latent diffusion model", state_of=ldm_state_dict)
        ldm = build()
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"Checkpoint {path} has a latent diffusion config this version cannot build ({type(e).__name__}: {e})."
        ) from e
    state, meta = read_checkpoint(path)
    expected = ldm_state_dict(ldm)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(f"Checkpoint {path} does not fit the latent diffusion model its config describes: "
                              + mismatch_details(missing, unexpected, wrong, state, expected)
                              + ". The file was edited or written by another version; re-export or re-train it.")
    own = ldm.state_dict()
    ldm.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    return ldm.to(device).eval(), meta


def load_model(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[AutoencoderKL | VQModel | LatentDiffusion, dict[str, Any]]:
    """Any ldm-minimal checkpoint: an autoencoder or a latent diffusion model, by the kind stored in the file."""
    kind = read_metadata(path).get("kind")
    if kind == "autoencoder":
        return load_autoencoder(path, device)
    if kind == "ldm":
        return load_ldm(path, device)
    raise CheckpointError(f"Checkpoint {path} holds a {kind!r}; expected 'autoencoder' or 'ldm'.")
