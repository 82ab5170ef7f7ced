"""The course's notebooks as files: the 13 of them exist, each follows the course's shape, notebooks/ matches
solutions/, and the grader gives a real notebook full marks, zero, and exactly its solved part.

(Executing every notebook is nbval's job: ``pytest --nbval-lax solutions notebooks`` inside ``make test``.)
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from ldm_minimal.course.notebooks import NOTEBOOKS_DIR, SOLUTIONS_DIR, build, cell_source, student_notebook
from ldm_minimal.course.grade import grade_notebook

REPO = Path(__file__).resolve().parents[1]
COURSE = ["00_orientation", "01_data_worlds", "02_autoencoders", "03_kl_vq_regularisation",
          "04_perceptual_adversarial", "05_ddpm_from_scratch", "06_unet_attention", "07_latent_diffusion",
          "08_conditioning_cross_attention", "09_guidance_ddim", "10_inpainting", "11_super_resolution",
          "12_beyond"]
GRADED_NOTEBOOK = "00_orientation"  # the quickest to run; the grader is the same for all of them


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _nbgrader(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def test_the_course_has_its_thirteen_notebooks_in_both_folders():
    assert sorted(p.stem for p in SOLUTIONS_DIR.glob("*.ipynb")) == COURSE
    assert sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb")) == COURSE


def test_notebooks_folder_is_in_sync_with_solutions():
    stale = build(check=True)
    assert not stale, f"notebooks/ is out of date for {stale}: run `make exercises` (python -m ldm_minimal course build)"


@pytest.mark.parametrize("name", COURSE)
def test_each_notebook_has_the_course_shape(name):
    nb = _load(SOLUTIONS_DIR / f"{name}.ipynb")
    cells = nb["cells"]
    text = "\n".join(cell_source(c) for c in cells)
    first = cell_source(cells[0])
    assert first.startswith(f"# {name[:2]}"), "the first cell is the title '# NN · Topic'"
    for needed in ("한국어 요약", "Goal", "Paper", "Prerequisites", "FAST", "FULL"):
        assert needed in first, f"the opening cell should state {needed!r}"
    for needed in ("Takeaways", "Discussion questions", "Next"):
        assert re.search(rf"^#+ .*{needed}", text, re.M | re.I), f"no '{needed}' heading"
    assert "lesson.setup(" in text and cell_source(cells[-1]).strip() == "L.finish()", "setup first, L.finish() last"
    assert "ipywidgets" in text, "at least one interactive control"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code"), \
        "solutions/ is committed without outputs (see README: 'Why solutions/ has no outputs')"
    assert ".cuda()" not in text, "use L.device, never .cuda()"

    exercises = [i for i, c in enumerate(cells) if _nbgrader(c).get("solution") and c["cell_type"] == "code"]
    assert 2 <= len(exercises) <= 4, f"{len(exercises)} code exercises; the course asks for 2 to 4"
    for i in exercises:
        ex, check = cells[i], cells[i + 1]
        gid = _nbgrader(ex)["grade_id"]
        ours = ex.get("metadata", {}).get("ldm_minimal", {})
        assert ours.get("answer") == gid, f"{gid}: metadata ldm_minimal.answer names what the cell defines"
        assert "### BEGIN SOLUTION" in cell_source(ex), f"{gid}: no solution block"
        assert _nbgrader(check).get("grade") and _nbgrader(check).get("points", 0) > 0, \
            f"{gid}: the cell right after an exercise is its graded check cell"
        source = cell_source(check)
        sealed = source.split("### BEGIN SEALED", 1)[-1].split("### END SEALED", 1)[0]
        assert "### BEGIN SEALED" in source and re.search(rf'lesson\.check\(\s*"{gid}"', sealed), \
            f"{gid}: its check call sits in a sealed block"
        call = _check_call(sealed, gid)
        assert call["reference"] and len(call["hints"]) >= 2, f"{gid}: a fallback and hints in steps"
        assert call["banned"] == ours.get("banned"), f"{gid}: the check bans what the metadata bans"
        hidden = source.split("### BEGIN HIDDEN TESTS", 1)
        assert len(hidden) == 2 and re.search(rf'lesson\.grading_spec\(\s*"{gid}"', hidden[1]), \
            f"{gid}: its grading spec is missing"


def _check_call(source: str, gid: str) -> dict:
    """The keyword arguments of the lesson.check call for ``gid`` (literal lists evaluated)."""
    import ast

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "check" and node.args and \
                isinstance(node.args[0], ast.Constant) and node.args[0].value == gid:
            kw = {k.arg: k.value for k in node.keywords}
            return {"reference": "reference" in kw or len(node.args) > 3,
                    "hints": ast.literal_eval(kw["hints"]) if "hints" in kw else [],
                    "banned": ast.literal_eval(kw["banned"]) if "banned" in kw else []}
    raise AssertionError(f"no lesson.check call for {gid!r}")


def test_assignment_builds_show_no_hint_no_reference_code_and_no_hidden_test(tmp_path):
    build(assignment=True, notebooks=tmp_path)
    for name in COURSE:
        sol = _load(SOLUTIONS_DIR / f"{name}.ipynb")
        text = (tmp_path / f"{name}.ipynb").read_text()
        for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "BEGIN SEALED", "grading_spec", "lesson.check("):
            assert marker not in text, f"{name}: {marker!r} is visible in the assignment"
        for i, c in enumerate(sol["cells"]):
            if _nbgrader(c).get("grade") and "### BEGIN SEALED" in cell_source(c):
                sealed = cell_source(c).split("### BEGIN SEALED", 1)[1].split("### END SEALED", 1)[0]
                for hint in _check_call(sealed, _nbgrader(sol["cells"][i - 1])["grade_id"])["hints"]:
                    assert json.dumps(hint)[1:-1][:40] not in text, f"{name}: a hint is visible in the assignment"


def test_student_versions_keep_no_solution_and_no_hidden_test():
    for name in COURSE:
        text = (NOTEBOOKS_DIR / f"{name}.ipynb").read_text()
        for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "grading_spec", "BEGIN SEALED"):
            assert marker not in text, f"{name}: {marker!r} leaked into the student notebook"


@pytest.mark.slow
def test_grader_on_a_real_notebook_full_zero_and_exactly_the_solved_part(tmp_path):
    solution = SOLUTIONS_DIR / f"{GRADED_NOTEBOOK}.ipynb"
    sol = _load(solution)
    graded = {_nbgrader(c)["grade_id"]: _nbgrader(c)["points"] for c in sol["cells"] if _nbgrader(c).get("grade")}

    full = grade_notebook(solution, solution)
    assert full["total"] == full["max_total"] == sum(graded.values()), full

    student = NOTEBOOKS_DIR / f"{GRADED_NOTEBOOK}.ipynb"
    zero = grade_notebook(student, solution)
    assert zero["total"] == 0 and zero["max_total"] == full["max_total"], zero

    # solve only the first exercise: paste its solution cell into the student notebook
    partial = student_notebook(sol, GRADED_NOTEBOOK)  # a fresh copy
    first = next(i for i, c in enumerate(sol["cells"]) if _nbgrader(c).get("solution") and c["cell_type"] == "code")
    partial["cells"][first] = copy.deepcopy(sol["cells"][first])
    check_id = _nbgrader(sol["cells"][first + 1])["grade_id"]
    path = tmp_path / f"{GRADED_NOTEBOOK}.ipynb"
    path.write_text(json.dumps(partial))
    part = grade_notebook(path, solution)
    assert part["total"] == graded[check_id], part
    assert [r["grade_id"] for r in part["exercises"] if r["points"]] == [check_id]


@pytest.mark.slow
@pytest.mark.parametrize("name", COURSE)
def test_grader_gives_every_solution_full_marks_and_every_student_version_zero(name):
    solution = SOLUTIONS_DIR / f"{name}.ipynb"
    full = grade_notebook(solution, solution)
    assert full["total"] == full["max_total"] > 0, [e["feedback"] for e in full["exercises"]]
    zero = grade_notebook(NOTEBOOKS_DIR / f"{name}.ipynb", solution)
    assert zero["total"] == 0 and all("not done yet" in e["feedback"] for e in zero["exercises"]), zero


def test_readme_course_map_matches_the_measured_times():
    times = _load(REPO / "docs" / "course-times.json")["FAST"]
    readme = (REPO / "README.md").read_text()
    assert set(times) == {f"{n}.ipynb" for n in COURSE}, "docs/course-times.json should time every notebook"
    for name in COURSE:
        row = next((line for line in readme.splitlines() if line.startswith("|") and f"{name}.ipynb" in line), None)
        assert row is not None, f"README's course map has no row for {name}"
        wall = f"{times[name + '.ipynb']['wall_s']:.0f} s"
        assert wall in row, f"README's FAST time for {name} differs from the JSON"
        opening = cell_source(_load(SOLUTIONS_DIR / f"{name}.ipynb")["cells"][0])
        assert f"FAST (default on CPU): {wall} of wall time" in opening, f"{name} states another FAST time than the JSON"
    total = sum(t["wall_s"] for t in times.values())
    assert f"{total / 60:.1f} min" in readme, "README should state the whole-course FAST total"


def test_the_exercise_catalogue_is_current():
    from ldm_minimal.course.catalogue import CATALOGUE, catalogue

    assert CATALOGUE.read_text() == catalogue(), "docs/exercises.md is stale: run `python -m ldm_minimal course catalogue`"
