"""The training loop of every model of the course: one plain PyTorch loop; the task object (``training.tasks``)
answers everything that differs between a first stage and a latent diffusion model.

    python -m ldm_minimal train ae  --preset cpu --model tiny-kl-f4 --world shapes32 --out runs/ae
    python -m ldm_minimal train ldm --preset cpu --model shapes-t2i --first-stage runs/ae/model.safetensors \
        --out runs/t2i

What every run gets (the practice of the reference and of most diffusion codebases):

- AdamW, a linear learning-rate warm-up, gradient-norm clipping;
- an exponential moving average (EMA) of the trained weights, with the reference's warm-up of the decay
  ``min(decay, (1 + n) / (10 + n))``; the EMA weights are what the exported model and the sample grids use;
- bf16 autocast on CUDA, ``torch.compile`` on request; nothing hard-codes a device;
- a tqdm bar (loss, images/s), ``metrics.jsonl``, sample grids under ``samples/`` every ``sample_every`` steps;
- checkpoints every ``ckpt_every`` steps under ``checkpoints/step_XXXXXXX/`` (``training.run``): ``model.safetensors``
  (the EMA weights with their config: loadable on its own), ``train_state.safetensors`` (raw weights, optimizer
  moments, EMA, RNG states) and ``state.json`` (step, config, optimizer hyper-parameters, scale factor), each
  written in a temporary folder that is renamed into place, so a crash never leaves a half-written checkpoint;
- ``--resume`` continues from the newest checkpoint exactly: data order, noise and dropout draws are pure
  functions of (seed, step, rank) or restored generator states, so the resumed loss trajectory is the
  uninterrupted one, bit for bit on the CPU; the one change a resumption may make to what is learnt is a lower
  ``--lr`` (after a divergence), recorded in config.json's "changes" with the step it took effect;
- a NaN or infinite loss stops the run with the step named; the last good checkpoint is kept;
- DDP under ``torchrun`` (``training.distributed``). Each rank reads its own slice of every global batch.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from ldm_minimal.checkpoint import save_checkpoint, sha256_of, to_jsonable
from ldm_minimal.training.config import RECORDED_CHANGES, TrainConfig, check_resumable
from ldm_minimal.training.data import fixed_batch, step_loader
from ldm_minimal.training.distributed import barrier, init_distributed, ranks_in_sync, shutdown
from ldm_minimal.training.run import (
    drop_metrics_after,
    find_checkpoints,
    pack_train_state,
    prepare_run_folder,
    read_latest_state,
    read_train_state,
    restore_optimizers,
    restore_rng,
    with_prefix,
    write_checkpoint,
    write_json,
)
from ldm_minimal.training.tasks import TASK_TYPES
from ldm_minimal.image_io import save_image


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


def ema_avg_fn(decay: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The EMA update of torch.optim.swa_utils.AveragedModel with the reference's warm-up of the decay."""

    def avg(ema: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        n = float(num_averaged)
        # d = min(decay, (1 + n) / (10 + n));  ema <- d * ema + (1 - d) * theta
        d = min(decay, (1.0 + n) / (10.0 + n))
        return ema + (current - ema) * (1.0 - d)

    return avg


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"


class Trainer:
    """Builds the task (model, loss), data, optimizer(s) and EMA of a run, and runs / resumes it. See the module
    docstring."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                 command: str | None = None) -> None:
        self.cfg = cfg
        self.command = command  # the command line that started (or resumed) the run, for the records
        self.out = Path(out_dir)
        if cfg.num_threads:
            torch.set_num_threads(int(cfg.num_threads))
        self.rank, self.world_size, self.device = init_distributed(cfg.device)
        self.is_main = self.rank == 0
        if cfg.batch_size % self.world_size:
            raise ValueError(
                f"batch_size={cfg.batch_size} is the global batch and must divide evenly over {self.world_size} "
                f"processes; use a multiple of {self.world_size}."
            )
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.changes: list[dict[str, Any]] = []  # recorded setting changes of this resumption (RECORDED_CHANGES)

        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed * 1000 + self.rank)  # noise, dropout, t
        self.step = 0
        self.elapsed_before = 0.0
        self.task = TASK_TYPES[cfg.task].from_config(cfg, self.device, bf16=self.bf16, world_size=self.world_size)
        self.params = self.task.params
        self.ema = None
        if cfg.ema_decay > 0:
            self.ema = AveragedModel(self.task.trainable, avg_fn=ema_avg_fn(cfg.ema_decay), use_buffers=False)
            self.ema.requires_grad_(False)
        self.optimizers = self.task.optimizers(cfg.lr, cfg.betas, cfg.weight_decay)
        # The folder is checked (and, with --overwrite, cleared) only now that the model, its first stage and the
        # data are known to build: a bad input never costs the user the run already in --out.
        prepare_run_folder(self.out, resume=resume, overwrite=overwrite, is_main=self.is_main, task=cfg.task)
        if not resume:
            barrier(self.world_size)
        if resume:
            self._load_latest()
        net = self.task.network
        # The layout itself is the network's own rule (ldm_minimal.utils.ChannelsLastOnCPU: channels-last 4-D
        # weights on the CPU, the default layout elsewhere), which .to() re-applies. What the request still changes
        # is the strides of the 1x1 kernels (the same memory order, but their convolutions then pick channels-last
        # outputs): a VQ first stage's numbers differ with it on the CPU, so it is kept for runs to reproduce.
        channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type == "cuda"
        if channels_last:
            net.to(memory_format=torch.channels_last)
        if cfg.compile:
            net.compile()  # in place: parameter names (and checkpoints) stay the same
        self.task.distribute()

    @property
    def model(self) -> nn.Module:
        """The model being trained (an autoencoder or a LatentDiffusion)."""
        return self.task.model

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
            if not (self.out / "config.json").exists():
                write_json(self.out / "config.json", {
                    "command": self.command, "train": cfg.to_dict(), "model": to_jsonable(self.task.model_config),
                    "world": self.task.world, "resolution": self.task.resolution, "world_size": self.world_size})
            if self.changes:
                record = json.loads((self.out / "config.json").read_text())
                record["changes"] = [*record.get("changes", []), *self.changes]
                write_json(self.out / "config.json", record)
        self.task.before_training(cfg)
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
            batches = step_loader(cfg, self.task.world, self.task.resolution, start, cfg.steps, self.rank,
                                  self.world_size, self.device)
            for batch in batches:
                for opt in self.optimizers.values():
                    for group in opt.param_groups:
                        group["lr"] = self._lr_at(self.step)
                loss, logs, finite = self.task.train_step(batch, self.step, self.optimizers, self.generator)
                if not finite:
                    last = self.latest_checkpoint()
                    kept = f"The last good checkpoint is kept: {last}." if last else "No checkpoint was written yet."
                    raise TrainingDiverged(
                        f"The loss became {float(loss.detach())} at step {self.step + 1} of {self.out}. {kept} Resume "
                        f"with a lower learning rate (--resume --lr, now {cfg.lr:g}), or start afresh with "
                        "--overwrite and a longer --warmup."
                    )
                if self.ema is not None:
                    self.ema.update_parameters(self.task.trainable)
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
            "task": self.cfg.task, "model": self.cfg.model, "world": self.task.world, "steps": self.step,
            "steps_this_session": self.step - start, "wall_time_s": round(total, 1),
            "session_wall_time_s": round(wall, 1),
            "images_per_s": round((self.step - start) * self.cfg.batch_size / max(wall, 1e-9), 1),
            "device": str(self.device), "machine": describe_machine(self.device), "world_size": self.world_size,
            "precision": "bf16" if self.bf16 else "fp32", "parameters_trained": sum(p.numel() for p in self.params),
            "command": self.command,
        }
        if self.world_size > 1:
            summary["ranks_in_sync"] = ranks_in_sync(self.params, self.world_size)
        if self.is_main:
            export = self.export(self.out / "model.safetensors", info=summary, overwrite=True)
            summary["model"] = str(export)
            write_json(self.out / "summary.json", summary)
            print(f"Finished {self.step} steps in {total / 60:.1f} min ({summary['images_per_s']} images/s). "
                  f"Model: {export}")
        return summary

    # ------------------------------------------------------------------ EMA weights, export, samples
    def ema_state(self) -> dict[str, Tensor]:
        """The model's exportable state with the EMA weights in place of the raw trained ones."""
        # parameters only: the EMA copy's buffers are stale (use_buffers=False), the live ones are current.
        # The trainable module's names are the exported state's names ("unet.xxx", "encoder.xxx", ...).
        ema = {k: v.detach() for k, v in self.ema.module.named_parameters()} if self.ema is not None else {}
        return {k: ema.get(k, v) for k, v in self.task.model_state().items()}

    def export(self, path: Path, info: Mapping[str, Any] | None = None, overwrite: bool = False,
               dtype: torch.dtype | None = None) -> Path:
        info = {"train": self.cfg.to_dict(), "world": self.task.world, **(info or {})}
        return self.task.export(path, self.ema_state(), info, dtype, overwrite)

    @torch.no_grad()
    def write_samples(self) -> Path | None:
        """A preview grid from the EMA weights on fixed held-out data (samples or reconstructions)."""
        if not self.is_main:
            return None
        trainable = self.task.trainable
        backup = {k: v.detach().clone() for k, v in trainable.state_dict().items()}
        try:
            if self.ema is not None:
                live = dict(trainable.named_parameters())
                for k, v in self.ema.module.named_parameters():
                    live[k].copy_(v)
            batch = fixed_batch(self.task.world, self.task.resolution, 8, self.cfg.seed)
            grid = self.task.preview(batch, self.cfg)
        finally:
            trainable.load_state_dict(backup)
        return save_image(grid, self.out / "samples" / f"step_{self.step:07d}.png")

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[Path]:
        return find_checkpoints(self.out)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def _train_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        states = {"model": self.task.model_state(),
                  **{prefix: m.state_dict() for prefix, m in self.task.extra_states().items()}}
        if self.ema is not None:
            states["ema"] = self.ema.state_dict()
        return pack_train_state(states, self.optimizers, self.generator, self.device)

    def save(self, elapsed: float) -> Path | None:
        """Write checkpoints/step_XXXXXXX/ (training.run.write_checkpoint) on the main process."""
        if not self.is_main:
            barrier(self.world_size)
            return None

        def write(folder: Path) -> None:
            self.export(folder / "model.safetensors", info={"step": self.step})
            tensors, groups = self._train_state()
            save_checkpoint(folder / "train_state.safetensors", tensors, kind="train-state", config=self.cfg.to_dict())
            write_json(folder / "state.json", {
                "step": self.step, "elapsed_s": elapsed, "train": self.cfg.to_dict(),
                "model": to_jsonable(self.task.model_config), "optimizer_param_groups": groups,
                "scale_factor": self.task.scale_factor, "world_size": self.world_size, "torch": torch.__version__,
                "train_state_sha256": sha256_of(folder / "train_state.safetensors"),
            })

        final = write_checkpoint(self.out, self.step, self.cfg.keep_checkpoints, write)
        barrier(self.world_size)
        return final

    def _load_latest(self) -> None:
        ckpt, state = read_latest_state(self.out)
        check_resumable(state["train"], self.cfg.to_dict())
        for name in RECORDED_CHANGES:
            before, now = state["train"].get(name), getattr(self.cfg, name)
            if before != now:  # takes effect from the update after the checkpoint's step
                self.changes.append({"setting": name, "from": before, "to": now, "after_step": int(state["step"]),
                                     "command": self.command})
        tensors = read_train_state(ckpt, state)
        self.task.load_model_state(with_prefix(tensors, "model"), ckpt / "train_state.safetensors")
        for prefix, module in self.task.extra_states().items():
            module.load_state_dict(with_prefix(tensors, prefix))
        if self.ema is not None:
            self.ema.load_state_dict(with_prefix(tensors, "ema"))
        restore_optimizers(tensors, state["optimizer_param_groups"], self.optimizers)
        restore_rng(tensors, self.generator, self.device)
        self.step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        if self.is_main:
            drop_metrics_after(self.out, self.step)
            print(f"Resuming {self.out} from {ckpt.name} (step {self.step}).")


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          command: str | None = None) -> dict[str, Any]:
    """Run (or resume) one training run; returns its summary. See the module docstring."""
    trainer = Trainer(cfg, out_dir, resume=resume, overwrite=overwrite, command=command)
    try:
        return trainer.run()
    finally:
        shutdown(trainer.world_size)
