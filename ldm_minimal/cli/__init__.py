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
import os
import sys

from ldm_minimal.checkpoint import CheckpointError
from ldm_minimal.cli.course import add_course_command, add_grade_command
from ldm_minimal.cli.demo import add_demo_command
from ldm_minimal.cli.evaluate import add_eval_command
from ldm_minimal.cli.export import add_export_command
from ldm_minimal.cli.generate import add_generation_commands
from ldm_minimal.cli.train import add_train_command
from ldm_minimal.data import list_worlds
from ldm_minimal.training import RunFolderError, TrainingDiverged


def cmd_worlds(args: argparse.Namespace) -> int:
    for name in list_worlds():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ldm_minimal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    add_demo_command(sub)  # demo
    add_train_command(sub)  # train ae | ldm
    add_generation_commands(sub)  # sample, inpaint, upscale
    add_eval_command(sub)  # eval
    add_export_command(sub)  # export
    w = sub.add_parser("worlds", help="list the data worlds")
    w.set_defaults(func=cmd_worlds)

    add_course_command(sub)  # course build, course run
    add_grade_command(sub)  # grade
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command. A user's mistake (a folder that holds a run, a corrupt checkpoint, a bad setting) is printed as
    one clear message with exit code 1; set LDM_MINIMAL_DEBUG=1 for the full traceback."""
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
