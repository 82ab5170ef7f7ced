"""Automatic grading of exercise notebooks against ``solutions/``: ``python -m ldm_minimal grade``.

    python -m ldm_minimal grade submissions/*.ipynb --out grades/    # -> grades/grades.csv and grades/grades.json

What a grade rests on:

1. **Inputs first.** Every submission, its solution notebook (``solutions/<same file name>`` or ``--solution``) and
   ``--out`` are checked before anything runs; the solutions are read into the grader's memory, their hidden
   grading specs executed there (never in a learner's process).
2. **One fresh sandbox per exercise** (``course/sandbox.py``: bubblewrap where available). It holds the notebook's
   imports, the answer cells of earlier exercises that passed (the fallback for those that did not), and this
   exercise's answer cell, taken from the submission. Nothing else of the submission runs: the locked cells,
   visible checks and any cell a learner added stay out. The package symbols the exercise names as ``banned``
   raise "write your own implementation" there.
3. **Verdicts from data.** The grader draws the cases from a seed it picks (``--seed`` to repeat a grading), the
   sandbox returns the answer's outputs as data, and the grader compares them with the reference it computes in
   its own process. An error, a timeout, a crash or a wrong value costs that exercise only.
4. **Grade files** are written by the grader alone, atomically, after each submission, once its processes are gone.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import os
import secrets
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ldm_minimal.course import exercise, sandbox
from ldm_minimal.course.exercise import AnswerCell, Raised, Spec
from ldm_minimal.course.notebooks import BEGIN_HIDDEN, END_HIDDEN, SOLUTIONS_DIR, CourseError, cell_source
from ldm_minimal.utils import check_writable_folder

MAX_NOTEBOOK_BYTES = 50 << 20
GRADE_FILES = ("grades.json", "grades.csv")


@dataclass
class Solution:
    """A solution notebook as the grader holds it in memory."""

    path: Path
    context: list[str]
    exercises: list[AnswerCell]
    specs: dict[str, Spec] = field(default_factory=dict)
    answer_sources: dict[str, str] = field(default_factory=dict)  # the solution's own answers (for tests)


def _nbgrader(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def _ours(cell: dict) -> dict:
    return cell.get("metadata", {}).get("ldm_minimal", {}) or {}


def _python(source: str) -> str:
    """A cell's source without IPython's magics and shell lines (they are not Python)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))


def notebook_imports(cells: list[dict]) -> list[str]:
    """The top-level import statements of every code cell, in order, each once: the context an answer may use."""
    seen: dict[str, None] = {}
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        try:
            tree = ast.parse(_python(cell_source(cell)))
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not (
                    isinstance(node, ast.ImportFrom) and node.module == "__future__"):
                seen.setdefault(ast.unparse(node), None)
    return list(seen)


def _hidden_block(source: str) -> str:
    lines = source.split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == BEGIN_HIDDEN), None)
    stop = next((i for i, line in enumerate(lines) if line.strip() == END_HIDDEN), None)
    return "" if start is None or stop is None else "\n".join(lines[start + 1: stop])


def _read_json(path: Path) -> dict:
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        raise ValueError(f"it is larger than {MAX_NOTEBOOK_BYTES >> 20} MB")
    nb = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError("it is not a Jupyter notebook (no list of cells)")
    return nb


def exec_context(context: list[str]) -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": "__grading__"}
    for statement in context:
        exec(compile(statement, "<notebook imports>", "exec"), ns)  # noqa: S102 - the solution's own imports
    return ns


def read_solution(path: str | Path) -> Solution:
    """Parse a solution notebook and execute its grading specs here; a CourseError names any problem."""
    path = Path(path)
    try:
        nb = _read_json(path)
    except (OSError, ValueError) as e:
        raise CourseError(f"solution {path} cannot be read: {e}.") from None
    cells = nb["cells"]
    context = notebook_imports(cells)
    solution = Solution(path=path, context=context, exercises=[])
    for i, cell in enumerate(cells):
        meta, ours = _nbgrader(cell), _ours(cell)
        if cell.get("cell_type") != "code" or not meta.get("solution") or not ours.get("answer"):
            continue
        check = next((c for c in cells[i + 1:] if _nbgrader(c).get("grade")), None)
        if check is None:
            raise CourseError(f"{path.name}: exercise {ours['answer']!r} has no graded check cell after it.")
        ex = AnswerCell(answer=ours["answer"], grade_id=meta["grade_id"], check_id=_nbgrader(check)["grade_id"],
                        points=float(_nbgrader(check).get("points", 0)), banned=list(ours.get("banned", [])),
                        spec_source=_hidden_block(cell_source(check)))
        solution.exercises.append(ex)
        solution.answer_sources[ex.answer] = cell_source(cell)
    if not solution.exercises:
        raise CourseError(f"{path} has no exercises (a code cell with nbgrader solution: true and metadata "
                          "ldm_minimal.answer, then a graded check cell).")
    try:
        ns = exec_context(context)
    except Exception as e:
        raise CourseError(f"{path.name}: the notebook's imports fail in the grader ({type(e).__name__}: {e}).") from None
    for ex in solution.exercises:
        for symbol in ex.banned:
            try:
                exercise.resolve(symbol)
            except ValueError as e:
                raise CourseError(f"{path.name}, exercise {ex.answer!r}: {e}.") from None
        exercise.SPECS.clear()
        try:
            exec(compile(ex.spec_source, f"<grading spec {ex.answer}>", "exec"), ns)  # noqa: S102 - the solution's
        except Exception as e:
            raise CourseError(f"{path.name}, exercise {ex.answer!r}: its grading spec fails ({type(e).__name__}: "
                              f"{e}).") from None
        if ex.answer not in exercise.SPECS:
            raise CourseError(f"{path.name}, exercise {ex.answer!r}: the hidden-test block registers no grading spec "
                              f"(lesson.grading_spec({ex.answer!r}, cases=..., reference=...)).")
        solution.specs[ex.answer] = exercise.SPECS.pop(ex.answer)
    return solution


def submission_answers(path: Path, solution: Solution) -> dict[str, str]:
    """grade_id -> source of each answer cell found in the submission (code cells only)."""
    nb = _read_json(path)
    wanted = {ex.grade_id for ex in solution.exercises}
    found: dict[str, str] = {}
    for cell in nb["cells"]:
        gid = _nbgrader(cell).get("grade_id") if isinstance(cell, dict) else None
        if gid in wanted and cell.get("cell_type") == "code" and gid not in found:
            found[gid] = cell_source(cell)
    return found


# ---------------------------------------------------------------------------------------------------------
# one exercise


def draw_cases(spec: Spec, seed: int, index: int) -> list[tuple]:
    """The cases of one exercise for a grading seed, as the sandbox will see them (data only)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63))
    cases = [tuple(c) for c in spec.cases(g)]
    structure, tensors = exercise.encode(cases)
    if "__unsupported__" in json.dumps(structure):
        raise CourseError(f"grading spec {spec.name!r}: its cases hold something other than data.")
    return exercise.decode(structure, tensors)


def expected_outputs(spec: Spec, cases: list[tuple]) -> list[Any]:
    """The reference's outputs, computed here, each on a fresh copy of its case (a probe may change its inputs)."""
    return [exercise.round_trip(exercise.run_probe(spec.probe, spec.reference, tuple(exercise.round_trip(case))))
            for case in cases]


def _signal_name(code: int | None) -> str:
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _cell_feedback(err: Raised) -> str:
    if "NotImplementedError" in err.names:
        return "not done yet (the answer cell still raises NotImplementedError)"
    if err.delegation:
        return f"{exercise.DELEGATION_FEEDBACK}: your code called {err.delegation}, the package's own answer"
    return f"the answer cell raised {err.describe()}"


def verdict(spec: Spec, outcome: sandbox.Outcome, result: Any, want: list[Any], limit_note: str) -> str | None:
    """None when every case matches the reference, else the feedback that says why not."""
    if outcome.timed_out:
        return limit_note if outcome.started else "the sandbox did not start in time"
    if isinstance(result, str):
        if not outcome.started:
            return f"the sandbox failed before your code ran ({_signal_name(outcome.returncode)}): " \
                   f"{outcome.output.strip()[-300:]}"
        return f"your code ended the process before it returned results ({_signal_name(outcome.returncode)})"
    if not isinstance(result, dict) or not isinstance(result.get("outputs"), list):
        return "the results came back malformed"
    if isinstance(result.get("cell_error"), Raised):
        return _cell_feedback(result["cell_error"])
    if result.get("missing"):
        return f"the answer cell does not define {spec.name!r}"
    got = result["outputs"]
    if got and all(isinstance(g, Raised) and "NotImplementedError" in g.names for g in got):
        return "not done yet (the answer still raises NotImplementedError)"
    if len(got) != len(want):
        return f"{len(got)} results came back for {len(want)} cases"
    for i, (g, w) in enumerate(zip(got, want)):
        try:
            if isinstance(g, Raised) and g.delegation:
                raise AssertionError(f"{exercise.DELEGATION_FEEDBACK}: your code called {g.delegation}, the "
                                     "package's own answer")
            if isinstance(g, Raised) and "NotImplementedError" in g.names and not isinstance(w, Raised):
                raise AssertionError("not done yet (raises NotImplementedError)")
            spec.check(g, w)
        except AssertionError as e:
            return f"case {i + 1} of {len(want)}: {e}"
        except Exception as e:  # a compare that trips over odd data is still a failed case
            return f"case {i + 1} of {len(want)}: the result could not be compared ({type(e).__name__}: {e})"
    return None


@dataclass
class Settings:
    cell_timeout: float = 120.0
    total_timeout: float = 900.0
    mode: str = "FAST"
    threads: int = 1
    isolation: str = "auto"
    memory_mb: int = 4096
    seed: int | None = None
    startup_timeout: float = 120.0


def grade_notebook(submission: str | Path, solution: str | Path | Solution | None = None, cell_timeout: float = 120,
                   total_timeout: float = 900, mode: str = "FAST", threads: int | None = None, isolation: str = "auto",
                   seed: int | None = None, memory_mb: int = 4096) -> dict[str, Any]:
    """Grade one submission; returns {"submission", "solution", "exercises": [{grade_id, answer, points, max_points,
    feedback, seconds}], "total", "max_total", "seconds", "seed", "isolation"}."""
    for name, value in (("cell_timeout", cell_timeout), ("total_timeout", total_timeout)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}.")
    submission = Path(submission)
    if not isinstance(solution, Solution):
        solution = read_solution(Path(solution) if solution else SOLUTIONS_DIR / submission.name)
    settings = Settings(cell_timeout=float(cell_timeout), total_timeout=float(total_timeout), mode=mode,
                        threads=threads or 1, isolation=isolation, memory_mb=memory_mb,
                        seed=secrets.randbits(62) if seed is None else int(seed))
    iso = sandbox.detect_isolation(isolation)
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    try:
        answers = submission_answers(submission, solution)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        answers, unreadable = {}, f"the notebook cannot be read: {e}"
    else:
        unreadable = None
    passed: dict[str, bool] = {}
    for index, ex in enumerate(solution.exercises):
        spec = solution.specs[ex.answer]
        started = time.monotonic()
        feedback = unreadable
        if feedback is None and ex.grade_id not in answers:
            feedback = f"the answer cell (grade_id {ex.grade_id!r}) is missing from the submission"
        remaining = settings.total_timeout - (time.monotonic() - t0)
        if feedback is None and remaining <= 0:
            feedback = f"not run: the submission used up its {settings.total_timeout:g} s (--total-timeout)"
        output_bytes = 0
        if feedback is None:
            feedback, output_bytes = _grade_one(solution, index, answers, passed, spec, settings, iso, remaining)
        passed[ex.answer] = feedback is None
        rows.append({"grade_id": ex.check_id, "answer": ex.answer, "points": ex.points if feedback is None else 0.0,
                     "max_points": ex.points, "feedback": "passed" if feedback is None else feedback,
                     "seconds": round(time.monotonic() - started, 2), "output_bytes": output_bytes})
    return {"submission": str(submission), "solution": str(solution.path), "exercises": rows,
            "total": sum(r["points"] for r in rows), "max_total": sum(r["max_points"] for r in rows),
            "seconds": round(time.monotonic() - t0, 1), "seed": settings.seed, "isolation": iso.mode,
            "isolation_detail": iso.describe()}


def _grade_one(solution: Solution, index: int, answers: dict[str, str], passed: dict[str, bool], spec: Spec,
               settings: Settings, iso: sandbox.Isolation, remaining: float) -> tuple[str | None, int]:
    ex = solution.exercises[index]
    cases = draw_cases(spec, settings.seed, index)
    want = expected_outputs(spec, cases)
    earlier = [{"answer": e.answer, "source": answers.get(e.grade_id) if passed.get(e.answer) else None}
               for e in solution.exercises[:index]]
    specs = {e.answer: e.spec_source for e in solution.exercises[: index + 1]}
    job = {"context": solution.context, "specs": specs, "earlier": earlier, "answer": ex.answer,
           "source": answers[ex.grade_id], "banned": ex.banned, "threads": settings.threads}
    run_timeout = min(settings.cell_timeout, remaining)
    limit_note = (f"stopped after {settings.cell_timeout:g} s (--cell-timeout): the answer ran past the time limit"
                  if run_timeout == settings.cell_timeout else
                  f"stopped: the submission used up its {settings.total_timeout:g} s (--total-timeout)")
    work = Path(tempfile.mkdtemp(prefix="ldm-grade-"))
    try:
        job_dir = work / "job"
        job_dir.mkdir()
        (job_dir / "job.json").write_text(json.dumps(job))
        exercise.save_data(str(job_dir / "cases.safetensors"), cases)
        env = {"LDM_COURSE_MODE": settings.mode, "LDM_COURSE_THREADS": str(settings.threads),
               "OMP_NUM_THREADS": str(settings.threads), "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        limits = sandbox.Limits(cpu_s=settings.startup_timeout + run_timeout * 1.5 * settings.threads + 30,
                                memory_mb=settings.memory_mb)
        ready_timeout = settings.startup_timeout + settings.cell_timeout * sum(1 for e in earlier if e["source"])
        outcome, result_path = sandbox.run_sandboxed(job_dir, ex.banned, iso, limits, env, ready_timeout, run_timeout)
        try:
            result: Any = exercise.load_data(str(result_path))
        except ValueError as e:
            result = str(e)
        return verdict(spec, outcome, result, want, limit_note), outcome.output_bytes
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# a batch, as the command line runs it


def check_batch(submissions: list[str | Path], solution: str | Path | None, out: str | Path,
                overwrite: bool) -> tuple[list[Path], dict[Path, Path], Path]:
    """Every problem with the inputs, found before anything runs: one CourseError listing them all."""
    problems: list[str] = []
    try:
        out_dir = check_writable_folder(out, "--out")
    except ValueError as e:
        problems.append(str(e))
        out_dir = Path(out)
    existing = [str(out_dir / f) for f in GRADE_FILES if (out_dir / f).exists()]
    if existing and not overwrite:
        problems.append(f"{', '.join(existing)} already exist (earlier grades). Pass --overwrite or choose another --out.")
    paths = [Path(p) for p in submissions]
    pairs: dict[Path, Path] = {}
    for p in paths:
        if not p.is_file():
            problems.append(f"submission {p} {'is a folder' if p.is_dir() else 'does not exist'}; pass .ipynb files "
                            "(e.g. submissions/*.ipynb).")
            continue
        sol = Path(solution) if solution else SOLUTIONS_DIR / p.name
        if not sol.is_file():
            problems.append(f"no solution notebook {sol} for {p.name}: pass --solution PATH (or name the submission "
                            "like its notebook in solutions/).")
            continue
        pairs[p] = sol
    if len(set(p.resolve() for p in paths)) != len(paths):
        problems.append("a submission is listed twice.")
    if any(out_dir.resolve() == p.resolve().parent for p in pairs.values()):
        problems.append(f"--out {out_dir} is the solutions folder; write grades elsewhere.")
    if problems:
        raise CourseError("cannot grade: " + " | ".join(problems))
    return paths, pairs, out_dir


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_grades(out_dir: Path, results: list[dict[str, Any]]) -> None:
    """grades.json (everything) and grades.csv (a row per exercise), each replaced atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / "grades.json", json.dumps(results, indent=2) + "\n")
    buffer = io.StringIO()
    w = csv.writer(buffer)
    w.writerow(["submission", "grade_id", "points", "max_points", "feedback"])
    for r in results:
        for e in r["exercises"]:
            w.writerow([r["submission"], e["grade_id"], e["points"], e["max_points"], e["feedback"]])
    _atomic_write(out_dir / "grades.csv", buffer.getvalue())


def zero_result(submission: Path, solution: Solution | None, reason: str, iso: sandbox.Isolation) -> dict[str, Any]:
    rows = [{"grade_id": ex.check_id, "answer": ex.answer, "points": 0.0, "max_points": ex.points, "feedback": reason,
             "seconds": 0.0} for ex in (solution.exercises if solution else [])]
    return {"submission": str(submission), "solution": str(solution.path) if solution else None, "exercises": rows,
            "total": 0.0, "max_total": sum(r["max_points"] for r in rows), "seconds": 0.0, "seed": None,
            "isolation": iso.mode, "isolation_detail": iso.describe(), "error": reason}


def grade_batch(submissions: list[str | Path], solution: str | Path | None, out: str | Path, overwrite: bool = False,
                report: Callable[[dict[str, Any]], None] | None = None, **settings: Any) -> list[dict[str, Any]]:
    """Check every input, read the solutions, then grade each submission and write the grade files after each."""
    paths, pairs, out_dir = check_batch(submissions, solution, out, overwrite)
    iso = sandbox.detect_isolation(settings.get("isolation", "auto"))
    solutions: dict[Path, Solution] = {}
    for sol in dict.fromkeys(pairs.values()):
        solutions[sol] = read_solution(sol)  # into memory before any learner's code runs
    results: list[dict[str, Any]] = []
    for p in paths:
        sol = solutions[pairs[p]]
        try:
            r = grade_notebook(p, sol, **settings)
        except Exception as e:  # one submission's failure never ends the batch
            r = zero_result(p, sol, f"the grader could not grade this submission: {type(e).__name__}: {e}", iso)
        results.append(r)
        write_grades(out_dir, results)
        if report:
            report(r)
    return results
