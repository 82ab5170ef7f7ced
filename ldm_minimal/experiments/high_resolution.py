"""Experiment 9, beyond the training resolution (paper Sec. 4.3.2, Fig. 9; App. D.1): sampling at twice the size.

    python -m ldm_minimal.experiments.high_resolution      # shipped shapes32-t2i and shapes32-sr, ~4 min on 2 cores
    python -m ldm_minimal.experiments.high_resolution --quick

The UNet is convolutional, so a model trained on 32x32 pictures (16x16 latents at f = 2) can be sampled on a larger
latent: 32x32 latents give 64x64 pictures. The paper (Sec. 4.3.2): spatially conditioned models (semantic
synthesis, super-resolution) generalise to larger sizes, because the condition fixes the layout everywhere; a
model whose condition says nothing about where things go (text, classes) has only its training size to go by (though the paper renders its text model above 256^2 with the rescaled latent and guidance, Fig. 13).

1. Text-to-image at 64x64 with the 32x32 prompts (single-object captions, guidance 3): how many objects appear
   (connected non-background regions of at least 6 pixels) at 32 and at 64, and whether the judge, shown the
   64x64 picture downsampled to 32x32, still reads the asked shape and colour.
2. Super-resolution at twice the size: 16x16 -> 64x64 with the model trained on 8x8 -> 32x32, on held-out
   single-object 64x64 pictures, against bicubic: PSNR / SSIM, and the same at the training size for reference.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ldm_minimal.data.shapes import BACKGROUND
from ldm_minimal.evaluation.attributes import attribute_accuracy, render_single
from ldm_minimal.evaluation.metrics import psnr, ssim
from ldm_minimal.experiments.common import (TEST_SEED, base_parser, judge, parse, sample_in_chunks, save_rows,
                                            single_objects, timer, write_result)
from ldm_minimal.latent_diffusion_io import load_ldm
from ldm_minimal.pipelines import bicubic_upscale, upscale

NAME = "high_resolution"


def count_objects(x: torch.Tensor, min_pixels: int = 6) -> list[int]:
    """Connected regions (8-neighbourhood) that differ from the background colour, per image."""
    from scipy import ndimage

    bg = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1
    fg = ((x.float() - bg).abs().amax(dim=1) > 0.25).numpy()  # (B, H, W) bool
    counts = []
    for mask in fg:
        labels, k = ndimage.label(mask, structure=np.ones((3, 3)))
        sizes = ndimage.sum(mask, labels, range(1, k + 1)) if k else []
        counts.append(int(sum(s >= min_pixels for s in sizes)))
    return counts


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__, n=128, steps=50, checkpoints={"--t2i-checkpoint": "shapes32-t2i.safetensors",
                                                          "--sr-checkpoint": "shapes32-sr.safetensors"})
    args = parse(p, argv, quick=dict(n=8, steps=3))
    t2i, _ = load_ldm(args.t2i_checkpoint)
    sr, _ = load_ldm(args.sr_checkpoint)
    _, _, captions = single_objects(args.n)
    result: dict = {"n": args.n, "sampler": f"DDIM {args.steps}", "t2i": {}, "sr": {}}
    pictures = {}
    with timer(result):
        for side in (32, 64):
            row: dict = {}
            with timer(row, "sampling_s"):
                y = sample_in_chunks(lambda a, b: t2i.sample(
                    {"caption": captions[a:b]}, steps=args.steps, guidance_scale=3.0, latent_size=side // t2i.f,
                    progress=False, generator=torch.Generator().manual_seed(a)), args.n, chunk=64)
            counts = count_objects(y)
            small = torch.nn.functional.avg_pool2d(y, side // 32)  # the judge reads 32x32 pictures
            acc = attribute_accuracy(judge(), small, captions)
            row.update({"mean_objects": round(float(np.mean(counts)), 2),
                        "exactly_one_object": round(float(np.mean([c == 1 for c in counts])), 3),
                        "judge_shape_and_colour_at_32": round(float(acc["shape_and_colour"]), 4)})
            result["t2i"][f"{side}x{side}"] = row
            pictures[side] = y[:8]
            print("t2i", side, row)
        real_objects = count_objects(single_objects(args.n)[0])
        result["t2i"]["real_32x32_mean_objects"] = round(float(np.mean(real_objects)), 2)
        for side in (32, 64):
            x, _ = render_single(range(args.n), TEST_SEED, world="single32" if side == 32 else "single64")
            low = torch.nn.functional.avg_pool2d(x, 4)
            with timer(result["sr"], f"sampling_{side}_s"):
                y = sample_in_chunks(lambda a, b: upscale(sr, low[a:b], steps=args.steps, progress=False,
                                                          generator=torch.Generator().manual_seed(a)), args.n, chunk=64)
            bic = bicubic_upscale(low, 4).clamp(-1, 1)
            result["sr"][f"{side // 4}->{side}"] = {
                name: {"psnr": round(float(psnr(v, x).mean()), 2), "ssim": round(float(ssim(v, x).mean()), 4)}
                for name, v in (("ldm_sr", y), ("bicubic", bic))}
            print("sr", side, result["sr"][f"{side // 4}->{side}"])
            if side == 64:
                up = torch.nn.functional.interpolate(low[:6], scale_factor=4, mode="nearest")
                save_rows([("16x16 input", up), ("bicubic", bic[:6]), ("LDM-SR (trained 8->32)", y[:6]),
                           ("original 64x64", x[:6])], f"{NAME}_sr", args.out_dir,
                          title="x4 SR at twice the training size", zoom=2)
    write_result(NAME, result, args.out_dir, argv)
    big = torch.nn.functional.interpolate(pictures[32], scale_factor=2, mode="nearest")
    save_rows([("32x32 (trained size)", big), ("64x64 (2x)", pictures[64])], f"{NAME}_t2i", args.out_dir,
              title="the same prompts: " + "; ".join(c.replace("a ", "", 1) for c in captions[:3]) + " ...", zoom=2)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
