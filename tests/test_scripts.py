"""The benchmark and experiment scripts run (their quick modes); their timings are not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str]) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_data_speed_quick(tmp_path):
    out = tmp_path / "speed.json"
    _run(["benchmarks/data_speed.py", "--quick", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert {r["resolution"] for r in rows} == {32, 64} and all(r["images_per_cpu_s_median"] > 0 for r in rows)
    assert out.with_suffix(".md").exists()


def test_model_cost_quick():
    stdout = _run(["benchmarks/model_cost.py", "--quick"])
    assert "unet:tiny" in stdout and "shapes-t2i" in stdout


def test_ae_reconstruction_quick():
    stdout = _run(["-m", "ldm_minimal.experiments.ae_reconstruction", "--quick", "--no-progress", "--only", "kl-f2", "vq-f2", "--rerun"])
    report = (ROOT / "docs" / "results" / "quick" / "ae_reconstruction.md").read_text()
    assert "| kl-f2 | 2 |" in report and "| vq-f2 | 2 |" in report
    assert "report:" in stdout


def test_t2i_from_scratch_quick(tmp_path):
    stdout = _run(["-m", "ldm_minimal.experiments.t2i_from_scratch", "--quick", "--run-dir", str(tmp_path / "run")])
    assert "report:" in stdout and "guidance 3.0" in stdout
    result = json.loads((ROOT / "docs" / "results" / "quick" / "t2i_from_scratch.json").read_text())
    assert set(result["evaluation"]["by_guidance"]) == {"1.0", "3.0"}
    assert result["timing"]["total_s"] > 0 and "train ldm --preset cpu" in result["timing"]["ldm"]["command"]
    assert (tmp_path / "run" / "ldm" / "model.safetensors").exists()
