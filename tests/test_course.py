"""The course builder: solutions/ (nbgrader markers) -> notebooks/ (student versions), without losing a learner's work."""

from __future__ import annotations

import json

import pytest

from ldm_minimal.cli import main
from ldm_minimal.course.notebooks import CourseError, build, student_notebook, student_source

SOLUTION_CELL = """import torch

def forward_noise(x0, t, alphas_bar, eps):
    \"\"\"q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).\"\"\"
    ### BEGIN SOLUTION
    a = alphas_bar[t].sqrt()
    return a * x0 + (1 - alphas_bar[t]).sqrt() * eps
    ### END SOLUTION"""

TEST_CELL = """assert forward_noise(torch.ones(1), 0, torch.ones(1), torch.zeros(1)).item() == 1.0
### BEGIN HIDDEN TESTS
assert forward_noise(torch.ones(1), 0, torch.zeros(1), torch.ones(1)).item() == 1.0
### END HIDDEN TESTS"""


def notebook() -> dict:
    grade = {"nbgrader": {"grade_id": "forward", "points": 2, "grade": True, "solution": False}}
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {"widgets": {"state": {}}},
            "cells": [{"cell_type": "markdown", "metadata": {}, "source": "Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION"},
                      {"cell_type": "code", "metadata": {}, "execution_count": 3, "source": SOLUTION_CELL,
                       "outputs": [{"output_type": "stream", "name": "stdout", "text": "hi"}]},
                      {"cell_type": "code", "metadata": grade, "execution_count": 4, "source": TEST_CELL, "outputs": []}]}


def test_solutions_become_stubs_and_hidden_tests_disappear():
    code = student_source(SOLUTION_CELL, "code")
    assert "    # YOUR CODE HERE\n    raise NotImplementedError()" in code and "alphas_bar[t].sqrt()" not in code
    assert code.startswith("import torch") and "q(x_t | x_0)" in code  # everything outside the block is kept
    tests = student_source(TEST_CELL, "code")
    assert tests == "assert forward_noise(torch.ones(1), 0, torch.ones(1), torch.zeros(1)).item() == 1.0"
    nb = student_notebook(notebook())
    assert nb["cells"][0]["source"] == "Why?\nYOUR ANSWER HERE"
    assert nb["cells"][1]["outputs"] == [] and nb["cells"][1]["execution_count"] is None
    assert nb["cells"][2]["metadata"]["nbgrader"]["grade_id"] == "forward"  # nbgrader metadata is kept
    assert "widgets" not in nb["metadata"]
    assert notebook()["cells"][1]["outputs"]  # the input is not modified
    with pytest.raises(CourseError, match="never closed"):
        student_source("### BEGIN SOLUTION\nx = 1", "code", "nb.ipynb, cell 2")
    with pytest.raises(CourseError, match="without a"):
        student_source("x = 1\n### END SOLUTION", "code")


def test_build_check_and_never_overwriting_a_learners_edits(tmp_path, capsys):
    sol, stu = tmp_path / "solutions", tmp_path / "notebooks"
    sol.mkdir()
    (sol / "05_ddpm.ipynb").write_text(json.dumps(notebook()))
    args = ["course", "build", "--solutions", str(sol), "--notebooks", str(stu)]
    assert main(args + ["--check"]) == 1  # nothing generated yet
    assert main(args) == 0 and (stu / "05_ddpm.ipynb").exists()
    assert main(args + ["--check"]) == 0 and build(sol, stu) == []  # in sync: nothing to do
    # a changed solution is rebuilt, because the student file is still the generated one
    nb = notebook()
    nb["cells"][0]["source"] = "Why, exactly?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION"
    (sol / "05_ddpm.ipynb").write_text(json.dumps(nb))
    assert build(sol, stu) == ["05_ddpm.ipynb"] and "Why, exactly?" in (stu / "05_ddpm.ipynb").read_text()
    # a learner's edits are never replaced without --force
    mine = (stu / "05_ddpm.ipynb").read_text().replace("YOUR ANSWER HERE", "my answer")
    (stu / "05_ddpm.ipynb").write_text(mine)
    nb["cells"][0]["source"] = "Why, really?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION"
    (sol / "05_ddpm.ipynb").write_text(json.dumps(nb))
    assert main(args) == 1 and "changed since they were generated" in capsys.readouterr().err
    assert (stu / "05_ddpm.ipynb").read_text() == mine
    assert main(args + ["--force"]) == 0 and "Why, really?" in (stu / "05_ddpm.ipynb").read_text()
    with pytest.raises(CourseError, match="no .ipynb"):
        build(tmp_path / "empty", stu)


def test_course_run_executes_times_and_reports_the_failing_cell(tmp_path, capsys):
    import nbformat

    good, bad = nbformat.v4.new_notebook(), nbformat.v4.new_notebook()
    good.cells = [nbformat.v4.new_code_cell("import os\nprint(os.environ['LDM_COURSE_MODE'])")]
    bad.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('broken cell')")]
    for name, nb in (("good.ipynb", good), ("bad.ipynb", bad)):
        nbformat.write(nb, tmp_path / name)
    times = tmp_path / "times.json"
    code = main(["course", "run", str(tmp_path / "good.ipynb"), str(tmp_path / "bad.ipynb"),
                 "--out", str(tmp_path / "out"), "--times", str(times), "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 1 and "ERROR cell 1: ValueError: broken cell" in out
    executed = nbformat.read(tmp_path / "out" / "good.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"].strip() == "FAST"  # the kernel ran in the requested mode
    recorded = json.loads(times.read_text())["FAST"]
    assert list(recorded) == ["good.ipynb"]  # a failed run is not recorded as a timing
    assert recorded["good.ipynb"]["wall_s"] > 0 and recorded["good.ipynb"]["kernel_peak_rss_mb"] > 10
    assert nbformat.read(tmp_path / "bad.ipynb", as_version=4) == bad  # the source notebook is untouched


def test_an_assignment_build_goes_to_its_own_folder_never_over_the_course(tmp_path, capsys):
    from ldm_minimal.course.notebooks import NOTEBOOKS_DIR, SOLUTIONS_DIR

    for target in (NOTEBOOKS_DIR, SOLUTIONS_DIR):
        assert main(["course", "build", "--assignment", str(target)]) == 1
        assert "would replace the course's own notebooks" in capsys.readouterr().err
    sol = tmp_path / "solutions"
    sol.mkdir()
    nb = notebook()
    nb["cells"][2]["source"] = TEST_CELL.replace("### BEGIN HIDDEN", "### BEGIN SEALED\nhint = 'sqrt of abar'\n"
                                                 "### END SEALED\n### BEGIN HIDDEN")
    (sol / "a.ipynb").write_text(json.dumps(nb))
    out = tmp_path / "assignment"
    assert main(["course", "build", "--solutions", str(sol), "--assignment", str(out)]) == 0
    text = (out / "a.ipynb").read_text()
    assert "sqrt of abar" not in text and "lesson.unseal(" in text and "HIDDEN" not in text
