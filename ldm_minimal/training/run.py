"""The run folder on disk: what it holds, its checkpoints (written atomically), and reading them back for --resume.

    runs/t2i/
        config.json          the command, the TrainConfig, the model config, world and resolution
        metrics.jsonl        one JSON row every log_every steps
        samples/             step_XXXXXXX.png preview grids (EMA weights)
        checkpoints/         step_XXXXXXX/{model.safetensors, train_state.safetensors, state.json}
        model.safetensors    the final export (EMA weights with their config: loadable on its own)
        summary.json         steps, wall time, images/s, machine

A checkpoint's ``train_state.safetensors`` holds the raw weights ("model.*", plus e.g. "discriminator.*"), the EMA
("ema.*"), each optimizer's moments ("<optimizer>.<param index>.<key>") and the RNG states ("rng.*"); its
``state.json`` holds the step, the config, the optimizers' hyper-parameters and the file's sha256.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from ldm_minimal.checkpoint import CheckpointError, atomic_write_bytes, read_checkpoint, sha256_of, to_jsonable

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "model.safetensors", "samples", "checkpoints")


class RunFolderError(RuntimeError):
    """The output folder holds another run (and neither --resume nor --overwrite was given), or cannot resume."""


def prepare_run_folder(out: Path, *, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Check that ``out`` may hold this run: a run to resume needs checkpoints/, a new run needs an empty folder
    (or ``overwrite``, which deletes the old run's files; only the main process deletes)."""
    existing = [n for n in RUN_FILES if (out / n).exists()]
    if resume:
        if not (out / "checkpoints").is_dir():
            raise RunFolderError(f"--resume: {out} holds no checkpoints/ folder to resume from. "
                                 "Start the run without --resume.")
        return
    if existing and not overwrite:
        raise RunFolderError(
            f"{out} already holds a run ({', '.join(existing)}). Pass --resume to continue it, --overwrite "
            "to replace it, or choose another --out folder."
        )
    if existing and is_main:
        for n in existing:
            p = out / n
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def find_checkpoints(out_dir: str | Path) -> list[Path]:
    """The complete checkpoints (folders with a state.json) of a run, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "state.json").is_file())


def write_checkpoint(out: Path, step: int, keep: int, write: Callable[[Path], None]) -> Path:
    """checkpoints/step_XXXXXXX/ written by ``write(folder)`` into a temporary folder that is then renamed into
    place (a crash never leaves a half-written checkpoint); all but the newest ``keep`` checkpoints are deleted."""
    root = out / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if final.exists():  # re-saving the same step (e.g. a resumed run that stopped at once)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in find_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """An indented JSON file, written atomically."""
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())


# ----------------------------------------------------------------------------------------------------------------
# The training state: everything a resumed run needs to continue bit for bit
# ----------------------------------------------------------------------------------------------------------------


def pack_train_state(
    states: Mapping[str, Mapping[str, Tensor]],
    optimizers: Mapping[str, torch.optim.Optimizer],
    generator: torch.Generator,
    device: torch.device,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, optimizer param groups) of a run: each state dict under its prefix ("model", "ema", ...), each
    optimizer's per-parameter state as "<name>.<index>.<key>", and the torch / generator / CUDA RNG states."""
    tensors: dict[str, Tensor] = {}
    for prefix, state in states.items():
        tensors.update({f"{prefix}.{k}": v for k, v in state.items()})
    groups: dict[str, Any] = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        groups[name] = to_jsonable(sd["param_groups"])
        for idx, st in sd["state"].items():
            for key, val in st.items():
                tensors[f"{name}.{idx}.{key}"] = val if isinstance(val, Tensor) else torch.tensor(val)
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    if device.type == "cuda":
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state(device)
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, groups


def with_prefix(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors stored under ``prefix.``, with the prefix removed (pack_train_state's inverse for one state)."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def restore_optimizers(tensors: Mapping[str, Tensor], groups: Mapping[str, Any],
                       optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
    """Load each optimizer's moments and hyper-parameters back (pack_train_state's inverse)."""
    for name, opt in optimizers.items():
        per_param: dict[int, dict[str, Tensor]] = {}
        for k, v in with_prefix(tensors, name).items():
            idx, key = k.split(".", 1)
            per_param.setdefault(int(idx), {})[key] = v
        param_groups = groups[name]
        for g in param_groups:
            g["betas"] = tuple(g["betas"])
        opt.load_state_dict({"state": per_param, "param_groups": param_groups})


def restore_rng(tensors: Mapping[str, Tensor], generator: torch.Generator, device: torch.device) -> None:
    """Set the torch, generator and (when present) CUDA RNG states stored by pack_train_state."""
    torch.set_rng_state(tensors["rng.torch_cpu"])
    generator.set_state(tensors["rng.generator"].to(torch.uint8))
    if device.type == "cuda" and "rng.torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"], device)


def read_latest_state(out: Path) -> tuple[Path, dict[str, Any]]:
    """(folder, state.json contents) of the newest complete checkpoint of a run, for --resume."""
    found = find_checkpoints(out)
    if not found:
        raise RunFolderError(f"--resume: no complete checkpoint under {out / 'checkpoints'}.")
    ckpt = found[-1]
    try:
        return ckpt, json.loads((ckpt / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt / 'state.json'} is unreadable ({e}); delete that folder to resume from "
                              "the previous checkpoint.") from e


def read_train_state(ckpt: Path, state: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensors of a checkpoint's train_state.safetensors, after checking them against state.json's sha256."""
    path = ckpt / "train_state.safetensors"
    if sha256_of(path) != state.get("train_state_sha256"):
        raise CheckpointError(f"{path} does not match the sha256 recorded in its state.json: the file is corrupt. "
                              "Delete that checkpoint folder to resume from the previous one.")
    tensors, _ = read_checkpoint(path)
    return tensors


def drop_metrics_after(out: Path, step: int) -> None:
    """Remove the metric rows logged after ``step`` (a crash between two checkpoints logged steps a resumed run
    will log again)."""
    mpath = out / "metrics.jsonl"
    if mpath.exists():
        rows = [r for r in mpath.read_text().splitlines() if r.strip() and json.loads(r)["step"] <= step]
        atomic_write_bytes(mpath, ("".join(r + "\n" for r in rows)).encode())
