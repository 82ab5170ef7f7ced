"""The ``eval`` command: argparse and the JSON file it writes, over ``ldm_minimal.evaluation.evaluate``.

    python -m ldm_minimal eval --checkpoint data/checkpoints/shapes32-t2i.safetensors --world single32 --n 256 \\
        --out t2i.json
    python -m ldm_minimal eval --images outputs/samples --world emoji --n 64 --out folder.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from ldm_minimal.checkpoint import atomic_write_bytes
from ldm_minimal.evaluation.evaluate import (
    EVAL_WORLDS,
    FEATURE_CHOICES,
    EvaluationError,
    FeatureNetworkUnavailable,
    evaluate,
)
from ldm_minimal.samplers import SAMPLERS
from ldm_minimal.utils import check_seed, check_writable_folder, resolve_device


def cmd_eval(args: argparse.Namespace) -> int:
    """``python -m ldm_minimal eval``: evaluate, print the JSON, write it to --out (never over a file unless asked)."""
    out = Path(args.out)
    if out.exists() and not args.overwrite:  # before the (possibly long) evaluation
        raise FileExistsError(f"{out} already exists. Pass --overwrite to replace it, or choose another --out.")
    if args.checkpoint is not None and Path(args.checkpoint).is_dir():
        raise EvaluationError(f"--checkpoint {args.checkpoint} is a folder: use --images {args.checkpoint} for "
                              "pictures, or give the model's .safetensors file.")
    if args.images is not None and not Path(args.images).is_dir():
        raise EvaluationError(f"--images {args.images} is not a folder. Give a folder of 32x32 PNG/JPG pictures, or "
                              "--checkpoint for a model file.")
    resolve_device(args.device)  # an unknown or absent device: one line now, not after the work
    check_seed(args.seed, "--seed")
    check_writable_folder(out.parent, "The folder of --out")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    source = args.checkpoint if args.checkpoint is not None else args.images
    try:
        result = evaluate(source, args.world, n=args.n, seed=args.seed, steps=args.steps, guidance=args.guidance,
                          sampler=args.sampler, classifier=None if args.features == "world" else args.features,
                          batch=args.batch, eta=args.eta, device=args.device, progress=args.progress)
    except FeatureNetworkUnavailable as e:  # one clear line, like the CLI's other user errors
        print(f"error: {e}", file=sys.stderr)
        return 1
    result["command"] = "python -m ldm_minimal " + shlex.join(getattr(args, "argv", None) or ["eval"])
    text = json.dumps(result, indent=2)
    if result.get("mode") == "images":
        src = result["source"]
        left = f", left out {', '.join(src['left_out'])}" if src["left_out"] else ""
        print(f"eval: read {src['pictures_used']} pictures from {src['images']}{left}", file=sys.stderr)
    print(text)
    atomic_write_bytes(out, (text + "\n").encode())
    return 0


def add_eval_command(sub) -> None:
    """Register ``eval`` on the subparsers of ``python -m ldm_minimal``."""
    e = sub.add_parser(
        "eval", help="FID, KID, precision/recall of a checkpoint's samples or a folder of pictures -> JSON",
        description="Sample quality on a data world with an offline feature network (docs/evaluation.md). Examples:\n"
                    "  python -m ldm_minimal eval --checkpoint data/checkpoints/shapes32-t2i.safetensors "
                    "--world single32 --n 256 --out t2i.json\n"
                    "  python -m ldm_minimal eval --images outputs/samples --world emoji --n 64 --out folder.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a latent diffusion checkpoint (.safetensors) or a shipped name (t2i, emoji)")
    src.add_argument("--images", help="a folder of 32x32 PNG/JPG pictures (the first --n in name order)")
    e.add_argument("--world", required=True, choices=EVAL_WORLDS, help="reference pictures and feature network")
    e.add_argument("--n", type=int, default=256, help="generated (and real) pictures; compare only at equal n")
    e.add_argument("--seed", type=int, default=0, help="seed of the samples' noise (and of KID's subsets)")
    e.add_argument("--steps", type=int, default=50, help="sampler steps")
    e.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale s (conditional models)")
    e.add_argument("--sampler", default="ddim", choices=SAMPLERS)
    e.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    e.add_argument("--features", default="world", choices=FEATURE_CHOICES,
                   help="world: the world's shipped classifier (offline); inception: torch-fidelity (online)")
    e.add_argument("--batch", type=int, default=64, help="samples drawn at once (part of what the seed fixes)")
    e.add_argument("--device", default=None, help="sampling device (default: CUDA, else MPS, else CPU)")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: leave torch's setting)")
    e.add_argument("--progress", action="store_true", help="show the sampler's progress bar")
    e.add_argument("--out", required=True, help="the JSON file to write")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    e.set_defaults(func=cmd_eval)
