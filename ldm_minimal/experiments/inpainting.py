"""Experiment 7, inpainting (paper Sec. 4.5, Tab. 7, Fig. 11): a trained inpainting LDM against two baselines.

    python -m ldm_minimal.experiments.inpainting      # shipped shapes32-inpaint and shapes32-t2i, ~8 min on 2 cores
    python -m ldm_minimal.experiments.inpainting --quick

Three ways to fill the hole m of a held-out single-object picture x (1 = hole), each returning (1 - m) x + m x_hat:

- ``ldm_inpaint``: the shipped inpainting LDM, trained for the task: E(masked x) and the mask are concatenated to
  z_t (the paper's Sec. 4.5 model), DDIM 50;
- ``training_free``: no inpainting training at all: the shipped text-to-image model under its null condition (the
  unconditional model that classifier-free guidance training gives), with the known latent region replaced by
  q(z_t | z_0) at every step (the "replacement" trick of Song et al. 2021 / RePaint without resampling), DDIM 50;
- ``mean_fill``: the trivial fill, the mean colour of the known pixels.

Two mask families, 256 pictures each, seeded: ``box`` (a random rectangle, 25-60 % of each side) and ``free-form``
(random brush strokes), the two families the inpainting model was trained on (``ldm_minimal.masks``). Scores:
FID of the results against the originals (judge features), LPIPS (ours, offline trunk) between result and original,
which differ only inside the hole, PSNR inside the hole, and the judge's shape-and-colour accuracy on the results.
The paper (Tab. 7) compares trained inpainting models only: its LDM has the best FID, its LPIPS is slightly behind LaMa's; the training-free and trivial baselines here are the course's own.
"""

from __future__ import annotations

import sys

import torch

from ldm_minimal.experiments.common import (base_parser, parse, sample_in_chunks, sample_quality, save_rows,
                                            single_objects, timer, write_result)
from ldm_minimal.latent_diffusion_io import load_ldm
from ldm_minimal.lpips import LPIPS
from ldm_minimal.masks import random_box_mask, random_freeform_mask
from ldm_minimal.pipelines import inpaint, inpaint_baseline
from ldm_minimal.training import fixed_batch

NAME = "inpainting"
MASKS = ("box", "free-form")


def masks_for(kind: str, n: int, seed: int = 0) -> torch.Tensor:
    fn = random_box_mask if kind == "box" else random_freeform_mask
    return fn((n, 1, 32, 32), generator=torch.Generator().manual_seed(seed))


def mean_fill(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    known = 1 - m  # (B, 1, H, W)
    mean = (x * known).sum(dim=(2, 3), keepdim=True) / known.sum(dim=(2, 3), keepdim=True).clamp_min(1)  # (B, 3, 1, 1)
    return x * known + mean * m


def hole_psnr(y: torch.Tensor, x: torch.Tensor, m: torch.Tensor) -> float:
    # PSNR over the hole's pixels only, on [0, 1]: -10 log10(mean over the hole of ((y - x) / 2)^2)
    mse = (((y - x) / 2) ** 2 * m).sum() / (m.sum() * 3)
    return round(float(-10 * torch.log10(mse)), 2)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__, n=256, steps=50, checkpoints={"--inpaint-checkpoint": "shapes32-inpaint.safetensors",
                                                          "--t2i-checkpoint": "shapes32-t2i.safetensors"})
    p.add_argument("--world", choices=["single32", "shapes32"], default="single32",
                   help="held-out pictures: single objects (the judge can score them) or the 1-3-object world the "
                        "inpainting model was trained on (FID and LPIPS only)")
    args = parse(p, argv, quick=dict(n=16, steps=3))
    ldm_inp, _ = load_ldm(args.inpaint_checkpoint)
    ldm_t2i, _ = load_ldm(args.t2i_checkpoint)
    lpips = LPIPS(backbone="random").eval()
    if args.world == "single32":
        x, _, captions = single_objects(args.n)
    else:
        x, captions = fixed_batch("shapes32", 32, args.n)["image"], None  # the test split (seed 1,000,000)
    name = NAME if args.world == "single32" else f"{NAME}_{args.world}"
    result: dict = {"world": args.world, "n": args.n, "sampler": f"DDIM {args.steps}", "inpaint_checkpoint": str(args.inpaint_checkpoint),
                    "training_free_model": str(args.t2i_checkpoint) + " (null condition)", "masks": {}}
    rows = [("original", x[:8])]
    with timer(result):
        for kind in MASKS:
            m = masks_for(kind, args.n)
            gen = lambda a: torch.Generator().manual_seed(a)  # noqa: E731
            fills = {
                "ldm_inpaint": sample_in_chunks(lambda a, b: inpaint(ldm_inp, x[a:b], m[a:b], steps=args.steps,
                                                                     generator=gen(a), progress=False), args.n),
                "training_free": sample_in_chunks(lambda a, b: inpaint_baseline(
                    ldm_t2i, x[a:b], m[a:b], steps=args.steps, generator=gen(a), progress=False), args.n),
                "mean_fill": mean_fill(x, m),
            }
            res: dict = {"hole_fraction": round(float(m.mean()), 3)}
            for method, y in fills.items():
                q = sample_quality(y, x, captions)
                lp = torch.cat([lpips(y[i:i + 128], x[i:i + 128]) for i in range(0, args.n, 128)]).mean()
                res[method] = {"fid": q["fid"], "kid_x1000": q["kid_x1000"], "lpips_offline": round(float(lp), 4),
                               "psnr_in_hole": hole_psnr(y, x, m), "acc_shape_and_colour": q.get("acc_shape_and_colour")}
                print(kind, method, res[method])
            result["masks"][kind] = res
            shown = x[:8] * (1 - m[:8]) + m[:8]  # the hole in white
            rows += [(f"{kind}: input", shown)] + [(f"{kind}: {k}", v[:8]) for k, v in fills.items()]
    write_result(name, result, args.out_dir, argv, module=NAME)
    save_rows(rows, name, args.out_dir, title=f"inpainting held-out {args.world} pictures (hole shown in white)")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
