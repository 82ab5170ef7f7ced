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
import re
from pathlib import Path
from typing import Any

from .utils import REPO_ROOT

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


def student_notebook(nb: dict[str, Any], name: str = "notebook") -> dict[str, Any]:
    """The student version of a solution notebook (a JSON dict in nbformat 4); the input is not changed."""
    out = json.loads(json.dumps(nb))
    out.get("metadata", {}).pop("widgets", None)  # saved widget state
    for k, cell in enumerate(out.get("cells", [])):
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else source
        cell["source"] = student_source(text, cell.get("cell_type", "code"), f"{name}, cell {k + 1}")
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


def cmd_course(args: argparse.Namespace) -> int:
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
    c.add_argument("action", choices=["build"])
    c.add_argument("--check", action="store_true", help="only report whether notebooks/ is out of date (exit 1)")
    c.add_argument("--force", action="store_true", help="replace student notebooks even if they were edited")
    c.add_argument("--solutions", default=str(SOLUTIONS_DIR))
    c.add_argument("--notebooks", default=str(NOTEBOOKS_DIR))
    c.set_defaults(func=cmd_course)
