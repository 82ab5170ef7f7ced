"""The ``demo`` command: the course in one picture, from the shipped checkpoints.

    python -m ldm_minimal demo [--out outputs/demo] [--steps 25] [--threads 1] [--device auto] [--overwrite]

``run_demo`` writes demo.png with text-to-image (Sec. 4.3), inpainting (Sec. 4.5), x4 super-resolution (Sec. 4.4)
and, when its checkpoint exists, emoji text-to-image, plus one picture per part. Fixed seeds and DDIM with eta 0:
the same picture at every run. It refuses to replace the pictures of an earlier run in --out unless --overwrite is
given.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ldm_minimal.checkpoint import SHIPPED, resolve_checkpoint, shipped_checkpoint
from ldm_minimal.data import SHAPES_SPLITS
from ldm_minimal.data.shapes import ShapesSample, render_sample, shapes_preset
from ldm_minimal.data.torch_datasets import image_to_tensor
from ldm_minimal.image_io import labeled_rows, save_image, stack_pictures
from ldm_minimal.latent_diffusion import LatentDiffusion
from ldm_minimal.latent_diffusion_io import load_ldm
from ldm_minimal.masks import box_mask
from ldm_minimal.pipelines import bicubic_upscale, inpaint, lowres_scale, text_to_image, upscale
from ldm_minimal.conditioning import TEXT_CONDITIONERS
from ldm_minimal.pipelines.sampling import GenerationError, require_conditioner, seeded_generator
from ldm_minimal.utils import check_writable_folder, resolve_device

__all__ = ["DEMO_PROMPTS", "DEMO_EMOJI_PROMPTS", "DEMO_SAMPLES", "run_demo", "cmd_demo", "add_demo_command"]

DEMO_PROMPTS: tuple[str, ...] = (  # single objects: what the shipped shapes32-t2i model was trained and judged on
    "a large red circle in the center",
    "a small blue star at the top left",
    "a large green triangle at the bottom right",
    "a large yellow heart on the left",
    "a small orange square at the top",
    "a large purple star on the right",
)
DEMO_EMOJI_PROMPTS: tuple[str, ...] = ("grinning face", "red heart", "pizza", "rocket")
DEMO_SAMPLES = 4  # samples per prompt, and held-out examples for inpainting and super-resolution
DEMO_FILES: tuple[str, ...] = ("demo.png", "t2i.png", "inpaint.png", "upscale.png", "emoji.png")  # what it writes


def _held_out(size: int, start: int, count: int) -> tuple[Tensor, list[ShapesSample]]:
    """Held-out shapes pictures (the test split's seed), (count, 3, size, size) in [-1, 1], and their samples."""
    cfg = shapes_preset("shapes32", resolution=size, seed=SHAPES_SPLITS["test"])
    samples = [render_sample(start + i, cfg) for i in range(count)]
    return torch.stack([image_to_tensor(s.image) for s in samples]), samples


def _demo_paths(checkpoints: dict | None) -> dict[str, Path | None]:
    """The demo's checkpoints: given paths, else the shipped ones. emoji is optional: skipped when its shipped file
    is absent or when it is given as None."""
    given = dict(checkpoints or {})
    unknown = sorted(set(given) - set(SHIPPED))
    if unknown:
        raise GenerationError(f"Unknown demo checkpoint key(s) {unknown}; valid keys: {', '.join(SHIPPED)}.")
    paths: dict[str, Path | None] = {}
    for kind in SHIPPED:
        if kind != "emoji":
            paths[kind] = resolve_checkpoint(given.get(kind), kind)
        elif "emoji" in given:
            paths[kind] = None if given["emoji"] is None else resolve_checkpoint(given["emoji"], kind)
        else:
            p = shipped_checkpoint(kind)
            paths[kind] = p if p.is_file() else None
    return paths


def run_demo(
    out_dir: str | Path = "outputs/demo",
    checkpoints: dict[str, str | Path] | None = None,
    steps: int = 25,
    progress: bool = False,
    device: torch.device | str | None = None,
    num_threads: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The course in one picture: demo.png with text-to-image (Sec. 4.3), inpainting (Sec. 4.5), x4 super-
    resolution (Sec. 4.4) and, when its checkpoint exists, emoji text-to-image; plus t2i.png, inpaint.png,
    upscale.png (and emoji.png) for each part.

    checkpoints: {"t2i", "inpaint", "sr", "emoji"} -> path (default: the shipped ones; emoji is optional). DDIM with
    ``steps`` steps, eta 0, fixed seeds, so the picture is the same at every run. The demo's pictures already in
    out_dir (DEMO_FILES) are an error unless ``overwrite``; with it, they are replaced (and an emoji.png that this
    run does not make is removed). device: None or "auto" = the best available; checked before any model loads.
    num_threads: None leaves torch's thread setting alone; a number sets it for the demo only and restores it after
    (on a small CPU shared with other work, 1 thread avoids OpenMP contention and can be several times faster).
    Returns {"demo": path, "parts": {name: path}, "seconds": {part: wall s, "total": wall s, "cpu_total": CPU s},
    "checkpoints": {...}, "steps": steps}.
    """
    paths = _demo_paths(checkpoints)
    dev = resolve_device(device)
    out = check_writable_folder(out_dir)
    existing = [name for name in DEMO_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds {', '.join(existing)} (the pictures of an earlier demo). Refusing to overwrite: pass "
            "--overwrite (run_demo(..., overwrite=True)) to replace them, or choose another --out folder."
        )
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        return _run_demo(out, paths, steps, progress, dev, overwrite)
    finally:
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)


def _demo_model(path: Path, kind: str, allowed: Sequence[str | None], device: torch.device) -> LatentDiffusion:
    """A demo checkpoint on ``device``, checked to be the kind of model its part of the picture needs."""
    ldm, _ = load_ldm(path, device)
    require_conditioner(ldm, allowed, f"The demo's {kind} checkpoint")
    return ldm


def _text_part(ldm: LatentDiffusion, prompts: Sequence[str], title: str, steps: int, progress: bool) -> np.ndarray:
    """Text-to-image (Sec. 4.3) with guidance s = 3: one labelled row of DEMO_SAMPLES samples per prompt."""
    k = DEMO_SAMPLES
    x = text_to_image(ldm, list(prompts), k, guidance=3.0, steps=steps, seed=0, progress=progress)
    rows = [(p, x[i * k : (i + 1) * k]) for i, p in enumerate(prompts)]
    return labeled_rows(rows, f"{title}, DDIM {steps} steps")


def _inpaint_part(ldm: LatentDiffusion, steps: int, progress: bool) -> np.ndarray:
    """Inpainting (Sec. 4.5) of a box around one object of held-out pictures: input, masked input, result."""
    size = int(ldm.cfg.image_size)
    images, samples = _held_out(size, 0, DEMO_SAMPLES)
    masks = []
    for s in samples:  # a box around the first object, 2 px larger on each side
        x0, y0, x1, y1 = s.objects[0].bbox
        box = (max(x0 - 2, 0), max(y0 - 2, 0), min(x1 + 2, size), min(y1 + 2, size))
        masks.append(box_mask(size, box))
    mask = torch.cat(masks)  # (k, 1, H, W)
    filled = inpaint(ldm, images.to(ldm.device), mask.to(ldm.device), steps=steps, generator=seeded_generator(0),
                     progress=progress).float().cpu()
    rows = [("input (held out)", images), ("masked input", (1 - mask) * images), ("LDM inpainting", filled)]
    return labeled_rows(rows, f"Inpainting (Sec. 4.5): a box around one object, DDIM {steps} steps")


def _upscale_part(ldm: LatentDiffusion, steps: int, progress: bool) -> np.ndarray:
    """x4 super-resolution (Sec. 4.4) of held-out pictures: low-res, bicubic, LDM-SR, ground truth."""
    size = int(ldm.cfg.image_size)
    scale = lowres_scale(ldm)
    truth, _ = _held_out(size, 100, DEMO_SAMPLES)
    lowres = F.avg_pool2d(truth, scale)  # (k, 3, H / s, W / s): how the SR model's training inputs were made
    sr = upscale(ldm, lowres.to(ldm.device), steps=steps, generator=seeded_generator(0),
                 progress=progress).float().cpu()
    lo = size // scale
    rows = [(f"low-res {lo}x{lo} (nearest x{scale})", F.interpolate(lowres, scale_factor=scale, mode="nearest")),
            ("bicubic", bicubic_upscale(lowres, scale)), ("LDM-SR", sr), ("ground truth", truth)]
    return labeled_rows(rows, f"Super-resolution x{scale} (Sec. 4.4), DDIM {steps} steps")


def _run_demo(
    out: Path, paths: dict[str, Path | None], steps: int, progress: bool, dev: torch.device, overwrite: bool
) -> dict[str, Any]:
    t_start, cpu_start = time.perf_counter(), time.process_time()
    out.mkdir(parents=True, exist_ok=True)
    # the parts, top to bottom: (checkpoint kind, the conditioners it must have, the picture made with the model)
    plan: dict[str, tuple[str, Sequence[str | None], Callable[[LatentDiffusion], np.ndarray]]] = {
        "t2i": ("t2i", TEXT_CONDITIONERS, lambda ldm: _text_part(
            ldm, DEMO_PROMPTS, "Text-to-image (Sec. 4.3), classifier-free guidance s = 3", steps, progress)),
        "inpaint": ("inpaint", ("inpaint",), lambda ldm: _inpaint_part(ldm, steps, progress)),
        "upscale": ("sr", ("lowres",), lambda ldm: _upscale_part(ldm, steps, progress)),
        "emoji": ("emoji", TEXT_CONDITIONERS, lambda ldm: _text_part(
            ldm, DEMO_EMOJI_PROMPTS, "Emoji text-to-image, guidance s = 3", steps, progress)),
    }
    parts: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name, (kind, allowed, make) in plan.items():
        if paths[kind] is None:  # the optional emoji checkpoint is absent
            continue
        t0 = time.perf_counter()
        parts[name] = make(_demo_model(paths[kind], kind, allowed, dev))
        seconds[name] = time.perf_counter() - t0

    written = {name: save_image(pic, out / f"{name}.png") for name, pic in parts.items()}
    demo = save_image(stack_pictures(list(parts.values())), out / "demo.png")
    if overwrite:  # an earlier run's part that this run did not make (the optional emoji part)
        for name in DEMO_FILES:
            if name != "demo.png" and Path(name).stem not in parts and (out / name).is_file():
                (out / name).unlink()
    seconds["total"] = time.perf_counter() - t_start
    seconds["cpu_total"] = time.process_time() - cpu_start  # CPU time of all threads (less sensitive to load)
    return {
        "demo": demo,
        "parts": written,
        "seconds": {k_: round(v, 2) for k_, v in seconds.items()},
        "checkpoints": {k_: (str(v) if v is not None else None) for k_, v in paths.items()},
        "steps": steps,
    }


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: text-to-image, inpainting and x4 super-resolution from the shipped checkpoints, one picture."""
    result = run_demo(args.out, steps=args.steps, num_threads=args.threads, device=args.device,
                      overwrite=args.overwrite)
    print(f"Demo finished in {result['seconds']['total']:.1f} s (DDIM {args.steps} steps).")
    print(f"The picture: {result['demo']}")
    print("Its parts: " + ", ".join(str(p) for p in result["parts"].values()))
    return 0


def add_demo_command(subparsers: Any) -> None:
    """Register `demo` on an argparse subparsers object."""
    d = subparsers.add_parser(
        "demo", help="text-to-image, inpainting and super-resolution from the shipped models -> outputs/demo/")
    d.add_argument("--out", default="outputs/demo",
                   help="output folder (default outputs/demo); the pictures of an earlier demo there are kept "
                        "unless --overwrite")
    d.add_argument("--steps", type=int, default=25, help="DDIM steps per sample")
    # One thread: the demo's models are tiny, and on a 2-core machine a second thread costs more in
    # synchronisation than it gains (measured: ~6 s with 1 thread, 30-190 s with 2 on a busy machine).
    d.add_argument("--threads", type=int, default=1, help="torch CPU threads during the demo")
    d.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, ...")
    d.add_argument("--overwrite", action="store_true", help="replace the pictures of an earlier demo in --out")
    d.set_defaults(func=cmd_demo)
