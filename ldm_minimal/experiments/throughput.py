"""Experiment 3, Figure 7 / Table 6 in miniature (paper Sec. 4.1): what the latent space buys in speed.

    python -m ldm_minimal.experiments.throughput        # after ldm_f; ~3 min on 2 cores
    python -m ldm_minimal.experiments.throughput --quick

Two measurements:

1. Training and sampling throughput of the pixel-space DM (f = 1) and LDM-4, LDM-8 (and LDM-2, LDM-16), measured
   back to back in this one process with the same UNet, batch and thread count, so that the ratios compare like
   with like. Training: images/s of full optimisation steps (L_LDM forward through E, the UNet, backward, AdamW) at
   batch 32. Sampling: images/s of DDIM 25 (no guidance) at batch 64, including the decoder D.
2. FID at equal wall time, from the training curves of ``ldm_f``: at each moment the pixel model is evaluated, the
   FID each latent model had reached by then (its last checkpoint no later than that wall time).

The paper (Fig. 7, Tab. 6, Fig. 17): LDM-4 and LDM-8 reach far better FID than the pixel DM after the same training, and
sample several times faster.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ldm_minimal.experiments.common import (RESULTS_DIR, RUNS_DIR, base_parser, finish, pyplot, save_figure, setup,
                                            single_objects, timer)
from ldm_minimal.experiments.ldm_f import class_ids
from ldm_minimal.latent_diffusion_io import load_ldm
from ldm_minimal.training import fixed_batch

NAME = "throughput"




def train_throughput(ldm: torch.nn.Module, batch: dict, steps: int, warmup: int = 2) -> float:
    """Images per second of full training steps (no EMA, no logging)."""
    params = [p for p in ldm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    ldm.train()
    n = batch["image"].shape[0]
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        loss, _ = ldm.training_loss(batch, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    ldm.eval()
    return steps * n / (time.perf_counter() - t0)


@torch.no_grad()
def sample_throughput(ldm: torch.nn.Module, class_ids: torch.Tensor, steps: int) -> float:
    ldm.sample({"class_id": class_ids[:4]}, steps=2, progress=False)  # warm-up
    t0 = time.perf_counter()
    ldm.sample({"class_id": class_ids}, steps=steps, progress=False, generator=torch.Generator().manual_seed(0))
    return class_ids.shape[0] / (time.perf_counter() - t0)


def equal_wall_time(ldm_f: dict) -> list[dict]:
    """At each evaluation of the pixel model: every model's FID from its last checkpoint no later than that time."""
    curves = {m["f"]: m["curve"] for m in ldm_f["models"]}
    if 1 not in curves:
        return []
    rows = []
    for point in curves[1]:
        t = point["train_elapsed_s"]
        row: dict = {"wall_time_s": t}
        for f, curve in curves.items():
            done = [r for r in curve if r["train_elapsed_s"] <= t + 1e-6]
            row[f"fid_f{f}"] = done[-1]["fid"] if done else None
            row[f"step_f{f}"] = done[-1]["step"] if done else 0
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__, n=64)
    p.add_argument("--ldm-f-runs", type=Path, default=RUNS_DIR / "ldm_f")
    p.add_argument("--ldm-f-result", type=Path, default=RESULTS_DIR / "ldm_f.json")
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--sample-steps", type=int, default=25)
    args = p.parse_args(argv)
    setup(args)
    if args.quick:
        args.n, args.train_steps, args.sample_steps = 4, 1, 2
        args.ldm_f_runs, args.ldm_f_result = RUNS_DIR / "ldm_f-quick", RESULTS_DIR / "quick" / "ldm_f.json"
    batch = fixed_batch("single32", 32, 32)  # held-out pictures with their class ids
    ids = class_ids(single_objects(args.n)[1])
    result: dict = {"train_batch": 32, "sample_batch": args.n, "sampler": f"DDIM {args.sample_steps}, no guidance",
                    "rows": []}
    with timer(result):
        for f in (1, 2, 4, 8, 16):
            path = args.ldm_f_runs / f"ldm-f{f}" / "model.safetensors"
            if not path.exists():
                print(f"skipping f={f}: {path} is missing (run ldm_f first)")
                continue
            ldm, _ = load_ldm(path)
            for p_ in ldm.parameters():
                p_.requires_grad_(False)
            for p_ in ldm.unet.parameters():
                p_.requires_grad_(True)
            row = {"f": f, "latent": "x".join(str(s) for s in (ldm.latent_channels, *ldm.latent_size)),
                   "train_images_per_s": round(train_throughput(ldm, batch, args.train_steps), 1),
                   "sample_images_per_s": round(sample_throughput(ldm, ids, args.sample_steps), 1)}
            print(row)
            result["rows"].append(row)
    base = next((r for r in result["rows"] if r["f"] == 1), None)
    for r in result["rows"]:
        if base:
            r["train_speedup_vs_pixel"] = round(r["train_images_per_s"] / base["train_images_per_s"], 2)
            r["sample_speedup_vs_pixel"] = round(r["sample_images_per_s"] / base["sample_images_per_s"], 2)
    if args.ldm_f_result.exists():
        result["fid_at_equal_wall_time"] = equal_wall_time(json.loads(args.ldm_f_result.read_text()))
    return finish(NAME, result, args, argv, figure)


def figure(result: dict, out_dir) -> None:
    plt = pyplot()

    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    labels = [f"LDM-{r['f']}" if r["f"] > 1 else "pixel DM" for r in rows]
    x = range(len(rows))
    axes[0].bar([i - 0.2 for i in x], [r["train_images_per_s"] for r in rows], width=0.4, label="training")
    axes[0].bar([i + 0.2 for i in x], [r["sample_images_per_s"] for r in rows], width=0.4, label="sampling (DDIM 25)")
    axes[0].set_xticks(list(x), labels)
    axes[0].set(ylabel="images / s (log)", yscale="log", title="throughput, one process, same UNet")
    axes[0].legend()
    eq = result.get("fid_at_equal_wall_time", [])
    if eq:
        for key in [k for k in eq[0] if k.startswith("fid_f")]:
            pts = [(r["wall_time_s"] / 60, r[key]) for r in eq if r[key] is not None]
            if pts:
                axes[1].plot(*zip(*pts), "o-", label=key.replace("fid_f", "f = "))
        axes[1].set(xlabel="training wall time (min)", ylabel="FID reached by then", yscale="log",
                    title="FID at equal wall time")
        axes[1].legend(fontsize=8)
    save_figure(fig, NAME, out_dir)


if __name__ == "__main__":
    main()
    sys.exit(0)
