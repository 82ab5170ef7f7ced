"""Experiment 5, samplers (paper Sec. 4 / App. D; DDIM: Song et al. 2021): quality and wall time against the steps.

    python -m ldm_minimal.experiments.samplers            # the shipped shapes32-t2i model, 128 prompts, ~13 min on 2 cores
    python -m ldm_minimal.experiments.samplers --quick

DDIM with S in {10, 25, 50, 100, 250} steps and eta in {0, 1} against ancestral DDPM with all T = 1000 steps, each
on the same held-out captions and seeds, without guidance (s = 1: one UNet call per step, half the cost of s = 3;
the guidance experiment covers s). eta = 0 is
the deterministic DDIM; eta = 1 has DDPM's posterior variance on the shortened schedule:

    sigma_t(eta) = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)    (DDIM Eq. 16)

The paper samples its LDMs with DDIM (Tab. 1: 200 or 500 steps, Tab. 2-3: 250, Fig. 6: 100; eta 0 or 1 in the sample figures, e.g. Figs. 28-31) because quality saturates long
before 1000 steps while the cost grows linearly with the steps.
"""

from __future__ import annotations

import sys

import torch

from ldm_minimal.experiments.common import (base_parser, finish, parse, pyplot, real_floor, sample_in_chunks,
                                            sample_quality, save_figure, single_objects, timer)
from ldm_minimal.latent_diffusion_io import load_ldm

DDIM_STEPS = (10, 25, 50, 100, 250)
ETAS = (0.0, 1.0)
NAME = "samplers"


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__, n=128, checkpoints={"--checkpoint": "shapes32-t2i.safetensors"})
    p.add_argument("--guidance", type=float, default=1.0)
    args = parse(p, argv)
    settings = [("ddim", s, eta) for eta in ETAS for s in DDIM_STEPS] + [("ddpm", 1000, 1.0)]
    if args.quick:
        args.n, settings = 12, [("ddim", 2, 0.0), ("ddim", 4, 1.0)]  # (DDPM's 1000 steps are no smoke test)
    ldm, _ = load_ldm(args.checkpoint)
    real, _, captions = single_objects(args.n)
    result: dict = {"checkpoint": str(args.checkpoint), "n": args.n, "guidance": args.guidance,
                    "real_floor_fid": real_floor(args.n), "rows": []}
    with timer(result):
        for sampler, steps, eta in settings:
            row: dict = {"sampler": sampler, "steps": steps, "eta": eta}
            with timer(row, "sampling_s"):
                fake = sample_in_chunks(lambda a, b: ldm.sample(
                    {"caption": captions[a:b]}, sampler=sampler, steps=steps, eta=eta, guidance_scale=args.guidance,
                    progress=False, generator=torch.Generator().manual_seed(a)), args.n)
            row["ms_per_image"] = round(1000 * row["sampling_s"] / args.n, 1)
            row.update(sample_quality(fake, real, captions))
            print(row)
            result["rows"].append(row)
    return finish(NAME, result, args, argv, figure)


def figure(result: dict, out_dir) -> None:
    plt = pyplot()

    rows = result["rows"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for eta, marker in ((0.0, "o-"), (1.0, "s--")):
        rs = [r for r in rows if r["sampler"] == "ddim" and r["eta"] == eta]
        for ax, key in zip(axes[:2], ("fid", "acc_shape_and_colour")):
            ax.plot([r["steps"] for r in rs], [r[key] for r in rs], marker, label=f"DDIM eta={eta:g}")
        axes[2].plot([r["ms_per_image"] for r in rs], [r["fid"] for r in rs], marker, label=f"DDIM eta={eta:g}")
    for r in rows:
        if r["sampler"] == "ddpm":
            axes[0].plot([r["steps"]], [r["fid"]], "r*", ms=12, label="DDPM 1000")
            axes[1].plot([r["steps"]], [r["acc_shape_and_colour"]], "r*", ms=12, label="DDPM 1000")
            axes[2].plot([r["ms_per_image"]], [r["fid"]], "r*", ms=12, label="DDPM 1000")
    axes[0].axhline(result["real_floor_fid"], ls=":", c="gray", label="real vs real")
    axes[0].set(xscale="log", xlabel="sampling steps", ylabel="FID (judge features)", title="FID")
    axes[1].set(xscale="log", xlabel="sampling steps", ylabel="shape-and-colour accuracy", title="prompt fidelity")
    axes[2].set(xscale="log", xlabel="ms per image (CPU)", ylabel="FID", title="quality against cost")
    for ax in axes:
        ax.legend(fontsize=8)
    save_figure(fig, NAME, out_dir)


if __name__ == "__main__":
    main()
    sys.exit(0)
