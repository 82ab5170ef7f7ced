"""Training the first stage: a plain PyTorch loop for the KL- and VQ-regularised autoencoders (Sec. 3.1, App. G).

One step is the two-player update of the reference: a generator step on
    L = L_rec(x, D(E(x))) + L_reg(z) + lambda_adv * L_adv(D(E(x)))                     (paper Eq. 25)
then a discriminator step with its own optimizer. ``disc_start`` delays the adversarial game until the
reconstructions are good (see ``ldm_minimal.losses``).

    python -m ldm_minimal train-ae --model tiny-kl-f4 --steps 2000 --out runs/ae-kl-f4
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ldm_minimal.autoencoder import VQModel, autoencoder_config, build_autoencoder
from ldm_minimal.checkpoint import save_checkpoint
from ldm_minimal.losses import AutoencoderLoss, AutoencoderLossConfig, autoencoder_train_step
from ldm_minimal.evaluation.metrics import ReconstructionMetrics
from ldm_minimal.regularizers import perplexity
from ldm_minimal.utils import autocast, default_device, image_grid, save_image, seed_everything


@dataclass
class AETrainConfig:
    """Everything one autoencoder run needs. Presets: AE_TRAIN_PRESETS; every field can be overridden."""

    model: str = "tiny-kl-f4"  # autoencoder preset name (ldm_minimal.autoencoder.AUTOENCODER_PRESETS)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    world: str = "shapes"
    resolution: int = 32
    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.9)  # the reference's Adam betas for both players
    perceptual: str = "lpips-random"  # "lpips" (ImageNet VGG, online), "lpips-random" (offline), "none"
    perceptual_weight: float = 1.0
    kl_weight: float = 1e-6
    codebook_weight: float = 1.0
    disc_start: int | None = None  # default: half of the steps
    disc_weight: float | None = None  # default: 0.5 (KL) / 0.75 (VQ)
    disc_ramp: int | None = None  # default: a quarter of the steps (see ldm_minimal.losses; 0 = the reference)
    disc_ndf: int = 64  # PatchGAN width (the reference's 64; the CPU experiments use 32)
    disc_n_layers: int = 3  # PatchGAN depth (3 gives 2x2 patches at 32x32; the CPU experiments use 2)
    adversarial: bool = True  # False: no discriminator at all (the "L1 (+ perceptual) only" baselines)
    seed: int = 0
    log_every: int = 50
    device: str = "auto"
    num_threads: int | None = None

    def loss_config(self, kind: str) -> AutoencoderLossConfig:
        disc_start = self.disc_start if self.disc_start is not None else self.steps // 2
        if not self.adversarial:
            disc_start = 10**12  # never switches on
        disc_weight = self.disc_weight if self.disc_weight is not None else (0.5 if kind == "kl" else 0.75)
        return AutoencoderLossConfig(
            kind=kind,
            perceptual=self.perceptual,
            perceptual_weight=self.perceptual_weight,
            kl_weight=self.kl_weight,
            codebook_weight=self.codebook_weight,
            disc_start=disc_start,
            disc_weight=disc_weight,
            disc_ramp=self.disc_ramp if self.disc_ramp is not None else self.steps // 4,
            disc_ndf=self.disc_ndf,
            disc_n_layers=self.disc_n_layers,
        )


def make_batches(world: str, resolution: int, batch_size: int, seed: int, split: str = "train") -> Iterator[torch.Tensor]:
    """An endless stream of image batches (B, 3, H, W) in [-1, 1] from a data world."""
    from ldm_minimal.data import ShapesConfig, ShapesDataset, collate, world_dataset

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
    model = build_autoencoder(model_cfg).to(device)
    loss_fn = AutoencoderLoss(cfg.loss_config(model_cfg.kind)).to(device)
    opt_g = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(loss_fn.discriminator_parameters(), lr=cfg.lr, betas=cfg.betas)
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
        x = next(batches).to(device)
        with autocast(device):
            logs = autoencoder_train_step(model, loss_fn, x, step, opt_g, opt_d)
        loss = logs.get("loss", logs.get("g_total", float("nan")))
        if not math.isfinite(float(loss)):
            raise FloatingPointError(f"The autoencoder loss became {loss} at step {step}; lower --lr and retry.")
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
    summary = {"steps": cfg.steps, "wall_time_s": wall, "images_per_s": cfg.steps * cfg.batch_size / wall,
               "final_logs": {k: float(v) for k, v in logs.items()}, "device": str(device)}
    if out is not None:
        model.eval()
        test = make_batches(cfg.world, cfg.resolution, 16, cfg.seed, "test")
        x = next(test).to(device)
        with torch.no_grad():
            x_hat = reconstruct(model, x)
        save_image(image_grid(torch.cat([x.cpu(), x_hat.float().cpu()]), nrow=16), out / "reconstructions.png")
        save_checkpoint(ckpt_path, model, kind="autoencoder", config=model_cfg,
                        info={"train": dataclasses.asdict(cfg), **summary}, overwrite=overwrite)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return model, summary


@torch.no_grad()
def reconstruct(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Deterministic reconstruction D(E(x)): posterior mode for KL, quantised codes for VQ (the first stages'
    shared ``encode_latent`` / ``decode_latent`` interface)."""
    return model.decode_latent(model.encode_latent(x, sample=False))
