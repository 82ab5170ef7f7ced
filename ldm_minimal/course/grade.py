"""Automatic grading of exercise notebooks against ``solutions/``: ``python -m ldm_minimal grade``.

    python -m ldm_minimal grade submissions/*.ipynb --out grades/    # -> grades/grades.csv and grades/grades.json

For each submission (matched to ``solutions/<same file name>`` unless ``--solution`` is given):

1. every graded cell (nbgrader metadata ``grade: true`` with a ``grade_id`` and ``points``) is restored from the
   solution notebook, hidden tests included, so a learner can neither see nor edit the tests that grade them
   (what nbgrader's autograde step does);
2. the notebook runs top to bottom in a fresh kernel whose working folder is an empty temporary one (relative
   paths cannot touch the learner's or the course's files; the package finds its data by absolute paths), with a
   time limit per cell (an endless loop is interrupted) and for the whole notebook (later cells are not run);
3. a graded cell earns its points when it ran without an error. An exception, a timeout or a missing cell costs
   that exercise only; the others are still graded. Feedback names the error.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from ldm_minimal.course.notebooks import SOLUTIONS_DIR, CourseError, cell_source, kernel_environment
from ldm_minimal.utils import environment


def _graded_cells(nb: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """grade_id -> cell, for the cells nbgrader grades (metadata nbgrader.grade true)."""
    out = {}
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") and meta.get("grade_id"):
            out[meta["grade_id"]] = cell
    return out


def _error_of(cell: Any) -> str | None:
    for o in cell.get("outputs", []):
        if o.get("output_type") == "error":
            return f"{o.get('ename', 'Error')}: {o.get('evalue', '')}".strip()
    return None


def grade_notebook(submission: str | Path, solution: str | Path | None = None, cell_timeout: float = 120,
                   total_timeout: float = 900, kernel: str = "python3", mode: str = "FAST", threads: int | None = None) -> dict[str, Any]:
    """Grade one submission; returns {"submission", "exercises": [{grade_id, points, max_points, feedback}],
    "total", "max_total", "seconds"}.

    The kernel runs the course in ``mode`` (FAST by default, also on a GPU machine: grading needs the hidden
    tests, not the FULL training runs); ``threads`` sets the kernel's torch CPU threads (``LDM_COURSE_THREADS``),
    one per submission being the right choice when several are graded side by side."""
    import nbformat
    from nbclient import NotebookClient

    submission = Path(submission)
    solution = Path(solution) if solution else SOLUTIONS_DIR / submission.name
    if not solution.exists():
        raise CourseError(f"no solution notebook {solution} for {submission.name}: pass --solution PATH.")
    reference = _graded_cells(json.loads(solution.read_text()))
    if not reference:
        raise CourseError(f"{solution} has no graded cells (nbgrader metadata grade: true, grade_id, points).")
    try:
        nb = nbformat.reads(submission.read_text(), as_version=4)
    except Exception as e:  # a damaged file costs everything, but the other submissions are still graded
        return _result(submission, reference, {}, {gid: f"the notebook cannot be read: {e}" for gid in reference}, 0.0)
    present = set()
    for cell in nb.cells:  # restore every graded cell (with its hidden tests) from the solution
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid in reference and cell.cell_type == "code":
            cell.source = cell_source(reference[gid])
            present.add(gid)
    feedback = {gid: "the graded cell is missing from the submission" for gid in reference if gid not in present}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ldm-grade-") as tmp:
        work = Path(tmp)  # an empty working folder: relative paths cannot reach anyone's files
        client = NotebookClient(nb, timeout=int(cell_timeout), kernel_name=kernel, allow_errors=True,
                                interrupt_on_timeout=True, resources={"metadata": {"path": str(work)}})
        with environment(**kernel_environment(mode, threads)), client.setup_kernel():  # the kernel inherits it
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
                if time.monotonic() - t0 > total_timeout:
                    if gid in reference:
                        feedback[gid] = f"not run: the notebook used up its {total_timeout:.0f} s"
                    continue
                try:
                    client.execute_cell(cell, index)
                except Exception as e:  # a timeout the interrupt could not stop, a dead kernel, ...
                    if gid in reference:
                        feedback[gid] = f"{type(e).__name__}: {e}".splitlines()[0]
                    continue
                if gid in reference and gid not in feedback:
                    err = _error_of(cell)
                    if err:
                        feedback[gid] = err
    return _result(submission, reference, present, feedback, time.monotonic() - t0)


def _result(submission: Path, reference: dict, present: set | dict, feedback: dict, seconds: float) -> dict[str, Any]:
    rows = []
    for gid, cell in reference.items():
        max_points = float(cell["metadata"]["nbgrader"].get("points", 0))
        ok = gid in present and gid not in feedback
        rows.append({"grade_id": gid, "points": max_points if ok else 0.0, "max_points": max_points,
                     "feedback": "passed" if ok else feedback.get(gid, "failed")})
    return {"submission": str(submission), "exercises": rows, "total": sum(r["points"] for r in rows),
            "max_total": sum(r["max_points"] for r in rows), "seconds": round(seconds, 1)}
