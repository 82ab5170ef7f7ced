"""What a training run is: its settings (``TrainConfig``), the sized presets, and what a resumed run may change.

    cfg = train_config("cpu", "ae", model="tiny-kl-f2")           # a preset with some fields replaced
    cfg = resume_config("runs/ae", steps=1400)                    # the run in runs/ae, trained for longer

Every field of ``TrainConfig`` is a flag of ``python -m ldm_minimal train`` (``ldm_minimal.cli.train``). The
issue-2 first-stage experiments keep their own, smaller settings: ``AETrainConfig`` (``training.autoencoder_loop``).
Both describe the first stage's objective with the same fields, turned into a loss by ``first_stage_loss_config``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ldm_minimal.checkpoint import to_jsonable
from ldm_minimal.losses import AutoencoderLossConfig
from ldm_minimal.training.run import RunFolderError, find_checkpoints
from ldm_minimal.utils import unknown_name_error

TASKS = ("ae", "ldm")  # the first stage (E, D) or a latent diffusion model on top of a trained one
PRECISIONS = ("auto", "bf16", "fp32")
# Fields that may differ between a run and its resumption. All but lr leave the loss trajectory unchanged; lr may
# only be lowered (what the NaN stop advises), and the trainer records the change with the step it took effect.
RESUMABLE_CHANGES = {"steps", "log_every", "sample_every", "ckpt_every", "keep_checkpoints", "num_workers",
                     "progress", "num_threads", "lr"}
RECORDED_CHANGES = ("lr",)  # resumable changes that alter the trajectory: written to config.json's "changes"
# Numeric fields that must be finite numbers (a NaN --grad-clip would silently switch clipping off).
FINITE_FIELDS = ("lr", "weight_decay", "warmup", "grad_clip", "ema_decay", "perceptual_weight", "kl_weight",
                 "codebook_weight", "disc_start", "disc_weight", "disc_ramp", "sample_guidance")


@dataclass
class TrainConfig:
    """One training run. ``train_config(preset, task, **overrides)`` builds one from the ``cpu``/``gpu`` presets."""

    task: str = "ldm"  # "ae" (first stage) or "ldm" (latent diffusion model)
    model: str = "shapes-t2i"  # an AUTOENCODER_PRESETS name (ae) or an LDM_PRESETS name (ldm)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # AutoencoderConfig / LatentDiffusionConfig fields
    world: str | None = None  # shapes32|shapes64|single32|single64|emoji|hf:..|folder:..|parquet:..; None: preset's
    resolution: int | None = None  # image side for non-shapes worlds (default: the LDM's image_size, or 32)
    first_stage: str | None = None  # ldm: path of a trained autoencoder checkpoint (train one with `train ae`)
    steps: int = 4000
    batch_size: int = 32  # global batch (split over DDP ranks)
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 100  # linear learning-rate warm-up steps
    grad_clip: float = 1.0  # max gradient norm (0: off)
    ema_decay: float = 0.999  # 0: no EMA (the raw weights are exported)
    # first stage only (ldm_minimal.losses.AutoencoderLossConfig, through first_stage_loss_config)
    perceptual: str = "lpips-random"  # "lpips" (ImageNet VGG16, online), "lpips-random" (offline), "none"
    perceptual_weight: float = 1.0
    kl_weight: float = 1e-6
    codebook_weight: float = 1.0
    adversarial: bool = True
    disc_start: int | None = None  # default: half of the steps
    disc_weight: float | None = None  # default 0.5 (KL) / 0.75 (VQ)
    disc_ramp: int | None = None  # default: a quarter of the steps
    disc_ndf: int = 64
    disc_n_layers: int = 3
    # bookkeeping
    seed: int = 0
    log_every: int = 25
    sample_every: int = 1000
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    sample_steps: int = 25  # DDIM steps for the sample grids
    sample_guidance: float = 3.0
    device: str = "auto"
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 elsewhere), "bf16", "fp32"
    compile: bool = False  # torch.compile the UNet / autoencoder
    channels_last: bool | None = None  # None: on for CUDA (what it changes: see Trainer.__init__)
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    num_workers: int = 0  # DataLoader workers rendering/decoding batches
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise unknown_name_error("training task", self.task, TASKS)
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        for name in FINITE_FIELDS:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r} (--{name.replace('_', '-')}).")
        for name in ("weight_decay", "warmup", "grad_clip", "perceptual_weight", "kl_weight", "codebook_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)} (--{name.replace('_', '-')}).")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1) (e.g. --betas 0.9 0.999), got {self.betas}.")
        for name in ("steps", "batch_size", "log_every", "sample_every", "ckpt_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0.999 is typical; 0 disables the EMA), got {self.ema_decay}.")
        if self.precision not in PRECISIONS:
            raise unknown_name_error("precision", self.precision, PRECISIONS)
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}.")
        if self.task == "ae":
            # Resolve the step-dependent defaults now, so that the stored config holds the numbers: a resumed run
            # with more steps keeps the adversarial schedule it started with.
            if self.disc_start is None:
                self.disc_start = self.steps // 2
            if self.disc_ramp is None:
                self.disc_ramp = self.steps // 4

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))


@dataclass
class AETrainConfig:
    """The settings of the issue-2 first-stage loop (``train_autoencoder``): an in-memory run without EMA, warm-up,
    clipping or checkpoints. Its runs are kept reproducible; every field can be overridden."""

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


def first_stage_loss_config(cfg: TrainConfig | AETrainConfig, kind: str) -> AutoencoderLossConfig:
    """The first stage's objective (Eq. 25: L_rec + L_reg + L_adv; the weight lambda_adv is VQGAN's, Esser et al. Eq. 7) from a run's settings.

    kind: "kl" or "vq" (the autoencoder's regulariser). Unset fields take the course's defaults: the discriminator
    starts at half of the steps and ramps in over a quarter of them, with weight 0.5 (KL) or 0.75 (VQ).
    """
    disc_start = cfg.disc_start if cfg.disc_start is not None else cfg.steps // 2
    return AutoencoderLossConfig(
        kind=kind,
        perceptual=cfg.perceptual,
        perceptual_weight=cfg.perceptual_weight,
        kl_weight=cfg.kl_weight,
        codebook_weight=cfg.codebook_weight,
        disc_start=disc_start if cfg.adversarial else 10**12,  # no adversarial game: never switches on
        disc_weight=cfg.disc_weight if cfg.disc_weight is not None else (0.5 if kind == "kl" else 0.75),
        disc_ramp=cfg.disc_ramp if cfg.disc_ramp is not None else cfg.steps // 4,
        disc_ndf=cfg.disc_ndf,
        disc_n_layers=cfg.disc_n_layers,
    )


# Presets: ``cpu`` is sized for a 2-core laptop (about half an hour for the first stage plus a text-to-image model,
# see README), ``gpu`` for one CUDA GPU. Task-specific values; anything can be overridden.
TRAIN_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {
        # f = 2: at CPU budgets an f = 4 decoder redraws small stars and squares as blobs (the attribute judge reads
        # the right shape on only ~70-75% of f = 4 reconstructions, ~98% at f = 2; docs/results/t2i_from_scratch.md).
        # L1 + LPIPS without the discriminator: at a few hundred steps the adversarial term costs sharpness it
        # cannot buy back yet (docs/results/ae_reconstruction.md). EMA decay 0.99: a ~100-step window.
        "ae": dict(model="tiny-kl-f2", steps=700, batch_size=16, lr=5e-4, betas=(0.5, 0.9), warmup=50,
                   adversarial=False, perceptual="lpips-random", ema_decay=0.99, sample_every=350,
                   ckpt_every=175),
        # EMA decay 0.995 (a ~200-step window): with 0.999 the average of a long run still leans on weights from
        # its first half. Threads are torch's default (all cores): on an idle 2-core machine 2 threads train
        # 1.4x (diffusion) to 1.6x (autoencoder) faster than 1 (docs/training.md).
        "ldm": dict(steps=3800, batch_size=32, lr=5e-4, warmup=200, ema_decay=0.995, sample_every=950,
                    ckpt_every=475),
    },
    "gpu": {
        "ae": dict(model="tiny-kl-f4", steps=6000, batch_size=64, lr=5e-4, betas=(0.5, 0.9), warmup=200,
                   adversarial=True, perceptual="lpips", disc_ndf=32, disc_n_layers=2, ema_decay=0.999,
                   sample_every=1000, ckpt_every=1000, compile=False, num_workers=4),
        "ldm": dict(steps=20000, batch_size=256, lr=5e-4, warmup=500, ema_decay=0.9995, sample_every=2000,
                    ckpt_every=2000, compile=True, num_workers=4),
    },
}


def train_config(preset: str | None = None, task: str = "ldm", **overrides: Any) -> TrainConfig:
    """A TrainConfig from a preset ("cpu", "gpu" or None for the dataclass defaults) and field overrides."""
    if task not in TASKS:
        raise unknown_name_error("training task", task, TASKS)
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in TRAIN_PRESETS:
            raise unknown_name_error("training preset", preset, TRAIN_PRESETS)
        base = dict(TRAIN_PRESETS[preset][task])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown training setting(s) {unknown}. Valid settings: {', '.join(sorted(fields))}.")
    return TrainConfig(task=task, **{**base, **{k: v for k, v in overrides.items() if v is not None}})


# ----------------------------------------------------------------------------------------------------------------
# Resuming: a resumed run continues the same trajectory, so only bookkeeping fields (and a lower lr) may change.
# ----------------------------------------------------------------------------------------------------------------


def check_resumable(stored: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Raise RunFolderError naming every setting that differs between a run and its resumption, except those in
    RESUMABLE_CHANGES (a resumed run cannot change what it learns; lr may only go down)."""
    changed = sorted(k for k in set(stored) | set(new)
                     if k not in RESUMABLE_CHANGES and stored.get(k) != new.get(k))
    if "lr" in stored and "lr" in new and float(new["lr"]) > float(stored["lr"]):
        raise RunFolderError(
            f"--resume: lr: run has {stored['lr']!r}, given {new['lr']!r}. A resumed run may lower --lr (e.g. after "
            "the loss diverged), not raise it; start a new run in another folder for a larger learning rate."
        )
    if changed:
        detail = ", ".join(f"{k}: run has {stored.get(k)!r}, given {new.get(k)!r}" for k in changed)
        raise RunFolderError(
            f"--resume: {detail}. A resumed run keeps its settings (only {', '.join(sorted(RESUMABLE_CHANGES))} "
            "may change, lr only downwards); start a new run in another folder to change them."
        )


def resume_config(out_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The config of the run in ``out_dir`` (from its newest checkpoint), with resumable fields replaced.

    Any other field given in ``overrides`` must equal the stored value (a resumed run cannot change what it learns).
    """
    out = Path(out_dir)
    found = find_checkpoints(out)
    if not found:
        raise RunFolderError(f"--resume: no complete checkpoint under {out / 'checkpoints'}; start the run without "
                             "--resume (or check --out).")
    stored = json.loads((found[-1] / "state.json").read_text())["train"]
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = TrainConfig(**{k: tuple(v) if k == "betas" else v for k, v in stored.items()})
    check_resumable(stored, {**stored, **to_jsonable(given)})
    return dataclasses.replace(cfg, **{k: v for k, v in given.items() if k in RESUMABLE_CHANGES})
