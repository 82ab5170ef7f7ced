"""The course's notebooks: ``solutions/`` is the source of truth, ``notebooks/`` is generated from it.

    python -m ldm_minimal course build            # solutions/*.ipynb -> notebooks/*.ipynb (student versions)
    python -m ldm_minimal course build --check    # exit 1 if notebooks/ is out of date (what the tests check)

Exercises use nbgrader's markers, so an instructor who uses nbgrader can take our files as they are:

- in a code cell, the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` become a stub,
  ``# YOUR CODE HERE`` and ``raise NotImplementedError()`` at the block's indentation;
- in a markdown cell, a block between the same markers becomes ``YOUR ANSWER HERE``;
- the lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are removed (the grader keeps them);
- a block between ``### BEGIN SEALED`` and ``### END SEALED`` (a check call with its stepped hints and its
  reference code) stays as it is in ``notebooks/``; in an assignment build (``course build --assignment DIR``) it
  becomes one line, ``exec(lesson.unseal("..."))``, that runs the same code without showing it: the hints appear
  only in the check's output after a failed attempt. Sealed means not shown, not secret: grading never depends on
  it (the grader runs only the answer cells, against specs the student never gets);
- outputs and execution counts are cleared, and so is saved widget state.

Cell metadata (``nbgrader: {grade_id, points, ...}``) is kept. Nothing a learner wrote is overwritten: ``build``
records the hash of every notebook it writes in ``notebooks/.generated.json`` and refuses to replace a notebook
whose content no longer matches that record (someone edited it) unless ``--force`` is given.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import zlib
from pathlib import Path
from typing import Any

from ldm_minimal.utils import REPO_ROOT, environment

SOLUTIONS_DIR = REPO_ROOT / "solutions"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RECORD = ".generated.json"
BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
BEGIN_SEALED, END_SEALED = "### BEGIN SEALED", "### END SEALED"
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


def seal(code: str) -> str:
    """Code as an opaque line that runs it: ``exec(lesson.unseal("..."))`` (zlib, then base64)."""
    packed = base64.b64encode(zlib.compress(code.encode("utf-8"), 9)).decode("ascii")
    return f'exec(lesson.unseal("{packed}"))  # the check, its hints and its fallback (sealed in assignments)'


def student_source(source: str, cell_type: str, where: str = "cell", assignment: bool = False) -> str:
    """One cell's source with solutions stubbed and hidden tests removed; in an ``assignment``, each sealed block
    (a check's hints and reference code) becomes one opaque line that still runs it."""
    lines = source.split("\n")
    for start, stop in reversed(_blocks(lines, BEGIN_HIDDEN, END_HIDDEN, where)):
        del lines[start:stop]
    for start, stop in reversed(_blocks(lines, BEGIN_SEALED, END_SEALED, where)):
        body = lines[start + 1: stop - 1]
        lines[start:stop] = [seal("\n".join(body))] if assignment else body
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


def student_notebook(nb: dict[str, Any], name: str = "notebook", assignment: bool = False) -> dict[str, Any]:
    """The student version of a solution notebook (a JSON dict in nbformat 4); the input is not changed.

    ``assignment``: also seal the checks' hints and reference code (see :func:`student_source`)."""
    out = json.loads(json.dumps(nb))
    out.get("metadata", {}).pop("widgets", None)  # saved widget state
    for k, cell in enumerate(out.get("cells", [])):
        cell["source"] = student_source(cell_source(cell), cell.get("cell_type", "code"), f"{name}, cell {k + 1}",
                                        assignment)
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
          force: bool = False, assignment: bool = False) -> list[str]:
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
        text = _dump(student_notebook(json.loads(src.read_text()), src.name, assignment))
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
    import nbformat  # heavy, needed only to run notebooks
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
