"""Command line: ``python -m ldm_minimal <command>``.

Commands
  demo        the main job: text-to-image, inpainting and x4 super-resolution pictures under outputs/demo/
  sample      text-to-image (--prompt), class-conditional (--class), layout-to-image (--layout) samples
  inpaint     fill the hole of an image (--image, --mask)
  upscale     x4 super-resolution of an image (--image)
  eval        FID, KID, precision/recall of a checkpoint's samples or a folder of pictures on a world (JSON)
  export      copy a run's model to a float16 shipping checkpoint with a manifest entry
  train       train a first stage (ae) or a latent diffusion model (ldm): python -m ldm_minimal train --help
  worlds      list the data worlds
  course      build the student notebooks from solutions/ (python -m ldm_minimal course build [--check])
  grade       grade exercise notebooks against solutions/ (points per exercise -> CSV and JSON)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ldm_minimal.cli.course import add_course_command, add_grade_command
from ldm_minimal.utils import DATA_DIR



def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: text-to-image, inpainting and x4 super-resolution from the shipped checkpoints, one picture."""
    from ldm_minimal.generate import run_demo

    result = run_demo(args.out, steps=args.steps, num_threads=args.threads)
    print(f"Demo finished in {result['seconds']['total']:.1f} s (DDIM {args.steps} steps).")
    print(f"The picture: {result['demo']}")
    print("Its parts: " + ", ".join(str(p) for p in result["parts"].values()))
    return 0


def _train_flag_type(f) -> dict:
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
    import dataclasses

    from ldm_minimal.training.trainer import TrainConfig, resume_config, train, train_config

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
    import shlex

    command = "python -m ldm_minimal " + shlex.join(args.argv) if getattr(args, "argv", None) else None
    summary = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, command=command)
    print(json.dumps(summary, indent=2))
    return 0


def add_train_command(sub) -> None:
    import dataclasses

    from ldm_minimal.training.trainer import TASKS, TrainConfig

    t = sub.add_parser(
        "train", help="train an autoencoder (ae) or a latent diffusion model (ldm)",
        description="Train a first stage (ae) or a latent diffusion model (ldm). Every TrainConfig field is a flag; "
                    "--preset cpu|gpu picks sized defaults. Examples:\n"
                    "  python -m ldm_minimal train ae --preset cpu --model tiny-kl-f4 --out runs/ae\n"
                    "  python -m ldm_minimal train ldm --preset cpu --model shapes-t2i "
                    "--first-stage runs/ae/model.safetensors --out runs/t2i\n"
                    "  python -m ldm_minimal train ldm --out runs/t2i --resume --steps 12000",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("task", choices=TASKS)
    t.add_argument("--preset", choices=["cpu", "gpu"], help="sized defaults (none: the TrainConfig defaults)")
    t.add_argument("--out", required=True, help="run folder (config, metrics, samples, checkpoints, model)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    t.add_argument("--overwrite", action="store_true", help="delete a run already in --out and start afresh")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "task":
            continue
        t.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, **_train_flag_type(f))
    t.set_defaults(func=cmd_train)


def cmd_export(args: argparse.Namespace) -> int:
    """A run's model (EMA weights) -> a float16 shipping copy, recorded in the MANIFEST.json next to it."""
    import torch

    from ldm_minimal.checkpoint import read_checkpoint, save_checkpoint, update_manifest

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


def cmd_worlds(args: argparse.Namespace) -> int:
    from ldm_minimal.data import list_worlds

    for name in list_worlds():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ldm_minimal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="text-to-image, inpainting and super-resolution from the shipped models -> outputs/demo/")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--steps", type=int, default=25, help="DDIM steps per sample")
    # One thread: the demo's models are tiny, and on a 2-core machine a second thread costs more in
    # synchronisation than it gains (measured: ~6 s with 1 thread, 30-190 s with 2 on a busy machine).
    d.add_argument("--threads", type=int, default=1, help="torch CPU threads during the demo")
    d.set_defaults(func=cmd_demo)

    add_train_command(sub)

    from ldm_minimal.generate import add_generation_commands

    add_generation_commands(sub)  # sample, inpaint, upscale

    from ldm_minimal.evaluation.evaluate import add_eval_command

    add_eval_command(sub)  # eval

    e = sub.add_parser("export", help="copy a run's model to a float16 shipping checkpoint with a manifest entry")
    e.add_argument("--run", required=True, help="the run folder (holds model.safetensors, summary.json, config.json)")
    e.add_argument("--to", required=True, help="destination, e.g. data/checkpoints/shapes32-t2i.safetensors")
    e.add_argument("--quality", help="JSON (or a JSON file) with the quality the model reached")
    e.add_argument("--first-stage-command", help="the command that trained its first stage (for the manifest)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --to")
    e.set_defaults(func=cmd_export)

    w = sub.add_parser("worlds", help="list the data worlds")
    w.set_defaults(func=cmd_worlds)

    add_course_command(sub)  # course build, course run
    add_grade_command(sub)  # grade
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command. A user's mistake (a folder that holds a run, a corrupt checkpoint, a bad setting) is printed as
    one clear message with exit code 1; set LDM_MINIMAL_DEBUG=1 for the full traceback."""
    import os

    from ldm_minimal.checkpoint import CheckpointError
    from ldm_minimal.training.trainer import RunFolderError, TrainingDiverged

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except (RunFolderError, CheckpointError, TrainingDiverged, FileExistsError, FileNotFoundError, ValueError) as e:
        if os.environ.get("LDM_MINIMAL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
