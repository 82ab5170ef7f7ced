"""Grading: the solution scores full marks, the student version zero, a partial one exactly its solved parts, and
an endless loop or an exception costs only its own exercise."""

from __future__ import annotations

import json
import uuid

import pytest

from ldm_minimal.cli import main
from ldm_minimal.course.notebooks import CourseError, student_notebook
from ldm_minimal.course.grade import grade_notebook


def _cell(source: str, grade_id: str | None = None, points: int = 0, solution: bool = False) -> dict:
    meta = {}
    if grade_id:
        meta = {"nbgrader": {"grade_id": grade_id, "grade": points > 0, "solution": solution, "points": points}}
    return {"cell_type": "code", "id": uuid.uuid4().hex[:8], "metadata": meta, "execution_count": None, "outputs": [],
            "source": source}


def solution_notebook() -> dict:
    cells = [
        _cell("def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION", "square", solution=True),
        _cell("assert square(3) == 9\n### BEGIN HIDDEN TESTS\nassert square(-2) == 4\n### END HIDDEN TESTS",
              "square_test", points=2),
        _cell("def cube(x):\n    ### BEGIN SOLUTION\n    return x ** 3\n    ### END SOLUTION", "cube", solution=True),
        _cell("assert cube(2) == 8\n### BEGIN HIDDEN TESTS\nassert cube(-1) == -1\n### END HIDDEN TESTS",
              "cube_test", points=3),
    ]
    return {"nbformat": 4, "nbformat_minor": 5, "cells": cells,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}


@pytest.fixture()
def course(tmp_path):
    sol = tmp_path / "solutions"
    sol.mkdir()
    (sol / "ex.ipynb").write_text(json.dumps(solution_notebook()))
    subs = tmp_path / "subs"
    subs.mkdir()
    return sol / "ex.ipynb", subs


def _submit(subs, name: str, nb: dict):
    path = subs / name
    path.write_text(json.dumps(nb))
    return path


def test_full_zero_and_partial_marks(course):
    solution, subs = course
    full = grade_notebook(_submit(subs, "full.ipynb", solution_notebook()), solution)
    assert (full["total"], full["max_total"]) == (5, 5)
    student = student_notebook(solution_notebook())
    zero = grade_notebook(_submit(subs, "zero.ipynb", student), solution)
    assert zero["total"] == 0 and all("NotImplementedError" in e["feedback"] for e in zero["exercises"])
    partial = json.loads(json.dumps(student))
    partial["cells"][0]["source"] = "def square(x):\n    return x * x"
    # a learner who edits the visible test to pass does not get its points: graded cells come from the solution
    partial["cells"][3]["source"] = "pass"
    partial["cells"][2]["source"] = "def cube(x):\n    return 8"  # passes the visible test, fails the hidden one
    r = grade_notebook(_submit(subs, "partial.ipynb", partial), solution)
    assert {e["grade_id"]: e["points"] for e in r["exercises"]} == {"square_test": 2, "cube_test": 0}
    assert "AssertionError" in r["exercises"][1]["feedback"]


def test_an_endless_loop_costs_only_its_exercise_and_the_cli_writes_csv_and_json(course, tmp_path, capsys):
    solution, subs = course
    nb = solution_notebook()
    nb["cells"][2]["source"] = "def cube(x):\n    return x ** 3\nwhile True:\n    pass"
    path = _submit(subs, "loop.ipynb", nb)
    out = tmp_path / "grades"
    args = ["grade", str(path), "--solution", str(solution), "--out", str(out), "--cell-timeout", "3"]
    assert main(args) == 0
    rows = json.loads((out / "grades.json").read_text())[0]["exercises"]
    assert {e["grade_id"]: e["points"] for e in rows} == {"square_test": 2, "cube_test": 3}  # cube was defined
    assert (out / "grades.csv").read_text().count("\n") == 3
    assert main(args) == 1 and "--overwrite" in capsys.readouterr().err  # never over earlier grades
    with pytest.raises(CourseError, match="--solution"):
        grade_notebook(path, tmp_path / "missing.ipynb")
