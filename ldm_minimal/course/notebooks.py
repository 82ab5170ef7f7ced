"""The course's notebooks: ``solutions/`` is the source of truth, ``notebooks/`` is generated from it.

    python -m ldm_minimal course build            # solutions/*.ipynb -> notebooks/*.ipynb (student versions)
    python -m ldm_minimal course build --check    # exit 1 if notebooks/ is out of date (what the tests check)

Exercises use nbgrader's markers, so an instructor who uses nbgrader can take our files as they are:

- in a code cell, the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` become a stub,
  ``# YOUR CODE HERE`` and ``raise NotImplementedError()`` at the block's indentation;
- in a markdown cell, a block between the same markers becomes ``YOUR ANSWER HERE``;
- the lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are removed (the grader keeps them);
- outputs and execution counts are cleared, and so is saved widget state.

Cell metadata (``nbgrader: {grade_id, points, ...}``) is kept. Nothing a learner wrote is overwritten: ``build``
records the hash of every notebook it writes in ``notebooks/.generated.json`` and refuses to replace a notebook
whose content no longer matches that record (someone edited it) unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

from ldm_minimal.utils import REPO_ROOT, environment

SOLUTIONS_DIR = REPO_ROOT / "solutions"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RECORD = ".generated.json"
BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
MARKDOWN_STUB = "YOUR ANSWER HERE"


class CourseError(ValueError):
    """A malformed solution notebook or a refused overwrite; the message names the file and the fix."""


def _blocks(lines: list[str], begin: str, end: str, where: str) -> list[tuple[int, int]]:
    """(start, stop) line indices of each begin ... end block (markers included); unbalanced markers raise."""
    spans, start = [], None
    for i, line in enumerate(lines):
        text = line.strip()
        if text == begin:
            if start is not None:
                raise CourseError(f"{where}: '{begin}' at line {i + 1} inside another block; close it with '{end}'.")
            start = i
        elif text == end:
            if start is None:
                raise CourseError(f"{where}: '{end}' at line {i + 1} without a '{begin}' before it.")
            spans.append((start, i + 1))
            start = None
    if start is not None:
        raise CourseError(f"{where}: '{begin}' at line {start + 1} is never closed; add '{end}'.")
    return spans


def student_source(source: str, cell_type: str, where: str = "cell") -> str:
    """One cell's source with solutions stubbed and hidden tests removed."""
    lines = source.split("\n")
    for start, stop in reversed(_blocks(lines, BEGIN_HIDDEN, END_HIDDEN, where)):
        del lines[start:stop]
    for start, stop in reversed(_blocks(lines, BEGIN_SOLUTION, END_SOLUTION, where)):
        indent = re.match(r"\s*", lines[start]).group(0)
        stub = [indent + s for s in CODE_STUB] if cell_type == "code" else [MARKDOWN_STUB]
        lines[start:stop] = stub
    return "\n".join(lines)


def cell_source(cell: dict[str, Any]) -> str:
    """A cell's source as one string (nbformat stores it as a string or as a list of lines)."""
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def kernel_environment(mode: str, threads: int | None = None) -> dict[str, str]:
    """The environment a notebook kernel is started with: the course mode and, if given, its torch threads."""
    return {"LDM_COURSE_MODE": mode, **({"LDM_COURSE_THREADS": str(threads)} if threads else {})}


def student_notebook(nb: dict[str, Any], name: str = "notebook") -> dict[str, Any]:
    """The student version of a solution notebook (a JSON dict in nbformat 4); the input is not changed."""
    out = json.loads(json.dumps(nb))
    out.get("metadata", {}).pop("widgets", None)  # saved widget state
    for k, cell in enumerate(out.get("cells", [])):
        cell["source"] = student_source(cell_source(cell), cell.get("cell_type", "code"), f"{name}, cell {k + 1}")
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    return out


def _dump(nb: dict[str, Any]) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build(solutions: Path = SOLUTIONS_DIR, notebooks: Path = NOTEBOOKS_DIR, check: bool = False,
          force: bool = False) -> list[str]:
    """Generate ``notebooks/`` from ``solutions/``. Returns the names that are (check) or were (build) out of date.

    A notebook in ``notebooks/`` that differs from what was last generated there (a learner's edits) is never
    replaced unless ``force``; ``check`` writes nothing.
    """
    solutions, notebooks = Path(solutions), Path(notebooks)
    sources = sorted(solutions.glob("*.ipynb"))
    if not sources:
        raise CourseError(f"{solutions} holds no .ipynb notebooks; the complete notebooks belong there.")
    record_path = notebooks / RECORD
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    stale: dict[str, str] = {}  # name -> the student version to write
    edited = []
    for src in sources:
        text = _dump(student_notebook(json.loads(src.read_text()), src.name))
        dst = notebooks / src.name
        current = dst.read_text() if dst.exists() else None
        if current == text:
            continue
        stale[src.name] = text
        if current is not None and record.get(src.name) != _sha(current):
            edited.append(src.name)
    if check or not stale:
        return list(stale)
    if edited and not force:
        raise CourseError(
            f"{', '.join(edited)} in {notebooks} changed since they were generated (your own work?). Copy them "
            "elsewhere first, or pass --force to replace them with fresh student versions."
        )
    notebooks.mkdir(parents=True, exist_ok=True)
    for name, text in stale.items():
        (notebooks / name).write_text(text)
        record[name] = _sha(text)
    record_path.write_text(json.dumps(dict(sorted(record.items())), indent=1) + "\n")
    return list(stale)


def run_notebook(path: Path, out_dir: Path, mode: str = "FAST", timeout: float = 900,
                 threads: int | None = None) -> dict[str, Any]:
    """Execute one notebook in a fresh kernel (its own folder as working directory) and time it.

    Returns ``{"notebook", "mode", "wall_s", "kernel_cpu_s", "kernel_peak_rss_mb", "error"}``; the executed copy, outputs included,
    is written to ``out_dir`` (a run's output folder, never the source notebook).
    """
    import time

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    error, usage = None, {"kernel_cpu_s": None, "kernel_peak_rss_mb": None}
    start = time.perf_counter()
    with environment(**kernel_environment(mode, threads)):  # the kernel inherits the environment when it starts
        with client.setup_kernel():
            try:
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
            except CellExecutionError as err:
                error = f"cell {index}: {err.ename}: {err.evalue}"[:300]
            wall = time.perf_counter() - start
            probe = nbformat.v4.new_code_cell(
                "import resource as _r; _u = _r.getrusage(_r.RUSAGE_SELF); print(_u.ru_utime + _u.ru_stime, _u.ru_maxrss)")
            nb.cells.append(probe)
            client.execute_cell(probe, len(nb.cells) - 1)
            nb.cells.pop()
            cpu_s, max_rss_kb = probe.outputs[0]["text"].split()  # Linux reports ru_maxrss in KiB
            usage = {"kernel_cpu_s": round(float(cpu_s), 1), "kernel_peak_rss_mb": round(int(max_rss_kb) / 1024)}
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)
    return {"notebook": path.name, "mode": mode, "wall_s": round(wall, 1), **usage, "error": error}


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
        r = run_notebook(path, Path(args.out), mode=args.mode.upper(), timeout=args.timeout, threads=args.threads)
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
    changed = build(Path(args.solutions), Path(args.notebooks), check=args.check, force=args.force)
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
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
