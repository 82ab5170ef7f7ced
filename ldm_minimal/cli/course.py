"""The ``course`` and ``grade`` commands: argparse and the files they write, over ``ldm_minimal.course``.

    python -m ldm_minimal course build [--check] [--force]     # solutions/ -> notebooks/ (student versions)
    python -m ldm_minimal course build --assignment DIR        # versions to hand out: hints and references sealed
    python -m ldm_minimal course run [NB ...] --out DIR        # execute notebooks, time them, keep executed copies
    python -m ldm_minimal grade SUBMISSION.ipynb ... --out DIR  # points per exercise -> grades.json, grades.csv
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from pathlib import Path

from ldm_minimal.course import catalogue, grade, notebooks, sandbox
from ldm_minimal.course.notebooks import NOTEBOOKS_DIR, SOLUTIONS_DIR, CourseError


def cmd_run(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths] or sorted(Path(args.solutions).glob("*.ipynb"))
    if not paths:
        raise CourseError(f"no notebooks to run under {args.solutions}.")
    times_path = Path(args.times) if args.times else None
    times = json.loads(times_path.read_text()) if times_path and times_path.exists() else {}
    failed = 0
    for path in paths:
        if not path.exists():
            raise CourseError(f"{path} does not exist.")
        r = notebooks.run_notebook(path, Path(args.out), mode=args.mode.upper(), timeout=args.timeout, threads=args.threads)
        failed += r["error"] is not None
        print(f"{r['notebook']:<40} {r['mode']}  wall {r['wall_s']:7.1f} s  kernel CPU {r['kernel_cpu_s']} s"
              f"  peak memory {r['kernel_peak_rss_mb']} MB"
              + (f"  ERROR {r['error']}" if r["error"] else ""), flush=True)
        if times_path and r["error"] is None:
            times.setdefault(r["mode"], {})[r["notebook"]] = {
                "wall_s": r["wall_s"], "kernel_cpu_s": r["kernel_cpu_s"], "kernel_peak_rss_mb": r["kernel_peak_rss_mb"],
                "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores", "threads": args.threads or "default"}
            times_path.write_text(json.dumps(times, indent=1, sort_keys=True) + "\n")
    print(f"executed copies in {args.out}" + (f"; times in {times_path}" if times_path else ""))
    return 1 if failed else 0


def cmd_course(args: argparse.Namespace) -> int:
    if args.action == "run":
        return cmd_run(args)
    if args.action == "catalogue":
        text = catalogue.catalogue(Path(args.solutions))
        if args.check:
            current = catalogue.CATALOGUE.read_text() if catalogue.CATALOGUE.exists() else ""
            print("docs/exercises.md is current." if current == text else
                  "docs/exercises.md is out of date: run `python -m ldm_minimal course catalogue`.")
            return 0 if current == text else 1
        catalogue.CATALOGUE.write_text(text)
        print(f"wrote {catalogue.CATALOGUE}")
        return 0
    target = Path(args.assignment) if args.assignment else Path(args.notebooks)
    if args.assignment and target.resolve() in (Path(args.solutions).resolve(), NOTEBOOKS_DIR.resolve()):
        raise CourseError(f"--assignment {target} would replace the course's own notebooks; choose a new folder "
                          "(e.g. assignment/).")
    changed = notebooks.build(Path(args.solutions), target, check=args.check, force=args.force,
                              assignment=bool(args.assignment))
    if args.check:
        if changed:
            print(f"out of date: {', '.join(changed)}. Run `python -m ldm_minimal course build`.")
            return 1
        print(f"{target} matches solutions/.")
        return 0
    kind = "assignment" if args.assignment else "student"
    print(f"wrote {len(changed)} {kind} notebook(s) to {target}" + (f": {', '.join(changed)}" if changed else ""))
    return 0


def add_course_command(sub) -> None:
    c = sub.add_parser("course", help="build the student notebooks from solutions/ (nbgrader markers)",
                       description=notebooks.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("action", choices=["build", "run", "catalogue"],
                   help="build: write notebooks/ from solutions/; run: execute notebooks and time them; "
                        "catalogue: write docs/exercises.md (the exercises' table)")
    c.add_argument("paths", nargs="*", help="run: the notebooks to execute (default: every solutions/*.ipynb)")
    c.add_argument("--mode", default="FAST", choices=["FAST", "FULL", "fast", "full"], help="run: the course mode")
    c.add_argument("--out", default="runs/course/executed", help="run: where the executed copies go")
    c.add_argument("--times", default=None, help="run: a JSON file to record the wall times in (merged)")
    c.add_argument("--timeout", type=float, default=900, help="run: seconds allowed per cell")
    c.add_argument("--threads", type=int, default=None, help="run: torch CPU threads in the kernel")
    c.add_argument("--check", action="store_true", help="only report whether notebooks/ is out of date (exit 1)")
    c.add_argument("--force", action="store_true", help="replace student notebooks even if they were edited")
    c.add_argument("--assignment", metavar="DIR", default=None,
                   help="build: write assignment versions to DIR instead (hints and reference code sealed)")
    c.add_argument("--solutions", default=str(SOLUTIONS_DIR))
    c.add_argument("--notebooks", default=str(NOTEBOOKS_DIR))
    c.set_defaults(func=cmd_course)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds (fractions like 0.5 are fine)")
    return value


def cmd_grade(args: argparse.Namespace) -> int:
    iso = sandbox.detect_isolation(args.isolation)
    print(f"isolation: {iso.describe()}", flush=True)

    def report(r: dict) -> None:
        print(f"{Path(r['submission']).name}: {r['total']:g} / {r['max_total']:g} points ({r['seconds']} s)", flush=True)
        for e in r["exercises"]:
            print(f"  {e['grade_id']}: {e['points']:g} / {e['max_points']:g}  {e['feedback']}", flush=True)

    grade.grade_batch(args.submissions, args.solution, args.out, overwrite=args.overwrite, report=report,
                      cell_timeout=args.cell_timeout, total_timeout=args.total_timeout, mode=args.mode,
                      threads=args.threads, isolation=args.isolation, seed=args.seed, memory_mb=args.memory_mb)
    out = Path(args.out)
    print(f"wrote {out / 'grades.json'} and {out / 'grades.csv'}")
    return 0


def add_grade_command(sub) -> None:
    g = sub.add_parser("grade", help="grade exercise notebooks against solutions/ (CSV and JSON)",
                       description=grade.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("submissions", nargs="+", help="submitted .ipynb files")
    g.add_argument("--solution", help="the solution notebook (default: solutions/<the submission's file name>)")
    g.add_argument("--out", default="grades", help="folder for grades.json and grades.csv")
    g.add_argument("--cell-timeout", type=_positive_seconds, default=120,
                   help="seconds one exercise's code may run (answer cell and its cases; fractions allowed)")
    g.add_argument("--total-timeout", type=_positive_seconds, default=900, help="seconds for a whole submission")
    g.add_argument("--mode", default="FAST", choices=["FAST", "FULL"], help="the course mode the sandbox runs in")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads in each sandbox (default 1)")
    g.add_argument("--isolation", default="auto", choices=["auto", *sandbox.MODES],
                   help="how the submissions' code is isolated (auto: the strongest this machine allows)")
    g.add_argument("--memory-mb", type=int, default=4096, help="address-space limit of each sandbox in MB")
    g.add_argument("--seed", type=int, default=None,
                   help="the seed the grading cases are drawn from (default: a fresh random one, kept in grades.json)")
    g.add_argument("--overwrite", action="store_true", help="replace existing grade files")
    g.set_defaults(func=cmd_grade)
