"""The ``train`` command: train a first stage (ae) or a latent diffusion model (ldm) with the loop of
``ldm_minimal.training``. Every TrainConfig field is a flag.

    python -m ldm_minimal train ae --preset cpu --model tiny-kl-f4 --out runs/ae
    python -m ldm_minimal train ldm --out runs/t2i --resume --steps 12000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from typing import Any

from ldm_minimal.training import TASKS, TRAIN_PRESETS, TrainConfig, resume_config, train, train_config

__all__ = ["cmd_train", "add_train_command"]


def _train_flag_type(f: dataclasses.Field) -> dict[str, Any]:
    """argparse settings for one TrainConfig field (every setting can be overridden on the command line)."""
    t = str(f.type)
    if "bool" in t:
        return dict(action=argparse.BooleanOptionalAction)
    if "tuple" in t:
        return dict(type=float, nargs=2, metavar=("B1", "B2"))
    if "dict" in t:
        return dict(type=json.loads, metavar="JSON")
    if "float" in t:
        return dict(type=float)
    if "int" in t:
        return dict(type=int)
    return dict(type=str)


def cmd_train(args: argparse.Namespace) -> int:
    """Start (or, with --resume, continue) the run in --out; prints its summary as JSON."""
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "task"]
    given = {k: getattr(args, k) for k in fields if getattr(args, k, None) is not None}
    if args.resume:
        if args.preset:
            print("note: --preset is ignored with --resume (the run keeps its own settings).")
        cfg = resume_config(args.out, **given)
        if cfg.task != args.task:
            raise SystemExit(f"--resume: {args.out} holds a '{cfg.task}' run, not '{args.task}'.")
    else:
        cfg = train_config(args.preset, args.task, **given)
    command = "python -m ldm_minimal " + shlex.join(args.argv) if getattr(args, "argv", None) else None
    summary = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, command=command)
    print(json.dumps(summary, indent=2))
    return 0


def add_train_command(subparsers: Any) -> None:
    """Register `train` on an argparse subparsers object."""
    t = subparsers.add_parser(
        "train", help="train an autoencoder (ae) or a latent diffusion model (ldm)",
        description="Train a first stage (ae) or a latent diffusion model (ldm). Every TrainConfig field is a flag; "
                    "--preset cpu|gpu picks sized defaults. Examples:\n"
                    "  python -m ldm_minimal train ae --preset cpu --model tiny-kl-f4 --out runs/ae\n"
                    "  python -m ldm_minimal train ldm --preset cpu --model shapes-t2i "
                    "--first-stage runs/ae/model.safetensors --out runs/t2i\n"
                    "  python -m ldm_minimal train ldm --out runs/t2i --resume --steps 12000",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("task", choices=TASKS)
    t.add_argument("--preset", choices=list(TRAIN_PRESETS), help="sized defaults (none: the TrainConfig defaults)")
    t.add_argument("--out", required=True, help="run folder (config, metrics, samples, checkpoints, model)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    t.add_argument("--overwrite", action="store_true", help="delete a run already in --out and start afresh")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "task":
            continue
        t.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, **_train_flag_type(f))
    t.set_defaults(func=cmd_train)
