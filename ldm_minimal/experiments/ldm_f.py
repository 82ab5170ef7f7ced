"""Experiment 2, Figure 6 in miniature (paper Sec. 4.1, Fig. 6): LDM-f for f in {1, 2, 4, 8, 16}, one UNet, one budget.

    python -m ldm_minimal.experiments.ldm_f            # 4 first stages and 5 LDMs, ~70 min of one core
    python -m ldm_minimal.experiments.ldm_f --quick

Class-conditional models (the paper's Fig. 6 trains class-conditional ImageNet LDMs) on single-object shapes-32
pictures (40 classes = 5 shapes x 8 colours), each with the same ``tiny`` UNet, batch, learning rate and number of
steps, on top of KL first stages ``tiny-kl-f{f}`` trained here with the ``cpu`` recipe for ``--first-stage-steps``
(600; experiment 1's 250-step autoencoders lose the shape or colour of most pictures, which would cap every LDM
at their level); f = 1 is the pixel-space DM (identity first stage, pixels in [-1, 1]). Latents: 3x32x32 (f=1), 3x16x16, 3x8x8, 4x4x4, 8x2x2.
A 2x2 latent cannot be halved twice, so LDM-16's UNet drops its last level (channel_mult (1, 2); its parameter
count is reported).

At every checkpoint the EMA weights draw 256 samples (DDIM 25, no guidance) for the classes of 256 held-out real
pictures: FID, KID and precision/recall against those pictures on the judge's features, and the judge's
shape-and-colour accuracy. The paper: LDM-1 trains slowly, LDM-{4..16} balance efficiency and quality, and
LDM-32 (too much compression) plateaus early at poor quality.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ldm_minimal.data.shapes import class_id_for
from ldm_minimal.experiments import table8
from ldm_minimal.experiments.common import (RUNS_DIR, base_parser, pyplot, real_floor, sample_in_chunks, sample_quality,
                                            save_figure, save_rows, setup, single_objects, timer, write_result)
from ldm_minimal.latent_diffusion_io import load_ldm
from ldm_minimal.training import train, train_config

FACTORS = (1, 2, 4, 8, 16)
NAME = "ldm_f"


def model_overrides(f: int) -> dict:
    over: dict = {}
    if f == 1:
        over["scale_factor"] = 1.0  # pixels in [-1, 1], like DDPM
    if f == 16:
        over["unet_overrides"] = {"channel_mult": [1, 2], "attention_factors": [2]}
    return over


def train_ldm(f: int, steps: int, every: int, first_stages: Path, run_root: Path) -> Path:
    out = run_root / f"ldm-f{f}"
    if (out / "summary.json").exists():
        return out
    first = "identity" if f == 1 else str(first_stages / f"kl-f{f}" / "model.safetensors")
    cfg = train_config("cpu", "ldm", model="shapes-class", world="single32", first_stage=first, steps=steps,
                       warmup=min(200, steps // 4), ckpt_every=every, sample_every=steps,
                       keep_checkpoints=steps // every + 1, model_overrides=model_overrides(f), progress=False)
    train(cfg, out, overwrite=True)
    return out


def class_ids(objects: list[dict]) -> torch.Tensor:
    return torch.tensor([class_id_for(o["shape"], o["colour"]) for o in objects])


@torch.no_grad()
def evaluate_checkpoint(path: Path, real: torch.Tensor, objects: list[dict], captions: list[str], steps: int) -> dict:
    ldm, _ = load_ldm(path)
    ids = class_ids(objects)
    row: dict = {}
    with timer(row, "sampling_s"):
        fake = sample_in_chunks(lambda a, b: ldm.sample({"class_id": ids[a:b]}, steps=steps, progress=False,
                                                        generator=torch.Generator().manual_seed(a)), len(ids))
    row["sampling_images_per_s"] = round(len(ids) / row["sampling_s"], 1)
    q = sample_quality(fake, real, captions)
    row.update({k: v for k, v in q.items() if not k.startswith("acc_") or k in ("acc_shape_and_colour",)})
    row["fake"] = fake[:8]
    return row


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__, n=256)
    p.add_argument("--steps", type=int, default=600, help="training steps of every LDM (batch 32)")
    p.add_argument("--every", type=int, default=150, help="evaluate a checkpoint every this many steps")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of the evaluation samples")
    p.add_argument("--first-stage-steps", type=int, default=600, help="training steps of each KL first stage")
    p.add_argument("--first-stages", type=Path, default=RUNS_DIR / "ldm_f_first_stages")
    p.add_argument("--run-root", type=Path, default=RUNS_DIR / NAME)
    p.add_argument("--factors", type=int, nargs="+", default=list(FACTORS))
    args = p.parse_args(argv)
    setup(args)
    if args.quick:
        args.n, args.steps, args.every, args.sample_steps, args.first_stage_steps = 16, 4, 2, 2, 4
        args.first_stages, args.run_root = RUNS_DIR / "table8-quick", RUNS_DIR / f"{NAME}-quick"
    real, objects, captions = single_objects(args.n)
    result: dict = {"steps": args.steps, "batch_size": 32, "world": "single32", "n": args.n,
                    "first_stage_steps": args.first_stage_steps,
                    "sampler": f"DDIM {args.sample_steps}, no guidance", "real_floor_fid": real_floor(args.n),
                    "models": []}
    pictures = []
    with timer(result):
        for f in args.factors:
            if f > 1:
                table8.train_first_stage("kl", f, args.first_stage_steps, args.first_stages)
            run = train_ldm(f, args.steps, args.every, args.first_stages, args.run_root)
            summary = json.loads((run / "summary.json").read_text())
            model = {"f": f, "run": str(run), "train_wall_s": summary["wall_time_s"],
                     "train_images_per_s": summary["images_per_s"],
                     "unet_parameters": summary["parameters_trained"], "curve": []}
            for ckpt in sorted((run / "checkpoints").glob("step_*")):
                state = json.loads((ckpt / "state.json").read_text())
                row = {"step": state["step"], "train_elapsed_s": round(state["elapsed_s"], 1),
                       **evaluate_checkpoint(ckpt / "model.safetensors", real, objects, captions, args.sample_steps)}
                fake = row.pop("fake")
                print({"f": f, **row})
                model["curve"].append(row)
            pictures.append((f"LDM-{f} (step {model['curve'][-1]['step']})", fake))
            result["models"].append(model)
    write_result(NAME, result, args.out_dir, argv)
    figure(result, pictures, real[:8], args.out_dir)
    return result


def figure(result: dict, pictures: list, real: torch.Tensor, out_dir) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
    for m in result["models"]:
        steps = [r["step"] for r in m["curve"]]
        axes[0].plot(steps, [r["fid"] for r in m["curve"]], "o-", label=f"LDM-{m['f']}")
        axes[1].plot(steps, [r["acc_shape_and_colour"] for r in m["curve"]], "o-", label=f"LDM-{m['f']}")
        axes[2].plot([r["train_elapsed_s"] / 60 for r in m["curve"]], [r["fid"] for r in m["curve"]], "o-",
                     label=f"LDM-{m['f']}")
    axes[0].axhline(result["real_floor_fid"], ls=":", c="gray", label="real vs real")
    axes[0].set(xlabel="training steps", ylabel="FID (judge features)", yscale="log", title="FID against steps")
    axes[1].set(xlabel="training steps", ylabel="judge: shape and colour", title="class fidelity against steps")
    axes[2].set(xlabel="training wall time (min, 2 CPU cores)", ylabel="FID", yscale="log",
                title="FID against wall time")
    for ax in axes:
        ax.legend(fontsize=8)
    save_figure(fig, NAME, out_dir)
    save_rows([("real (held out)", real), *pictures], f"{NAME}_samples", out_dir, title="the same 8 classes and seeds")


if __name__ == "__main__":
    main()
    sys.exit(0)
