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
        if r["unit"] != "MiB":  # throughput / seconds rows: positive numbers, the ratio inside its interval
            assert r["ours"] > 0 and r["theirs"] > 0
            lo, hi = r["ratio_ci95"]
            assert lo <= r["ratio"] <= hi and r["verdict"] and r["rounds"] == result["info"]["repeats"]
            if r["rounds"] == 1:  # one round: the ratio is that round's ratio of the (single) timings
                expected = r["ours"] / r["theirs"] if r["unit"] == "images/s" else r["theirs"] / r["ours"]
                assert r["ratio"] == pytest.approx(expected)
        if r["measurement"].startswith(("unet forward", "autoencoder")) and r["unit"] == "images/s" and \
                "bf16" not in r["measurement"] and "compile" not in r["measurement"]:
            cl = r["vs_diffusers_channels_last"]  # diffusers also timed channels-last
            assert cl["theirs"] > 0 and cl["ratio_ci95"][0] <= cl["ratio"] <= cl["ratio_ci95"][1]
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
    ae = result["checks"]["autoencoder:tiny"]  # same weights and GroupNorm groups: the same function
    assert ae["norm_groups"] == 8
    for part in ("encode", "decode"):
        assert ae[f"{part}_output_max_abs"] > 1e-2
        assert ae[f"{part}_max_abs_difference"] < 1e-4 * max(1.0, ae[f"{part}_output_max_abs"]), ae
    sampling = result["checks"]["sampling:tiny"]
    assert sampling["schedule"]["diffusers"]["steps_offset"] == 1
    # (a) our sampler, (b) diffusers' DDIMScheduler on our UNet, (c) diffusers' pipeline: the same samples from x_T
    # (float32; diffusers' schedule tables are float32 where ours are float64, hence a relative tolerance)
    overhead = sampling["sampler_overhead_ms_per_step"]  # the samplers' own cost, the network left out
    assert overhead["ours"] > 0 and overhead["diffusers_scheduler"] > 0
    tol = 1e-4 * max(1.0, sampling["sample_max_abs"])
    assert sampling["max_abs_difference_a_b"] <= tol, sampling
    assert sampling["max_abs_difference_a_c"] <= tol, sampling


def _peer_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import peer
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return peer


def test_median_interval_and_verdicts():
    peer = _peer_module()
    # n = 15: P(Binomial(15, 1/2) <= 3) = 0.018 <= 0.025 < P(<= 4) = 0.059, so the interval is [v_4, v_12]
    assert peer.median_ci([float(v) for v in range(15, 0, -1)]) == (8.0, 4.0, 12.0)
    assert peer.median_ci([1.0, 2.0, 3.0]) == (2.0, 1.0, 3.0)  # too few rounds: the range
    ours = [1.0] * 9
    assert peer.paired_ratio(ours, [1.2] * 9)["verdict"] == "faster"
    assert peer.paired_ratio(ours, [0.8] * 9)["verdict"] == "slower"
    mixed = peer.paired_ratio(ours, [0.9, 1.1] * 4 + [1.0])
    assert mixed["verdict"].startswith("same") and mixed["ratio"] == pytest.approx(1.0)


def test_training_step_flops_counts_forward_and_backward():
    """The GPU utilisation figure divides these FLOPs by the step's time: 2 per multiply-add, forward + backward
    (the first layer computes no gradient for the input, which needs none)."""
    import torch

    peer = _peer_module()
    model = torch.nn.Sequential(torch.nn.Linear(10, 20, bias=False), torch.nn.Linear(20, 5, bias=False))
    x = torch.randn(3, 10)
    forward = 2 * 3 * 10 * 20 + 2 * 3 * 20 * 5
    backward = 2 * 3 * 20 * 5 * 2 + 2 * 3 * 10 * 20  # layer 2: input and weight gradients; layer 1: weight only
    assert peer.training_step_flops(model, lambda m: m(x)) == forward + backward
    assert all(p.grad is None for p in model.parameters())  # the gradients are cleared afterwards


def test_refuses_to_overwrite_without_flag(quick_run):
    out, _, _ = quick_run
    before = out.read_text()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode != 0
    assert "--overwrite" in proc.stderr
    assert out.read_text() == before


def test_performance_page_is_generated_from_the_committed_results():
    """docs/performance.md is exactly what benchmarks/performance_page.py makes of docs/results/*.json: no figure on
    it is typed by hand, and a new benchmark run without a regenerated page fails here."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "performance_page.py"), "--check"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_performance_page_quotes_every_measured_row():
    page = (ROOT / "docs" / "performance.md").read_text()
    result = json.loads((ROOT / "docs" / "results" / "peer.json").read_text())
    assert result["info"]["repeats"] >= 6  # enough rounds for a 95% interval of the median
    for row in result["rows"]:
        if "ratio_ci95" in row:
            lo, hi = row["ratio_ci95"]
            cell = f"**{row['ratio']:.3f} [{lo:.3f}, {hi:.3f}]**"
            line = next((ln for ln in page.splitlines()
                         if ln.startswith(f"| {row['measurement']} | {row['size']} |")), None)
            assert line is not None and cell in line, f"{row['measurement']} ({row['size']}) missing or differs"
