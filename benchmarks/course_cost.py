"""What the course costs to run on the learner's machine (issue 7, part 1): wall time and peak memory of

- every solution notebook in FAST mode (``python -m ldm_minimal course run --times docs/course-times.json``),
- the ``cpu`` training preset end to end (first stage, then text-to-image: the two commands of the README),
- ``python -m ldm_minimal demo`` (what ``make demo`` runs after the install).

Each command runs in its own process; wall time is measured around it and peak memory is the child's maximum
resident set size (``os.wait4``'s rusage: the process and the children it waited for). Results are merged into
docs/results/course_costs.json, one entry per measurement, with the command, the machine and the date, so a
partial re-run (say ``--only demo``) keeps the other entries.

    python benchmarks/course_cost.py                      # demo + notebooks (about 5 minutes)
    python benchmarks/course_cost.py --only cpu-preset    # the cpu preset end to end (about 25 minutes)
    python benchmarks/course_cost.py --only demo --out /tmp/c.json
    python benchmarks/course_cost.py --only notebooks --sync-docs   # and quote the new times everywhere

``--sync-docs`` copies the per-notebook FAST times of docs/course-times.json into the README's course map and total
and into each solution notebook's "Time" line (tests/test_notebooks.py checks that they agree); run
``make exercises`` afterwards so that the student notebooks follow.

Run it on a quiet machine: other processes on the same cores lengthen every wall time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEASUREMENTS = ("demo", "notebooks", "cpu-preset")


def run_measured(cmd: list[str], cwd: Path, env: dict | None = None, log: Path | None = None) -> dict:
    """Run ``cmd``; return its wall time (s), peak resident memory (MB) and exit status."""
    out = open(log, "w") if log else subprocess.DEVNULL
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    finally:
        if log:
            out.close()
    # Linux reports ru_maxrss in KiB
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "returncode": os.waitstatus_to_exitcode(status)}


def machine() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def measure_demo(tmp: Path) -> dict:
    # the demo writes outputs/demo/ under the working directory: run it in a scratch copy of nothing but that
    cmd = [sys.executable, "-m", "ldm_minimal", "demo"]
    r = run_measured(cmd, cwd=tmp, env={"PYTHONPATH": str(ROOT)}, log=tmp / "demo.log")
    return {"command": "python -m ldm_minimal demo", **r}


def measure_notebooks(tmp: Path) -> dict:
    times = ROOT / "docs" / "course-times.json"
    cmd = [sys.executable, "-m", "ldm_minimal", "course", "run", "--mode", "FAST", "--times", str(times),
           "--out", str(tmp / "executed")]
    r = run_measured(cmd, cwd=ROOT, log=tmp / "notebooks.log")
    per = json.loads(times.read_text()).get("FAST", {})
    return {"command": "python -m ldm_minimal course run --mode FAST --times docs/course-times.json", **r,
            "notebooks_wall_s": round(sum(v["wall_s"] for v in per.values()), 1),
            "max_kernel_peak_rss_mb": max(v["kernel_peak_rss_mb"] for v in per.values()),
            "per_notebook": "docs/course-times.json"}


def measure_cpu_preset(tmp: Path) -> dict:
    ae = [sys.executable, "-m", "ldm_minimal", "train", "ae", "--preset", "cpu", "--out", str(tmp / "ae")]
    ldm = [sys.executable, "-m", "ldm_minimal", "train", "ldm", "--preset", "cpu", "--model", "shapes-t2i",
           "--world", "single32", "--first-stage", str(tmp / "ae" / "model.safetensors"), "--out", str(tmp / "ldm")]
    a = run_measured(ae, cwd=ROOT, log=tmp / "ae.log")
    b = run_measured(ldm, cwd=ROOT, log=tmp / "ldm.log") if a["returncode"] == 0 else None
    return {"command": "python -m ldm_minimal train ae --preset cpu --out runs/ae && python -m ldm_minimal train ldm "
                       "--preset cpu --model shapes-t2i --world single32 --first-stage runs/ae/model.safetensors "
                       "--out runs/t2i",
            "first_stage": a, "text_to_image": b,
            "wall_s": round(a["wall_s"] + (b["wall_s"] if b else 0), 1),
            "peak_rss_mb": max(a["peak_rss_mb"], b["peak_rss_mb"] if b else 0),
            "returncode": a["returncode"] or (b["returncode"] if b else 0)}


def sync_docs() -> list[str]:
    """Quote docs/course-times.json's FAST wall times in README.md and in every solution notebook's opening cell."""
    import re

    times = json.loads((ROOT / "docs" / "course-times.json").read_text())["FAST"]
    changed = []
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    lines = readme.splitlines(keepends=True)
    for i, line in enumerate(lines):
        name = next((n for n in times if line.startswith("|") and f"{n}`" in line), None)
        if name:  # the course map's time column: the first "| N s |" cell of the row
            lines[i] = re.sub(r"\| \d+ s \|", f"| {times[name]['wall_s']:.0f} s |", line, count=1)
    total = sum(v["wall_s"] for v in times.values())
    new = re.sub(r"the whole course takes [\d.]+ min \(\d+ s\)",
                 f"the whole course takes {total / 60:.1f} min ({total:.0f} s)", "".join(lines))
    if new != readme:
        readme_path.write_text(new)
        changed.append("README.md")
    for name, v in sorted(times.items()):
        path = ROOT / "solutions" / name
        nb = json.loads(path.read_text())
        cell = nb["cells"][0]
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        new_src = re.sub(r"FAST \(default on CPU\): \d+ s of wall time",
                         f"FAST (default on CPU): {v['wall_s']:.0f} s of wall time", src, count=1)
        if new_src != src:
            cell["source"] = new_src.splitlines(keepends=True)
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
            changed.append(f"solutions/{name}")
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", choices=MEASUREMENTS,
                   help="measure only this (repeatable); default: demo and notebooks")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "course_costs.json"),
                   help="JSON file the entries are merged into")
    p.add_argument("--sync-docs", action="store_true", help="then quote the notebook times in README.md and "
                   "solutions/ (run make exercises afterwards)")
    args = p.parse_args(argv)
    which = args.only or ["demo", "notebooks"]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    funcs = {"demo": measure_demo, "notebooks": measure_notebooks, "cpu-preset": measure_cpu_preset}
    failed = []
    for name in which:
        with tempfile.TemporaryDirectory(prefix=f"course-cost-{name}-") as tmp:
            print(f"[{name}] running ...", flush=True)
            entry = funcs[name](Path(tmp))
            if entry["returncode"] != 0:
                logs = sorted(Path(tmp).glob("*.log"))
                tail = logs[-1].read_text()[-2000:] if logs else ""
                print(f"[{name}] FAILED (exit {entry['returncode']}); not recorded. Last output:\n{tail}", file=sys.stderr)
                failed.append(name)
                continue
        entry.update({"machine": machine(), "date": datetime.date.today().isoformat(),
                      "python": platform.python_version()})
        results[name] = entry
        print(f"[{name}] {entry['wall_s']} s, peak memory {entry['peak_rss_mb']} MB", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")
    if args.sync_docs:
        changed = sync_docs()
        print("times quoted anew in: " + (", ".join(changed) or "nothing (already in agreement)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
