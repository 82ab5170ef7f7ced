"""The repository's install files agree with each other, and the CI script does what the README says."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_pins() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = list(data["project"]["dependencies"]) + list(data["project"]["optional-dependencies"]["dev"])
    pins = {}
    for r in reqs:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)\s*", r)
        assert m, f"pyproject dependency {r!r} is not pinned with =="
        pins[m.group(1).lower()] = m.group(2)
    return pins


def _environment_pins() -> dict[str, str]:
    pins = {}
    in_pip = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if re.match(r"\s*- pip:\s*$", line):
            in_pip = True
            continue
        if in_pip:
            m = re.match(r"\s*-\s*([A-Za-z0-9_.\-]+)==(\S+)\s*$", line)
            if m:
                pins[m.group(1).lower()] = m.group(2)
    return pins


def test_environment_yml_matches_pyproject():
    py, env = _pyproject_pins(), _environment_pins()
    assert py == env, (
        f"pyproject.toml and environment.yml disagree: only in pyproject {set(py) - set(env)}, "
        f"only in environment.yml {set(env) - set(py)}, different versions "
        f"{ {k: (py[k], env[k]) for k in set(py) & set(env) if py[k] != env[k]} }"
    )
    assert "-e ." in (ROOT / "environment.yml").read_text(), "environment.yml must install this package"


def test_required_packages_are_pinned():
    pins = _pyproject_pins()
    for pkg in ["torch", "jupyterlab", "nbval", "matplotlib", "ipywidgets", "einops", "transformers", "lpips", "datasets"]:
        assert pkg in pins, f"required package {pkg} is missing from pyproject.toml"
    assert pins["torch"] == "2.13.0"
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["requires-python"] == ">=3.10"


def test_ci_runs_the_readme_test_command_offline():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in ci
    assert "HF_HUB_OFFLINE=1" in ci and "HF_DATASETS_OFFLINE=1" in ci
    assert '"$rc" -eq 5' in ci, "CI must treat pytest's exit code 5 (no tests collected) as a failure"


def test_gitignore_keeps_generated_things_out():
    ignored = (ROOT / ".gitignore").read_text().split()
    for pattern in [".venv/", "outputs/", "runs/", "data/cache/", "__pycache__/"]:
        assert pattern in ignored, f".gitignore should contain {pattern}"


def test_top_level_layout():
    for name in ["notebooks", "ldm_minimal", "data", "solutions", "tests", "environment.yml", "README.md",
                 "pyproject.toml", "Makefile", ".ci/run"]:
        assert (ROOT / name).exists(), f"missing top-level {name}"


def test_nothing_else_at_the_top_level():
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:  # not a git checkout (e.g. an sdist): nothing to check
        return
    top = {p.split("/")[0] for p in tracked}
    allowed = {"notebooks", "ldm_minimal", "data", "solutions", "tests", "environment.yml", "README.md",
               "pyproject.toml", "Makefile", ".ci", "docs", "benchmarks", "LICENSE", ".gitignore"}
    assert top <= allowed, f"unexpected top-level entries: {sorted(top - allowed)}"
