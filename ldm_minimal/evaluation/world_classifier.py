"""A small classifier for a data world with class labels: the offline feature network of FID, KID and precision/recall.

Why it exists
-------------
The paper measures sample quality in the feature space of a network trained on real images: FID and IS on
Inception-v3 pool features, precision/recall on VGG features (Rombach et al., CVPR 2022, Sec. 4 and App. E.3).
Those weights must be downloaded, and ImageNet features say little about 32 x 32 emoji anyway. So, as for the
shapes world (whose attribute judge, ``ldm_minimal.evaluation.attributes``, doubles as its feature network), each world gets a
small CNN trained with this repository's code on that world's real training pictures only:

    emoji (label "group")   x (B, 3, 32, 32) in [-1, 1]  ->  trunk  ->  phi(x) (B, 2C)  ->  Linear  ->  11 group logits

``features(x) = phi(x)`` (global mean and max pooling of the last level) is the space in which ``ldm_minimal.evaluation.metrics``
compares real and generated pictures. A feature space is only meaningful when it separates what matters in the
world, so the classifier's top-1 accuracy on held-out real emoji (the test split: every 10th emoji, never seen in
training) is measured, shipped in data/checkpoints/MANIFEST.json and tested.

Architecture: levels of [Conv3x3 - GroupNorm - SiLU] blocks (``attributes.ConvBlock``; GroupNorm, so no answer
depends on the other images of a batch), the first block of every level after the first with stride 2
(32 -> 16 -> 8 -> 4 pixels), then [mean, max] pooling, dropout, one linear head.

Training (``train_world_classifier``): AdamW, warm-up then cosine decay, cross-entropy with label smoothing, and
augmentation so that it generalises from 1,726 training emoji to unseen ones: a random affine map per image (shift up
to ~2 px, zoom 0.9-1.1, horizontal flip), mild colour jitter (brightness, contrast, saturation; no hue change:
colour is part of what a group looks like) and, as for the shapes judge, blur and noise on part of each batch,
because generated pictures are a little soft and noisy.

Limits (read before trusting a number)
--------------------------------------
* The emoji groups are broad ("Objects", "Symbols", "Travel & Places"); many emoji could belong to several, so the
  accuracy on unseen emoji is far from 100 %. It is reported next to the majority-class baseline.
* It has seen 1,726 pictures. Its features describe "emoji-ness" as far as that goes: FID on them compares our
  models with each other (at equal n), never with the paper's Inception-based numbers.
* It was trained at 32 x 32 (forward raises a clear error at another size).

Run ``python -m ldm_minimal.evaluation.world_classifier --ship`` to train, evaluate and ship it
(data/checkpoints/emoji32-features.safetensors and its MANIFEST.json entry).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import repeat

from ldm_minimal.evaluation.attributes import ConvBlock, augment_batch, fit_classifier, gaussian_blur
from ldm_minimal.checkpoint import CheckpointError, load_state_into, read_checkpoint, save_checkpoint
from ldm_minimal.utils import check_images, count_parameters, min_max, unknown_name_error

CHECKPOINT_KIND = "world-classifier"
DEFAULT_CHECKPOINTS: dict[str, str] = {"emoji": "emoji32-features.safetensors"}  # world -> file in data/checkpoints
SHAPES_FEATURE_WORLDS = ("shapes32", "single32")  # served by the shapes attribute judge (trained at 32 x 32)
FEATURE_WORLDS = (*SHAPES_FEATURE_WORLDS, "emoji")  # every world with a shipped feature network


def default_checkpoint(world: str = "emoji") -> Path:
    """data/checkpoints/<file> of the shipped classifier of ``world`` (read at call time: $LDM_MINIMAL_DATA moves it)."""
    if world not in DEFAULT_CHECKPOINTS:
        raise unknown_name_error("world with a shipped world classifier", world, DEFAULT_CHECKPOINTS)
    from ldm_minimal import utils

    return utils.DATA_DIR / "checkpoints" / DEFAULT_CHECKPOINTS[world]


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class WorldClassifierConfig:
    """A small CNN over the pictures of one world. ``widths``: channels of each level (resolution, /2, /4, ...)."""

    widths: tuple[int, ...] = (24, 48, 96, 128)
    blocks_per_level: int = 2  # conv blocks per level (the first block of levels > 0 has stride 2)
    groups: int = 8  # GroupNorm groups (batch-independent features)
    resolution: int = 32  # the image side it is trained for
    world: str = "emoji"  # the data world (ldm_minimal.data.load_world name)
    label: str = "group"  # which labels are the classes (emoji: "group" or "subgroup")
    num_classes: int = 11  # len(ldm_minimal.data.group_names()) for emoji groups
    dropout: float = 0.2  # on the pooled features, before the head (training only)
    class_names: tuple[str, ...] = ()  # class i's name (filled in by the trainer from the world)

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.class_names = tuple(self.class_names)
        if not self.widths or any(w < 1 or w % self.groups for w in self.widths):
            raise ValueError(
                f"widths {self.widths} must be a non-empty list of channel counts divisible by groups={self.groups} "
                "(GroupNorm); e.g. widths=(24, 48, 96, 128)."
            )
        if self.blocks_per_level < 1:
            raise ValueError(f"blocks_per_level must be >= 1, got {self.blocks_per_level}.")
        if self.resolution % 2 ** (len(self.widths) - 1):
            raise ValueError(
                f"resolution={self.resolution} must be divisible by {2 ** (len(self.widths) - 1)} (one halving per "
                "extra level); use 32 or 64, or fewer widths."
            )
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (a classifier needs two classes), got {self.num_classes}.")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names but num_classes={self.num_classes}; give one name per "
                "class or none."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "WorldClassifierConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"Unknown WorldClassifierConfig keys {unknown}; valid keys: {sorted(known)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


WORLD_CLASSIFIER_PRESETS: dict[str, WorldClassifierConfig] = {
    "emoji32": WorldClassifierConfig(),
    "tiny": WorldClassifierConfig(widths=(8, 16), blocks_per_level=1),  # tests only
}


def world_classifier_config(name: str, **overrides) -> WorldClassifierConfig:
    """A named preset ("emoji32", "tiny"), optionally with some fields replaced."""
    if name not in WORLD_CLASSIFIER_PRESETS:
        raise unknown_name_error("world classifier preset", name, WORLD_CLASSIFIER_PRESETS)
    return dataclasses.replace(WORLD_CLASSIFIER_PRESETS[name], **overrides)


# ----------------------------------------------------------------------------------------------------------------
# The model


class WorldClassifier(nn.Module):
    """(B, 3, r, r) in [-1, 1] -> class logits (B, num_classes); ``features`` -> (B, 2C), the metrics' feature space.

    The offline stand-in for the Inception-v3 features of the paper's FID/KID (Sec. 4, App. E.3): see the module
    docstring.
    """

    def __init__(self, cfg: WorldClassifierConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or WorldClassifierConfig()
        layers: list[nn.Module] = []
        c_prev = 3
        for level, width in enumerate(cfg.widths):
            for b in range(cfg.blocks_per_level):
                layers.append(ConvBlock(c_prev, width, stride=2 if (level > 0 and b == 0) else 1, groups=cfg.groups))
                c_prev = width
        self.trunk = nn.Sequential(*layers)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.widths[-1], cfg.num_classes)

    @property
    def num_features(self) -> int:
        """Width of :meth:`features` (2C: mean and max pooling of the last level)."""
        return 2 * self.cfg.widths[-1]

    def _check_input(self, x: torch.Tensor) -> None:
        check_images(x, channels=3, value_range=(-1.0, 1.0), name="images", tol=0.5)
        r = self.cfg.resolution
        if x.shape[-2:] != (r, r):
            raise ValueError(
                f"images are {x.shape[-2]}x{x.shape[-1]} but this classifier was trained at {r}x{r}. Resize first, "
                f"e.g. F.interpolate(x, size=({r}, {r}), mode='area'), or train a classifier at your resolution."
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, r, r) in [-1, 1] (small overshoots are clipped) -> phi(x) (B, 2C) float32."""
        self._check_input(x)
        x = x.clamp(-1.0, 1.0).to(self.trunk[0].conv.weight.dtype)
        h = self.trunk(x)  # (B, C, r / 2^(L-1), r / 2^(L-1))
        # phi(x) = [mean_hw h, max_hw h]: "how much of each pattern" and "its strongest occurrence"
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1).float()  # (B, 2C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phi = self.features(x)  # (B, 2C)
        return self.head(self.dropout(phi).to(self.head.weight.dtype)).float()  # (B, K)


# ----------------------------------------------------------------------------------------------------------------
# Data and augmentation


def world_images(
    world: str = "emoji", split: str = "train", resolution: int = 32, label: str = "group"
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All pictures of a split of a labelled world: images (N, 3, r, r) in [-1, 1], class ids (N,), captions."""
    if world != "emoji":
        raise ValueError(
            f"world_images supports the labelled world 'emoji' (got {world!r}); the shapes worlds have their own "
            "judge, ldm_minimal.evaluation.attributes.load_attribute_classifier()."
        )
    from ldm_minimal.data import world_dataset

    ds = world_dataset(world, split=split, resolution=resolution, label=label)
    rows = [ds[i] for i in range(len(ds))]
    images = torch.stack([r["image"] for r in rows])  # (N, 3, r, r)
    labels = torch.tensor([int(r["class_id"]) for r in rows], dtype=torch.long)  # (N,)
    return images, labels, [r["caption"] for r in rows]


def class_names_of(world: str = "emoji", label: str = "group") -> tuple[str, ...]:
    """The class names of a labelled world, in class-id order."""
    from ldm_minimal.data import group_names, subgroup_names

    if world != "emoji":
        raise unknown_name_error("labelled world", world, ("emoji",))
    return tuple(group_names() if label == "group" else subgroup_names())


def random_affine(x: torch.Tensor, generator: torch.Generator | None = None, max_shift: float = 2.0,
                  zoom: tuple[float, float] = (0.9, 1.1), p_flip: float = 0.5) -> torch.Tensor:
    """Per image: shift by up to ``max_shift`` pixels, zoom by a factor in ``zoom``, flip left-right with p_flip.

    x (B, C, H, W) in [-1, 1]; borders are extended (emoji sit on white, flags reach the edge). Bilinear.
    """
    b, _, h, w = x.shape

    def rand(n: int) -> torch.Tensor:
        return torch.rand(n, generator=generator)

    s = 1.0 / (zoom[0] + (zoom[1] - zoom[0]) * rand(b))  # grid scale = 1 / zoom
    flip = torch.where(rand(b) < p_flip, -1.0, 1.0)
    tx, ty = (2 * rand(b) - 1) * max_shift * 2 / w, (2 * rand(b) - 1) * max_shift * 2 / h  # pixels -> [-1, 1] units
    zeros = torch.zeros(b)
    # theta maps output coordinates to input coordinates: [[s * flip, 0, tx], [0, s, ty]]
    theta = torch.stack([torch.stack([s * flip, zeros, tx], 1), torch.stack([zeros, s, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.device, torch.float32), list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)


def colour_jitter(x: torch.Tensor, generator: torch.Generator | None = None, brightness: float = 0.1,
                  contrast: float = 0.15, saturation: float = 0.2) -> torch.Tensor:
    """Mild per-image brightness (+-), contrast and saturation (x) changes, in [-1, 1] units; no hue change."""
    b = x.shape[0]

    def rand(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(b, generator=generator)).to(x.device, x.dtype)[:, None, None, None]

    grey = repeat(x.mean(dim=1, keepdim=True), "b 1 h w -> b c h w", c=x.shape[1])  # (B, C, H, W)
    x = grey + rand(1 - saturation, 1 + saturation) * (x - grey)  # saturation: away from / towards grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + rand(1 - contrast, 1 + contrast) * (x - mean)  # contrast around the picture's mean
    x = x + rand(-brightness, brightness)  # brightness
    return x.clamp(-1.0, 1.0)


def augment_world_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The training augmentation: random affine, colour jitter, then blur/noise (``attributes.augment_batch``)."""
    x = random_affine(x, generator)
    x = colour_jitter(x, generator)
    return augment_batch(x, generator, p_blur=0.3, max_sigma=0.8, p_noise=0.3, max_noise=0.06)


# ----------------------------------------------------------------------------------------------------------------
# Training


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_world_classifier(
    cfg: WorldClassifierConfig | str = "emoji32",
    steps: int = 1200,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    seed: int = 0,
    augment: bool = True,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    log_every: int = 50,
) -> tuple[WorldClassifier, dict[str, Any]]:
    """Train on the world's training split (or on ``data`` = (images (N, 3, r, r), labels (N,))).

    Each step draws a batch of ``batch_size`` pictures from a reshuffled epoch order. AdamW, linear warm-up then
    cosine decay to 2 % of lr, loss = CE with label smoothing. Returns (model in eval mode, logs).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}.")
    cfg = world_classifier_config(cfg) if isinstance(cfg, str) else cfg
    if data is None:
        images, labels, _ = world_images(cfg.world, "train", cfg.resolution, cfg.label)
        if not cfg.class_names:
            cfg = dataclasses.replace(cfg, class_names=class_names_of(cfg.world, cfg.label))
    else:
        images, labels = data
    check_images(images, channels=3, name="training images")
    lo, hi = (int(v) for v in min_max(labels))
    if hi >= cfg.num_classes or lo < 0:
        raise ValueError(
            f"labels range over [{lo}, {hi}] but num_classes={cfg.num_classes}; set "
            "num_classes to the number of classes of the world (emoji groups: len(group_names()))."
        )
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = WorldClassifier(cfg).to(device).train()
    order = torch.empty(0, dtype=torch.long)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal order
        if order.numel() < batch_size:  # a fresh permutation of the training pictures (one epoch)
            order = torch.cat([order, torch.randperm(images.shape[0], generator=gen)])
        idx, order = order[:batch_size], order[batch_size:]
        x, y = images[idx].to(device), labels[idx].to(device)
        return (augment_world_batch(x, gen) if augment else x), y

    def loss_and_accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # L = CE(logits, y) with label smoothing (targets (1 - eps) one-hot + eps / K); logits (B, K)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        return loss, (logits.argmax(1) == y).float().mean()

    logs = fit_classifier(model, batch, loss_and_accuracy, steps, lr, weight_decay, log_every,
                          "world classifier" if progress else None)
    return model.eval(), logs


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def classifier_logits(model: WorldClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Float32 logits (N, K) on the CPU for any number of images, in chunks, on the model's device."""
    was_training = model.training
    model.eval()
    device = _model_device(model)
    try:
        out = [model(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


def accuracy_report(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str] = ()) -> dict[str, Any]:
    """top1, top3, n, the majority-class baseline (always answering the most common class) and per-class top-1."""
    labels = labels.cpu()
    top = logits.topk(min(3, logits.shape[1]), dim=1).indices  # (N, 3)
    right1 = top[:, 0] == labels
    per_class = {}
    for c in labels.unique().tolist():
        name = class_names[c] if c < len(class_names) else str(c)
        per_class[name] = round(float(right1[labels == c].float().mean()), 4)
    return {
        "top1": float(right1.float().mean()),
        "top3": float((top == labels[:, None]).any(dim=1).float().mean()),
        "n": int(labels.numel()),
        "majority_baseline": float(labels.bincount().max() / labels.numel()),
        "per_class_top1": per_class,
    }


def evaluate_world_classifier(model: WorldClassifier, split: str = "test", transform=None) -> dict[str, Any]:
    """Accuracy on every picture of a split of the model's world (default the held-out test split).

    transform: images -> images applied first (e.g. blur/noise for a robustness check).
    """
    images, labels, _ = world_images(model.cfg.world, split, model.cfg.resolution, model.cfg.label)
    if transform is not None:
        images = transform(images).clamp(-1.0, 1.0)
    out = accuracy_report(classifier_logits(model, images), labels, model.cfg.class_names)
    out["split"] = split
    return out


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def save_world_classifier(path: str | Path, model: WorldClassifier, info: dict[str, Any] | None = None,
                          dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Save weights + config (kind "world-classifier"); refuses to replace a file unless overwrite=True."""
    return save_checkpoint(path, model, kind=CHECKPOINT_KIND, config=model.cfg, info=info, dtype=dtype,
                           overwrite=overwrite)


def load_world_classifier(path: str | Path | None = None, device: torch.device | str = "cpu") -> WorldClassifier:
    """A world classifier from a checkpoint (default: the shipped emoji one), float32, eval mode.

    The file's metadata is kept as ``model.checkpoint_meta``.
    """
    path = Path(path) if path is not None else default_checkpoint("emoji")
    if not path.is_file() and path == default_checkpoint("emoji"):
        raise CheckpointError(
            f"The shipped emoji classifier {path} is missing. Restore it (git checkout -- {path.name} in {path.parent}) "
            "or train it: python -m ldm_minimal.evaluation.world_classifier --ship (a few minutes on a CPU)."
        )
    state, meta = read_checkpoint(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(
            f"Checkpoint {path} holds a {meta.get('kind')!r}, not a {CHECKPOINT_KIND!r}. Pass a world classifier's "
            "file (e.g. data/checkpoints/emoji32-features.safetensors); the shapes judge loads with "
            "load_attribute_classifier()."
        )
    try:
        cfg = WorldClassifierConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"Checkpoint {path} has a config this version cannot build ({e}).") from e
    model = WorldClassifier(cfg)
    load_state_into(model, state, path)
    model.checkpoint_meta = meta
    return model.to(device).eval()


def load_feature_classifier(world: str, device: torch.device | str = "cpu") -> nn.Module:
    """The shipped feature network of a world, with ``features(x) -> (B, D)`` and ``num_features``.

    "shapes32", "single32" -> the shapes attribute judge (data/checkpoints/shapes32-attributes.safetensors);
    "emoji" -> the emoji group classifier (data/checkpoints/emoji32-features.safetensors). The model gets a
    ``feature_name`` attribute (the file it came from) for reports.
    """
    if world in SHAPES_FEATURE_WORLDS:
        from ldm_minimal.evaluation.attributes import DEFAULT_CHECKPOINT, load_attribute_classifier

        model: nn.Module = load_attribute_classifier(device=device)
        model.feature_name = f"{DEFAULT_CHECKPOINT.name} (shapes attribute judge, D={model.num_features})"
        return model
    if world in DEFAULT_CHECKPOINTS:
        model = load_world_classifier(default_checkpoint(world), device=device)
        model.feature_name = f"{DEFAULT_CHECKPOINTS[world]} ({world} {model.cfg.label} classifier, D={model.num_features})"
        return model
    raise unknown_name_error("world with a feature network", world, FEATURE_WORLDS)


# ----------------------------------------------------------------------------------------------------------------
# Command line


def _machine() -> str:
    threads = torch.get_num_threads()
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {threads} torch thread" + ("s" if threads != 1 else "")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train the emoji group classifier on the train split, evaluate it on the held-out test split, optionally ship."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m ldm_minimal.evaluation.world_classifier", description=main.__doc__)
    p.add_argument("--preset", default="emoji32", choices=sorted(WORLD_CLASSIFIER_PRESETS))
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--out", default="runs/world-classifier", help="run folder (metrics.json, last.safetensors)")
    p.add_argument("--ship", action="store_true", help="save to --checkpoint and record it in MANIFEST.json")
    p.add_argument("--checkpoint", default=None, help="where --ship writes (default data/checkpoints/emoji32-features)")
    p.add_argument("--overwrite", action="store_true", help="let --ship replace an existing checkpoint")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(1)  # a small model on a shared machine: one thread avoids OpenMP contention
    ship_path = Path(args.checkpoint) if args.checkpoint else default_checkpoint("emoji")
    if args.ship and ship_path.exists() and not args.overwrite:  # fail before training, not after
        raise SystemExit(f"{ship_path} already exists; pass --overwrite to replace it, or --checkpoint another path.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, logs = train_world_classifier(
        args.preset, steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        seed=args.seed, augment=not args.no_augment, progress=args.progress,
    )  # fmt: skip
    run_ckpt = save_world_classifier(out / "last.safetensors", model, dtype=torch.float16, overwrite=True)
    # evaluate the float16 weights we ship, read back from the file, so the figures describe the shipped model
    shipped = load_world_classifier(run_ckpt)
    noise_gen = torch.Generator().manual_seed(1)

    def degrade(x: torch.Tensor) -> torch.Tensor:  # blur sigma 0.8 px + noise std 0.05, like soft generated images
        x = gaussian_blur(x, torch.full((x.shape[0],), 0.8))
        return x + 0.05 * torch.randn(x.shape, generator=noise_gen)

    quality = {
        "test": evaluate_world_classifier(shipped, "test"),
        "test_blur0.8_noise0.05": evaluate_world_classifier(shipped, "test", transform=degrade),
        "train": {k: v for k, v in evaluate_world_classifier(shipped, "train").items() if k != "per_class_top1"},
    }
    command = "python -m ldm_minimal.evaluation.world_classifier " + " ".join(shlex.quote(a) for a in argv)
    metrics = {
        "command": command,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
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

        save_world_classifier(ship_path, model, info={"quality": quality}, dtype=torch.float16,
                              overwrite=args.overwrite)
        update_manifest(ship_path, {
            "command": command, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "wall_time_s": metrics["wall_time_s"], "machine": metrics["machine"], "kind": CHECKPOINT_KIND,
            "preset": args.preset, "dtype": "float16", "parameters": metrics["parameters"], "world": model.cfg.world,
            "label": model.cfg.label, "resolution": model.cfg.resolution, "eval_split": "test (every 10th emoji)",
            "quality": quality,
        })  # fmt: skip
        print(f"shipped {ship_path} and recorded it in {ship_path.parent / 'MANIFEST.json'}")
    return metrics


if __name__ == "__main__":
    main()
