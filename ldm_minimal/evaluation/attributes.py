"""An attribute classifier for the shapes world: the judge of text-to-image fidelity.

Why it exists
-------------
The paper judges its samples with networks trained on real data: FID and IS through Inception-v3 features, and
precision/recall through VGG features (Sec. 4 and App. E.3; text-to-image in Sec. 4.3.1 and Tab. 2). Those numbers
say "the samples look like the data" but not "the sample shows what the prompt asked for". In our shapes world the
ground truth of every picture is known, so we can ask the sharper question directly: a small CNN, trained on real
renders only, reads back the four attributes of a single object,

    shape (5)   colour (8)   size (2)   position (9 cells of the 3x3 grid)

and a generated image x ~ D(z), z ~ p_theta(z | tau_theta(y)) counts as faithful to the prompt y when the judge's
reading of x equals the caption's (``attribute_accuracy``). The judge must itself be near-perfect on real held-out
pictures (>= 99%), otherwise its errors would be charged to the diffusion model. Its accuracy on reconstructions
D(E(x)) of the first stage is the ceiling any latent diffusion model on that autoencoder can reach (Sec. 3.1:
the generator can only produce what D can draw).

Architecture: three levels of [Conv3x3 - GroupNorm - SiLU] blocks (32 -> 16 -> 8 pixels), then
    shape, colour, size : global average + global max pooling -> Linear
    position            : adaptive average pooling to the 3x3 grid -> 1x1 conv, one logit per cell
(~170k parameters). Training is plain supervised cross-entropy on single-object renders of the seed-0 world, with
mild Gaussian blur and additive noise on part of each batch, because generated images are a little soft and noisy.
There is no hue, saturation or brightness augmentation: orange vs yellow and pink vs purple must stay apart.

Limits (read before trusting a number)
--------------------------------------
* It has only ever seen ONE object on the plain grey background. On a picture with two objects, or none, it still
  answers one shape, one colour... (whatever dominates); multi-object prompts cannot be scored with it as is.
* It knows the 5 x 8 x 2 x 9 vocabulary of the world and nothing else; an out-of-vocabulary blob gets the nearest
  class, never "none of these".
* It was trained at 32 x 32 (preset "shapes32"); size is judged in pixels, so images must be at the resolution it
  was trained for (forward raises a clear error otherwise; downsample 64 x 64 images with F.interpolate(...,
  mode="area") first).
* Robustness to generator artefacts is only as good as the blur/noise augmentation; we report its accuracy on
  autoencoder reconstructions as a check on that.

Run ``python -m ldm_minimal.evaluation.attributes --steps 2000 --out runs/attributes --ship`` to train, evaluate and ship it.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from ldm_minimal.checkpoint import CheckpointError, load_state_into, read_checkpoint, save_checkpoint
from ldm_minimal.data.shapes import COLOUR_NAMES, POSITIONS, SHAPES, SIZES, parse_caption, render_sample, shapes_preset
from ldm_minimal.data.torch_datasets import image_to_tensor
from ldm_minimal.utils import DATA_DIR, check_images, count_parameters, unknown_name_error

# The four attributes and their vocabularies, in the order of the world's own tuples (label i = VOCAB[attr][i]).
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "size", "position")
VOCAB: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": COLOUR_NAMES, "size": SIZES, "position": POSITIONS}

CHECKPOINT_KIND = "attribute-classifier"
DEFAULT_CHECKPOINT = DATA_DIR / "checkpoints" / "shapes32-attributes.safetensors"
AUTOENCODER_CHECKPOINT = DATA_DIR / "checkpoints" / "shapes32-kl-f4.safetensors"
TRAIN_SEED = 0  # the world the classifier (and the diffusion models) learn from
TEST_SEED = 1_000_000  # = ldm_minimal.data.SHAPES_SPLITS["test"]: pictures never seen in training


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class AttributeClassifierConfig:
    """A small CNN judge. ``widths`` are the channels of the three levels (resolution, /2, /4)."""

    widths: tuple[int, ...] = (32, 48, 96)
    blocks_per_level: int = 2  # conv blocks per level (the first block of levels > 0 has stride 2)
    groups: int = 8  # GroupNorm groups (batch-independent, so a judge's answer never depends on its batch-mates)
    resolution: int = 32  # the image side the classifier is trained for (size is judged in pixels)
    world: str = "single32"  # the shapes preset it is trained and evaluated on (exactly one object per image)

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if not self.widths or any(w < 1 or w % self.groups for w in self.widths):
            raise ValueError(
                f"widths {self.widths} must be a non-empty list of channel counts divisible by groups={self.groups} "
                "(GroupNorm); e.g. widths=(32, 48, 96)."
            )
        if self.blocks_per_level < 1:
            raise ValueError(f"blocks_per_level must be >= 1, got {self.blocks_per_level}.")
        down = 2 ** (len(self.widths) - 1)
        if self.resolution % down or self.resolution // down < 3:
            raise ValueError(
                f"resolution={self.resolution} must be divisible by {down} (one halving per extra level) and leave at "
                f"least a 3x3 feature map for the position grid; use 32 or 64, or fewer widths."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "AttributeClassifierConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"Unknown AttributeClassifierConfig keys {unknown}; valid keys: {sorted(known)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


ATTRIBUTE_CLASSIFIER_PRESETS: dict[str, AttributeClassifierConfig] = {
    "shapes32": AttributeClassifierConfig(),
    "shapes64": AttributeClassifierConfig(widths=(32, 48, 96, 96), resolution=64, world="single64"),
    "tiny": AttributeClassifierConfig(widths=(8, 16), blocks_per_level=1, resolution=32),  # tests only
}


def attribute_classifier_config(name: str, **overrides) -> AttributeClassifierConfig:
    """A named preset ("shapes32", "shapes64", "tiny"), optionally with some fields replaced."""
    if name not in ATTRIBUTE_CLASSIFIER_PRESETS:
        raise unknown_name_error("attribute classifier preset", name, ATTRIBUTE_CLASSIFIER_PRESETS)
    return dataclasses.replace(ATTRIBUTE_CLASSIFIER_PRESETS[name], **overrides)


# ----------------------------------------------------------------------------------------------------------------
# The model


class ConvBlock(nn.Module):
    """Conv3x3 (stride 1 or 2) -> GroupNorm -> SiLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm = nn.GroupNorm(groups, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.conv(x)))


class AttributeClassifier(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> logits {"shape": (B, 5), "colour": (B, 8), "size": (B, 2), "position": (B, 9)}.

    A judge of samples in the spirit of the paper's Inception-based metrics (Sec. 4, App. E.3), but with labels we
    know: see the module docstring. Position logits are in the row-major order of ``POSITIONS``.
    """

    def __init__(self, cfg: AttributeClassifierConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or AttributeClassifierConfig()
        layers: list[nn.Module] = []
        c_prev = 3
        for level, width in enumerate(cfg.widths):
            for b in range(cfg.blocks_per_level):
                layers.append(ConvBlock(c_prev, width, stride=2 if (level > 0 and b == 0) else 1, groups=cfg.groups))
                c_prev = width
        self.trunk = nn.Sequential(*layers)
        c = cfg.widths[-1]
        # what: pooled over the whole picture (mean finds the colour mass, max finds the object's strongest response)
        self.shape_head = nn.Linear(2 * c, len(SHAPES))
        self.colour_head = nn.Linear(2 * c, len(COLOUR_NAMES))
        self.size_head = nn.Linear(2 * c, len(SIZES))
        # where: one score per grid cell from the features pooled over that cell
        self.position_head = nn.Conv2d(c, 1, kernel_size=1)

    def _check_input(self, x: torch.Tensor) -> None:
        check_images(x, channels=3, value_range=(-1.0, 1.0), name="images")
        r = self.cfg.resolution
        if x.shape[-2:] != (r, r):
            raise ValueError(
                f"images are {x.shape[-2]}x{x.shape[-1]} but this classifier was trained at {r}x{r} (it judges size "
                f"in pixels). Resize first, e.g. F.interpolate(x, size=({r}, {r}), mode='area'), or load a classifier "
                "trained at your resolution."
            )

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(x)
        h = self.trunk(x.to(self.trunk[0].conv.weight.dtype))  # (B, C, r/4, r/4)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, 2C): mean and max over space
        return h, pooled

    @property
    def num_features(self) -> int:
        """Width of :meth:`features` (2C)."""
        return 2 * self.cfg.widths[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, r, r) in [-1, 1] -> the pooled trunk features the heads read, (B, 2C) float32.

        The feature space of FID, KID and precision/recall on this world (``ldm_minimal.evaluation.metrics``), in place of
        Inception's pool features, which cannot be downloaded offline.
        """
        return self._trunk(x)[1].float()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, pooled = self._trunk(x)
        cells = F.adaptive_avg_pool2d(h, 3)  # (B, C, 3, 3): one feature vector per grid cell
        return {
            "shape": self.shape_head(pooled),  # (B, 5)
            "colour": self.colour_head(pooled),  # (B, 8)
            "size": self.size_head(pooled),  # (B, 2)
            "position": rearrange(self.position_head(cells), "b 1 h w -> b (h w)"),  # (B, 9)
        }


# ----------------------------------------------------------------------------------------------------------------
# Targets


def _targets_from_dicts(items: Sequence[list[dict]], source: str) -> dict[str, torch.Tensor]:
    labels: dict[str, list[int]] = {a: [] for a in ATTRIBUTES}
    for i, objs in enumerate(items):
        if len(objs) != 1:
            raise ValueError(
                f"{source} {i} describes {len(objs)} objects, but the attribute classifier judges exactly one object "
                "per image (it was trained on the single-object world, shapes_preset('single32')). Score only "
                "single-object prompts such as 'a large red circle in the center'."
            )
        for a in ATTRIBUTES:
            value = objs[0][a]
            if value not in VOCAB[a]:
                raise unknown_name_error(a, value, VOCAB[a])
            labels[a].append(VOCAB[a].index(value))
    return {a: torch.tensor(v, dtype=torch.long) for a, v in labels.items()}


def targets_from_objects(objects: Sequence[str | list[dict]]) -> dict[str, torch.Tensor]:
    """Labels {"shape", "colour", "size", "position"} -> (B,) LongTensors from the "objects" of a batch.

    Each item is the JSON string a ShapesDataset item carries (or the already decoded list of object dicts).
    """
    if isinstance(objects, str):
        raise TypeError("targets_from_objects takes a list of items (one JSON string per image), not one string.")
    decoded = [json.loads(o) if isinstance(o, str) else list(o) for o in objects]
    return _targets_from_dicts(decoded, "item")


def targets_from_captions(captions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Labels from single-object captions ("a large red circle in the center"), parsed with parse_caption."""
    if isinstance(captions, str):
        raise TypeError("targets_from_captions takes a list of captions, not one string: wrap it as [caption].")
    return _targets_from_dicts([parse_caption(c) for c in captions], "caption")


# ----------------------------------------------------------------------------------------------------------------
# Data and augmentation


def render_single(
    indices: Sequence[int] | range, seed: int, world: str = "single32"
) -> tuple[torch.Tensor, list[list[dict]]]:
    """Render samples ``indices`` of the single-object world of ``seed``: images (B, 3, H, W) in [-1, 1], objects."""
    cfg = shapes_preset(world, seed=seed)
    samples = [render_sample(int(i), cfg) for i in indices]
    images = torch.stack([image_to_tensor(s.image) for s in samples])  # (B, 3, H, W)
    return images, [[o.as_dict() for o in s.objects] for s in samples]


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Blur each image of x (B, C, H, W) with its own Gaussian of std sigma (B,) pixels (separable, edge-replicate)."""
    b, c, _, _ = x.shape
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)  # (k,)
    # G_sigma(d) = exp(-d^2 / (2 sigma^2)), normalised to sum 1 so flat regions (and colours) are unchanged
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma.float()[:, None].clamp_min(1e-3) ** 2))  # (B, k)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = repeat(kernel, "b k -> (b c) 1 k", c=c).to(x.dtype)  # one depthwise filter per (image, channel)
    y = rearrange(x, "b c h w -> 1 (b c) h w")
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kernel[:, :, None, :], groups=b * c)  # along W
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kernel[:, :, :, None], groups=b * c)  # along H
    return rearrange(y, "1 (b c) h w -> b c h w", b=b)


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    p_blur: float = 0.5,
    max_sigma: float = 1.0,
    p_noise: float = 0.5,
    max_noise: float = 0.08,
) -> torch.Tensor:
    """Make real renders look a little like generated ones: mild blur and additive noise on part of the batch.

    x: (B, 3, H, W) in [-1, 1]. Per image: with probability p_blur a Gaussian blur with sigma ~ U(0.3, max_sigma)
    pixels; with probability p_noise Gaussian noise with std ~ U(0, max_noise) (in [-1, 1] units, 0.08 = 10 grey
    levels). No hue/saturation/brightness change: the colour names must stay separable.
    """
    b = x.shape[0]

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(x.device)

    blur = rand(b) < p_blur
    if blur.any():
        sigma = 0.3 + (max_sigma - 0.3) * rand(b)
        x = torch.where(blur[:, None, None, None], gaussian_blur(x, sigma), x)
    noisy = (rand(b) < p_noise).float() * max_noise * rand(b)  # (B,) std, 0 for clean images
    eps = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return (x + noisy[:, None, None, None].to(x.dtype) * eps).clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------
# Training


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_attribute_classifier(
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = TRAIN_SEED,
    augment: bool = True,
    progress: bool = True,
    cfg: AttributeClassifierConfig | str = "shapes32",
    device: torch.device | str = "cpu",
    weight_decay: float = 0.01,
    log_every: int = 50,
) -> tuple[AttributeClassifier, dict[str, Any]]:
    """Train the judge on single-object renders of world ``seed`` (fresh pictures every step: sample indices
    step * batch_size ... never repeat). AdamW, linear warm-up then cosine decay, loss = sum of the four
    cross-entropies. Returns (model in eval mode, logs {"step", "loss", "accuracy", "wall_time_s", ...})."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}.")
    if seed == TEST_SEED:
        raise ValueError(
            f"seed={seed} is the held-out test world (TEST_SEED); train on another seed (default {TRAIN_SEED}) so that "
            "evaluation pictures are never seen in training."
        )
    cfg = attribute_classifier_config(cfg) if isinstance(cfg, str) else cfg
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = AttributeClassifier(cfg).to(device).train()

    def batch(step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fresh pictures every step
        x, objects = render_single(range(step * batch_size, (step + 1) * batch_size), seed, cfg.world)
        y = {a: t.to(device) for a, t in _targets_from_dicts(objects, "item").items()}
        x = x.to(device)
        return (augment_batch(x, gen) if augment else x), y

    def loss_and_accuracy(logits: dict[str, torch.Tensor], y: dict[str, torch.Tensor]):
        # L = sum over attributes of CE(logits_a, y_a); accuracy: all four attributes right
        loss = sum(F.cross_entropy(logits[a].float(), y[a]) for a in ATTRIBUTES)
        right = torch.stack([logits[a].argmax(1) == y[a] for a in ATTRIBUTES]).all(0).float().mean()
        return loss, right

    logs: dict[str, Any] = {"config": cfg.to_dict(), "seed": seed, "batch_size": batch_size, "lr": lr,
                            "augment": augment}  # fmt: skip
    logs.update(fit_classifier(model, batch, loss_and_accuracy, steps, lr, weight_decay, log_every,
                               "attribute classifier" if progress else None))
    return model.eval(), logs


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
    """The plain loop every classifier of the course trains with (the judge, ``world_classifier``).

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
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=progress, mininterval=2.0, file=sys.stderr)
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
def logits_of(model: AttributeClassifier, images: torch.Tensor, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """Float32 logits for any number of images, in chunks, on the model's device (outputs on the CPU)."""
    check_images(images, channels=3, value_range=(-1.0, 1.0), name="images", tol=0.5)
    was_training = model.training
    model.eval()
    device = _model_device(model)
    out: dict[str, list[torch.Tensor]] = {a: [] for a in ATTRIBUTES}
    try:
        for i in range(0, images.shape[0], batch_size):
            # generated images overshoot [-1, 1] a little; clip them the way saving them as PNGs would
            chunk = images[i : i + batch_size].to(device).float().clamp(-1.0, 1.0)
            for a, v in model(chunk).items():
                out[a].append(v.float().cpu())
    finally:
        model.train(was_training)
    return {a: torch.cat(v) for a, v in out.items()}


def predict(model: AttributeClassifier, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The judge's reading of each image: {"shape", "colour", "size", "position"} -> (B,) LongTensors (CPU).

    images: (B, 3, H, W) in [-1, 1] (small overshoots are clipped). Decode a label with VOCAB[attr][index].
    """
    return {a: v.argmax(dim=1) for a, v in logits_of(model, images).items()}


def accuracy_from_predictions(pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-attribute accuracy, "shape_and_colour" (both right on the same image) and "all" (all four right)."""
    right = {a: (pred[a].cpu() == target[a].cpu()) for a in ATTRIBUTES}
    out = {a: float(r.float().mean()) for a, r in right.items()}
    out["shape_and_colour"] = float((right["shape"] & right["colour"]).float().mean())
    out["all"] = float(torch.stack(list(right.values())).all(0).float().mean())
    return out


def attribute_accuracy(model: AttributeClassifier, images: torch.Tensor, captions: Sequence[str]) -> dict[str, float]:
    """How often images show what their single-object captions ask for, as read by the judge.

    images: (B, 3, H, W) in [-1, 1], e.g. text-to-image samples; captions: the B prompts they were generated from
    ("a large red circle in the center"). Returns {"shape", "colour", "size", "position", "shape_and_colour", "all",
    "n"}: fractions in [0, 1] (and the count).
    """
    captions = [captions] if isinstance(captions, str) else list(captions)
    if len(captions) != images.shape[0]:
        raise ValueError(f"Got {images.shape[0]} images but {len(captions)} captions; pass one caption per image.")
    out: dict[str, float] = accuracy_from_predictions(predict(model, images), targets_from_captions(captions))
    out["n"] = len(captions)
    return out


@torch.no_grad()
def evaluate_attribute_classifier(
    model: AttributeClassifier,
    n: int = 2000,
    seed: int = TEST_SEED,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 250,
) -> dict[str, float]:
    """Accuracy on ``n`` real held-out single-object pictures (samples 0..n-1 of world ``seed``).

    transform: images -> images applied before judging (e.g. autoencoder reconstructions D(E(x))); its output is
    clipped to [-1, 1]. Returns the per-attribute accuracies, "shape_and_colour", "all", "n" and "seed".
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 (the number of held-out pictures), got {n}.")
    preds: dict[str, list[torch.Tensor]] = {a: [] for a in ATTRIBUTES}
    targets: dict[str, list[torch.Tensor]] = {a: [] for a in ATTRIBUTES}
    for i in range(0, n, batch_size):
        x, objects = render_single(range(i, min(n, i + batch_size)), seed, model.cfg.world)
        if transform is not None:
            x = transform(x.to(_model_device(model))).float().clamp(-1.0, 1.0)
        p, t = predict(model, x), _targets_from_dicts(objects, "item")
        for a in ATTRIBUTES:
            preds[a].append(p[a])
            targets[a].append(t[a])
    out: dict[str, float] = accuracy_from_predictions(
        {a: torch.cat(v) for a, v in preds.items()}, {a: torch.cat(v) for a, v in targets.items()}
    )
    out["n"], out["seed"] = n, seed
    return out


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def save_attribute_classifier(
    path: str | Path,
    model: AttributeClassifier,
    info: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Save weights + config (kind "attribute-classifier"); refuses to replace a file unless overwrite=True."""
    return save_checkpoint(
        path, model, kind=CHECKPOINT_KIND, config=model.cfg, info=info, dtype=dtype, overwrite=overwrite
    )


def load_attribute_classifier(
    path: str | Path | None = None, device: torch.device | str = "cpu"
) -> AttributeClassifier:
    """The judge from a checkpoint (default: the shipped data/checkpoints/shapes32-attributes.safetensors).

    Returns the model in float32 and eval mode; the file's metadata is kept as ``model.checkpoint_meta``.
    """
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    state, meta = read_checkpoint(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(
            f"Checkpoint {path} holds a {meta.get('kind')!r}, not an {CHECKPOINT_KIND!r}. Pass the attribute "
            f"classifier's file (default {DEFAULT_CHECKPOINT.name}); load autoencoders with load_autoencoder()."
        )
    try:
        cfg = AttributeClassifierConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"Checkpoint {path} has a config this version cannot build ({e}).") from e
    model = AttributeClassifier(cfg)
    load_state_into(model, state, path)
    model.checkpoint_meta = meta
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------------------------
# Command line


def _machine() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread" + (
        "s" if torch.get_num_threads() != 1 else ""
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, evaluate (real held-out pictures and autoencoder reconstructions), write metrics.json, optionally ship."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m ldm_minimal.evaluation.attributes", description=main.__doc__)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=TRAIN_SEED, help="training world seed (evaluation uses TEST_SEED)")
    p.add_argument("--preset", default="shapes32", choices=sorted(ATTRIBUTE_CLASSIFIER_PRESETS))
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--n-eval", type=int, default=2000, help="held-out pictures to evaluate on")
    p.add_argument("--out", default="runs/attributes", help="run folder (metrics.json, last.safetensors)")
    p.add_argument("--autoencoder", default=str(AUTOENCODER_CHECKPOINT),
                   help="first stage for the reconstruction check ('' to skip)")
    p.add_argument("--ship", action="store_true",
                   help="save the classifier to --checkpoint and record it in MANIFEST.json")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="where --ship writes the classifier")
    p.add_argument("--overwrite", action="store_true", help="let --ship replace an existing checkpoint")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(1)  # the machine is shared; this model is small enough for one thread
    ship_path = Path(args.checkpoint)
    if args.ship and ship_path.exists() and not args.overwrite:  # fail before training, not after
        raise SystemExit(f"{ship_path} already exists; pass --overwrite to replace it, or --checkpoint another path.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, logs = train_attribute_classifier(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, augment=not args.no_augment,
        progress=not args.no_progress, cfg=args.preset,
    )  # fmt: skip
    run_ckpt = save_attribute_classifier(out / "last.safetensors", model, dtype=torch.float16, overwrite=True)
    # judge with the float16 weights we ship, read back from the file, so the figures describe the shipped model
    judge = load_attribute_classifier(run_ckpt)
    quality: dict[str, Any] = {"real": evaluate_attribute_classifier(judge, n=args.n_eval)}
    # robustness: every held-out picture blurred (sigma 1 px, the augmentation's strongest) plus noise (std 0.05)
    noise_gen = torch.Generator().manual_seed(TEST_SEED)

    def degrade(x: torch.Tensor) -> torch.Tensor:
        x = gaussian_blur(x, torch.full((x.shape[0],), 1.0))
        return x + 0.05 * torch.randn(x.shape, generator=noise_gen).to(x.device, x.dtype)

    quality["real_blur1_noise0.05"] = evaluate_attribute_classifier(judge, n=args.n_eval, transform=degrade)
    if args.autoencoder:
        from ldm_minimal.checkpoint import load_autoencoder

        ae, _ = load_autoencoder(args.autoencoder)

        def reconstruct(x: torch.Tensor) -> torch.Tensor:  # x_hat = D(E(x)), the posterior mode
            return ae.decode_latent(ae.encode_latent(x, sample=False))

        quality["autoencoder_reconstructions"] = {
            **evaluate_attribute_classifier(judge, n=args.n_eval, transform=reconstruct),
            "autoencoder": Path(args.autoencoder).name,
        }
    command = "python -m ldm_minimal.evaluation.attributes " + " ".join(shlex.quote(a) for a in argv)
    metrics = {
        "command": command,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_seed": args.seed,
        "augment": not args.no_augment,
        "parameters": count_parameters(model),
        "wall_time_s": round(logs["wall_time_s"], 1),
        "machine": _machine(),
        "quality": quality,
        "train_log": {k: logs[k] for k in ("step", "loss", "accuracy")},
        "config": model.cfg.to_dict(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: metrics[k] for k in ("wall_time_s", "parameters", "quality")}, indent=2))
    if args.ship:
        from ldm_minimal.checkpoint import update_manifest

        save_attribute_classifier(
            ship_path, model, info={"quality": quality}, dtype=torch.float16, overwrite=args.overwrite
        )
        update_manifest(
            ship_path,
            {
                "command": command,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "wall_time_s": metrics["wall_time_s"],
                "machine": metrics["machine"],
                "kind": CHECKPOINT_KIND,
                "preset": args.preset,
                "dtype": "float16",
                "parameters": metrics["parameters"],
                "world": model.cfg.world,
                "train_seed": args.seed,
                "eval_seed": TEST_SEED,
                "quality": quality,
            },
        )
        print(f"shipped {ship_path} and recorded it in {ship_path.parent / 'MANIFEST.json'}")
    return metrics


if __name__ == "__main__":
    main()
