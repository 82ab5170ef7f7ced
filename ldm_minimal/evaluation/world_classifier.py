"""A small classifier for a data world with class labels: the offline feature network of FID, KID and precision/recall.

Why it exists
-------------
The paper measures sample quality in the feature space of a network trained on real images: FID and IS on
Inception features, precision/recall with Dhariwal & Nichol's evaluation script, whose features the paper does not name (Rombach et al., CVPR 2022, Sec. 4 and App. E.3).
Those weights must be downloaded, and ImageNet features say little about 32 x 32 emoji anyway. So, as for the
shapes world (whose attribute judge, ``ldm_minimal.evaluation.attributes``, doubles as its feature network), each world gets a
small CNN trained with this repository's code on that world's real training pictures only:

    emoji (label "group")   x (B, 3, 32, 32) in [-1, 1]  ->  trunk  ->  phi(x) (B, 2C)  ->  Linear  ->  11 group logits

``features(x) = phi(x)`` (global mean and max pooling of the last level) is the space in which ``ldm_minimal.evaluation.metrics``
compares real and generated pictures. A feature space is only meaningful when it separates what matters in the
world, so the classifier's top-1 accuracy on held-out real emoji (the test split: every 10th emoji, never seen in
training) is measured, shipped in data/checkpoints/MANIFEST.json and tested.

Architecture: the shared trunk of ``ldm_minimal.evaluation.classifier``, levels of [Conv3x3 - GroupNorm - SiLU]
blocks (GroupNorm, so no answer depends on the other images of a batch), the first block of every level after the
first with stride 2 (32 -> 16 -> 8 -> 4 pixels), then [mean, max] pooling, dropout, one linear head.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm_minimal import utils
from ldm_minimal.checkpoint import CheckpointError
from ldm_minimal.data import group_names, subgroup_names, world_dataset
from ldm_minimal.evaluation.augment import augment_batch, blur_and_noise, colour_jitter, random_affine
from ldm_minimal.evaluation.classifier import (ClassifierCommand, ClassifierConfig, ConvClassifier, batched_logits,
                                               check_training_sizes, fit_classifier, load_classifier, preset_config,
                                               save_classifier, seeded_model)
from ldm_minimal.utils import check_images, min_max, unknown_name_error

CHECKPOINT_KIND = "world-classifier"
DEFAULT_CHECKPOINTS: dict[str, str] = {"emoji": "emoji32-features.safetensors"}  # world -> file in data/checkpoints


def default_checkpoint(world: str = "emoji") -> Path:
    """data/checkpoints/<file> of the shipped classifier of ``world`` (read at call time: $LDM_MINIMAL_DATA moves it)."""
    if world not in DEFAULT_CHECKPOINTS:
        raise unknown_name_error("world with a shipped world classifier", world, DEFAULT_CHECKPOINTS)
    return utils.DATA_DIR / "checkpoints" / DEFAULT_CHECKPOINTS[world]


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class WorldClassifierConfig(ClassifierConfig):
    """A small CNN over the pictures of one world: ``ClassifierConfig``'s fields, then the classes and dropout."""

    widths: tuple[int, ...] = (24, 48, 96, 128)
    world: str = "emoji"  # the data world (ldm_minimal.data.load_world name)
    label: str = "group"  # which labels are the classes (emoji: "group" or "subgroup")
    num_classes: int = 11  # len(ldm_minimal.data.group_names()) for emoji groups
    dropout: float = 0.2  # on the pooled features, before the head (training only)
    class_names: tuple[str, ...] = ()  # class i's name (filled in by the trainer from the world)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.class_names = tuple(self.class_names)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (a classifier needs two classes), got {self.num_classes}.")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names but num_classes={self.num_classes}; give one name per "
                "class or none."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")


WORLD_CLASSIFIER_PRESETS: dict[str, WorldClassifierConfig] = {
    "emoji32": WorldClassifierConfig(),
    "tiny": WorldClassifierConfig(widths=(8, 16), blocks_per_level=1),  # tests only
}


def world_classifier_config(name: str, **overrides) -> WorldClassifierConfig:
    """A named preset ("emoji32", "tiny"), optionally with some fields replaced."""
    return preset_config(WORLD_CLASSIFIER_PRESETS, "world classifier preset", name, **overrides)


# ----------------------------------------------------------------------------------------------------------------
# The model


class WorldClassifier(ConvClassifier):
    """(B, 3, r, r) in [-1, 1] -> class logits (B, num_classes); ``features`` -> (B, 2C), the metrics' feature space.

    The offline stand-in for the Inception-v3 features of the paper's FID/KID (Sec. 4, App. E.3): see the module
    docstring.
    """

    CONFIG = WorldClassifierConfig
    CHECKPOINT_KIND = CHECKPOINT_KIND
    INPUT_TOLERANCE = 0.5  # small overshoots of generated pictures are clipped
    cfg: WorldClassifierConfig

    def __init__(self, cfg: WorldClassifierConfig | None = None) -> None:
        super().__init__(cfg)  # the trunk
        self.dropout = nn.Dropout(self.cfg.dropout)
        self.head = nn.Linear(2 * self.cfg.widths[-1], self.cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, r, r) in [-1, 1] (small overshoots are clipped) -> phi(x) (B, 2C) float32."""
        self.check_input(x)
        return self.trunk_features(x.clamp(-1.0, 1.0))[1].float()  # (B, 2C)

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
    ds = world_dataset(world, split=split, resolution=resolution, label=label)
    rows = [ds[i] for i in range(len(ds))]
    images = torch.stack([r["image"] for r in rows])  # (N, 3, r, r)
    labels = torch.tensor([int(r["class_id"]) for r in rows], dtype=torch.long)  # (N,)
    return images, labels, [r["caption"] for r in rows]


def class_names_of(world: str = "emoji", label: str = "group") -> tuple[str, ...]:
    """The class names of a labelled world, in class-id order."""
    if world != "emoji":
        raise unknown_name_error("labelled world", world, ("emoji",))
    return tuple(group_names() if label == "group" else subgroup_names())


def augment_world_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The training augmentation: random affine, colour jitter, then blur/noise (``augment.augment_batch``)."""
    x = random_affine(x, generator)
    x = colour_jitter(x, generator)
    return augment_batch(x, generator, p_blur=0.3, max_sigma=0.8, p_noise=0.3, max_noise=0.06)


# ----------------------------------------------------------------------------------------------------------------
# Training


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
    cosine decay to 2 % of lr (``fit_classifier``), loss = CE with label smoothing. Returns (model in eval mode, logs).
    """
    check_training_sizes(steps, batch_size)
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
    model, gen = seeded_model(WorldClassifier, cfg, seed, device)
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


def classifier_logits(model: WorldClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Float32 logits (N, K) on the CPU for any number of images, in chunks, on the model's device."""
    return batched_logits(model, images, batch_size)


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


def evaluate_world_classifier(model: WorldClassifier, split: str = "test",
                              transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
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
    return save_classifier(path, model, info=info, dtype=dtype, overwrite=overwrite)


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
    hint = ("Pass a world classifier's file (e.g. data/checkpoints/emoji32-features.safetensors); the shapes judge "
            "loads with load_attribute_classifier().")  # fmt: skip
    return load_classifier(path, WorldClassifier, hint, device)


# ----------------------------------------------------------------------------------------------------------------
# Command line: python -m ldm_minimal.evaluation.world_classifier


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m ldm_minimal.evaluation.world_classifier [flags]`` (``WorldClassifierCommand``); returns the metrics."""
    return WorldClassifierCommand().main(argv)


class WorldClassifierCommand(ClassifierCommand):
    """Train the emoji group classifier on the train split, evaluate it on the held-out test split, optionally ship."""

    prog = "python -m ldm_minimal.evaluation.world_classifier"  # the emoji classifier's own parts of the command

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", default="emoji32", choices=sorted(WORLD_CLASSIFIER_PRESETS))
        p.add_argument("--steps", type=int, default=1200)
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--lr", type=float, default=3e-3)
        p.add_argument("--weight-decay", type=float, default=0.05)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--no-augment", action="store_true")
        p.add_argument("--out", default="runs/world-classifier", help="run folder (metrics.json, last.safetensors)")
        p.add_argument("--ship", action="store_true", help="save to --checkpoint and record it in MANIFEST.json")
        p.add_argument("--checkpoint", default=None,
                       help="where --ship writes (default data/checkpoints/emoji32-features)")
        p.add_argument("--overwrite", action="store_true", help="let --ship replace an existing checkpoint")
        p.add_argument("--progress", action="store_true")

    def ship_path(self, args: argparse.Namespace) -> Path:
        return Path(args.checkpoint) if args.checkpoint else default_checkpoint("emoji")

    def train(self, args: argparse.Namespace) -> tuple[WorldClassifier, dict[str, Any]]:
        return train_world_classifier(
            args.preset, steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
            seed=args.seed, augment=not args.no_augment, progress=args.progress,
        )  # fmt: skip

    def load(self, path: Path) -> WorldClassifier:
        return load_world_classifier(path)

    def quality(self, args: argparse.Namespace, shipped: WorldClassifier) -> dict[str, Any]:
        """The held-out test split, the same degraded, and the training split (without its per-class figures)."""
        degrade = blur_and_noise(sigma=0.8, noise_std=0.05, seed=1)  # like soft, slightly noisy generated images
        return {
            "test": evaluate_world_classifier(shipped, "test"),
            "test_blur0.8_noise0.05": evaluate_world_classifier(shipped, "test", transform=degrade),
            "train": {k: v for k, v in evaluate_world_classifier(shipped, "train").items() if k != "per_class_top1"},
        }

    def settings(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
                "seed": args.seed, "augment": not args.no_augment}

    def manifest_extras(self, args: argparse.Namespace, model: WorldClassifier) -> dict[str, Any]:
        return {"label": model.cfg.label, "resolution": model.cfg.resolution, "eval_split": "test (every 10th emoji)"}


if __name__ == "__main__":
    main()
