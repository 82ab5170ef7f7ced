"""The shared design of the course's two small judges: config, conv trunk, augmentation, training, files, command.

The paper scores samples in the feature space of networks trained on real data (Inception for FID/IS, Dhariwal & Nichol's script, whose features the paper does not name, for
precision/recall; Rombach et al., CVPR 2022, Sec. 4 and App. E.3). Offline, each data world gets a small CNN of
its own, trained with this code on its real training pictures only:

    shapes  ``ldm_minimal.evaluation.attributes``        reads shape, colour, size and position (the judge)
    emoji   ``ldm_minimal.evaluation.world_classifier``  reads the emoji group (the emoji feature network)

Both are the same design, written once here:

    x (B, 3, r, r) in [-1, 1] -> trunk: levels of [Conv3x3 - GroupNorm - SiLU] blocks, the first block of every
    level after the first with stride 2 -> h (B, C, r / 2^(L-1), r / 2^(L-1)) -> phi(x) = [mean_hw h, max_hw h]
    (B, 2C) -> the model's own heads

GroupNorm (never BatchNorm), so no answer depends on the other images of a batch. What each model keeps for
itself: its heads, its targets and loss, its data, its evaluation and the flags of its command.

Here: ``ClassifierConfig`` (the fields both configs share, validated once), ``ConvBlock`` / ``conv_trunk`` /
``ConvClassifier`` (the trunk and the input check), ``fit_classifier`` (the training loop), ``batched_logits``
(judging any number of images), ``save_classifier`` / ``load_classifier`` (the checkpoint format) and
``ClassifierCommand`` (train, evaluate the shipped float16 weights, write metrics.json, optionally ship with a
MANIFEST.json entry). Their training augmentation is ``ldm_minimal.evaluation.augment``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ldm_minimal.checkpoint import CheckpointError, check_config_fits, load_state_into, read_checkpoint, read_metadata
from ldm_minimal.checkpoint import save_checkpoint, update_manifest
from ldm_minimal.utils import check_images, count_parameters, unknown_name_error

C = TypeVar("C", bound="ClassifierConfig")
M = TypeVar("M", bound="ConvClassifier")


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ClassifierConfig:
    """The fields every judge's config has. ``widths``: channels of each level (resolution, /2, /4, ...).

    A model's config subclasses this, redeclaring the defaults it needs and adding its own fields after these.
    """

    widths: tuple[int, ...] = ()
    blocks_per_level: int = 2  # conv blocks per level (the first block of levels > 0 has stride 2)
    groups: int = 8  # GroupNorm groups (batch-independent, so a judge's answer never depends on its batch-mates)
    resolution: int = 32  # the image side the classifier is trained for
    world: str = ""  # the data world it is trained and evaluated on

    # the smallest side of the last level's feature map that the heads need (0: any), and what needs it
    MIN_GRID: ClassVar[int] = 0
    MIN_GRID_USE: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if not self.widths or any(w < 1 or w % self.groups for w in self.widths):
            example = next(f.default for f in dataclasses.fields(self) if f.name == "widths")
            raise ValueError(
                f"widths {self.widths} must be a non-empty list of channel counts divisible by groups={self.groups} "
                f"(GroupNorm); e.g. widths={example}."
            )
        if self.blocks_per_level < 1:
            raise ValueError(f"blocks_per_level must be >= 1, got {self.blocks_per_level}.")
        down = 2 ** (len(self.widths) - 1)  # one halving per extra level
        need = self.MIN_GRID
        if self.resolution % down or (need and self.resolution // down < need):
            grid = f" and leave at least a {need}x{need} feature map for {self.MIN_GRID_USE}" if need else ""
            raise ValueError(
                f"resolution={self.resolution} must be divisible by {down} (one halving per extra level){grid}; use "
                "32 or 64, or fewer widths."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], raw: dict[str, Any]) -> C:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} keys {unknown}; valid keys: {sorted(known)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def preset_config(presets: Mapping[str, C], what: str, name: str, **overrides) -> C:
    """``presets[name]``, optionally with some fields replaced; an unknown name lists the valid ones."""
    if name not in presets:
        raise unknown_name_error(what, name, presets)
    return dataclasses.replace(presets[name], **overrides)


# ----------------------------------------------------------------------------------------------------------------
# The trunk


class ConvBlock(nn.Module):
    """Conv3x3 (stride 1 or 2) -> GroupNorm -> SiLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm = nn.GroupNorm(groups, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.conv(x)))


def conv_trunk(cfg: ClassifierConfig) -> nn.Sequential:
    """``blocks_per_level`` ConvBlocks per width; the first block of every level after the first has stride 2."""
    layers: list[nn.Module] = []
    c_prev = 3
    for level, width in enumerate(cfg.widths):
        for b in range(cfg.blocks_per_level):
            layers.append(ConvBlock(c_prev, width, stride=2 if (level > 0 and b == 0) else 1, groups=cfg.groups))
            c_prev = width
    return nn.Sequential(*layers)


class ConvClassifier(nn.Module):
    """The body both judges share: ``cfg``, the ``trunk``, the input check and the pooled trunk features.

    A subclass sets ``CONFIG`` (its config class) and ``CHECKPOINT_KIND`` (the kind its files carry), builds its
    heads after calling ``super().__init__(cfg)`` (so the trunk's weights are drawn first), and defines ``forward``
    and ``features``.
    """

    CONFIG: ClassVar[type[ClassifierConfig]]
    CHECKPOINT_KIND: ClassVar[str]
    INPUT_TOLERANCE: ClassVar[float] = 1e-3  # how far the forward pass lets values leave [-1, 1] (check_images tol)
    SIZE_NOTE: ClassVar[str] = ""  # why the resolution matters, for the wrong-size error
    OTHER_RESOLUTION: ClassVar[str] = "train a classifier at your resolution"  # the wrong-size error's other fix

    def __init__(self, cfg: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or self.CONFIG()
        self.trunk = conv_trunk(self.cfg)

    @property
    def num_features(self) -> int:
        """Width of :meth:`features` (2C: mean and max pooling of the last level)."""
        return 2 * self.cfg.widths[-1]

    def check_input(self, x: torch.Tensor) -> None:
        """One clear error for a batch this classifier cannot read (shape, channels, value range, resolution)."""
        check_images(x, channels=3, value_range=(-1.0, 1.0), name="images", tol=self.INPUT_TOLERANCE)
        r = self.cfg.resolution
        if x.shape[-2:] != (r, r):
            raise ValueError(
                f"images are {x.shape[-2]}x{x.shape[-1]} but this classifier was trained at {r}x{r}{self.SIZE_NOTE}. "
                f"Resize first, e.g. F.interpolate(x, size=({r}, {r}), mode='area'), or {self.OTHER_RESOLUTION}."
            )

    def trunk_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked images (B, 3, r, r) -> (h (B, C, r / 2^(L-1), r / 2^(L-1)), phi(x) (B, 2C)) in the weights' dtype."""
        h = self.trunk(x.to(self.trunk[0].conv.weight.dtype))
        # phi(x) = [mean_hw h, max_hw h]: "how much of each pattern" (the colour mass) and "its strongest occurrence"
        return h, torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter."""
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------------------------------------
# Training


def check_training_sizes(steps: int, batch_size: int) -> None:
    """One clear error for a training run with no steps or empty batches."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}.")


def seeded_model(model_cls: type[M], cfg: ClassifierConfig, seed: int,
                 device: torch.device | str) -> tuple[M, torch.Generator]:
    """A fresh model in training mode, its weights drawn after torch.manual_seed(seed), and the CPU generator
    (seeded with ``seed`` too) that draws the run's batches and augmentation."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    return model_cls(cfg).to(device).train(), gen


def fit_classifier(
    model: nn.Module,
    batch: Callable[[int], tuple[torch.Tensor, Any]],
    loss_and_accuracy: Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float,
    weight_decay: float,
    log_every: int = 50,
    progress: str | None = None,
) -> dict[str, Any]:
    """The plain loop every classifier of the course trains with (the shapes judge, the emoji feature network).

    ``batch(step) -> (x, y)`` supplies (and augments) each step's batch; ``loss_and_accuracy(model(x), y)`` gives
    the loss and the batch accuracy. AdamW; linear warm-up over min(100, steps / 10) steps, then cosine decay to 2%
    of lr. ``progress``: a tqdm label, or None for no bar. Returns logs {"step", "loss", "accuracy" (running means
    over each log_every steps, on training batches), "wall_time_s", "steps"}.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, min(100, steps // 10))

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to 2% of lr
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    logs: dict[str, Any] = {"step": [], "loss": [], "accuracy": []}
    t0 = time.time()
    run_loss, run_acc, run_n = 0.0, 0.0, 0
    bar = tqdm(total=steps, desc=progress, mininterval=2.0, file=sys.stderr) if progress else None
    model.train()
    for step in range(steps):
        x, y = batch(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss, right = loss_and_accuracy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run_loss, run_acc, run_n = run_loss + float(loss.detach()), run_acc + float(right), run_n + 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            logs["step"].append(step + 1)
            logs["loss"].append(run_loss / run_n)
            logs["accuracy"].append(run_acc / run_n)
            if bar is not None:
                bar.set_postfix(loss=f"{run_loss / run_n:.4f}", acc=f"{run_acc / run_n:.3f}")
            run_loss, run_acc, run_n = 0.0, 0.0, 0
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    logs["wall_time_s"] = time.time() - t0
    logs["steps"] = steps
    return logs


# ----------------------------------------------------------------------------------------------------------------
# Judging


@torch.no_grad()
def batched_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Float32 outputs (a tensor, or a dict of tensors) for any number of images, on the CPU.

    images (N, 3, H, W) in [-1, 1]; generated images overshoot a little, so values within 0.5 of the range are
    clipped to [-1, 1] the way saving them as PNGs would. Runs in eval mode, in chunks of ``batch_size`` on the
    model's device, and restores the model's mode.
    """
    check_images(images, channels=3, value_range=(-1.0, 1.0), name="images", tol=0.5)
    was_training = model.training
    model.eval()
    device = model_device(model)
    chunks = []
    try:
        for i in range(0, images.shape[0], batch_size):
            out = model(images[i : i + batch_size].to(device).float().clamp(-1.0, 1.0))
            chunks.append({k: v.float().cpu() for k, v in out.items()} if isinstance(out, dict) else out.float().cpu())
    finally:
        model.train(was_training)
    if chunks and isinstance(chunks[0], dict):
        return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    return torch.cat(chunks)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def save_classifier(path: str | Path, model: ConvClassifier, info: dict[str, Any] | None = None,
                    dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Save weights + config (kind ``model.CHECKPOINT_KIND``); refuses to replace a file unless overwrite=True."""
    return save_checkpoint(path, model, kind=model.CHECKPOINT_KIND, config=model.cfg, info=info, dtype=dtype,
                           overwrite=overwrite)


def load_classifier(path: Path, model_cls: type[M], wrong_kind_hint: str, device: torch.device | str = "cpu") -> M:
    """A ``model_cls`` from its checkpoint, float32, eval mode; the file's metadata is kept as ``checkpoint_meta``.

    A file of another kind raises a CheckpointError that ends with ``wrong_kind_hint`` (which file to pass instead).
    """
    meta = read_metadata(path)
    kind = model_cls.CHECKPOINT_KIND
    if meta.get("kind") != kind:
        article = "an" if kind[0] in "aeiou" else "a"
        raise CheckpointError(f"Checkpoint {path} holds a {meta.get('kind')!r}, not {article} {kind!r}. {wrong_kind_hint}")
    try:
        cfg = model_cls.CONFIG.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"Checkpoint {path} has a config this version cannot build ({e}).") from e
    check_config_fits(path, lambda: model_cls(cfg), kind)  # shapes first, on the meta device: nothing allocated
    state, meta = read_checkpoint(path)
    model = model_cls(cfg)
    load_state_into(model, state, path)
    model.checkpoint_meta = meta
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------------------------
# The command: train, evaluate, write metrics.json, optionally ship


def machine_description(device: torch.device | None = None) -> str:
    """"x86_64 CPU, 16 cores, 1 torch thread" (+ ", <GPU name>" for a CUDA device): the machine a figure is from."""
    threads = torch.get_num_threads()
    text = f"{platform.machine()} CPU, {os.cpu_count()} cores, {threads} torch thread" + ("s" if threads != 1 else "")
    if device is not None and device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


class ClassifierCommand(ABC):
    """One judge's ``python -m ...`` command: a subclass supplies what is the judge's own, ``main`` does the rest.

    ``main(argv)``: parse the flags, train, evaluate the float16 weights we ship (read back from
    <out>/last.safetensors), write <out>/metrics.json, and with --ship save the classifier to its checkpoint and
    record it in the MANIFEST.json beside it. Returns the metrics.
    """

    prog: ClassVar[str]  # "python -m ldm_minimal.evaluation.attributes"; the subclass's docstring is its --help text

    @abstractmethod
    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        """The command's flags: at least --steps, --batch-size, --lr, --preset, --out, --ship and --overwrite."""

    @abstractmethod
    def ship_path(self, args: argparse.Namespace) -> Path:
        """Where --ship writes the classifier."""

    @abstractmethod
    def train(self, args: argparse.Namespace) -> tuple[ConvClassifier, dict[str, Any]]:
        """(trained model, fit_classifier's logs)."""

    @abstractmethod
    def load(self, path: Path) -> ConvClassifier:
        """The classifier saved at ``path``."""

    @abstractmethod
    def quality(self, args: argparse.Namespace, model: ConvClassifier) -> dict[str, Any]:
        """The figures of the shipped weights (metrics.json's, the checkpoint's and the manifest's "quality")."""

    @abstractmethod
    def settings(self, args: argparse.Namespace) -> dict[str, Any]:
        """The run's settings, as metrics.json records them after "command"."""

    @abstractmethod
    def manifest_extras(self, args: argparse.Namespace, model: ConvClassifier) -> dict[str, Any]:
        """What its MANIFEST.json entry adds to the shared keys (command, steps, ..., world), before "quality"."""

    def main(self, argv: Sequence[str] | None = None) -> dict[str, Any]:
        """Train, evaluate, write metrics.json, optionally ship (see the class docstring)."""
        argv = list(sys.argv[1:] if argv is None else argv)
        p = argparse.ArgumentParser(prog=self.prog, description=type(self).__doc__)
        self.add_arguments(p)
        args = p.parse_args(argv)

        torch.set_num_threads(1)  # a small model on a shared machine: one thread avoids OpenMP contention
        ship_path = self.ship_path(args)
        if args.ship and ship_path.exists() and not args.overwrite:  # fail before training, not after
            raise SystemExit(f"{ship_path} already exists; pass --overwrite to replace it, or --checkpoint another path.")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)

        model, logs = self.train(args)
        run_ckpt = save_classifier(out / "last.safetensors", model, dtype=torch.float16, overwrite=True)
        # judge with the float16 weights we ship, read back from the file, so the figures describe the shipped model
        quality = self.quality(args, self.load(run_ckpt))
        command = f"{self.prog} " + " ".join(shlex.quote(a) for a in argv)
        metrics = {
            "command": command,
            **self.settings(args),
            "parameters": count_parameters(model),
            "wall_time_s": round(logs["wall_time_s"], 1),
            "machine": machine_description(),
            "quality": quality,
            "train_log": {k: logs[k] for k in ("step", "loss", "accuracy")},
            "config": model.cfg.to_dict(),
        }
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(json.dumps({k: metrics[k] for k in ("wall_time_s", "parameters", "quality")}, indent=2))
        if args.ship:
            save_classifier(ship_path, model, info={"quality": quality}, dtype=torch.float16, overwrite=args.overwrite)
            update_manifest(ship_path, {
                "command": command, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                "wall_time_s": metrics["wall_time_s"], "machine": metrics["machine"], "kind": model.CHECKPOINT_KIND,
                "preset": args.preset, "dtype": "float16", "parameters": metrics["parameters"],
                "world": model.cfg.world, **self.manifest_extras(args, model), "quality": quality,
            })  # fmt: skip
            print(f"shipped {ship_path} and recorded it in {ship_path.parent / 'MANIFEST.json'}")
        return metrics
