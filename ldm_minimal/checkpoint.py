"""Checkpoints: safetensors weights with the model's config stored inside the file, written atomically.

A checkpoint is ONE ``.safetensors`` file. Its header metadata holds a JSON document
``{"format": "ldm-minimal", "kind": ..., "config": {...}, "info": {...}}`` so that a model can be rebuilt from
the file alone. Loading never executes code from a file (safetensors holds only tensors and strings), and every
failure names the file and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "ldm-minimal"


def _publish(tmp: str | Path, path: Path) -> None:
    """Give a temporary file the permissions of a normally created file (mkstemp makes it private), then rename it
    over ``path`` atomically."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, or does not fit the model it is loaded into."""


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    return obj


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(
    path: str | Path,
    module: torch.nn.Module | dict[str, torch.Tensor],
    *,
    kind: str,
    config: Any,
    info: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    keep_float32: tuple[str, ...] = ("scale_factor",),
) -> Path:
    """Save weights (optionally cast to ``dtype``, e.g. float16 for shipping) with their config, atomically.

    Tensors named in ``keep_float32`` are never cast (a latent scale factor 1 / std(z) would lose digits in float16).

    Refuses to replace an existing file unless ``overwrite=True``: nothing a user trained is lost silently.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists. Pass overwrite=True (CLI: --overwrite) to replace it, or choose another path."
        )
    state = module.state_dict() if isinstance(module, torch.nn.Module) else module
    tensors = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point() and k not in keep_float32:
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    meta = {"format": FORMAT, "kind": kind, "config": _to_jsonable(config), "info": _to_jsonable(info or {})}
    # safetensors writes to a path; write to a temporary file next to the target, then rename atomically.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"ldm_minimal": json.dumps(meta)})
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read (state_dict, metadata) from a checkpoint, with clear errors for missing or corrupt files."""
    return _read(path, tensors=True)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata (format, kind, config, info) of a checkpoint, without loading its tensors."""
    return _read(path, tensors=False)[1]


def _read(path: str | Path, tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. Check the path, or train one first.")
    try:
        state = load_file(str(path)) if tensors else {}
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("ldm_minimal")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt and cannot be read ({e}). "
            "Re-download or re-train it; a run's previous checkpoint is kept alongside when training."
        ) from e
    if raw is None:
        raise CheckpointError(
            f"Checkpoint {path} is a safetensors file without ldm-minimal metadata (no config inside), so the "
            "model cannot be rebuilt from it. Load its tensors with safetensors.torch.load_file instead."
        )
    meta = json.loads(raw)
    return state, meta


def _mismatch_details(missing: list[str], unexpected: list[str], wrong: list[str],
                      state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str:
    details = []
    if missing:
        details.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
    if unexpected:
        details.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[:3]})")
    if wrong:
        k = wrong[0]
        details.append(f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} vs model "
                       f"{tuple(own[k].shape)})")
    return "; ".join(details)


def load_state_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``load_state_dict`` with an error that names the file and the mismatching keys/shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"Checkpoint {path} does not fit this {type(module).__name__}: "
            + _mismatch_details(missing, unexpected, wrong, state, own)
            + ". It was saved from a different architecture/config: build the model from the checkpoint's own config."
        )
    # Cast to the module's dtype (shipped checkpoints are float16).
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load_autoencoder(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a first-stage autoencoder from a checkpoint written by ``save_checkpoint(kind="autoencoder")``.

    Weights are cast to float32 (shipped checkpoints are float16). Returns (model in eval mode, metadata).
    """
    from ldm_minimal.autoencoder import AutoencoderConfig, build_autoencoder

    state, meta = read_checkpoint(path)
    if meta.get("kind") != "autoencoder":
        raise CheckpointError(f"Checkpoint {path} holds a {meta.get('kind')!r}, not an autoencoder.")
    fields = {f.name for f in dataclasses.fields(AutoencoderConfig)}
    raw = meta["config"]
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise CheckpointError(f"Checkpoint {path} has config keys this version does not know: {unknown}.")
    cfg = AutoencoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    model = build_autoencoder(cfg)
    load_state_into(model, state, path)
    return model.to(device).eval(), meta


MANIFEST_NAME = "MANIFEST.json"


def sha256_of(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def update_manifest(checkpoint: str | Path, entry: dict[str, Any]) -> Path:
    """Record a shipped checkpoint in the MANIFEST.json next to it: the entry (command, steps, wall time, machine,
    quality, ...) plus its file name, size and sha256. Written atomically; other entries are kept."""
    checkpoint = Path(checkpoint)
    manifest = checkpoint.parent / MANIFEST_NAME
    data = json.loads(manifest.read_text()) if manifest.exists() else {"checkpoints": {}}
    data["checkpoints"][checkpoint.name] = {
        **_to_jsonable(entry),
        "bytes": checkpoint.stat().st_size,
        "sha256": sha256_of(checkpoint),
    }
    atomic_write_bytes(manifest, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# Latent diffusion models: one self-contained file (epsilon_theta, a trained tau_theta, the frozen first stage and
# the scale factor), so that a shipped model needs nothing but itself. A *frozen pretrained* text encoder (MiniLM,
# CLIP) is not stored: it is rebuilt from its own source, named in the config.
# ----------------------------------------------------------------------------------------------------------------


def ldm_state_dict(ldm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a latent diffusion checkpoint stores: everything but a frozen conditioner's weights."""
    cond = getattr(ldm, "conditioner", None)
    skip_conditioner = cond is not None and not getattr(cond, "trainable", False)
    return {k: v for k, v in ldm.state_dict().items() if not (skip_conditioner and k.startswith("conditioner."))}


def _first_stage_spec(ldm: torch.nn.Module) -> dict[str, Any]:
    fs = ldm.first_stage
    cfg = getattr(fs, "cfg", None)
    if cfg is None:  # IdentityFirstStage (f = 1, the pixel-space model)
        return {"kind": "identity", "channels": int(fs.latent_channels)}
    return {"kind": "autoencoder", "config": _to_jsonable(cfg)}


def save_ldm(
    path: str | Path,
    ldm: torch.nn.Module,
    *,
    info: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save a ``LatentDiffusion`` as one self-contained safetensors file (kind "ldm").

    ``state`` replaces the model's own weights (the trainer passes the EMA weights here). The first stage's config
    is stored with the model's config, so ``load_ldm`` rebuilds everything from the file alone.
    """
    tensors = ldm_state_dict(ldm) if state is None else state
    config = {"ldm": ldm.cfg.to_dict(), "first_stage": _first_stage_spec(ldm)}
    return save_checkpoint(path, tensors, kind="ldm", config=config, info=info, dtype=dtype, overwrite=overwrite)


def load_ldm(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a ``LatentDiffusion`` from a file written by ``save_ldm`` (float32, eval mode). Returns (model, meta)."""
    from ldm_minimal.autoencoder import AutoencoderConfig, IdentityFirstStage, build_autoencoder
    from ldm_minimal.latent_diffusion import LatentDiffusion, LatentDiffusionConfig

    state, meta = read_checkpoint(path)
    if meta.get("kind") != "ldm":
        hint = " Load it with load_autoencoder()." if meta.get("kind") == "autoencoder" else ""
        raise CheckpointError(f"Checkpoint {path} holds a {meta.get('kind')!r}, not a latent diffusion model.{hint}")
    try:
        cfg = LatentDiffusionConfig.from_dict(meta["config"]["ldm"])
        fs_spec = meta["config"]["first_stage"]
        if fs_spec["kind"] == "identity":
            first_stage: torch.nn.Module = IdentityFirstStage(int(fs_spec.get("channels", 3)))
        else:
            raw = fs_spec["config"]
            first_stage = build_autoencoder(
                AutoencoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
            )
        ldm = LatentDiffusion(cfg, first_stage=first_stage)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"Checkpoint {path} has a latent diffusion config this version cannot build ({type(e).__name__}: {e})."
        ) from e
    expected = ldm_state_dict(ldm)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(f"Checkpoint {path} does not fit the latent diffusion model its config describes: "
                              + _mismatch_details(missing, unexpected, wrong, state, expected)
                              + ". The file was edited or written by another version; re-export or re-train it.")
    own = ldm.state_dict()
    ldm.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    return ldm.to(device).eval(), meta


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Any ldm-minimal checkpoint: an autoencoder or a latent diffusion model, by the kind stored in the file."""
    kind = read_metadata(path).get("kind")
    if kind == "autoencoder":
        return load_autoencoder(path, device)
    if kind == "ldm":
        return load_ldm(path, device)
    raise CheckpointError(f"Checkpoint {path} holds a {kind!r}; expected 'autoencoder' or 'ldm'.")
