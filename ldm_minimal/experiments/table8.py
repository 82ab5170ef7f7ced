"""Experiment 1, Table 8 in miniature (paper Sec. 3.1, App. D.2 Tab. 8): first stages with f in {1, 2, 4, 8, 16}, KL and VQ.

    python -m ldm_minimal.experiments.table8            # 10 autoencoders on shapes-32, ~20 min on 2 cores
    python -m ldm_minimal.experiments.table8 --quick

Every model is a CPU-sized ``tiny-{kl,vq}-f{f}`` preset trained with the ``cpu`` recipe of ``train ae`` (L1 + offline
LPIPS, no discriminator at this budget; KL weight 1e-6, VQ codebook restarts) for the same number of steps on
shapes-32, then scored on 512 held-out single-object pictures (the pictures the LDM experiments generate):

- PSNR, SSIM (torchmetrics) and LPIPS (ours, with the offline random-VGG trunk: a perceptual distance, not
  comparable to published LPIPS) of D(E(x)) against x;
- rFID: FID between the reconstructions and the originals on the judge's features (the paper's rFID uses Inception
  features on ImageNet; ours compares our models only);
- judge accuracy on the reconstructions (shape and colour): how much of what a prompt asks for survives E and D;
- latent size c x h x w, parameters, wall time.

The paper's reading of Tab. 8: reconstruction quality falls as f grows, and KL models reconstruct better than VQ
models at the same f (at the price of a less compressed, continuous latent). Finished runs are kept under
``runs/experiments/table8/`` and reused; delete a run's folder to train it again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ldm_minimal.autoencoder import load_autoencoder
from ldm_minimal.evaluation.attributes import attribute_accuracy
from ldm_minimal.evaluation.metrics import ReconstructionMetrics, fid
from ldm_minimal.experiments.common import (RUNS_DIR, base_parser, judge, pyplot, save_figure, save_rows, setup,
                                            single_objects, timer, write_result)
from ldm_minimal.lpips import LPIPS
from ldm_minimal.training import train, train_config
from ldm_minimal.utils import count_parameters

FACTORS = (1, 2, 4, 8, 16)
KINDS = ("kl", "vq")
NAME = "table8"
N_EVAL = 512


def train_first_stage(kind: str, f: int, steps: int, run_root: Path) -> Path:
    """Train (or reuse) tiny-{kind}-f{f}; returns the run folder."""
    out = run_root / f"{kind}-f{f}"
    if (out / "summary.json").exists():
        return out
    cfg = train_config("cpu", "ae", model=f"tiny-{kind}-f{f}", world="shapes32", steps=steps,
                       sample_every=steps, ckpt_every=steps, warmup=min(50, steps // 4), progress=False)
    train(cfg, out, overwrite=True, command=f"python -m ldm_minimal train ae --preset cpu --model tiny-{kind}-f{f} "
                                              f"--steps {steps} --out {out}")
    return out


@torch.no_grad()
def score(model_path: Path, x: torch.Tensor, captions: list[str], lpips: torch.nn.Module) -> dict:
    ae, _ = load_autoencoder(model_path)
    z = torch.cat([ae.encode_latent(x[i:i + 128], sample=False) for i in range(0, len(x), 128)])  # (N, c, h, w)
    x_hat = torch.cat([ae.decode_latent(z[i:i + 128]) for i in range(0, len(z), 128)]).clamp(-1, 1)
    rec = ReconstructionMetrics(lpips=lpips)
    for i in range(0, len(x), 128):
        rec.update(x[i:i + 128], x_hat[i:i + 128])
    m = rec.compute()
    acc = attribute_accuracy(judge(), x_hat, captions)
    c, h, w = z.shape[1:]
    return {"latent": f"{c}x{h}x{w}", "latent_dims": c * h * w, "compression": round(3 * 32 * 32 / (c * h * w), 1),
            "parameters": count_parameters(ae), "psnr": round(m["psnr"], 2), "ssim": round(m["ssim"], 4),
            "lpips_offline": round(m["lpips"], 4), "rfid": round(fid(x, x_hat, judge()), 2),
            "judge_shape_and_colour": round(float(acc["shape_and_colour"]), 4), "x_hat": x_hat}


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__, n=N_EVAL)
    p.add_argument("--steps", type=int, default=250, help="training steps of every autoencoder (batch 16)")
    p.add_argument("--run-root", type=Path, default=RUNS_DIR / NAME)
    p.add_argument("--factors", type=int, nargs="+", default=list(FACTORS))
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--name", default=NAME, help="result file name (e.g. table8_600 for a second budget)")
    args = p.parse_args(argv)
    setup(args)
    if args.quick:
        args.n, args.steps, args.run_root = 16, 4, RUNS_DIR / f"{NAME}-quick"
    lpips = LPIPS(backbone="random").eval()
    x, _, captions = single_objects(args.n)
    rows, pictures = [], [("original", x[:8])]
    result: dict = {"steps": args.steps, "batch_size": 16, "world": "shapes32", "n_eval": args.n}
    with timer(result):
        for kind in args.kinds:
            for f in args.factors:
                run = train_first_stage(kind, f, args.steps, args.run_root)
                summary = json.loads((run / "summary.json").read_text())
                row = {"model": f"{kind}-f{f}", "kind": kind, "f": f, **score(run / "model.safetensors", x, captions, lpips),
                       "train_wall_s": summary["wall_time_s"], "train_images_per_s": summary["images_per_s"],
                       "run": str(run)}
                pictures.append((row["model"], row.pop("x_hat")[:8]))
                print({k: v for k, v in row.items() if k != "run"})
                rows.append(row)
    result["rows"] = rows
    write_result(args.name, result, args.out_dir, argv, module=NAME)
    figure(result, pictures, args.out_dir, args.name)
    return result


def figure(result: dict, pictures: list, out_dir, name: str = NAME) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    factors = sorted({r["f"] for r in result["rows"]})
    for kind, marker in (("kl", "o-"), ("vq", "s--")):
        rs = [r for r in result["rows"] if r["kind"] == kind]
        fs = [r["f"] for r in rs]
        for ax, key, title in zip(axes, ("psnr", "ssim", "rfid", "judge_shape_and_colour"),
                                  ("PSNR (dB)", "SSIM", "rFID (judge features)", "judge: shape and colour kept")):
            ax.plot(fs, [r[key] for r in rs], marker, label=kind.upper())
            ax.set(xscale="log", xlabel="downsampling factor f", title=title)
            ax.set_xticks(factors, [str(f) for f in factors])
    axes[0].legend()
    save_figure(fig, name, out_dir)
    title = f"D(E(x)) on held-out pictures, {result['steps']} training steps"
    save_rows(pictures, f"{name}_reconstructions", out_dir, title=title)


if __name__ == "__main__":
    main()
    sys.exit(0)
