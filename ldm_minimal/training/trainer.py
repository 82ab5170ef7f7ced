"""Training every model of the course: one plain PyTorch loop for the first stage and the latent diffusion models.

    python -m ldm_minimal train ae  --preset cpu --model tiny-kl-f4 --world shapes32 --out runs/ae
    python -m ldm_minimal train ldm --preset cpu --model shapes-t2i --first-stage runs/ae/model.safetensors \
        --out runs/t2i

Two tasks share the loop:

- ``ae``: the first stage (E, D) of Sec. 3.1 / App. G, KL or VQ, any f, with the perceptual + patch-adversarial
  objective of ``ldm_minimal.losses`` (a generator step, then a discriminator step with its own optimizer).
- ``ldm``: a latent diffusion model of Sec. 3.2-3.3 (any conditioning preset of ``ldm_minimal.latent_diffusion``)
  on top of a trained, frozen first stage, minimising L_LDM of Eq. (2) / (3).

What every run gets (the practice of the reference and of most diffusion codebases):

- AdamW, a linear learning-rate warm-up, gradient-norm clipping;
- an exponential moving average (EMA) of the trained weights, with the reference's warm-up of the decay
  ``min(decay, (1 + n) / (10 + n))``; the EMA weights are what the exported model and the sample grids use;
- bf16 autocast on CUDA, channels-last and ``torch.compile`` on request; nothing hard-codes a device;
- a tqdm bar (loss, images/s), ``metrics.jsonl``, sample grids under ``samples/`` every ``sample_every`` steps;
- checkpoints every ``ckpt_every`` steps under ``checkpoints/step_XXXXXXX/``: ``model.safetensors`` (the EMA
  weights with their config: loadable on its own), ``train_state.safetensors`` (raw weights, optimizer moments,
  EMA, RNG states) and ``state.json`` (step, config, optimizer hyper-parameters, scale factor). Each is written in
  a temporary folder that is renamed into place, so a crash never leaves a half-written checkpoint;
- ``--resume`` continues from the newest checkpoint exactly: data order, noise and dropout draws are pure
  functions of (seed, step, rank) or restored generator states, so the resumed loss trajectory is the
  uninterrupted one, bit for bit on the CPU;
- a NaN or infinite loss stops the run with the step named; the last good checkpoint is kept;
- DDP under ``torchrun`` (NCCL on GPUs, gloo on CPUs). Each rank reads its own slice of every global batch.

Run folder: config.json, metrics.jsonl, samples/, checkpoints/, model.safetensors (final EMA export), summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from ldm_minimal.checkpoint import CheckpointError, _to_jsonable, atomic_write_bytes, read_checkpoint, save_checkpoint, save_ldm
from ldm_minimal.checkpoint import ldm_state_dict, sha256_of
from ldm_minimal.utils import autocast, default_device, image_grid, save_image, unknown_name_error

TASKS = ("ae", "ldm")
SHAPES_WORLDS = ("shapes32", "shapes64", "single32", "single64", "single32-heldout")
# Fields that may differ between a run and its resumption (they do not change the loss trajectory).
RESUMABLE_CHANGES = {"steps", "log_every", "sample_every", "ckpt_every", "keep_checkpoints", "num_workers",
                     "progress", "num_threads"}


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


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
    # first stage only (ldm_minimal.losses.AutoencoderLossConfig)
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
    channels_last: bool | None = None  # None: on for CUDA
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    num_workers: int = 0  # DataLoader workers rendering/decoding batches
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise unknown_name_error("training task", self.task, TASKS)
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        for name in ("steps", "batch_size", "log_every", "sample_every", "ckpt_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0.999 is typical; 0 disables the EMA), got {self.ema_decay}.")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise unknown_name_error("precision", self.precision, ("auto", "bf16", "fp32"))
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
        return _to_jsonable(dataclasses.asdict(self))


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
# Data: the batch of a step is a pure function of (seed, step, rank), so that a resumed run sees the same data.
# ----------------------------------------------------------------------------------------------------------------


class StepBatches(torch.utils.data.Sampler):
    """Yields, for steps start..stop-1, the dataset indices of this rank's share of each global batch.

    Global sample position p = step * global_batch + rank * local_batch + j. Rendered worlds (shapes) are
    infinite, so index = p; finite datasets take p modulo their length through a fresh permutation per epoch,
    drawn from a generator seeded with (seed, epoch).
    """

    def __init__(self, start: int, stop: int, global_batch: int, rank: int, world_size: int,
                 dataset_len: int | None, seed: int) -> None:
        self.start, self.stop = start, stop
        self.local = global_batch // world_size
        self.global_batch, self.rank = global_batch, rank
        self.n, self.seed = dataset_len, seed
        self._perm: tuple[int, Tensor] | None = None

    def _index(self, p: int) -> int:
        if self.n is None:
            return p
        epoch, i = divmod(p, self.n)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return int(self._perm[1][i])

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            first = step * self.global_batch + self.rank * self.local
            yield [self._index(first + j) for j in range(self.local)]

    def __len__(self) -> int:
        return self.stop - self.start


def resolve_world(cfg: TrainConfig, default_world: str = "shapes32") -> tuple[str, int]:
    """(world, resolution) of a run: a shapes preset carries its resolution; other worlds take cfg.resolution."""
    world = cfg.world or default_world
    if world == "shapes":
        world = f"shapes{cfg.resolution or 32}"
    if world in SHAPES_WORLDS:
        from ldm_minimal.data import shapes_preset

        res = shapes_preset(world).resolution
        if cfg.resolution is not None and cfg.resolution != res:
            raise ValueError(f"world {world!r} is {res}x{res}; drop --resolution or pick the shapes world of that size.")
        return world, res
    return world, int(cfg.resolution or 32)


def make_dataset(world: str, resolution: int, split: str, seed: int = 0) -> tuple[torch.utils.data.Dataset, int | None]:
    """The torch dataset of a world and its length (None for the infinite rendered shapes world)."""
    from ldm_minimal.data import ShapesDataset, shapes_preset, world_dataset

    if world in SHAPES_WORLDS:
        offset = 0 if split == "train" else 1_000_000  # the test pictures come from another seed
        return ShapesDataset(shapes_preset(world, seed=seed + offset), length=2**62), None
    ds = world_dataset(world, split=split, resolution=resolution)
    return ds, len(ds)


def fixed_batch(world: str, resolution: int, n: int, seed: int = 0) -> dict[str, Any]:
    """n held-out samples (the test split) for sample grids and evaluation."""
    from ldm_minimal.data import collate

    ds, length = make_dataset(world, resolution, "test", seed)
    idx = list(range(n if length is None else min(n, length)))
    return collate([ds[i] for i in idx])


# ----------------------------------------------------------------------------------------------------------------
# Distributed helpers (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)
# ----------------------------------------------------------------------------------------------------------------


def _init_distributed(device_spec: str) -> tuple[int, int, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device_spec != "auto":
        device = torch.device(device_spec)
    else:
        device = default_device()
    if world_size == 1:
        return 0, 1, device
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def _all_finite(x: Tensor, world_size: int) -> bool:
    """True when x is finite on every rank (every rank must stop together, or the others hang)."""
    flag = torch.tensor([1.0 if bool(torch.isfinite(x).all()) else 0.0], device=x.device)
    if world_size > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


def _average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """Mean of the gradients over ranks (what DDP does), for the first stage's two-player step."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world_size


# ----------------------------------------------------------------------------------------------------------------
# EMA (torch.optim.swa_utils.AveragedModel with the reference's decay warm-up)
# ----------------------------------------------------------------------------------------------------------------


def _ema_avg_fn(decay: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    def avg(ema: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        n = float(num_averaged)
        # d = min(decay, (1 + n) / (10 + n));  ema <- d * ema + (1 - d) * theta
        d = min(decay, (1.0 + n) / (10.0 + n))
        return ema + (current - ema) * (1.0 - d)

    return avg


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


class RunFolderError(RuntimeError):
    """The output folder holds another run (and neither --resume nor --overwrite was given), or cannot resume."""


RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "model.safetensors", "samples", "checkpoints")


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"


# ----------------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------------


class Trainer:
    """Builds the model, data, optimizer(s) and EMA of a run, and runs / resumes it. See the module docstring."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                 command: str | None = None) -> None:
        self.cfg = cfg
        self.command = command  # the command line that started (or resumed) the run, for the records
        self.out = Path(out_dir)
        if cfg.num_threads:
            torch.set_num_threads(int(cfg.num_threads))
        self.rank, self.world_size, self.device = _init_distributed(cfg.device)
        self.is_main = self.rank == 0
        if cfg.batch_size % self.world_size:
            raise ValueError(
                f"batch_size={cfg.batch_size} is the global batch and must divide evenly over {self.world_size} "
                f"processes; use a multiple of {self.world_size}."
            )
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self._prepare_folder(resume, overwrite)

        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed * 1000 + self.rank)  # noise, dropout, t
        self.step = 0
        self.elapsed_before = 0.0
        if cfg.task == "ae":
            self._build_ae()
        else:
            self._build_ldm()
        self.params = [p for p in self.trainable_module.parameters() if p.requires_grad]
        self.ema = None
        if cfg.ema_decay > 0:
            self.ema = AveragedModel(self.trainable_module, avg_fn=_ema_avg_fn(cfg.ema_decay), use_buffers=False)
            self.ema.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.optimizers = {"optimizer": self.opt}
        if cfg.task == "ae":
            self.opt_d = torch.optim.AdamW(self.loss_fn.discriminator_parameters(), lr=cfg.lr, betas=cfg.betas,
                                           weight_decay=cfg.weight_decay)
            self.optimizers["optimizer_d"] = self.opt_d
        if resume:
            self._load_latest()
        self._setup_speedups()

    # ------------------------------------------------------------------ building
    def _prepare_folder(self, resume: bool, overwrite: bool) -> None:
        existing = [n for n in RUN_FILES if (self.out / n).exists()]
        if resume:
            if not (self.out / "checkpoints").is_dir():
                raise RunFolderError(f"--resume: {self.out} holds no checkpoints/ folder to resume from. "
                                     "Start the run without --resume.")
            return
        if existing and not overwrite:
            raise RunFolderError(
                f"{self.out} already holds a run ({', '.join(existing)}). Pass --resume to continue it, --overwrite "
                "to replace it, or choose another --out folder."
            )
        if existing and self.is_main:
            for n in existing:
                p = self.out / n
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        if self.world_size > 1:
            dist.barrier()

    def _build_ae(self) -> None:
        from ldm_minimal.autoencoder import autoencoder_config, build_autoencoder
        from ldm_minimal.losses import AutoencoderLoss, AutoencoderLossConfig

        cfg = self.cfg
        self.world, self.resolution = resolve_world(cfg)
        self.model_config = autoencoder_config(cfg.model, **cfg.model_overrides)
        self.model = build_autoencoder(self.model_config).to(self.device)
        self.trainable_module = self.model
        disc_start = cfg.disc_start if cfg.disc_start is not None else cfg.steps // 2
        kind = self.model_config.kind
        self.loss_fn = AutoencoderLoss(AutoencoderLossConfig(
            kind=kind, perceptual=cfg.perceptual, perceptual_weight=cfg.perceptual_weight, kl_weight=cfg.kl_weight,
            codebook_weight=cfg.codebook_weight, disc_start=disc_start if cfg.adversarial else 10**12,
            disc_weight=cfg.disc_weight if cfg.disc_weight is not None else (0.5 if kind == "kl" else 0.75),
            disc_ramp=cfg.disc_ramp if cfg.disc_ramp is not None else cfg.steps // 4,
            disc_ndf=cfg.disc_ndf, disc_n_layers=cfg.disc_n_layers,
        )).to(self.device)

    def _build_ldm(self) -> None:
        from ldm_minimal.latent_diffusion import LatentDiffusion, ldm_config

        cfg = self.cfg
        overrides = dict(cfg.model_overrides)
        if cfg.first_stage is not None:
            overrides["first_stage"] = str(cfg.first_stage)
        mcfg = ldm_config(cfg.model, **overrides)
        if mcfg.first_stage != "identity" and not Path(mcfg.first_stage).suffix == ".safetensors":
            raise ValueError(
                f"The latent diffusion model needs a TRAINED first stage, but first_stage is {mcfg.first_stage!r} "
                "(random weights). Train one with `python -m ldm_minimal train ae --out runs/ae` and pass "
                "--first-stage runs/ae/model.safetensors."
            )
        self.world, self.resolution = resolve_world(cfg, default_world=mcfg.world)
        if self.resolution != mcfg.image_size:
            mcfg = dataclasses.replace(mcfg, image_size=self.resolution)
        if cfg.world is not None and cfg.world != mcfg.world:
            mcfg = dataclasses.replace(mcfg, world=self.world)
        self.model_config = mcfg
        self.model = LatentDiffusion(mcfg).to(self.device)
        self.first_stage_sha256 = sha256_of(mcfg.first_stage) if mcfg.first_stage != "identity" else None
        parts: dict[str, nn.Module] = {"unet": self.model.unet}
        if self.model.conditioner is not None and getattr(self.model.conditioner, "trainable", False):
            parts["conditioner"] = self.model.conditioner
        self.trainable_module = nn.ModuleDict(parts)

    def _setup_speedups(self) -> None:
        cfg = self.cfg
        net = self.model.unet if cfg.task == "ldm" else self.model
        channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type == "cuda"
        if channels_last:
            net.to(memory_format=torch.channels_last)
        if cfg.compile:
            net.compile()  # in place: parameter names (and checkpoints) stay the same
        self.loss_module: nn.Module = _LossModule(self.model) if cfg.task == "ldm" else self.model
        if self.world_size > 1 and cfg.task == "ldm":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_module = DDP(self.loss_module, device_ids=ids)

    # ------------------------------------------------------------------ data
    def _loader(self, start: int, stop: int) -> Iterator[dict[str, Any]]:
        from ldm_minimal.data import collate

        ds, length = make_dataset(self.world, self.resolution, "train", self.cfg.seed)
        sampler = StepBatches(start, stop, self.cfg.batch_size, self.rank, self.world_size, length, self.cfg.seed)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate,
                                             num_workers=self.cfg.num_workers,
                                             persistent_workers=False, pin_memory=self.device.type == "cuda",
                                             # its own generator: creating a loader must not draw from the global
                                             # RNG, or a resumed run's random stream would shift
                                             generator=torch.Generator().manual_seed(self.cfg.seed + start))
        return iter(loader)

    def _set_scale_factor(self) -> None:
        """The latent rescaling (Sec. 4.3.2): 1 / std(z) of the first global batch, the same on every rank."""
        if self.cfg.task != "ldm" or bool(self.model.scale_factor_set):
            return
        ds, length = make_dataset(self.world, self.resolution, "train", self.cfg.seed)
        sampler = StepBatches(0, 1, self.cfg.batch_size, 0, 1, length, self.cfg.seed)
        from ldm_minimal.data import collate

        batch = collate([ds[i] for i in next(iter(sampler))])
        self.model.set_scale_factor_from(batch["image"].to(self.device),
                                         generator=torch.Generator(self.device).manual_seed(self.cfg.seed))

    # ------------------------------------------------------------------ one step
    def _ldm_step(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float], bool]:
        """One update; returns (loss, logs, finite). A non-finite loss is not back-propagated."""
        with autocast(self.device, enabled=self.bf16):
            loss, logs = self.loss_module(batch, self.generator)
        if not _all_finite(loss.detach(), self.world_size):
            return loss, logs, False
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip))
        self.opt.step()
        return loss, logs, True

    def _ae_step(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float], bool]:
        """One two-player update; returns (loss, logs, finite) (the update has happened either way)."""
        from ldm_minimal.losses import autoencoder_train_step

        x = batch["image"].to(self.device)
        sync = None
        if self.world_size > 1:
            sync = lambda opt: _average_gradients(  # noqa: E731
                [p for g in opt.param_groups for p in g["params"]], self.world_size)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else None
        with autocast(self.device, enabled=self.bf16):
            logs = autoencoder_train_step(self.model, self.loss_fn, x, self.step, self.opt, self.opt_d,
                                          before_step=sync, grad_clip=clip)
        loss = torch.tensor(float(logs.get("loss", float("nan"))), device=self.device)
        return loss, logs, _all_finite(loss, self.world_size)

    def _lr_at(self, step: int) -> float:
        # linear warm-up to lr, then constant (the reference's LambdaLinearScheduler with f_max = f_min = 1)
        return self.cfg.lr * min(1.0, (step + 1) / max(1, self.cfg.warmup))

    # ------------------------------------------------------------------ the loop
    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to cfg.steps (from the resumed step, if any); returns the summary.

        ``stop_after`` simulates a crash for tests: the loop stops after that step without a final checkpoint.
        """
        cfg = self.cfg
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg_doc = {"command": self.command, "train": cfg.to_dict(), "model": _to_jsonable(self.model_config),
                       "world": self.world,
                       "resolution": self.resolution, "world_size": self.world_size}
            if not (self.out / "config.json").exists():
                atomic_write_bytes(self.out / "config.json", (json.dumps(cfg_doc, indent=2) + "\n").encode())
        self._set_scale_factor()
        start = self.step
        if start >= cfg.steps:
            if self.is_main:
                print(f"{self.out}: already trained for {start} steps (steps={cfg.steps}); nothing to do.")
            return self._finish(time.perf_counter(), start)
        log = open(self.out / "metrics.jsonl", "a") if self.is_main else None
        bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and self.is_main),
                   desc=f"train {cfg.task} {cfg.model}", dynamic_ncols=True)
        t0 = time.perf_counter()
        window: list[float] = []
        self.model.train()
        try:
            for batch in self._loader(start, cfg.steps):
                for opt in self.optimizers.values():
                    for group in opt.param_groups:
                        group["lr"] = self._lr_at(self.step)
                loss, logs, finite = self._ae_step(batch) if cfg.task == "ae" else self._ldm_step(batch)
                if not finite:
                    last = self.latest_checkpoint()
                    kept = f"The last good checkpoint is kept: {last}." if last else "No checkpoint was written yet."
                    raise TrainingDiverged(
                        f"The loss became {float(loss.detach())} at step {self.step + 1} of {self.out}. {kept} Lower --lr (now "
                        f"{cfg.lr:g}) or raise --warmup, then --resume (or start afresh with --overwrite)."
                    )
                if self.ema is not None:
                    self.ema.update_parameters(self.trainable_module)
                self.step += 1
                window.append(float(logs["loss"]))
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    elapsed = time.perf_counter() - t0
                    rate = (self.step - start) * cfg.batch_size / max(elapsed, 1e-9)
                    row = {"step": self.step, "loss": float(logs["loss"]), "loss_avg": sum(window) / len(window),
                           "lr": self._lr_at(self.step - 1), "images_per_s": rate,
                           "time_s": self.elapsed_before + elapsed,
                           **{k: float(v) for k, v in logs.items() if k != "loss"}}
                    window.clear()
                    if log is not None:
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                    bar.set_postfix(loss=f"{row['loss_avg']:.4f}", img_s=f"{rate:.0f}")
                bar.update(1)
                if self.step % cfg.sample_every == 0 and self.step < cfg.steps:
                    self.write_samples()
                if self.step % cfg.ckpt_every == 0 and self.step < cfg.steps:
                    self.save(self.elapsed_before + time.perf_counter() - t0)
                if stop_after is not None and self.step >= stop_after:
                    return {"interrupted_at": self.step}
        finally:
            bar.close()
            if log is not None:
                log.close()
        wall = time.perf_counter() - t0
        self.save(self.elapsed_before + wall)
        self.write_samples()
        return self._finish(t0, start)

    def _finish(self, t0: float, start: int) -> dict[str, Any]:
        wall = time.perf_counter() - t0
        total = self.elapsed_before + wall
        summary = {
            "task": self.cfg.task, "model": self.cfg.model, "world": self.world, "steps": self.step,
            "steps_this_session": self.step - start, "wall_time_s": round(total, 1),
            "session_wall_time_s": round(wall, 1),
            "images_per_s": round((self.step - start) * self.cfg.batch_size / max(wall, 1e-9), 1),
            "device": str(self.device), "machine": _machine(self.device), "world_size": self.world_size,
            "precision": "bf16" if self.bf16 else "fp32", "parameters_trained": sum(p.numel() for p in self.params),
            "command": self.command,
        }
        if self.world_size > 1:
            summary["ranks_in_sync"] = self._ranks_in_sync()
        if self.is_main:
            export = self.export(self.out / "model.safetensors", info=summary, overwrite=True)
            summary["model"] = str(export)
            atomic_write_bytes(self.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
            print(f"Finished {self.step} steps in {total / 60:.1f} min ({summary['images_per_s']} images/s). "
                  f"Model: {export}")
        return summary

    def _ranks_in_sync(self) -> bool:
        """True when every rank holds the same trained weights (DDP kept them identical)."""
        vec = torch.cat([p.detach().float().flatten() for p in self.params])
        total = torch.stack([vec.sum(), (vec * vec).sum()])
        gathered = [torch.zeros_like(total) for _ in range(self.world_size)]
        dist.all_gather(gathered, total)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    # ------------------------------------------------------------------ EMA weights, export, samples
    def ema_state(self) -> dict[str, Tensor]:
        """The model's exportable state with the EMA weights in place of the raw trained ones."""
        # parameters only: the EMA copy's buffers are stale (use_buffers=False), the live ones are current
        ema = dict(self.ema.module.named_parameters()) if self.ema is not None else {}
        ema = {k: v.detach() for k, v in ema.items()}
        if self.cfg.task == "ae":
            return {k: ema[k] if k in ema else v for k, v in self.model.state_dict().items()}
        state = ldm_state_dict(self.model)
        # ModuleDict keys are "unet.xxx" / "conditioner.xxx", exactly the LatentDiffusion names
        return {k: ema.get(k, v) for k, v in state.items()}

    def export(self, path: Path, info: Mapping[str, Any] | None = None, overwrite: bool = False,
               dtype: torch.dtype | None = None) -> Path:
        info = {"train": self.cfg.to_dict(), "world": self.world, **(info or {})}
        if self.cfg.task == "ae":
            return save_checkpoint(path, self.ema_state(), kind="autoencoder", config=self.model_config, info=info,
                                   dtype=dtype, overwrite=overwrite)
        info["first_stage_file"] = {"path": str(self.model_config.first_stage), "sha256": self.first_stage_sha256}
        return save_ldm(path, self.model, state=self.ema_state(), info=info, dtype=dtype, overwrite=overwrite)

    @torch.no_grad()
    def write_samples(self) -> Path | None:
        """A grid from the EMA weights on fixed held-out conditions (ldm) or reconstructions (ae)."""
        if not self.is_main:
            return None
        backup = {k: v.detach().clone() for k, v in self.trainable_module.state_dict().items()}
        try:
            if self.ema is not None:
                with torch.no_grad():
                    live = dict(self.trainable_module.named_parameters())
                    for k, v in self.ema.module.named_parameters():
                        live[k].copy_(v)
            grid = self._sample_grid()
        finally:
            self.trainable_module.load_state_dict(backup)
        path = save_image(grid, self.out / "samples" / f"step_{self.step:07d}.png")
        return path

    def _sample_grid(self) -> Any:
        from ldm_minimal.utils import eval_mode

        batch = fixed_batch(self.world, self.resolution, 8, self.cfg.seed)
        x = batch["image"].to(self.device)
        if self.cfg.task == "ae":
            with eval_mode(self.model):
                x_hat = self.model.decode_latent(self.model.encode_latent(x, sample=False))
            return image_grid(torch.cat([x, x_hat.float()]).cpu(), nrow=8)
        m = self.model
        g = torch.Generator(self.device).manual_seed(1234)
        cond_batch: dict[str, Any] = dict(batch)
        if m.cfg.conditioner == "inpaint":
            from ldm_minimal.masks import random_inpainting_mask

            cond_batch["mask"] = random_inpainting_mask((x.shape[0], 1, *x.shape[-2:]), generator=torch.Generator()
                                                        .manual_seed(0)).to(self.device)
        cond = cond_batch if m.conditioner is not None else x.shape[0]
        guidance = self.cfg.sample_guidance if m.conditioner is not None and m.conditioner.mode != "concat" else 1.0
        samples = m.sample(cond, steps=self.cfg.sample_steps, guidance_scale=guidance, generator=g, progress=False)
        rows = [x, samples.float()]
        if m.cfg.conditioner == "inpaint":
            rows = [x * (1 - cond_batch["mask"]), samples, x]
        return image_grid(torch.cat(rows).cpu(), nrow=8)

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[Path]:
        return find_checkpoints(self.out)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, elapsed: float) -> Path | None:
        """Write checkpoints/step_XXXXXXX/ atomically (temporary folder, then rename) and prune old ones."""
        if not self.is_main:
            if self.world_size > 1:
                dist.barrier()
            return None
        root = self.out / "checkpoints"
        final = root / f"step_{self.step:07d}"
        tmp = root / f".tmp-step_{self.step:07d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            self.export(tmp / "model.safetensors", info={"step": self.step})
            tensors, groups = self._train_state_tensors()
            save_checkpoint(tmp / "train_state.safetensors", tensors, kind="train-state", config=self.cfg.to_dict())
            state = {
                "step": self.step, "elapsed_s": elapsed, "train": self.cfg.to_dict(),
                "model": _to_jsonable(self.model_config), "optimizer_param_groups": groups,
                "scale_factor": float(self.model.scale_factor) if self.cfg.task == "ldm" else None,
                "world_size": self.world_size, "torch": torch.__version__,
                "train_state_sha256": sha256_of(tmp / "train_state.safetensors"),
            }
            atomic_write_bytes(tmp / "state.json", (json.dumps(state, indent=2) + "\n").encode())
            if final.exists():  # re-saving the same step (e.g. a resumed run that stopped at once)
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.checkpoints()[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        if self.world_size > 1:
            dist.barrier()
        return final

    def _train_state_tensors(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors: dict[str, Tensor] = {}
        model_state = self.model.state_dict() if self.cfg.task == "ae" else ldm_state_dict(self.model)
        tensors.update({f"model.{k}": v for k, v in model_state.items()})
        if self.cfg.task == "ae":
            tensors.update({f"discriminator.{k}": v for k, v in self.loss_fn.discriminator.state_dict().items()})
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        groups: dict[str, Any] = {}
        for name, opt in self.optimizers.items():
            sd = opt.state_dict()
            groups[name] = _to_jsonable(sd["param_groups"])
            for idx, st in sd["state"].items():
                for key, val in st.items():
                    tensors[f"{name}.{idx}.{key}"] = val if isinstance(val, Tensor) else torch.tensor(val)
        tensors["rng.torch_cpu"] = torch.get_rng_state()
        tensors["rng.generator"] = self.generator.get_state()
        if self.device.type == "cuda":
            tensors["rng.torch_cuda"] = torch.cuda.get_rng_state(self.device)
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, groups

    def _load_latest(self) -> None:
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            raise RunFolderError(f"--resume: no complete checkpoint under {self.out / 'checkpoints'}.")
        try:
            state = json.loads((ckpt / "state.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{ckpt / 'state.json'} is unreadable ({e}); delete that folder to resume from "
                                  "the previous checkpoint.") from e
        check_resumable(state["train"], self.cfg.to_dict())
        path = ckpt / "train_state.safetensors"
        if sha256_of(path) != state.get("train_state_sha256"):
            raise CheckpointError(f"{path} does not match the sha256 recorded in its state.json: the file is corrupt. "
                                  "Delete that checkpoint folder to resume from the previous one.")
        tensors, _ = read_checkpoint(path)
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        from ldm_minimal.checkpoint import load_state_into

        if self.cfg.task == "ae":
            load_state_into(self.model, model_state, path)
            self.loss_fn.discriminator.load_state_dict(
                {k[len("discriminator."):]: v for k, v in tensors.items() if k.startswith("discriminator.")})
        else:
            missing = set(ldm_state_dict(self.model)) - set(model_state)
            if missing:
                raise CheckpointError(f"{path} lacks {len(missing)} model tensors (e.g. {sorted(missing)[:3]}).")
            self.model.load_state_dict(model_state, strict=False)
        if self.ema is not None:
            self.ema.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
        for name, opt in self.optimizers.items():
            per_param: dict[int, dict[str, Tensor]] = {}
            for k, v in tensors.items():
                if k.startswith(name + "."):
                    idx, key = k[len(name) + 1:].split(".", 1)
                    per_param.setdefault(int(idx), {})[key] = v
            groups = state["optimizer_param_groups"][name]
            for g in groups:
                g["betas"] = tuple(g["betas"])
            opt.load_state_dict({"state": per_param, "param_groups": groups})
        torch.set_rng_state(tensors["rng.torch_cpu"])
        self.generator.set_state(tensors["rng.generator"].to(torch.uint8))
        if self.device.type == "cuda" and "rng.torch_cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.torch_cuda"], self.device)
        self.step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        if self.is_main:  # drop metric rows logged after the checkpoint (a crash between two checkpoints)
            mpath = self.out / "metrics.jsonl"
            if mpath.exists():
                rows = [r for r in mpath.read_text().splitlines() if r.strip() and json.loads(r)["step"] <= self.step]
                atomic_write_bytes(mpath, ("".join(r + "\n" for r in rows)).encode())
            print(f"Resuming {self.out} from {ckpt.name} (step {self.step}).")


class _LossModule(nn.Module):
    """L_LDM as a forward(), so that DDP can wrap it (DDP synchronises gradients of what forward computed)."""

    def __init__(self, ldm: nn.Module) -> None:
        super().__init__()
        self.ldm = ldm

    def forward(self, batch: Mapping[str, Any], generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        return self.ldm.training_loss(batch, generator)


def find_checkpoints(out_dir: str | Path) -> list[Path]:
    """The complete checkpoints (folders with a state.json) of a run, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "state.json").is_file())


def check_resumable(stored: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Raise RunFolderError naming every setting that differs between a run and its resumption, except those in
    RESUMABLE_CHANGES (a resumed run cannot change what it learns)."""
    changed = sorted(k for k in set(stored) | set(new)
                     if k not in RESUMABLE_CHANGES and stored.get(k) != new.get(k))
    if changed:
        detail = ", ".join(f"{k}: run has {stored.get(k)!r}, given {new.get(k)!r}" for k in changed)
        raise RunFolderError(
            f"--resume: {detail}. A resumed run keeps its settings (only {', '.join(sorted(RESUMABLE_CHANGES))} "
            "may change); start a new run in another folder to change them."
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
    check_resumable(stored, {**stored, **_to_jsonable(given)})
    return dataclasses.replace(cfg, **{k: v for k, v in given.items() if k in RESUMABLE_CHANGES})


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          command: str | None = None) -> dict[str, Any]:
    """Run (or resume) one training run; returns its summary. See the module docstring."""
    trainer = Trainer(cfg, out_dir, resume=resume, overwrite=overwrite, command=command)
    try:
        return trainer.run()
    finally:
        if trainer.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
