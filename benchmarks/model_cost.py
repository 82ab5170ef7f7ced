"""Parameter counts and CPU cost of the course's models (issue 3's closing figures).

For the UNet presets: forward and forward+backward time per batch on random latents with a context.
For the latent diffusion presets: one training step (encode, condition, eps-MSE loss, backward) on a real
shapes-32 batch. Median of several repeats after warm-up. Writes docs/results/model_cost.{json,md}.

    python benchmarks/model_cost.py              # all (a few minutes on 2 cores)
    python benchmarks/model_cost.py --quick      # smoke run: tiny sizes only, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ldm_minimal.unet import UNet, unet_config  # noqa: E402


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median CPU time (time.process_time) of ``fn`` over ``repeats`` calls after ``warmup`` calls.

    CPU time of a single-threaded process is what a learner's laptop core spends; unlike wall time it is barely
    affected by other processes on a shared machine (run with --threads 1, the default).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def unet_cost(name: str, batch: int, size: int, context: tuple[int, int] | None, repeats: int) -> dict:
    torch.manual_seed(0)
    over = {"context_dim": context[1]} if context else {}
    cfg = unet_config(name, **over)
    model = UNet(cfg)
    x = torch.randn(batch, cfg.in_channels, size, size)
    t = torch.randint(0, 1000, (batch,))
    kw = {"context": torch.randn(batch, *context)} if context else {}

    def fwd():
        with torch.no_grad():
            model(x, t, **kw)

    def fwd_bwd():
        model(x, t, **kw).square().mean().backward()
        model.zero_grad(set_to_none=True)

    return {"model": f"unet:{name}", "params": sum(p.numel() for p in model.parameters()), "batch": batch,
            "input": f"{cfg.in_channels}x{size}x{size}" + (f" + context {context[0]}x{context[1]}" if context else ""),
            "forward_s": _median_time(fwd, repeats), "forward_backward_s": _median_time(fwd_bwd, repeats)}


def ldm_step_cost(preset: str, batch: int, repeats: int) -> dict:
    from ldm_minimal.data import ShapesDataset, collate, shapes_preset
    from ldm_minimal.latent_diffusion import LatentDiffusion
    from ldm_minimal.latent_diffusion_config import ldm_config

    torch.manual_seed(0)
    cfg = ldm_config(preset)
    model = LatentDiffusion(cfg)
    ds = ShapesDataset(shapes_preset(cfg.world), length=batch)
    b = collate([ds[i] for i in range(batch)])
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    model.set_scale_factor_from(b["image"])

    def step():
        loss, _ = model.training_loss(b, generator=g)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    counts = model.parameter_counts()
    return {"model": f"ldm:{preset}", "params": counts, "batch": batch, "train_step_s": _median_time(step, repeats, warmup=2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU time is reported: use 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    reps = 1 if args.quick else args.repeats
    rows = [unet_cost("tiny", 16, 8, (16, 64), reps)]
    if not args.quick:
        rows += [unet_cost("small", 8, 16, (16, 64), reps), unet_cost("default", 8, 16, (16, 64), reps)]
    presets = ["shapes-t2i"] if args.quick else ["shapes-t2i", "shapes-t2i-minilm", "shapes-class", "shapes-layout",
                                                 "shapes-semantic", "shapes-sr", "shapes-inpaint", "shapes-uncond", "shapes-pixel"]
    rows += [ldm_step_cost(n, 16, reps) for n in presets]
    info = {"machine": f"{platform.machine()} {platform.processor()}".strip(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "command": "python benchmarks/model_cost.py" + (" --quick" if args.quick else "")}
    out = ROOT / "docs" / "results" / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_cost.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    lines = ["# Model cost on CPU", "", f"Machine: {info['machine']}, {info['cpu_count']} cores, {info['torch_threads']} torch threads, "
             f"torch {info['torch']}. Command: `{info['command']}`. Median CPU time (process time, one thread) of {reps} repeats "
             "after warm-up; the untrained presets are timed (the cost does not depend on the weights).", "",
             "| model | parameters | batch | input | forward | forward + backward |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["model"].startswith("unet"):
            lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['batch']} | {r['input']} | "
                         f"{r['forward_s'] * 1e3:.0f} ms | {r['forward_backward_s'] * 1e3:.0f} ms |")
    lines += ["", "| latent diffusion preset | trainable | UNet | conditioner | first stage (frozen) | batch | training step |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["model"].startswith("ldm"):
            c = r["params"]
            lines.append(f"| {r['model'][4:]} | {c.get('trainable', 0) / 1e6:.2f}M | {c.get('unet', 0) / 1e6:.2f}M | "
                         f"{c.get('conditioner', 0) / 1e6:.2f}M | {c.get('first_stage', 0) / 1e6:.2f}M | {r['batch']} | "
                         f"{r['train_step_s'] * 1e3:.0f} ms |")
    (out / "model_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
