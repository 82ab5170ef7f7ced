"""The ``course`` and ``grade`` commands: argparse and the files they write, over ``ldm_minimal.course``.

    python -m ldm_minimal course build [--check] [--force]     # solutions/ -> notebooks/ (student versions)
    python -m ldm_minimal course run [NB ...] --out DIR        # execute notebooks, time them, keep executed copies
    python -m ldm_minimal grade SUBMISSION.ipynb ... --out DIR  # points per exercise -> grades.json, grades.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
from pathlib import Path

from ldm_minimal.course import grade, notebooks
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
    changed = notebooks.build(Path(args.solutions), Path(args.notebooks), check=args.check, force=args.force)
    if args.check:
        if changed:
            print(f"out of date: {', '.join(changed)}. Run `python -m ldm_minimal course build`.")
            return 1
        print("notebooks/ matches solutions/.")
        return 0
    print(f"wrote {len(changed)} student notebook(s)" + (f": {', '.join(changed)}" if changed else ""))
    return 0


def add_course_command(sub) -> None:
    c = sub.add_parser("course", help="build the student notebooks from solutions/ (nbgrader markers)",
                       description=notebooks.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("action", choices=["build", "run"],
                   help="build: write notebooks/ from solutions/; run: execute notebooks and time them")
    c.add_argument("paths", nargs="*", help="run: the notebooks to execute (default: every solutions/*.ipynb)")
    c.add_argument("--mode", default="FAST", choices=["FAST", "FULL", "fast", "full"], help="run: the course mode")
    c.add_argument("--out", default="runs/course/executed", help="run: where the executed copies go")
    c.add_argument("--times", default=None, help="run: a JSON file to record the wall times in (merged)")
    c.add_argument("--timeout", type=float, default=900, help="run: seconds allowed per cell")
    c.add_argument("--threads", type=int, default=None, help="run: torch CPU threads in the kernel")
    c.add_argument("--check", action="store_true", help="only report whether notebooks/ is out of date (exit 1)")
    c.add_argument("--force", action="store_true", help="replace student notebooks even if they were edited")
    c.add_argument("--solutions", default=str(SOLUTIONS_DIR))
    c.add_argument("--notebooks", default=str(NOTEBOOKS_DIR))
    c.set_defaults(func=cmd_course)


def cmd_grade(args: argparse.Namespace) -> int:
    out = Path(args.out)
    targets = [out / "grades.json", out / "grades.csv"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist. Pass --overwrite or choose another --out.")
    results = []
    for sub in args.submissions:
        r = grade.grade_notebook(sub, args.solution, args.cell_timeout, args.total_timeout, mode=args.mode, threads=args.threads)
        results.append(r)
        print(f"{Path(sub).name}: {r['total']:g} / {r['max_total']:g} points ({r['seconds']} s)")
        for e in r["exercises"]:
            print(f"  {e['grade_id']}: {e['points']:g} / {e['max_points']:g}  {e['feedback']}")
    out.mkdir(parents=True, exist_ok=True)
    targets[0].write_text(json.dumps(results, indent=2) + "\n")
    with open(targets[1], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["submission", "grade_id", "points", "max_points", "feedback"])
        for r in results:
            for e in r["exercises"]:
                w.writerow([r["submission"], e["grade_id"], e["points"], e["max_points"], e["feedback"]])
    print(f"wrote {targets[0]} and {targets[1]}")
    return 0


def add_grade_command(sub) -> None:
    g = sub.add_parser("grade", help="grade exercise notebooks against solutions/ (CSV and JSON)",
                       description=grade.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("submissions", nargs="+", help="submitted .ipynb files")
    g.add_argument("--solution", help="the solution notebook (default: solutions/<the submission's file name>)")
    g.add_argument("--out", default="grades", help="folder for grades.json and grades.csv")
    g.add_argument("--cell-timeout", type=float, default=120, help="seconds a cell may run before it is interrupted")
    g.add_argument("--total-timeout", type=float, default=900, help="seconds for the whole notebook")
    g.add_argument("--mode", default="FAST", choices=["FAST", "FULL"], help="the course mode the kernel runs in")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads in each kernel (default: all cores)")
    g.add_argument("--overwrite", action="store_true", help="replace existing grade files")
    g.set_defaults(func=cmd_grade)
