"""The ``sample``, ``inpaint`` and ``upscale`` commands: argparse over ``ldm_minimal.pipelines``, and the files.

    python -m ldm_minimal sample  --prompt "a large red circle in the center" --n 4
    python -m ldm_minimal inpaint --image picture.png --mask hole.png
    python -m ldm_minimal upscale --image small.png

Each loads a checkpoint written by ``save_ldm`` (default: the shipped one) and writes sample_000.png, ..., a grid
(sample) or a panel (inpaint, upscale) and samples.json (checkpoint path and sha256 prefix, the conditions, seed,
guidance, steps, sampler, eta and which file is which). It refuses to replace files already in --out unless
--overwrite is given (with --overwrite, the earlier run's pictures that this run does not rewrite are removed, so
the folder holds one run). Pictures above MAX_OUTPUT_SIDE px per side (``sample --size``, upscale outputs) or input
images above MAX_INPUT_SIDE px (``inpaint``) are refused unless --allow-large is given. --device, --seed and --out
are checked before any model is loaded; a user's mistake ends the command with one line naming the problem and the
fix.
``add_generation_commands`` registers the three on an argparse subparsers object.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ldm_minimal.checkpoint import SHIPPED, CheckpointError, checkpoint_dir, resolve_checkpoint, sha256_of
from ldm_minimal.image_io import image_grid, load_image, load_mask, save_image, to_uint8
from ldm_minimal.latent_diffusion import LatentDiffusion
from ldm_minimal.latent_diffusion_io import load_ldm
from ldm_minimal.pipelines import (
    bicubic_upscale,
    class_index,
    class_to_image,
    inpaint_image,
    layout_objects,
    layout_to_image,
    lowres_scale,
    text_to_image,
    unconditional_samples,
    upscale_image,
)
from ldm_minimal.pipelines.sampling import (
    MAX_INPUT_SIDE,
    MAX_OUTPUT_SIDE,
    SAMPLE_FLAG,
    GenerationError,
    check_large,
    check_size,
    require_conditioner,
    size_unit,
    usage_hint,
)
from ldm_minimal.samplers import SAMPLERS
from ldm_minimal.utils import check_images, check_seed, check_writable_folder, resolve_device

__all__ = ["add_generation_commands", "cmd_sample", "cmd_inpaint", "cmd_upscale"]


def _cli(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the expected user errors into a one-line message and exit status 1 instead of a traceback."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (GenerationError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
            raise SystemExit(f"{args.command}: error: {e}") from e

    return run


def _preflight(args: argparse.Namespace) -> Path:
    """The checks of every command before any work (loading a model, sampling): --device exists on this machine,
    --seed is one torch accepts, --out can be created and written. Returns --out as a Path."""
    args.device = resolve_device(args.device)
    check_seed(args.seed, "--seed")
    return check_writable_folder(args.out)


def _load(args: argparse.Namespace, kind: str, conditioner: str | None = None) -> tuple[LatentDiffusion, dict, Path]:
    """The --checkpoint (default: the shipped ``kind``) on --device, checked to have ``conditioner`` if given."""
    path = resolve_checkpoint(args.checkpoint, kind)
    ldm, meta = load_ldm(path, resolve_device(args.device))
    if conditioner is not None:
        require_conditioner(ldm, (conditioner,), args.command)
    return ldm, meta, path


def _refuse_overwrite(out: Path, names: Sequence[str], overwrite: bool) -> None:
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:4]) + (f" and {len(existing) - 4} more" if len(existing) > 4 else "")
        raise FileExistsError(
            f"{out} already holds {shown}, which this run would write. Refusing to overwrite: pass --overwrite "
            "to replace them, or choose another --out folder."
        )


# the names of the pictures these commands write (sample_000.png, ..., grid.png, panel.png)
OWN_PICTURE = re.compile(r"(sample_\d{3,}|grid|panel)\.png")


def _earlier_run_files(out: Path, keep: Sequence[str]) -> list[Path]:
    """The files of an earlier run in ``out`` that a run writing ``keep`` would not rewrite: the pictures its
    samples.json lists and the names these commands write (sample_NNN.png, grid.png, panel.png), nothing else."""
    names = {p.name for p in out.iterdir() if p.is_file() and OWN_PICTURE.fullmatch(p.name)} if out.is_dir() else set()
    try:
        record = json.loads((out / "samples.json").read_text())
        listed = [f.get("file") for f in record.get("files", []) if isinstance(f, dict)]
        listed += [str(record.get(k, "")).split(":")[0] for k in ("grid", "panel")]
    except (OSError, ValueError, AttributeError):
        listed = []
    # plain PNG names inside out only: an edited samples.json cannot point elsewhere
    names |= {nm for nm in listed if isinstance(nm, str) and nm.endswith(".png") and Path(nm).name == nm}
    return [out / nm for nm in sorted(names - set(keep)) if (out / nm).is_file()]


def _write(out: Path, pictures: dict[str, np.ndarray], record: dict, overwrite: bool = False) -> list[Path]:
    """Write the PNGs and samples.json; print and return the paths. With ``overwrite``, first remove the earlier
    run's pictures that this run does not rewrite, so that the folder holds one run only."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for stale in _earlier_run_files(out, list(pictures)):
            stale.unlink()
            print(f"removed {stale} (from the earlier run)")
    written = [save_image(arr, out / name) for name, arr in pictures.items()]
    js = out / "samples.json"
    js.write_text(json.dumps(record, indent=2) + "\n")
    written.append(js)
    for p in written:
        print(p)
    return written


def _record(args: argparse.Namespace, path: Path, meta: dict, ldm: LatentDiffusion, **extra: Any) -> dict:
    # DDPM always runs all T steps of the schedule; --steps is DDIM's S
    steps = args.steps if args.sampler == "ddim" else int(ldm.diffusion.T)
    return {
        "command": args.command,
        "checkpoint": {"path": str(path), "sha256": sha256_of(path)[:16],
                       "conditioner": meta["config"]["ldm"].get("conditioner")},
        "seed": args.seed,
        "guidance": getattr(args, "guidance", 1.0),
        "steps": steps,
        "sampler": args.sampler,
        "eta": args.eta,
        **extra,
    }


def _sample_names(count: int) -> list[str]:
    return [f"sample_{i:03d}.png" for i in range(count)]


def _sample_pictures(x: torch.Tensor, names: Sequence[str]) -> dict[str, np.ndarray]:
    """One picture per sample: x (B, 3, H, W) in [-1, 1] -> {names[i]: (H, W, 3) uint8}."""
    return {name: to_uint8(x[i : i + 1])[0] for i, name in enumerate(names)}


def _panel_outputs(args: argparse.Namespace) -> tuple[list[str], Path]:
    """The files of an image-to-image command (n samples, panel.png, samples.json), refused if already in --out."""
    names = _sample_names(args.n)
    out = Path(args.out)
    _refuse_overwrite(out, names + ["panel.png", "samples.json"], args.overwrite)
    return names, out


def _write_panel(args: argparse.Namespace, path: Path, meta: dict, ldm: LatentDiffusion, out: Path,
                 names: list[str], x: torch.Tensor, before: list[torch.Tensor], **extra: Any) -> None:
    """Write the n samples x, panel.png (the ``before`` pictures, then x, in one row) and samples.json."""
    pictures = _sample_pictures(x, names)
    pictures["panel.png"] = image_grid(torch.cat([*before, x]), nrow=len(before) + args.n)
    record = _record(args, path, meta, ldm, **extra, files=[{"file": nm, "sample": i} for i, nm in enumerate(names)])
    _write(out, pictures, record, args.overwrite)


@_cli
def cmd_sample(args: argparse.Namespace) -> int:
    """`sample`: text-, class-, layout-conditional or unconditional samples from a checkpoint (Sec. 4.2, 4.3)."""
    out = _preflight(args)
    if args.size is not None and not args.allow_large:
        check_large(args.size, args.size, MAX_OUTPUT_SIDE, f"--size {args.size}")
    given = [flag for flag in ("prompt", "class", "layout") if getattr(args, flag)]
    # the files this run writes, refused before the model is loaded (the model only confirms the condition flag)
    planned = getattr(args, given[0]) if len(given) == 1 else ["unconditional"]
    _refuse_overwrite(out, _sample_names(len(planned) * args.n) + ["grid.png", "samples.json"], args.overwrite)
    ldm, meta, path = _load(args, "t2i")
    cond = meta["config"]["ldm"].get("conditioner")
    if cond not in SAMPLE_FLAG:
        raise GenerationError(f"{path.name} has conditioner={cond!r}, which `sample` cannot drive: {usage_hint(cond)}.")
    want = SAMPLE_FLAG[cond]
    if len(given) > 1:
        raise GenerationError(f"Give only one of --prompt, --class and --layout (got --{' and --'.join(given)}).")
    if want is None and given:
        raise GenerationError(
            f"{path.name} is an unconditional model (conditioner=None): it takes no --{given[0]}. Use --n only."
        )
    if want is not None and given != [want]:
        got = f"--{given[0]}" if given else "no condition"
        raise GenerationError(
            f"{path.name} expects --{want} (its conditioner is {cond!r}), got {got}. Example: "
            + {"prompt": '--prompt "a large red circle in the center"', "class": '--class "red circle" or --class 0',
               "layout": '--layout "a large red circle at the top left"'}[want]
            + "."
        )
    conditions: list[str] = getattr(args, want) if want else ["unconditional"]
    n = args.n
    names = _sample_names(len(conditions) * n) + ["grid.png"]
    common = dict(steps=args.steps, sampler=args.sampler, eta=args.eta, seed=args.seed, size=args.size,
                  progress=args.progress)
    extra: dict[str, Any] = {}
    if want == "prompt":
        x = text_to_image(ldm, conditions, n, guidance=args.guidance, **common)
    elif want == "class":
        ids = [class_index(ldm, c) for c in conditions]
        extra["class_ids"] = ids
        x = class_to_image(ldm, ids, n, guidance=args.guidance, **common)
    elif want == "layout":
        side = check_size(ldm, args.size)
        extra["objects"] = [layout_objects(c, side) for c in conditions]
        x = layout_to_image(ldm, extra["objects"], n, guidance=args.guidance, **common)
    else:
        args.guidance = 1.0  # no guidance without a condition
        x = unconditional_samples(ldm, n, **common)
    files = [{"file": name, want or "condition": conditions[i // n], "row": i // n, "sample": i % n}
             for i, name in enumerate(names[:-1])]
    pictures = _sample_pictures(x, names[:-1])
    pictures["grid.png"] = image_grid(x, nrow=n)  # one row per prompt / class / layout
    record = _record(args, path, meta, ldm, n=n, size=int(x.shape[-1]), **{want or "condition": conditions}, **extra,
                     grid="grid.png: one row per condition, in the order given", files=files)
    _write(out, pictures, record, args.overwrite)
    return 0


def _model_and_image(args: argparse.Namespace, kind: str, conditioner: str,
                     max_side: int) -> tuple[LatentDiffusion, dict, Path, Tensor]:
    """What inpaint and upscale do before any work: the checks of the flags, the model (its kind is checked first),
    then --image (1, 3, H, W) within the size limit (``--allow-large`` lifts it)."""
    _preflight(args)
    ldm, meta, path = _load(args, kind, conditioner=conditioner)
    image = load_image(args.image)
    if not args.allow_large:  # before the sampling
        check_large(*image.shape[-2:], max_side, f"--image {args.image}")
    return ldm, meta, path, image


@_cli
def cmd_inpaint(args: argparse.Namespace) -> int:
    """`inpaint`: fill the white region of --mask in --image with an inpainting LDM (Sec. 4.5)."""
    ldm, meta, path, image = _model_and_image(args, "inpaint", "inpaint", MAX_INPUT_SIDE)  # image (1, 3, H, W)
    mask = load_mask(args.mask, image)  # (1, 1, H, W)
    names, out = _panel_outputs(args)
    check_images(image, channels=3, multiple_of=size_unit(ldm), name=f"image {args.image}")
    x = inpaint_image(ldm, image, mask, n=args.n, guidance=args.guidance, steps=args.steps, sampler=args.sampler,
                      eta=args.eta, seed=args.seed, progress=args.progress)  # (n, 3, H, W)
    masked = (1 - mask) * image  # what the model sees: the hole at 0 (mid-grey)
    _write_panel(args, path, meta, ldm, out, names, x, [image, masked], image=str(args.image), mask=str(args.mask),
                 n=args.n, hole_fraction=round(float(mask.mean()), 4),
                 panel="panel.png: input | masked input | result(s)")
    return 0


@_cli
def cmd_upscale(args: argparse.Namespace) -> int:
    """`upscale`: x4 super-resolution of --image with LDM-SR (Sec. 4.4), next to nearest and bicubic."""
    ldm, meta, path, lowres = _model_and_image(args, "sr", "lowres", MAX_OUTPUT_SIDE // 4)  # lowres (1, 3, h, w)
    names, out = _panel_outputs(args)
    x = upscale_image(ldm, lowres, n=args.n, steps=args.steps, sampler=args.sampler, eta=args.eta, seed=args.seed,
                      progress=args.progress)  # (n, 3, 4h, 4w)
    s = lowres_scale(ldm)
    nearest = F.interpolate(lowres, scale_factor=s, mode="nearest")
    _write_panel(args, path, meta, ldm, out, names, x, [nearest, bicubic_upscale(lowres, s)], image=str(args.image),
                 n=args.n, scale=s, input_size=list(lowres.shape[-2:]), output_size=list(x.shape[-2:]),
                 panel="panel.png: low-res (nearest) | bicubic | LDM-SR sample(s)")
    return 0


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _common_args(p: argparse.ArgumentParser, kind: str, out: str, guidance: float | None) -> None:
    p.add_argument("--checkpoint", help=f"latent diffusion checkpoint (default: the shipped "
                                        f"{SHIPPED[kind]} in {checkpoint_dir()})")
    p.add_argument("--n", type=_positive_int, default=4, help="samples per condition / input (default 4)")
    if guidance is not None:
        p.add_argument("--guidance", type=float, default=guidance,
                       help=f"classifier-free guidance scale s (1 = none; default {guidance})")
    p.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps S (default 50; DDPM uses all T)")
    p.add_argument("--sampler", choices=list(SAMPLERS), default="ddim",
                   help="ddim (uses --steps, --eta) or ddpm (all T steps)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic given the seed)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same pictures (default 0; "
                                                       "0..2**64-1)")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, ...")
    p.add_argument("--out", default=out, help=f"output folder (default {out})")
    p.add_argument("--overwrite", action="store_true", help="replace files of an earlier run in --out")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--allow-large", action="store_true", help=LIMITS[kind])


LIMITS = {  # the --allow-large help of each command
    "t2i": f"lift the limit of {MAX_OUTPUT_SIDE} px on --size (larger pictures take minutes to hours on a CPU)",
    "inpaint": f"lift the limit of {MAX_INPUT_SIDE} px per side of --image (larger ones take minutes on a CPU)",
    "sr": f"lift the limit of {MAX_OUTPUT_SIDE // 4} px per side of --image, i.e. {MAX_OUTPUT_SIDE} px outputs "
          "(larger ones take minutes on a CPU)",
}


def add_generation_commands(subparsers: Any) -> None:
    """Register `sample`, `inpaint` and `upscale` on an argparse subparsers object (each with func=...)."""
    s = subparsers.add_parser(
        "sample", help="text-, class-, layout-conditional or unconditional samples from a checkpoint",
        description="Samples from a latent diffusion checkpoint. Text models take --prompt, class models --class, "
                    "layout models --layout, unconditional models only --n.",
    )
    s.add_argument("--prompt", action="append", help="a text prompt (repeat for several; one grid row each)")
    s.add_argument("--class", dest="class", action="append", help="a class: index or name like 'red circle'")
    s.add_argument("--layout", action="append",
                   help="a JSON list of objects {shape, colour, bbox: [x0, y0, x1, y1] pixels} or a shapes caption")
    s.add_argument("--size", type=int, help="output side in pixels (multiple of f * UNet downsampling; at most "
                                            f"{MAX_OUTPUT_SIDE} unless --allow-large)")
    _common_args(s, "t2i", "outputs/sample", guidance=3.0)
    s.set_defaults(func=cmd_sample, command="sample")

    i = subparsers.add_parser("inpaint", help="fill a masked region of an image (white in the mask = hole)")
    i.add_argument("--image", required=True, help="the image (its size must suit the model, e.g. 32x32; at most "
                                                  f"{MAX_INPUT_SIDE} px per side unless --allow-large)")
    i.add_argument("--mask", required=True, help="a black/white image of the same size; white = region to fill")
    _common_args(i, "inpaint", "outputs/inpaint", guidance=1.0)
    i.set_defaults(func=cmd_inpaint, command="inpaint")

    u = subparsers.add_parser("upscale", help="x4 super-resolution of a low-resolution image (LDM-SR)")
    u.add_argument("--image", required=True, help="the low-resolution image, e.g. 8x8 for a 32x32 result (at "
                                                  f"most {MAX_OUTPUT_SIDE // 4} px per side unless --allow-large)")
    _common_args(u, "sr", "outputs/upscale", guidance=None)
    u.set_defaults(func=cmd_upscale, command="upscale")
