"""Run every experiment of issue 5, then write docs/results.md: ``python -m ldm_minimal.experiments``.

    python -m ldm_minimal.experiments                    # all nine, CPU-sized (about 2 h of 1-thread work)
    python -m ldm_minimal.experiments --only guidance samplers
    python -m ldm_minimal.experiments --quick            # a smoke run of every code path -> docs/results/quick/
    python -m ldm_minimal.experiments --report-only      # rebuild docs/results.md from the JSON files

Order matters only for experiments 1-3: ``ldm_f`` trains on ``table8``'s first stages and ``throughput`` reads
``ldm_f``'s runs. Trained models are kept under runs/experiments/ and reused by a second run (delete a run's
folder to train it again). ``--threads 1`` and two processes (e.g. ``--only table8 ldm_f throughput`` and
``--only text_encoder guidance samplers super_resolution inpainting high_resolution``) use two cores best; that is
how docs/results.md was made.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from ldm_minimal.experiments import report

ORDER = ("table8", "ldm_f", "throughput", "guidance", "samplers", "super_resolution", "inpainting", "text_encoder",
         "high_resolution")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=ORDER, default=list(ORDER))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if not args.report_only:
        for name in [n for n in ORDER if n in args.only]:
            extra = (["--quick"] if args.quick else []) + (["--threads", str(args.threads)] if args.threads else [])
            t0 = time.perf_counter()
            print(f"=== {name}: python -m ldm_minimal.experiments.{name} {' '.join(extra)}", flush=True)
            importlib.import_module(f"ldm_minimal.experiments.{name}").main(extra)
            print(f"=== {name} finished in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    report.main(["--quick"] if args.quick else [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
