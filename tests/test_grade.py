"""Grading on a small synthetic notebook: full, zero and partial marks from data compared in the grader, timeouts
that hold (fractions included), one exercise's crash costing only that exercise, and batches that check their
inputs first, never end early and write the grade files after each submission.

Hostile submissions against the real notebook 00 are in tests/test_grade_hostile.py.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from ldm_minimal.cli import main
from ldm_minimal.course import grade, sandbox
from ldm_minimal.course.grade import grade_batch, grade_notebook
from ldm_minimal.course.notebooks import CourseError, student_notebook

SPEC = """### BEGIN HIDDEN TESTS
def _cases_{name}(g):
    return [(int(v),) for v in torch.randint(-99, 99, (5,), generator=g)]


lesson.grading_spec("{name}", cases=_cases_{name}, reference=lambda x: x ** {power})
### END HIDDEN TESTS"""


def _cell(source: str, nbgrader: dict | None = None, ours: dict | None = None) -> dict:
    meta = {}
    if nbgrader:
        meta["nbgrader"] = nbgrader
    if ours:
        meta["ldm_minimal"] = ours
    return {"cell_type": "code", "id": uuid.uuid4().hex[:8], "metadata": meta, "execution_count": None, "outputs": [],
            "source": source}


def _exercise(name: str, power: int, points: int) -> list[dict]:
    answer = _cell(f"def {name}(x):\n    ### BEGIN SOLUTION\n    return x ** {power}\n    ### END SOLUTION",
                   {"grade_id": name, "grade": False, "solution": True}, {"answer": name, "banned": []})
    check = _cell(f"assert {name}(2) == {2 ** power}\n" + SPEC.format(name=name, power=power),
                  {"grade_id": f"{name}_check", "grade": True, "solution": False, "points": points})
    return [answer, check]


def solution_notebook() -> dict:
    cells = [_cell("import time\nimport torch\nfrom ldm_minimal.course import lesson"),
             *_exercise("square", 2, 2), *_exercise("cube", 3, 3)]
    return {"nbformat": 4, "nbformat_minor": 5, "cells": cells,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}


def with_answers(**sources: str) -> dict:
    nb = student_notebook(solution_notebook())
    for cell in nb["cells"]:
        gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if gid in sources:
            cell["source"] = sources[gid]
    return nb


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


def _points(result: dict) -> dict[str, float]:
    return {e["grade_id"]: e["points"] for e in result["exercises"]}


def test_full_zero_and_partial_marks_from_cases_drawn_at_grading_time(course):
    solution, subs = course
    full = grade_notebook(_submit(subs, "full.ipynb", solution_notebook()), solution)
    assert (full["total"], full["max_total"]) == (5, 5), full
    assert full["isolation"] in sandbox.MODES and isinstance(full["seed"], int)
    zero = grade_notebook(_submit(subs, "zero.ipynb", student_notebook(solution_notebook())), solution)
    assert zero["total"] == 0 and all("not done yet" in e["feedback"] for e in zero["exercises"]), zero
    # passes the visible check (cube(2) == 8) but not cases drawn at grading time; visible checks are never run
    partial = with_answers(square="def square(x):\n    return x * x", cube="def cube(x):\n    return 8")
    r = grade_notebook(_submit(subs, "partial.ipynb", partial), solution, seed=1)
    assert _points(r) == {"square_check": 2, "cube_check": 0}
    assert "case 1 of 5" in r["exercises"][1]["feedback"] and "expected" in r["exercises"][1]["feedback"]
    again = grade_notebook(_submit(subs, "partial.ipynb", partial), solution, seed=1)
    assert again["exercises"][1]["feedback"] == r["exercises"][1]["feedback"]  # --seed repeats a grading exactly


def test_a_later_exercise_uses_the_fallback_when_an_earlier_one_failed(course):
    solution, subs = course
    nb = with_answers(square="def square(x):\n    return x + x",  # wrong
                      cube="def cube(x):\n    return square(x) * x")  # right only with a right square
    r = grade_notebook(_submit(subs, "dep.ipynb", nb), solution)
    assert _points(r) == {"square_check": 0, "cube_check": 3}, r


def test_timeouts_are_positive_seconds_fractions_honoured_and_hold_inside_a_cell(course, tmp_path, capsys):
    solution, subs = course
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            grade_notebook(solution, solution, cell_timeout=bad)
    with pytest.raises(SystemExit) as stop:  # argparse's own error: exit code 2, before any work
        main(["grade", str(solution), "--cell-timeout", "0", "--out", str(tmp_path / "g")])
    assert stop.value.code == 2 and "not a positive number of seconds" in capsys.readouterr().err
    slow = with_answers(square="import time\ndef square(x):\n    time.sleep(2)\n    return x * x",
                        cube="def cube(x):\n    return x ** 3")
    r = grade_notebook(_submit(subs, "slow.ipynb", slow), solution, cell_timeout=0.5)
    assert _points(r) == {"square_check": 0, "cube_check": 3}, r
    assert "stopped after 0.5 s (--cell-timeout)" in r["exercises"][0]["feedback"]
    assert r["exercises"][0]["seconds"] < 10
    hang = with_answers(square="while True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n        pass")
    t0 = time.monotonic()
    r = grade_notebook(_submit(subs, "hang.ipynb", hang), solution, cell_timeout=100, total_timeout=3)
    assert time.monotonic() - t0 < 30
    assert "used up its 3 s (--total-timeout)" in r["exercises"][0]["feedback"]
    assert "not run" in r["exercises"][1]["feedback"] and r["total"] == 0


def test_a_crash_in_one_exercise_costs_only_that_exercise(course):
    solution, subs = course
    nb = with_answers(square="import os\nos._exit(0)", cube="def cube(x):\n    return x ** 3")
    r = grade_notebook(_submit(subs, "exit.ipynb", nb), solution)
    assert _points(r) == {"square_check": 0, "cube_check": 3}, r
    assert "ended the process" in r["exercises"][0]["feedback"]
    nb = with_answers(square="def square(x):\n    return x * x",
                      cube="raise SystemExit(0)\ndef cube(x):\n    return x ** 3")
    r = grade_notebook(_submit(subs, "sysexit.ipynb", nb), solution)
    assert _points(r) == {"square_check": 2, "cube_check": 0}
    assert "raised SystemExit" in r["exercises"][1]["feedback"]


def test_a_batch_checks_every_input_before_any_work(course, tmp_path):
    solution, subs = course
    good = _submit(subs, "ex.ipynb", solution_notebook())
    orphan = _submit(subs, "other.ipynb", solution_notebook())
    out = tmp_path / "grades"
    with pytest.raises(CourseError, match=r"no solution notebook .*other.ipynb.*--solution"):
        grade_batch([good, orphan], None, out)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CourseError, match="--out .* cannot be written|is a file"):
        grade_batch([good], solution, blocker / "grades")
    with pytest.raises(CourseError, match="does not exist"):
        grade_batch([good, subs / "missing.ipynb"], solution, out)
    assert not out.exists()  # nothing ran, nothing was written


def test_a_damaged_submission_gets_zero_with_its_reason_and_the_batch_goes_on(course, tmp_path):
    solution, subs = course
    damaged = subs / "a_damaged.ipynb"
    damaged.write_text("{ not json")
    good = _submit(subs, "b_good.ipynb", solution_notebook())
    out = tmp_path / "grades"
    seen = []

    def report(r):  # after each submission the files already hold every result so far
        seen.append(len(json.loads((out / "grades.json").read_text())))

    results = grade_batch([damaged, good], solution, out, report=report)
    assert seen == [1, 2]
    assert results[0]["total"] == 0 and "cannot be read" in results[0]["exercises"][0]["feedback"]
    assert results[1]["total"] == 5
    rows = (out / "grades.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and "b_good.ipynb" in rows[-1]
    saved = json.loads((out / "grades.json").read_text())
    assert saved[1]["isolation"] == results[1]["isolation"] and saved[1]["isolation_detail"]
    with pytest.raises(CourseError, match="already exist .*--overwrite"):  # never over earlier grades
        grade_batch([good], solution, out)
    assert len(json.loads((out / "grades.json").read_text())) == 2


def test_the_cli_prints_the_isolation_and_writes_both_files(course, tmp_path, capsys):
    solution, subs = course
    path = _submit(subs, "ex.ipynb", solution_notebook())
    out = tmp_path / "grades"
    assert main(["grade", str(path), "--solution", str(solution), "--out", str(out), "--cell-timeout", "30"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("isolation: ") and "5 / 5 points" in text
    assert json.loads((out / "grades.json").read_text())[0]["total"] == 5
    assert main(["grade", str(path), "--solution", str(solution), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_a_solution_without_specs_is_refused_with_the_fix(tmp_path):
    nb = solution_notebook()
    nb["cells"][2]["source"] = "assert square(2) == 4"  # its hidden block is gone
    path = tmp_path / "ex.ipynb"
    path.write_text(json.dumps(nb))
    with pytest.raises(CourseError, match=r"registers no grading spec \(lesson.grading_spec\('square'"):
        grade.read_solution(path)


@pytest.mark.parametrize("mode", sandbox.MODES)
def test_every_isolation_mode_this_machine_offers_grades_the_same_and_says_which_it_used(course, mode):
    solution, subs = course
    try:
        sandbox.detect_isolation(mode)
    except ValueError as e:
        pytest.skip(str(e))
    partial = with_answers(square="def square(x):\n    return x * x", cube="def cube(x):\n    return 8")
    r = grade_notebook(_submit(subs, "p.ipynb", partial), solution, isolation=mode)
    assert _points(r) == {"square_check": 2, "cube_check": 0} and r["isolation"] == mode
    if mode == "none":
        assert "none beyond a scratch folder" in r["isolation_detail"]


def test_an_unavailable_isolation_mode_is_refused_before_any_work():
    with pytest.raises(ValueError, match="--isolation 'jail' is not a mode"):
        sandbox.detect_isolation("jail")
