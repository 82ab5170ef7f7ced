"""What every experiment of issue 5 shares: held-out real pictures, one way to score samples, one way to write results.

Each experiment script (``python -m ldm_minimal.experiments.<name>``) writes ``docs/results/<name>.json`` (its numbers,
the machine, the wall time and the command) and a figure; ``ldm_minimal.experiments.report`` turns the JSON files into
``docs/results.md``. Scores (``sample_quality``):

- FID, KID, precision/recall (``ldm_minimal.evaluation.metrics``) on the features of the shapes attribute classifier, against
  ``n`` held-out real single-object pictures. FID is biased upwards at small n, so figures are compared only at
  equal n; ``real_floor`` is the FID between two disjoint real sets of that n (what a perfect model would get).
- attribute accuracy: does the judge read the shape and colour (and size, position) that the prompt asked for.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ldm_minimal.data import caption_for
from ldm_minimal.evaluation.attributes import attribute_accuracy, load_attribute_classifier, render_single
from ldm_minimal.evaluation.metrics import fid, kid, precision_recall
from ldm_minimal.image_io import labeled_rows, save_image
from ldm_minimal.utils import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "docs" / "results"
RUNS_DIR = REPO_ROOT / "runs" / "experiments"
TEST_SEED = 1_000_000  # the held-out shapes world (ldm_minimal.data.SHAPES_SPLITS["test"])
CHECKPOINTS = REPO_ROOT / "data" / "checkpoints"


def machine() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s); torch {torch.__version__}"


def command(name: str, argv: Sequence[str] | None) -> str:
    """The command line that reproduces an experiment run."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join([f"python -m ldm_minimal.experiments.{name}", *args])


@contextmanager
def timer(record: dict[str, Any], key: str = "wall_time_s") -> Iterator[None]:
    """Adds the seconds spent in the block to ``record[key]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record[key] = round(record.get(key, 0.0) + time.perf_counter() - t0, 1)


def single_objects(n: int, start: int = 0) -> tuple[torch.Tensor, list[dict], list[str]]:
    """``n`` held-out single-object 32x32 pictures (B, 3, 32, 32) in [-1, 1], their objects and captions."""
    images, objects = render_single(range(start, start + n), TEST_SEED)
    return images, [o[0] for o in objects], [caption_for(o) for o in objects]


@lru_cache(maxsize=1)
def judge() -> torch.nn.Module:
    return load_attribute_classifier()


@lru_cache(maxsize=4)
def real_floor(n: int) -> float:
    """FID between two disjoint sets of n held-out real pictures: the best a model can score at this n."""
    a, _, _ = single_objects(n)
    b, _, _ = single_objects(n, start=n)
    return round(fid(a, b, judge()), 2)


@torch.no_grad()
def sample_quality(fake: torch.Tensor, real: torch.Tensor, captions: Sequence[str] | None = None) -> dict[str, Any]:
    """FID, KID, precision/recall of ``fake`` against ``real`` (both (N, 3, 32, 32) in [-1, 1]) on the judge's features,
    and, with ``captions``, the judge's attribute accuracy on ``fake``."""
    clf = judge()
    kid_mean, kid_std = kid(real, fake, clf)
    pr = precision_recall(clf.features(real.float()), clf.features(fake.float().clamp(-1, 1)))
    out: dict[str, Any] = {"n": int(fake.shape[0]), "fid": round(fid(real, fake, clf), 2),
                           "kid_x1000": round(1000 * kid_mean, 2), "kid_std_x1000": round(1000 * kid_std, 2),
                           "precision": round(pr["precision"], 3), "recall": round(pr["recall"], 3)}
    if captions is not None:
        acc = attribute_accuracy(clf, fake, list(captions))
        for k in ("shape_and_colour", "shape", "colour", "size", "position"):
            if k in acc:
                out[f"acc_{k}"] = round(float(acc[k]), 4)
    return out


def sample_in_chunks(fn, n: int, chunk: int = 128) -> torch.Tensor:
    """Calls fn(start, stop) for consecutive slices of range(n) and concatenates the image batches."""
    return torch.cat([fn(i, min(i + chunk, n)) for i in range(0, n, chunk)])


def write_result(name: str, result: dict[str, Any], out_dir: Path | None = None,
                 argv: Sequence[str] | None = None, module: str | None = None) -> Path:
    """docs/results/<name>.json with the machine and the command (``module``: the script, default ``name``)."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"experiment": name, "machine": machine(), "command": command(module or name, argv), **result}
    path = out_dir / f"{name}.json"
    text = json.dumps(result, indent=2).replace(str(REPO_ROOT) + "/", "")  # paths relative to the repository
    path.write_text(text + "\n")
    print(f"wrote {path}")
    return path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (the experiments write PNGs, they never open a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, name: str, out_dir: Path | None = None) -> Path:
    """<out_dir>/<name>.png from a matplotlib figure, which is then closed."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    print(f"wrote {path}")
    return path


def save_rows(rows: Sequence[tuple[str, torch.Tensor]], name: str, out_dir: Path | None = None, **kwargs: Any) -> Path:
    """<out_dir>/<name>.png: one labelled row of pictures per (label, images) (``image_io.labeled_rows``)."""

    return save_image(labeled_rows(rows, **kwargs), Path(out_dir or RESULTS_DIR) / f"{name}.png")


def finish(name: str, result: dict[str, Any], args: argparse.Namespace, argv: Sequence[str] | None,
           draw: Callable[[dict[str, Any], Path | None], None]) -> dict[str, Any]:
    """The end of an experiment: docs/results/<name>.json (``write_result``), then its figure ``draw(result,
    out_dir)``; returns the result."""
    write_result(name, result, args.out_dir, argv)
    draw(result, args.out_dir)
    return result


def base_parser(description: str, n: int, checkpoints: Mapping[str, str] | None = None,
                steps: int | None = None) -> argparse.ArgumentParser:
    """The flags every experiment has (--n, --quick, --out-dir, --threads), then one flag per shipped checkpoint it
    reads (``checkpoints``: flag -> file name under data/checkpoints/) and, with ``steps``, --steps (DDIM steps)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=n, help="samples per setting (and real pictures in the reference set)")
    p.add_argument("--quick", action="store_true", help="a smoke run of every code path (tiny n, few steps)")
    p.add_argument("--out-dir", type=Path, default=None, help="where JSON and figures go (default docs/results/)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, all cores)")
    for flag, name in (checkpoints or {}).items():
        p.add_argument(flag, default=str(CHECKPOINTS / name))
    if steps is not None:
        p.add_argument("--steps", type=int, default=steps)
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None, quick: Mapping[str, Any] | None = None
          ) -> argparse.Namespace:
    """The parsed flags after ``setup``; with --quick, the smoke run's smaller settings ``quick`` replace theirs."""
    args = p.parse_args(argv)
    setup(args)
    if args.quick:
        for key, value in (quick or {}).items():
            setattr(args, key, value)
    return args


def setup(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick and args.out_dir is None:
        args.out_dir = RESULTS_DIR / "quick"
