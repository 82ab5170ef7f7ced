"""Checkpoints: safetensors weights with the model's config stored inside the file, written atomically.

A checkpoint is ONE ``.safetensors`` file. Its header metadata holds a JSON document
``{"format": "ldm-minimal", "kind": ..., "config": {...}, "info": {...}}`` so that a model can be rebuilt from
the file alone. Loading never executes code from a file (safetensors holds only tensors and strings), and every
failure names the file and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ldm_minimal import utils

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


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: dataclasses become dicts, tuples become lists, dict keys become strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
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
    meta = {"format": FORMAT, "kind": kind, "config": to_jsonable(config), "info": to_jsonable(info or {})}
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


# The first bytes of the files a user may mistake for a checkpoint of this project: PyTorch's torch.save archives
# (a zip holding a pickle) and bare pickles (protocol 2-5: 0x80 then the protocol). They are recognised from these
# bytes, never unpickled. (A safetensors file starts with its 8-byte header length, then "{".)
PICKLE_SIGNATURES = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def check_checkpoint_file(path: str | Path) -> Path:
    """``path`` if it is a file that may be a safetensors checkpoint, else CheckpointError saying what it is: missing,
    a folder (suggesting the model.safetensors inside, when there is one), or a PyTorch pickle (never loaded: a pickle
    can run code)."""
    path = Path(path)
    if path.is_dir():
        inside = path / "model.safetensors"
        hint = (f" Did you mean {inside} (the model a training run exports)?" if inside.is_file()
                else " Pass the .safetensors file itself (a training run exports DIR/model.safetensors).")
        raise CheckpointError(f"Checkpoint {path} is a folder, not a checkpoint file.{hint}")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. Check the path, or train one first.")
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as e:
        raise CheckpointError(f"Checkpoint {path} cannot be read ({e}).") from e
    if head[8:9] != b"{" and head.startswith(PICKLE_SIGNATURES):
        raise CheckpointError(
            f"{path} is not a safetensors checkpoint of this project: it is a PyTorch pickle (torch.save / .pt / "
            ".ckpt), and pickles are never loaded (unpickling can run arbitrary code). Pass a .safetensors file "
            "written by ldm-minimal (e.g. a run's model.safetensors)."
        )
    return path


def _read(path: str | Path, tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = check_checkpoint_file(path)
    try:
        state = load_file(str(path)) if tensors else {}
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


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor of a checkpoint, read from the file's header (no tensor data is loaded)."""
    path = check_checkpoint_file(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt and cannot be read ({e}).") from e


def shape_mismatch(expected: Mapping[str, tuple[int, ...]],
                   found: Mapping[str, tuple[int, ...]]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape) tensor names of ``found`` against ``expected`` (name -> shape)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    return missing, unexpected, wrong


def check_config_fits(path: str | Path, build: Callable[[], torch.nn.Module], what: str,
                      state_of: Callable[[Any], Mapping[str, torch.Tensor]] | None = None) -> None:
    """Raise CheckpointError unless the model ``build()`` makes from a checkpoint's config has exactly the file's tensor
    names and shapes, BEFORE anything is allocated: the model is built on the meta device (shapes, no memory) and
    compared with the shapes in the file's header. A config claiming e.g. a width of 200000 fails here in
    milliseconds instead of allocating the model it describes.

    state_of: the tensors a checkpoint of the model stores (default: its state_dict()).
    """
    with torch.device("meta"):
        model = build()
    own = state_of(model) if state_of is not None else model.state_dict()
    expected = {k: tuple(v.shape) for k, v in own.items()}
    found = tensor_shapes(path)
    missing, unexpected, wrong = shape_mismatch(expected, found)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"Checkpoint {path} does not fit the {what} its config describes: "
            + describe_mismatch(missing, unexpected, wrong, found, expected)
            + ". The file was edited or written by another version; re-export or re-train it."
        )


def describe_mismatch(missing: list[str], unexpected: list[str], wrong: list[str],
                      found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> str:
    """``mismatch_details`` on shapes (name -> shape of the file, name -> shape the model expects)."""
    details = []
    if missing:
        details.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
    if unexpected:
        details.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[:3]})")
    if wrong:
        k = wrong[0]
        details.append(f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(found[k])} vs model "
                       f"{tuple(expected[k])})")
    return "; ".join(details)


def mismatch_details(missing: list[str], unexpected: list[str], wrong: list[str],
                     state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str:
    """How a state dict read from a file differs from the one a model expects (``own``), in words: the missing and
    unexpected tensor names and the shape mismatches, a few examples each."""
    return describe_mismatch(missing, unexpected, wrong, {k: tuple(v.shape) for k, v in state.items()},
                             {k: tuple(v.shape) for k, v in own.items()})


def load_state_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``load_state_dict`` with an error that names the file and the mismatching keys/shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"Checkpoint {path} does not fit this {type(module).__name__}: "
            + mismatch_details(missing, unexpected, wrong, state, own)
            + ". It was saved from a different architecture/config: build the model from the checkpoint's own config."
        )
    # Cast to the module's dtype (shipped checkpoints are float16).
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


MANIFEST_NAME = "MANIFEST.json"


def sha256_of(path: str | Path) -> str:
    """The sha256 hex digest of a file (the manifest's checksums), read in 1 MiB chunks."""
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
        **to_jsonable(entry),
        "bytes": checkpoint.stat().st_size,
        "sha256": sha256_of(checkpoint),
    }
    atomic_write_bytes(manifest, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# The shipped checkpoints (data/checkpoints/, listed with their training commands in its MANIFEST.json)
# ----------------------------------------------------------------------------------------------------------------

# file names under DATA_DIR / "checkpoints" (read at call time, so that LDM_MINIMAL_DATA and tests can move it)
SHIPPED: dict[str, str] = {
    "t2i": "shapes32-t2i.safetensors",
    "inpaint": "shapes32-inpaint.safetensors",
    "sr": "shapes32-sr.safetensors",
    "emoji": "emoji32-t2i.safetensors",
}
# the latent diffusion preset each shipped checkpoint was trained from (for the "how to train it" hints)
SHIPPED_PRESETS: dict[str, str] = {  # the --model of the training command that makes each shipped checkpoint
    "t2i": "shapes-t2i",
    "inpaint": "shapes-inpaint",
    "sr": "shapes-sr",
    "emoji": "emoji-t2i",
}
CHECKPOINT_DIR: Path | None = None  # None = utils.DATA_DIR / "checkpoints"


def checkpoint_dir() -> Path:
    """Where the shipped checkpoints live: DATA_DIR / "checkpoints" (DATA_DIR follows $LDM_MINIMAL_DATA)."""
    return CHECKPOINT_DIR if CHECKPOINT_DIR is not None else utils.DATA_DIR / "checkpoints"


def shipped_checkpoint(kind: str) -> Path:
    """The path of a shipped checkpoint: kind in SHIPPED ("t2i", "inpaint", "sr", "emoji"); it may not exist."""
    if kind not in SHIPPED:
        raise utils.unknown_name_error("shipped checkpoint", kind, SHIPPED)
    return checkpoint_dir() / SHIPPED[kind]


def resolve_checkpoint(path: str | Path | None, kind: str) -> Path:
    """``path`` if given, else the shipped checkpoint of ``kind``; a missing file raises FileNotFoundError saying
    which file is missing and how to get it."""
    if path is not None:
        p = Path(path)
        if p.is_dir():
            check_checkpoint_file(p)  # a folder: says so, and names the model.safetensors inside
        if not p.is_file():
            raise FileNotFoundError(
                f"Checkpoint {p} does not exist. Check the path; a latent diffusion checkpoint is the .safetensors "
                "file written by save_ldm (the training run's output)."
            )
        return p
    p = shipped_checkpoint(kind)
    if not p.is_file():
        raise FileNotFoundError(
            f"The shipped {kind!r} checkpoint is missing: {p} does not exist. Restore it from the repository "
            f"(git checkout -- {p.name} in {p.parent}), train one (`python -m ldm_minimal train ldm --preset cpu "
            f"--model {SHIPPED_PRESETS[kind]} --first-stage <autoencoder> --out runs/x`, then `python -m ldm_minimal "
            f"export --run runs/x --to {p}`; data/checkpoints/MANIFEST.json has the exact commands), or pass "
            "--checkpoint PATH (Python: checkpoints={...})."
        )
    return p
