"""The ``export`` command: a run's model (EMA weights) -> a float16 shipping checkpoint with a manifest entry.

    python -m ldm_minimal export --run runs/t2i --to data/checkpoints/shapes32-t2i.safetensors [--quality JSON]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ldm_minimal.checkpoint import read_checkpoint, save_checkpoint, update_manifest

__all__ = ["cmd_export", "add_export_command"]


def cmd_export(args: argparse.Namespace) -> int:
    """A run's model (EMA weights) -> a float16 shipping copy, recorded in the MANIFEST.json next to it."""
    run = Path(args.run)
    src = run / "model.safetensors"
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    state, meta = read_checkpoint(src)
    dest = Path(args.to)
    info = {**meta.get("info", {}), "exported_from": str(src)}
    save_checkpoint(dest, state, kind=meta["kind"], config=meta["config"], info=info, dtype=torch.float16,
                    overwrite=args.overwrite)
    entry = {
        "kind": meta["kind"], "dtype": "float16", "command": config.get("command") or summary.get("command"),
        "steps": summary["steps"], "wall_time_s": summary["wall_time_s"], "machine": summary["machine"],
        "world": summary["world"], "preset": config["train"]["model"], "batch_size": config["train"]["batch_size"],
    }
    if summary.get("command") and summary.get("command") != entry["command"]:
        entry["resumed_with"] = summary["command"]  # the run was interrupted and continued with --resume
    if args.first_stage_command:
        entry["first_stage_command"] = args.first_stage_command
    if args.quality:
        entry["quality"] = json.loads(Path(args.quality).read_text()) if Path(args.quality).is_file() \
            else json.loads(args.quality)
    manifest = update_manifest(dest, entry)
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.2f} MB) and its entry in {manifest}")
    return 0


def add_export_command(subparsers: Any) -> None:
    """Register `export` on an argparse subparsers object."""
    e = subparsers.add_parser(
        "export", help="copy a run's model to a float16 shipping checkpoint with a manifest entry")
    e.add_argument("--run", required=True, help="the run folder (holds model.safetensors, summary.json, config.json)")
    e.add_argument("--to", required=True, help="destination, e.g. data/checkpoints/shapes32-t2i.safetensors")
    e.add_argument("--quality", help="JSON (or a JSON file) with the quality the model reached")
    e.add_argument("--first-stage-command", help="the command that trained its first stage (for the manifest)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --to")
    e.set_defaults(func=cmd_export)
