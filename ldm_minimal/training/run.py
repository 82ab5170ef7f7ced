"""The run folder on disk: what it holds, its checkpoints (written atomically), and reading them back for --resume.

    runs/t2i/
        .ldm-minimal-run     the run marker {"format", "task", "created"}: --overwrite deletes only a marked folder
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from ldm_minimal.checkpoint import CheckpointError, atomic_write_bytes, read_checkpoint, sha256_of, to_jsonable

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "model.safetensors", "samples", "checkpoints")
# Written when a run folder is created: what tells this project's runs from other folders. --overwrite deletes only
# a folder that carries it (a folder such as data/, whose checkpoints/ holds the shipped models, is never a run).
RUN_MARKER = ".ldm-minimal-run"
MARKER_FORMAT = "ldm-minimal-run"


class RunFolderError(RuntimeError):
    """The output folder holds another run (and neither --resume nor --overwrite was given), or cannot resume."""


def is_run_folder(out: Path) -> bool:
    """Whether ``out`` carries this project's run marker (a run made by ``python -m ldm_minimal train``)."""
    try:
        doc = json.loads((out / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == MARKER_FORMAT


def write_run_marker(out: Path, task: str, note: str | None = None) -> None:
    """The marker file of a run folder: {"format", "task", "created"} (plus a note when written later)."""
    doc: dict[str, Any] = {"format": MARKER_FORMAT, "task": task,
                           "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if note:
        doc["note"] = note
    write_json(out / RUN_MARKER, doc)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (a pid reused by another process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete checkpoints/.tmp-step_XXXXXXX-<pid>/ folders left by processes that were killed while writing a
    checkpoint. The folder of a process that is still alive (another writer, or this one) is kept."""
    removed = []
    for tmp in sorted((out / "checkpoints").glob(".tmp-step_*-*")):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not tmp.is_dir() or not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def describe_entries(out: Path, limit: int = 6) -> str:
    """The entries of a folder, for messages: "a, b/, c and 3 more"."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def prepare_run_folder(out: Path, *, resume: bool, overwrite: bool, is_main: bool, task: str) -> None:
    """Check that ``out`` may hold this run, before any work starts, and mark it as a run folder (RUN_MARKER).

    - resume: ``out`` needs checkpoints/. A run made before run markers existed gets its marker now.
    - new run: ``out`` must hold none of RUN_FILES, or carry the marker and ``overwrite`` (which deletes the old
      run's files, and only those). A folder that holds run-like files without the marker is not a run of this
      project: it is refused, never deleted.

    Stale temporary checkpoint folders of killed processes are removed either way. Only the main process writes.
    """
    existing = [n for n in RUN_FILES if (out / n).exists()]
    marked = is_run_folder(out)
    if resume:
        if not (out / "checkpoints").is_dir():
            raise RunFolderError(f"--resume: {out} holds no checkpoints/ folder to resume from. "
                                 "Start the run without --resume.")
        if is_main:
            remove_stale_temporaries(out)
            if not marked:
                write_run_marker(out, task, note="marker added when a run made without one was resumed")
        return
    if existing and not marked:
        raise RunFolderError(
            f"{out} is not a run made by this project (it has no {RUN_MARKER} marker) but holds "
            f"{describe_entries(out)}. Nothing was deleted. Choose another --out folder; if it really is an older "
            f"run of ldm-minimal, continue it with --resume or delete it yourself."
        )
    if existing and not overwrite:
        raise RunFolderError(
            f"{out} already holds a run ({', '.join(existing)}). Pass --resume to continue it, --overwrite "
            "to replace it, or choose another --out folder."
        )
    if is_main:
        for n in existing:
            p = out / n
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        out.mkdir(parents=True, exist_ok=True)
        write_run_marker(out, task)


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
