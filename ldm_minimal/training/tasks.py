"""The two things the course trains, as task objects: the generic loop (``training.loop``) asks them for
everything that differs between a first stage and a latent diffusion model.

- ``AutoencoderTask`` ("ae"): the first stage (E, D) of Sec. 3.1 / App. G, KL or VQ, any f, with the perceptual +
  patch-adversarial objective of ``ldm_minimal.losses``: a generator step, then a discriminator step with its own
  optimizer (a two-player game, so DDP is done by averaging gradients by hand).
- ``LDMTask`` ("ldm"): a latent diffusion model of Sec. 3.2-3.3 (any conditioning preset of
  ``ldm_minimal.latent_diffusion``) on top of a trained, frozen first stage, minimising L_LDM of Eq. (2) / (3).

What a task holds: ``model``, ``model_config``, ``trainable`` (the module the optimizer and the EMA see; its
parameter names are the exported state's names), ``params`` (its parameters that are trained), ``network`` (what
torch.compile and the layout request apply to), ``world`` and ``resolution``. What it answers: ``players()``,
``train_step()``, ``model_state()``, ``extra_states()``, ``load_model_state()``, ``before_training()``,
``preview()``, ``export()`` and ``scale_factor``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from ldm_minimal.autoencoder import AUTOENCODER_PRESETS, AutoencoderConfig, autoencoder_config, build_autoencoder
from ldm_minimal.checkpoint import CheckpointError, load_state_into, save_checkpoint, sha256_of
from ldm_minimal.image_io import image_grid
from ldm_minimal.latent_diffusion import LatentDiffusion
from ldm_minimal.latent_diffusion_config import LatentDiffusionConfig, ldm_config
from ldm_minimal.latent_diffusion_io import ldm_state_dict, save_ldm
from ldm_minimal.losses import AutoencoderLoss, AutoencoderLossConfig, autoencoder_train_step
from ldm_minimal.training.config import TASKS, TrainConfig, first_stage_loss_config
from ldm_minimal.training.data import first_global_batch, resolve_world
from ldm_minimal.training.distributed import all_finite, average_gradients, data_parallel
from ldm_minimal.utils import autocast, eval_mode

StepResult = tuple[Tensor, dict[str, float], bool]  # (loss, logs, finite)


@torch.no_grad()
def reconstruct(model: nn.Module, x: Tensor) -> Tensor:
    """Deterministic reconstruction D(E(x)): posterior mode for KL, quantised codes for VQ (the first stages'
    shared ``encode_latent`` / ``decode_latent`` interface). x: (B, 3, H, W) -> (B, 3, H, W)."""
    return model.decode_latent(model.encode_latent(x, sample=False))


def trained_parts(ldm: LatentDiffusion) -> nn.ModuleDict:
    """epsilon_theta and, when it is trained jointly, tau_theta, under their LatentDiffusion names ("unet",
    "conditioner"), so that the EMA's parameter names are the checkpoint's. Which parts train is the model's own
    answer (``trainable_parameters``: the frozen first stage and a frozen conditioner never do)."""
    trained = {id(p) for p in ldm.trainable_parameters()}
    parts = {name: part for name, part in (("unet", ldm.unet), ("conditioner", ldm.conditioner))
             if part is not None and any(id(p) in trained for p in part.parameters())}
    return nn.ModuleDict(parts)


class Task:
    """What the loop asks of a task; the base holds what both share (device, precision, optimizers) and the
    defaults of the optional answers."""

    model: nn.Module
    trainable: nn.Module
    network: nn.Module
    params: list[nn.Parameter]
    world: str
    resolution: int

    def __init__(self, device: torch.device, *, world: str, resolution: int, bf16: bool = False,
                 grad_clip: float = 0.0, world_size: int = 1) -> None:
        self.device, self.world, self.resolution = device, world, resolution
        self.bf16, self.grad_clip, self.world_size = bf16, grad_clip, world_size

    def players(self) -> dict[str, list[nn.Parameter]]:
        """Optimizer name -> the parameters it updates (the names are the keys of the stored optimizer states)."""
        return {"optimizer": self.params}

    def optimizers(self, lr: float, betas: tuple[float, float],
                   weight_decay: float) -> dict[str, torch.optim.Optimizer]:
        """One AdamW per player (with weight_decay 0 it is exactly Adam)."""
        return {name: torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
                for name, params in self.players().items()}

    def train_step(self, batch: Mapping[str, Any], step: int, optimizers: Mapping[str, torch.optim.Optimizer],
                   generator: torch.Generator | None = None) -> StepResult:
        """One update at ``step`` (0-based); returns (loss, logs, finite). ``generator`` draws the step's noise."""
        raise NotImplementedError

    def model_state(self) -> dict[str, Tensor]:
        """The model's state as its checkpoint stores it (the EMA replaces the trained parameters in it)."""
        raise NotImplementedError

    def load_model_state(self, state: Mapping[str, Tensor], path: Path) -> None:
        """Load a state saved by model_state (``path``: the file it came from, for errors)."""
        raise NotImplementedError

    def preview(self, batch: Mapping[str, Any], cfg: TrainConfig) -> np.ndarray:
        """The picture of a held-out batch written under samples/: one (H', W', 3) uint8 grid."""
        raise NotImplementedError

    def export(self, path: Path, state: Mapping[str, Tensor], info: dict[str, Any], dtype: torch.dtype | None,
               overwrite: bool) -> Path:
        """Save ``state`` as a model file that loads on its own (ldm_minimal.checkpoint)."""
        raise NotImplementedError

    def extra_states(self) -> dict[str, nn.Module]:
        """Modules trained beside the model whose weights a checkpoint keeps (prefix -> module)."""
        return {}

    def before_training(self, cfg: TrainConfig) -> None:
        """Anything the first step needs that the model's config does not fix."""

    def distribute(self) -> None:
        """Prepare the step for several processes (called once, after a resumed state is loaded)."""

    @property
    def scale_factor(self) -> float | None:
        """The latent scale factor a checkpoint records (None: the task has none)."""
        return None


class AutoencoderTask(Task):
    """The first stage (E, D) with its loss (perceptual, regulariser, patch discriminator D_psi)."""

    model: nn.Module  # AutoencoderKL or VQModel

    def __init__(self, model_config: AutoencoderConfig, loss_config: AutoencoderLossConfig, device: torch.device,
                 **task: Any) -> None:
        super().__init__(device, **task)
        self.model_config = model_config
        self.model = build_autoencoder(model_config).to(device)
        self.loss_fn = AutoencoderLoss(loss_config).to(device)
        self.trainable = self.network = self.model
        self.params = [p for p in self.trainable.parameters() if p.requires_grad]

    @classmethod
    def from_config(cls, cfg: TrainConfig, device: torch.device, *, bf16: bool, world_size: int) -> AutoencoderTask:
        world, resolution = resolve_world(cfg)
        model_config = autoencoder_config(cfg.model, **cfg.model_overrides)
        return cls(model_config, first_stage_loss_config(cfg, model_config.kind), device, world=world,
                   resolution=resolution, bf16=bf16, grad_clip=cfg.grad_clip, world_size=world_size)

    def players(self) -> dict[str, list[nn.Parameter]]:
        return {"optimizer": self.params, "optimizer_d": list(self.loss_fn.discriminator_parameters())}

    def train_step(self, batch: Mapping[str, Any], step: int, optimizers: Mapping[str, torch.optim.Optimizer],
                   generator: torch.Generator | None = None) -> StepResult:
        """One two-player update on batch["image"] (B, 3, H, W); returns (loss, logs, finite). The update has
        happened either way. ``generator`` is unused: the posterior sample draws from torch's global RNG."""
        x = batch["image"].to(self.device)
        sync = None
        if self.world_size > 1:
            sync = lambda opt: average_gradients(  # noqa: E731
                [p for g in opt.param_groups for p in g["params"]], self.world_size)
        clip = self.grad_clip if self.grad_clip > 0 else None
        with autocast(self.device, enabled=self.bf16):
            logs = autoencoder_train_step(self.model, self.loss_fn, x, step, optimizers["optimizer"],
                                          optimizers["optimizer_d"], before_step=sync, grad_clip=clip)
        loss = torch.tensor(float(logs.get("loss", float("nan"))), device=self.device)
        return loss, logs, all_finite(loss, self.world_size)

    def model_state(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def extra_states(self) -> dict[str, nn.Module]:
        return {"discriminator": self.loss_fn.discriminator}

    def load_model_state(self, state: Mapping[str, Tensor], path: Path) -> None:
        load_state_into(self.model, dict(state), path)

    def preview(self, batch: Mapping[str, Any], cfg: TrainConfig) -> np.ndarray:
        """Held-out images over their reconstructions: one (H', W', 3) uint8 grid."""
        x = batch["image"].to(self.device)
        with eval_mode(self.model):
            x_hat = reconstruct(self.model, x)
        return image_grid(torch.cat([x, x_hat.float()]).cpu(), nrow=8)

    def export(self, path: Path, state: Mapping[str, Tensor], info: dict[str, Any], dtype: torch.dtype | None,
               overwrite: bool) -> Path:
        return save_checkpoint(path, dict(state), kind="autoencoder", config=self.model_config, info=info,
                               dtype=dtype, overwrite=overwrite)


class LossModule(nn.Module):
    """L_LDM as a forward(), so that DDP can wrap it (DDP synchronises gradients of what forward computed)."""

    def __init__(self, ldm: LatentDiffusion) -> None:
        super().__init__()
        self.ldm = ldm

    def forward(self, batch: Mapping[str, Any], generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        return self.ldm.training_loss(batch, generator)


class LDMTask(Task):
    """A latent diffusion model: epsilon_theta (and a jointly trained tau_theta) on a frozen first stage."""

    model: LatentDiffusion

    def __init__(self, model_config: LatentDiffusionConfig, device: torch.device, **task: Any) -> None:
        super().__init__(device, **task)
        self.model_config = model_config
        self.model = LatentDiffusion(model_config).to(device)
        fs = model_config.first_stage
        self.first_stage_sha256 = sha256_of(fs) if fs != "identity" else None
        self.trainable = trained_parts(self.model)
        self.network = self.model.unet
        self.params = [p for p in self.trainable.parameters() if p.requires_grad]
        self.loss_module: nn.Module = LossModule(self.model)

    @classmethod
    def from_config(cls, cfg: TrainConfig, device: torch.device, *, bf16: bool, world_size: int) -> LDMTask:
        overrides = dict(cfg.model_overrides)
        if cfg.first_stage is not None:
            overrides["first_stage"] = str(cfg.first_stage)
        mcfg = ldm_config(cfg.model, **overrides)
        if mcfg.first_stage in AUTOENCODER_PRESETS:  # a path (safetensors or not) is checked when it is loaded
            raise ValueError(
                f"The latent diffusion model needs a TRAINED first stage, but first_stage is {mcfg.first_stage!r} "
                "(random weights). Train one with `python -m ldm_minimal train ae --out runs/ae` and pass "
                "--first-stage runs/ae/model.safetensors."
            )
        world, resolution = resolve_world(cfg, default_world=mcfg.world)
        if resolution != mcfg.image_size:
            mcfg = dataclasses.replace(mcfg, image_size=resolution)
        if cfg.world is not None and cfg.world != mcfg.world:
            mcfg = dataclasses.replace(mcfg, world=world)
        return cls(mcfg, device, world=world, resolution=resolution, bf16=bf16, grad_clip=cfg.grad_clip,
                   world_size=world_size)

    def distribute(self) -> None:
        if self.world_size > 1:
            self.loss_module = data_parallel(self.loss_module, self.device)

    def before_training(self, cfg: TrainConfig) -> None:
        """The latent rescaling (Sec. 4.3.2): 1 / std(z) of the first global batch, the same on every rank."""
        if bool(self.model.scale_factor_set):
            return
        batch = first_global_batch(cfg, self.world, self.resolution)
        self.model.set_scale_factor_from(batch["image"].to(self.device),
                                         generator=torch.Generator(self.device).manual_seed(cfg.seed))

    def train_step(self, batch: Mapping[str, Any], step: int, optimizers: Mapping[str, torch.optim.Optimizer],
                   generator: torch.Generator | None = None) -> StepResult:
        """One update of L_LDM; returns (loss, logs, finite). A non-finite loss is not back-propagated."""
        with autocast(self.device, enabled=self.bf16):
            loss, logs = self.loss_module(batch, generator)
        if not all_finite(loss.detach(), self.world_size):
            return loss, logs, False
        opt = optimizers["optimizer"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip))
        opt.step()
        return loss, logs, True

    def model_state(self) -> dict[str, Tensor]:
        return ldm_state_dict(self.model)

    def load_model_state(self, state: Mapping[str, Tensor], path: Path) -> None:
        from_checkpoint = dict(state)
        missing = set(ldm_state_dict(self.model)) - set(from_checkpoint)
        if missing:
            raise CheckpointError(f"{path} lacks {len(missing)} model tensors (e.g. {sorted(missing)[:3]}).")
        self.model.load_state_dict(from_checkpoint, strict=False)

    def preview(self, batch: Mapping[str, Any], cfg: TrainConfig) -> np.ndarray:
        """Held-out conditions over the samples drawn for them (DDIM, fixed seeds): one (H', W', 3) uint8 grid. For an
        inpainting model (the conditioner adds batch["mask"]) the rows are: masked input, sample, original."""
        x = batch["image"].to(self.device)
        m = self.model
        g = torch.Generator(self.device).manual_seed(1234)
        cond: dict[str, Any] | int = x.shape[0]  # an unconditional model: the number of samples
        if m.conditioner is not None:
            # the batch as training completes it (e.g. a random hole; drawn from seed 0 on the CPU)
            cond = m.conditioner.training_batch({**batch, "image": x}, torch.Generator().manual_seed(0))
        guidance = cfg.sample_guidance if m.conditioner is not None and m.conditioner.mode != "concat" else 1.0
        samples = m.sample(cond, steps=cfg.sample_steps, guidance_scale=guidance, generator=g, progress=False)
        rows = [x, samples.float()]
        if isinstance(cond, dict) and "mask" in cond:
            rows = [x * (1 - cond["mask"]), samples, x]
        return image_grid(torch.cat(rows).cpu(), nrow=8)

    def export(self, path: Path, state: Mapping[str, Tensor], info: dict[str, Any], dtype: torch.dtype | None,
               overwrite: bool) -> Path:
        info = {**info, "first_stage_file": {"path": str(self.model_config.first_stage),
                                             "sha256": self.first_stage_sha256}}
        return save_ldm(path, self.model, state=dict(state), info=info, dtype=dtype, overwrite=overwrite)

    @property
    def scale_factor(self) -> float | None:
        return float(self.model.scale_factor)


TASK_TYPES: dict[str, type[AutoencoderTask] | type[LDMTask]] = {"ae": AutoencoderTask, "ldm": LDMTask}
assert tuple(TASK_TYPES) == TASKS, "every task name of training.config.TASKS needs its task type here"
