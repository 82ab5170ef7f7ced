"""The peer benchmark (benchmarks/peer.py, issue 7) runs end to end in --quick mode; its timings are not checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "peer.py"

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("peer") / "peer.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads(out.read_text()), proc.stdout


def test_quick_run_writes_the_expected_structure(quick_run):
    _, result, stdout = quick_run
    assert set(result) >= {"info", "params", "checks", "rows"}
    info = result["info"]
    for key in ("machine", "torch", "diffusers", "torch_threads", "clock", "repeats", "quick"):
        assert key in info, key
    assert info["quick"] is True and info["torch_threads"] == 1
    measured = {r["measurement"] for r in result["rows"] if "skipped" not in r}
    for name in ("unet forward", "unet forward+backward", "autoencoder encode", "autoencoder decode",
                 "sampling DDIM: ours vs diffusers DDIMScheduler on our UNet",
                 "sampling DDIM: ours vs diffusers pipeline on the matched UNet"):
        assert name in measured, name
    for r in result["rows"]:
        assert {"measurement", "size"} <= set(r)
        if "skipped" in r:
            assert r["skipped"]
            continue
        assert {"ours", "theirs", "ratio", "unit", "batch"} <= set(r), r
        if r["unit"] != "MiB":  # throughput / seconds rows: positive numbers and a consistent ratio
            assert r["ours"] > 0 and r["theirs"] > 0
            expected = r["ours"] / r["theirs"] if r["unit"] == "images/s" else r["theirs"] / r["ours"]
            assert r["ratio"] == pytest.approx(expected)
    assert "| measurement |" in stdout  # the markdown table is printed


def test_matched_parameter_counts_agree(quick_run):
    _, result, _ = quick_run
    assert {"unet:tiny", "autoencoder:tiny"} <= set(result["params"])
    for name, p in result["params"].items():
        assert p["ours"] > 0 and p["theirs"] > 0
        assert abs(p["ours"] - p["theirs"]) <= 0.01 * p["theirs"], (name, p)
    for r in result["rows"]:
        if "params_ours" in r:
            assert r["params_ours"] == pytest.approx(r["params_theirs"], rel=0.01)


def test_matched_models_compute_the_same_function(quick_run):
    _, result, _ = quick_run
    unet = result["checks"]["unet:tiny"]
    assert unet["same_weights"] is True
    assert unet["forward_output_max_abs"] > 1e-2  # a real signal, not two zero outputs
    assert unet["forward_max_abs_difference"] < 1e-4 * max(1.0, unet["forward_output_max_abs"])
    sampling = result["checks"]["sampling:tiny"]
    assert sampling["schedule"]["diffusers"]["steps_offset"] == 1
    # (a) our sampler, (b) diffusers' DDIMScheduler on our UNet, (c) diffusers' pipeline: the same samples from x_T
    # (float32; diffusers' schedule tables are float32 where ours are float64, hence a relative tolerance)
    tol = 1e-4 * max(1.0, sampling["sample_max_abs"])
    assert sampling["max_abs_difference_a_b"] <= tol, sampling
    assert sampling["max_abs_difference_a_c"] <= tol, sampling


def test_refuses_to_overwrite_without_flag(quick_run):
    out, _, _ = quick_run
    before = out.read_text()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode != 0
    assert "--overwrite" in proc.stderr
    assert out.read_text() == before


def test_performance_page_quotes_the_committed_benchmark():
    """docs/performance.md's table is the one of docs/results/peer.json (ratios to three decimals)."""
    page = (ROOT / "docs" / "performance.md").read_text()
    result = json.loads((ROOT / "docs" / "results" / "peer.json").read_text())
    for row in result["rows"]:
        if "ratio" in row:
            line = next((ln for ln in page.splitlines()
                         if ln.startswith(f"| {row['measurement']} | {row['size']} |")), None)
            assert line is not None, f"no row for {row['measurement']} ({row['size']}) in docs/performance.md"
            assert f"**{row['ratio']:.3f}**" in line, f"{row['measurement']} ({row['size']}): ratio differs from the JSON"
