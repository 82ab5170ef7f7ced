"""The issue-2 first-stage experiments' loop: an in-memory run of the first stage (Sec. 3.1, App. G), and the
held-out evaluation of a first stage.

One step is ``AutoencoderTask.train_step``, the step of ``python -m ldm_minimal train ae``: a generator step on
    L = L_rec(x, D(E(x))) + L_reg(z) + lambda_adv * L_adv(D(E(x)))                     (paper Eq. 25; lambda_adv is VQGAN's adaptive weight, Esser et al. Eq. 7)
then a discriminator step with its own optimizer; ``disc_start`` delays the adversarial game until the
reconstructions are good (see ``ldm_minimal.losses``). What this loop keeps of its own, so that the runs of
``ldm_minimal.experiments.ae_reconstruction`` (docs/results/ae_reconstruction.md) reproduce bit for bit:

- its data stream, ``make_batches`` (a plain DataLoader; its first batch draws torch's global RNG once, which
  shifts the posterior samples of every later step against the generic loop's seeded ``StepBatches``);
- no EMA, warm-up, clipping, checkpoints or resume; the model comes back in memory;
- its run folder: config.json (AETrainConfig), metrics.jsonl (0-based steps), reconstructions.png,
  autoencoder.safetensors, summary.json.

For a first stage to build a latent diffusion model on, use ``python -m ldm_minimal train ae ...`` instead.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ldm_minimal.autoencoder import VQModel, autoencoder_config
from ldm_minimal.checkpoint import save_checkpoint
from ldm_minimal.data import ShapesConfig, ShapesDataset, collate, world_dataset
from ldm_minimal.evaluation.metrics import ReconstructionMetrics
from ldm_minimal.regularizers import perplexity
from ldm_minimal.training.config import AETrainConfig, first_stage_loss_config
from ldm_minimal.training.tasks import AutoencoderTask, reconstruct
from ldm_minimal.image_io import image_grid, save_image
from ldm_minimal.utils import default_device, seed_everything


def make_batches(world: str, resolution: int, batch_size: int, seed: int, split: str = "train") -> Iterator[torch.Tensor]:
    """An endless stream of image batches (B, 3, H, W) in [-1, 1] from a data world."""
    if world == "shapes":
        # Rendered on the fly: an effectively infinite, never-repeating training set. Test uses another seed.
        seed_offset = 0 if split == "train" else 10_000
        ds = ShapesDataset(ShapesConfig(resolution=resolution, seed=seed + seed_offset), length=10**9)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    else:
        ds = world_dataset(world, split=split, resolution=resolution)
        g = torch.Generator().manual_seed(seed)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, generator=g, collate_fn=collate)
    while True:
        for batch in loader:
            yield batch["image"]


@torch.no_grad()
def evaluate_autoencoder(
    model: torch.nn.Module,
    batches: Iterator[torch.Tensor],
    n_batches: int,
    lpips: torch.nn.Module | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Reconstruction quality on held-out batches (posterior mode for KL, quantised codes for VQ).

    Returns psnr, ssim, sharpness (high-frequency energy ratio), lpips (if given), and for VQ the codebook
    perplexity and number of codes used over all evaluated positions.
    """
    was_training = model.training
    model.eval()
    metrics = ReconstructionMetrics(lpips=lpips)
    counts = None
    for _ in range(n_batches):
        x = next(batches).to(device)
        if isinstance(model, VQModel):
            z = model.encode(x)
            z_q, _, info = model.quantize(z)
            x_hat = model.decode(z_q, quantize=False)
            idx = info["indices"].flatten().cpu()
            n_e = model.quantizer.n_embed
            c = torch.bincount(idx, minlength=n_e)
            counts = c if counts is None else counts + c
        else:
            x_hat = model.decode(model.encode(x).mode())
        metrics.update(x.cpu(), x_hat.float().cpu())
    out = metrics.compute()
    if counts is not None:
        out["perplexity"] = float(perplexity(counts))
        out["codes_used"] = int((counts > 0).sum())
        out["codebook_size"] = int(counts.numel())
    model.train(was_training)
    return out


def train_autoencoder(
    cfg: AETrainConfig,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one first-stage model; returns (model, summary). Writes metrics.jsonl, a reconstruction grid and
    ``autoencoder.safetensors`` under ``out_dir`` when given (refusing to replace an existing checkpoint unless
    ``overwrite``)."""
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / "autoencoder.safetensors" if out else None
    if ckpt_path is not None and ckpt_path.exists() and not overwrite:
        raise FileExistsError(
            f"{ckpt_path} already holds a trained autoencoder. Use another --out folder or pass --overwrite."
        )
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = default_device() if cfg.device == "auto" else torch.device(cfg.device)
    seed_everything(cfg.seed)

    model_cfg = autoencoder_config(cfg.model, **cfg.model_overrides)
    # bf16 autocast on CUDA, like the generic loop's "auto" precision
    task = AutoencoderTask(model_cfg, first_stage_loss_config(cfg, model_cfg.kind), device, world=cfg.world,
                           resolution=cfg.resolution, bf16=device.type == "cuda")
    optimizers = task.optimizers(cfg.lr, cfg.betas, weight_decay=0.0)
    batches = make_batches(cfg.world, cfg.resolution, cfg.batch_size, cfg.seed, "train")

    log_file = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        log_file = open(out / "metrics.jsonl", "w")
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), disable=not progress, desc=f"train {cfg.model}")
    logs: dict[str, float] = {}
    for step in bar:
        loss, logs, finite = task.train_step({"image": next(batches)}, step, optimizers)
        if not finite:
            raise FloatingPointError(f"The autoencoder loss became {float(loss)} at step {step}; lower --lr and retry.")
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            elapsed = time.perf_counter() - t0
            rate = (step + 1) * cfg.batch_size / max(elapsed, 1e-9)
            bar.set_postfix(loss=f"{float(loss):.4g}", img_s=f"{rate:.0f}")
            if log_file:
                log_file.write(json.dumps({"step": step, "time": elapsed, **{k: float(v) for k, v in logs.items()}}) + "\n")
                log_file.flush()
    wall = time.perf_counter() - t0
    if log_file:
        log_file.close()
    model = task.model
    summary = {"steps": cfg.steps, "wall_time_s": wall, "images_per_s": cfg.steps * cfg.batch_size / wall,
               "final_logs": {k: float(v) for k, v in logs.items()}, "device": str(device)}
    if out is not None:
        model.eval()
        test = make_batches(cfg.world, cfg.resolution, 16, cfg.seed, "test")
        x = next(test).to(device)
        x_hat = reconstruct(model, x)
        save_image(image_grid(torch.cat([x.cpu(), x_hat.float().cpu()]), nrow=16), out / "reconstructions.png")
        save_checkpoint(ckpt_path, model, kind="autoencoder", config=model_cfg,
                        info={"train": dataclasses.asdict(cfg), **summary}, overwrite=overwrite)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return model, summary
