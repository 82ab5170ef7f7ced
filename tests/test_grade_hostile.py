"""Hostile submissions to the real notebook 00 (4 points: to_model_range 1, to_picture 1, parameters_per_part 2),
each with the score it must get. They are the probes of issue 16: the grader must not be fooled, must not lose
the answer key or its grade files, and must not hang.

The probes that need isolation (the repository out of reach, detached processes killed, a fork bomb contained) run
when this machine offers bubblewrap as root, the mode of this project's machines and CI (``.ci/run`` installs
bubblewrap); elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from ldm_minimal.course import sandbox
from ldm_minimal.course.grade import grade_batch, grade_notebook
from ldm_minimal.course.notebooks import SOLUTIONS_DIR, cell_source, student_notebook
from ldm_minimal.utils import REPO_ROOT

pytestmark = pytest.mark.slow
NAME = "00_orientation.ipynb"
ISO = sandbox.detect_isolation()
STRONG = ISO.mode == "bubblewrap" and ISO.root
needs_strong = pytest.mark.skipif(not STRONG, reason=f"needs bubblewrap as root; this machine offers: {ISO.describe()}")


def test_ci_grades_in_the_strongest_mode():
    """CI (.ci/run sets LDM_REQUIRE_SANDBOX=1 after installing bubblewrap) must not skip the isolation probes."""
    if os.environ.get("LDM_REQUIRE_SANDBOX") == "1":
        assert STRONG, f"the grader would run with: {ISO.describe()}"

SOLVED = {}  # grade_id -> the solution's answer cell
for _cell in json.loads((SOLUTIONS_DIR / NAME).read_text())["cells"]:
    _meta = _cell.get("metadata", {})
    if _meta.get("ldm_minimal", {}).get("answer"):
        SOLVED[_meta["nbgrader"]["grade_id"]] = cell_source(_cell)


def _student(**answers: str) -> dict:
    nb = student_notebook(json.loads((SOLUTIONS_DIR / NAME).read_text()))
    for cell in nb["cells"]:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell["source"] = answers[gid]
    return nb


def _grade(tmp_path: Path, nb: dict, **kw) -> dict:
    path = tmp_path / "submission" / NAME
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(nb))
    return grade_notebook(path, kw.pop("solution", SOLUTIONS_DIR / NAME), **kw)


def _points(r: dict) -> dict[str, float]:
    return {e["answer"]: e["points"] for e in r["exercises"]}


def _feedback(r: dict) -> dict[str, str]:
    return {e["answer"]: e["feedback"] for e in r["exercises"]}


def test_the_solution_scores_full_marks_and_the_student_version_zero(tmp_path):
    full = grade_notebook(SOLUTIONS_DIR / NAME, SOLUTIONS_DIR / NAME)
    assert full["total"] == full["max_total"] == 4, full
    zero = _grade(tmp_path, _student())
    assert zero["total"] == 0 and all("not done yet" in f for f in _feedback(zero).values()), zero


def test_monkeypatching_the_checks_or_the_shell_scores_zero(tmp_path):
    added = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "id": "added01",
             "source": "from ldm_minimal.course import lesson\nlesson.check = lambda *a, **k: a[1]"}
    nb = _student(
        to_model_range="from ldm_minimal.course import lesson, exercise\n"
                       "lesson.check = lambda name, fn, test, reference=None, **k: reference\n"
                       "lesson.hidden_test = lambda *a, **k: None\n"
                       "lesson.grading_spec = lambda *a, **k: None\n"
                       "exercise.compare_data = lambda *a, **k: None\n"
                       "exercise.Spec.check = lambda self, got, want: None\n"
                       "def to_model_range(image):\n    return image",
        to_picture="get_ipython().input_transformers_cleanup.append(lambda lines: [])\n"
                   "def to_picture(x):\n    return x",
        parameters_per_part="import sys\nget_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)\n"
                            "def parameters_per_part(model):\n    return {}")
    nb["cells"].insert(3, added)  # a cell the learner added is never run by the grader
    r = _grade(tmp_path, nb)
    assert r["total"] == 0, r
    fb = _feedback(r)
    assert "case 1 of" in fb["to_model_range"]  # the patched compare lives in the sandbox; the verdict does not
    assert "NameError: name 'get_ipython' is not defined" in fb["to_picture"]


def test_calling_the_package_answer_scores_zero_however_it_is_reached(tmp_path):
    nb = _student(
        to_model_range="import importlib\nimport ldm_minimal.data.torch_datasets as m\n"
                       "def to_model_range(image):\n    return importlib.reload(m).image_to_tensor(image)",
        to_picture="import inspect\nimport ldm_minimal.image_io as io\nsource = open(inspect.getsourcefile(io)).read()\n"
                   "scope = {}\nexec(source, scope)\n"
                   "def to_picture(x):\n    return scope['to_uint8'](x)",
        parameters_per_part="from ldm_minimal import utils\n"
                            "def parameters_per_part(model):\n    fs = model.first_stage\n"
                            "    c = utils.count_parameters\n"
                            "    return {'E': c(fs.encoder) + c(fs.quant_conv), 'D': c(fs.post_quant_conv) + c(fs.decoder),"
                            " 'epsilon_theta': c(model.unet), 'tau_theta': 0 if model.conditioner is None else "
                            "c(model.conditioner)}")
    r = _grade(tmp_path, nb)
    assert r["total"] == 0, r
    for answer, feedback in _feedback(r).items():
        assert "write your own implementation" in feedback, (answer, feedback)


@needs_strong
def test_the_answer_key_the_repository_and_the_grade_files_are_out_of_reach(tmp_path):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    shutil.copy(SOLUTIONS_DIR / NAME, solutions / NAME)
    out = tmp_path / "grades"
    marker = f"forge-{os.getpid()}"
    forge = ("import time, pathlib; time.sleep(1.5); "
             f"[p.write_text('forged') for p in pathlib.Path({str(out)!r}).glob('grades.*')]")
    attack = (
        "import os, shutil, subprocess, sys, pathlib\n"
        f"shutil.rmtree({str(solutions)!r}, ignore_errors=True)\n"  # the copy the grader was given
        f"forge = {forge!r}\n"
        f"subprocess.Popen([sys.executable, '-c', forge, {marker!r}], start_new_session=True,\n"
        "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    for name in ('grades.json', 'grades.csv'):\n"
        "        try:\n"
        "            open(f'/proc/{pid}/cwd/{name}', 'w').write('forged')\n"
        "        except OSError:\n"
        "            pass\n"
        f"isolated = not os.path.exists({str(SOLUTIONS_DIR)!r}) and 'DelegationError' in open("
        f"{str(REPO_ROOT / 'ldm_minimal' / 'data' / 'torch_datasets.py')!r}).read()\n")
    nb = _student(to_model_range=attack + SOLVED["to_model_range"].replace("def to_model_range", "def _mine") +
                  "\ndef to_model_range(image):\n    return _mine(image) if isolated else image",
                  to_picture=SOLVED["to_picture"], parameters_per_part=SOLVED["parameters_per_part"])
    sub = tmp_path / "submission" / NAME
    sub.parent.mkdir()
    sub.write_text(json.dumps(nb))
    results = grade_batch([sub], solutions / NAME, out)
    time.sleep(2.5)  # the detached child would have struck by now
    assert (solutions / NAME).is_file()
    saved = json.loads((out / "grades.json").read_text())
    assert saved[0]["total"] == results[0]["total"] == 4, _feedback(results[0])  # it saw no repository and the stubbed package
    assert "forged" not in (out / "grades.csv").read_text()
    survivors = [p for p in filter(str.isdigit, os.listdir("/proc"))
                 if marker.encode() in Path(f"/proc/{p}/cmdline").read_bytes()] if Path("/proc").is_dir() else []
    assert not survivors, "a process the submission started outlived it"


def test_an_interrupt_ignoring_loop_and_an_exit_cost_only_their_own_exercises(tmp_path):
    nb = _student(to_model_range="import time\nwhile True:\n    try:\n        time.sleep(10)\n"
                                 "    except KeyboardInterrupt:\n        pass",
                  to_picture="import os\nos._exit(0)",
                  parameters_per_part=SOLVED["parameters_per_part"])
    t0 = time.monotonic()
    r = _grade(tmp_path, nb, cell_timeout=0.5, total_timeout=30)
    assert time.monotonic() - t0 < 30
    assert _points(r) == {"to_model_range": 0, "to_picture": 0, "parameters_per_part": 2}, r
    fb = _feedback(r)
    assert "stopped after 0.5 s" in fb["to_model_range"] and "ended the process" in fb["to_picture"]


def test_a_flood_of_output_and_a_memory_hog_are_contained(tmp_path):
    nb = _student(to_model_range="import sys\nsys.stdout.write('x' * (50 << 20))\n" + SOLVED["to_model_range"],
                  to_picture="hog = bytearray(64 << 30)",
                  parameters_per_part=SOLVED["parameters_per_part"])
    r = _grade(tmp_path, nb)
    assert _points(r) == {"to_model_range": 1, "to_picture": 0, "parameters_per_part": 2}, r
    assert "MemoryError" in _feedback(r)["to_picture"]
    assert r["exercises"][0]["output_bytes"] >= 50 << 20  # printed, counted, and not kept (64 kB at most)


@needs_strong
def test_a_fork_bomb_is_contained_and_killed(tmp_path):
    nb = _student(to_model_range="import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                  to_picture=SOLVED["to_picture"])
    r = _grade(tmp_path, nb, cell_timeout=3)
    assert _points(r)["to_model_range"] == 0 and _points(r)["to_picture"] == 1, r
