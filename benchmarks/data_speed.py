"""How fast is the shapes world drawn? Images per second at 32x32 and 64x64 on ONE CPU core.

The issue asks for >= 2,000 images/s at 32x32 on one core, so that on-the-fly rendering (ShapesDataset) is never
the bottleneck of training. We pin torch and the BLAS libraries to one thread, run in a single process, warm up,
then time several repeats of a few thousand renders and report the median. The headline figure divides by the
process's CPU time (time.process_time): on a machine shared with other jobs, wall-clock time also counts the time
our one thread waited for a core, which says nothing about the generator. Wall-clock rates are reported next to it.

    .venv/bin/python benchmarks/data_speed.py            # prints a table, writes docs/results/data_speed.json
    .venv/bin/python benchmarks/data_speed.py --quick    # fewer images (a smoke run)
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch are imported

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ldm_minimal.data import ShapesDataset  # noqa: E402
from ldm_minimal.data.shapes import ShapesConfig, render_sample, unit_masks  # noqa: E402


def images_per_second(fn, n: int, repeats: int) -> tuple[list[float], list[float]]:
    """(rates by CPU time, rates by wall-clock time), one per repeat."""
    cpu, wall = [], []
    for r in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        for i in range(n):
            fn(r * n + i)
        cpu.append(n / (time.process_time() - c0))
        wall.append(n / (time.perf_counter() - w0))
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="images per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="500 images x 2 repeats")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "data_speed.json")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 500, 2
    torch.set_num_threads(1)
    unit_masks()  # built once per process (about a second); not part of the per-image cost

    rows = []
    for res in (32, 64):
        cfg = ShapesConfig(resolution=res)
        ds = ShapesDataset(cfg, length=10**9)
        for what, fn in (
            ("render_sample (uint8 arrays)", lambda i, cfg=cfg: render_sample(i, cfg)),
            ("ShapesDataset item (tensors)", lambda i, ds=ds: ds[i]),
        ):
            images_per_second(fn, 200, 1)  # warm-up
            rates, wall = images_per_second(fn, args.images, args.repeats)
            rows.append(
                {
                    "resolution": res,
                    "what": what,
                    "images_per_cpu_s_median": round(statistics.median(rates), 1),
                    "images_per_cpu_s_min": round(min(rates), 1),
                    "images_per_cpu_s_max": round(max(rates), 1),
                    "images_per_wall_s_median": round(statistics.median(wall), 1),
                    "images_per_repeat": args.images,
                    "repeats": args.repeats,
                }
            )

    print(f"{'res':>4}  {'what':<30} {'img/CPU-s median':>17} {'min':>8} {'max':>8} {'img/wall-s':>11}")
    for r in rows:
        print(
            f"{r['resolution']:>4}  {r['what']:<30} {r['images_per_cpu_s_median']:>17,.0f} "
            f"{r['images_per_cpu_s_min']:>8,.0f} {r['images_per_cpu_s_max']:>8,.0f} "
            f"{r['images_per_wall_s_median']:>11,.0f}"
        )
    result = {
        "benchmark": "shapes world generation speed, one core, single process",
        "command": "python benchmarks/data_speed.py" + (" --quick" if args.quick else ""),
        "target": ">= 2000 images/s at 32x32 on one core (render_sample, per CPU-second)",
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "results": rows,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Shapes world: generation speed",
        "",
        f"Command: `{result['command']}`. One process, one thread ({result['machine']['processor']}, "
        f"{result['machine']['cpu_count']} cores, load average {result['load_average_1min']} at the start). "
        "Images per CPU-second (process time) is the figure that does not depend on other jobs on the machine; "
        "images per wall-second is shown beside it. Target: at least 2,000 images/s at 32x32 on one core.",
        "",
        "| resolution | what | images / CPU-s (median) | min | max | images / wall-s |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['resolution']} | {r['what']} | {r['images_per_cpu_s_median']:,.0f} | {r['images_per_cpu_s_min']:,.0f} | "
        f"{r['images_per_cpu_s_max']:,.0f} | {r['images_per_wall_s_median']:,.0f} |"
        for r in rows
    ]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
