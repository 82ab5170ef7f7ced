"""An attribute classifier for the shapes world: the judge of text-to-image fidelity.

Why it exists
-------------
The paper judges its samples with networks trained on real data: FID and IS through Inception-v3 features, and
precision/recall with Dhariwal & Nichol's script (Sec. 4 and App. E.3; text-to-image in Sec. 4.3.1 and Tab. 2). Those numbers
say "the samples look like the data" but not "the sample shows what the prompt asked for". In our shapes world the
ground truth of every picture is known, so we can ask the sharper question directly: a small CNN, trained on real
renders only, reads back the four attributes of a single object,

    shape (5)   colour (8)   size (2)   position (9 cells of the 3x3 grid)

and a generated image x ~ D(z), z ~ p_theta(z | tau_theta(y)) counts as faithful to the prompt y when the judge's
reading of x equals the caption's (``attribute_accuracy``). The judge must itself be near-perfect on real held-out
pictures (>= 99%), otherwise its errors would be charged to the diffusion model. Its accuracy on reconstructions
D(E(x)) of the first stage is the ceiling any latent diffusion model on that autoencoder can reach (Sec. 3.1:
the generator can only produce what D can draw).

Architecture: the shared trunk of ``ldm_minimal.evaluation.classifier``, three levels of [Conv3x3 - GroupNorm -
SiLU] blocks (32 -> 16 -> 8 pixels), then
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
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm_minimal.autoencoder import load_autoencoder
from ldm_minimal.data.shapes import COLOUR_NAMES, POSITIONS, SHAPES, SIZES, parse_caption, render_sample, shapes_preset
from ldm_minimal.data.torch_datasets import image_to_tensor
from ldm_minimal.evaluation.augment import augment_batch, blur_and_noise
from ldm_minimal.evaluation.classifier import (ClassifierCommand, ClassifierConfig, ConvClassifier, batched_logits,
                                               check_training_sizes, fit_classifier, load_classifier, model_device,
                                               preset_config, save_classifier, seeded_model)
from ldm_minimal.utils import DATA_DIR, unknown_name_error

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
class AttributeClassifierConfig(ClassifierConfig):
    """A small CNN judge: ``ClassifierConfig``'s fields. ``widths`` are the channels of the three levels (resolution,
    /2, /4); size is judged in pixels at ``resolution``; ``world`` is the shapes preset it is trained and evaluated
    on (exactly one object per image)."""

    widths: tuple[int, ...] = (32, 48, 96)
    world: str = "single32"

    MIN_GRID: ClassVar[int] = 3  # the position head pools the last level onto the 3 x 3 grid
    MIN_GRID_USE: ClassVar[str] = "the position grid"


ATTRIBUTE_CLASSIFIER_PRESETS: dict[str, AttributeClassifierConfig] = {
    "shapes32": AttributeClassifierConfig(),
    "shapes64": AttributeClassifierConfig(widths=(32, 48, 96, 96), resolution=64, world="single64"),
    "tiny": AttributeClassifierConfig(widths=(8, 16), blocks_per_level=1, resolution=32),  # tests only
}


def attribute_classifier_config(name: str, **overrides) -> AttributeClassifierConfig:
    """A named preset ("shapes32", "shapes64", "tiny"), optionally with some fields replaced."""
    return preset_config(ATTRIBUTE_CLASSIFIER_PRESETS, "attribute classifier preset", name, **overrides)


# ----------------------------------------------------------------------------------------------------------------
# The model


class AttributeClassifier(ConvClassifier):
    """(B, 3, H, W) in [-1, 1] -> logits {"shape": (B, 5), "colour": (B, 8), "size": (B, 2), "position": (B, 9)}.

    A judge of samples in the spirit of the paper's Inception-based metrics (Sec. 4, App. E.3), but with labels we
    know: see the module docstring. Position logits are in the row-major order of ``POSITIONS``.
    """

    CONFIG = AttributeClassifierConfig
    CHECKPOINT_KIND = CHECKPOINT_KIND
    SIZE_NOTE = " (it judges size in pixels)"
    OTHER_RESOLUTION = "load a classifier trained at your resolution"
    cfg: AttributeClassifierConfig

    def __init__(self, cfg: AttributeClassifierConfig | None = None) -> None:
        super().__init__(cfg)  # the trunk
        c = self.cfg.widths[-1]
        # what: pooled over the whole picture (mean finds the colour mass, max finds the object's strongest response)
        self.shape_head = nn.Linear(2 * c, len(SHAPES))
        self.colour_head = nn.Linear(2 * c, len(COLOUR_NAMES))
        self.size_head = nn.Linear(2 * c, len(SIZES))
        # where: one score per grid cell from the features pooled over that cell
        self.position_head = nn.Conv2d(c, 1, kernel_size=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, r, r) in [-1, 1] -> the pooled trunk features the heads read, (B, 2C) float32.

        The feature space of FID, KID and precision/recall on this world (``ldm_minimal.evaluation.metrics``), in
        place of Inception's pool features, which cannot be downloaded offline.
        """
        self.check_input(x)
        return self.trunk_features(x)[1].float()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        h, pooled = self.trunk_features(x)  # (B, C, r/4, r/4), (B, 2C)
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
# Data and training


def render_single(
    indices: Sequence[int] | range, seed: int, world: str = "single32"
) -> tuple[torch.Tensor, list[list[dict]]]:
    """Render samples ``indices`` of the single-object world of ``seed``: images (B, 3, H, W) in [-1, 1], objects."""
    cfg = shapes_preset(world, seed=seed)
    samples = [render_sample(int(i), cfg) for i in indices]
    images = torch.stack([image_to_tensor(s.image) for s in samples])  # (B, 3, H, W)
    return images, [[o.as_dict() for o in s.objects] for s in samples]


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
    step * batch_size ... never repeat), with ``augment_batch``'s blur and noise on part of each batch. AdamW, linear
    warm-up then cosine decay (``fit_classifier``), loss = sum of the four cross-entropies. Returns (model in eval
    mode, logs {"step", "loss", "accuracy", "wall_time_s", ...})."""
    check_training_sizes(steps, batch_size)
    if seed == TEST_SEED:
        raise ValueError(
            f"seed={seed} is the held-out test world (TEST_SEED); train on another seed (default {TRAIN_SEED}) so that "
            "evaluation pictures are never seen in training."
        )
    cfg = attribute_classifier_config(cfg) if isinstance(cfg, str) else cfg
    model, gen = seeded_model(AttributeClassifier, cfg, seed, device)

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


# ----------------------------------------------------------------------------------------------------------------
# Judging


def logits_of(model: AttributeClassifier, images: torch.Tensor, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """Float32 logits for any number of images, in chunks, on the model's device (outputs on the CPU)."""
    return batched_logits(model, images, batch_size)


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
            x = transform(x.to(model_device(model))).float().clamp(-1.0, 1.0)
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


def save_attribute_classifier(path: str | Path, model: AttributeClassifier, info: dict[str, Any] | None = None,
                              dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Save weights + config (kind "attribute-classifier"); refuses to replace a file unless overwrite=True."""
    return save_classifier(path, model, info=info, dtype=dtype, overwrite=overwrite)


def load_attribute_classifier(
    path: str | Path | None = None, device: torch.device | str = "cpu"
) -> AttributeClassifier:
    """The judge from a checkpoint (default: the shipped data/checkpoints/shapes32-attributes.safetensors).

    Returns the model in float32 and eval mode; the file's metadata is kept as ``model.checkpoint_meta``.
    """
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    hint = (f"Pass the attribute classifier's file (default {DEFAULT_CHECKPOINT.name}); load autoencoders with "
            "load_autoencoder().")  # fmt: skip
    return load_classifier(path, AttributeClassifier, hint, device)


# ----------------------------------------------------------------------------------------------------------------
# Command line: python -m ldm_minimal.evaluation.attributes


class AttributesCommand(ClassifierCommand):
    """Train, evaluate (real held-out pictures and autoencoder reconstructions), write metrics.json, optionally ship."""

    prog = "python -m ldm_minimal.evaluation.attributes"  # the judge's own parts of classifier.ClassifierCommand

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
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

    def ship_path(self, args: argparse.Namespace) -> Path:
        return Path(args.checkpoint)

    def train(self, args: argparse.Namespace) -> tuple[AttributeClassifier, dict[str, Any]]:
        return train_attribute_classifier(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, augment=not args.no_augment,
            progress=not args.no_progress, cfg=args.preset,
        )  # fmt: skip

    def load(self, path: Path) -> AttributeClassifier:
        return load_attribute_classifier(path)

    def quality(self, args: argparse.Namespace, judge: AttributeClassifier) -> dict[str, Any]:
        """Real held-out pictures, the same degraded, and autoencoder reconstructions (unless --autoencoder '')."""
        quality: dict[str, Any] = {"real": evaluate_attribute_classifier(judge, n=args.n_eval)}
        # robustness: every held-out picture blurred (sigma 1 px, the augmentation's strongest) plus noise (std 0.05)
        degrade = blur_and_noise(sigma=1.0, noise_std=0.05, seed=TEST_SEED)
        quality["real_blur1_noise0.05"] = evaluate_attribute_classifier(judge, n=args.n_eval, transform=degrade)
        if args.autoencoder:
            ae, _ = load_autoencoder(args.autoencoder)

            def reconstruct(x: torch.Tensor) -> torch.Tensor:  # x_hat = D(E(x)), the posterior mode
                return ae.decode_latent(ae.encode_latent(x, sample=False))

            quality["autoencoder_reconstructions"] = {
                **evaluate_attribute_classifier(judge, n=args.n_eval, transform=reconstruct),
                "autoencoder": Path(args.autoencoder).name,
            }
        return quality

    def settings(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "train_seed": args.seed,
                "augment": not args.no_augment}

    def manifest_extras(self, args: argparse.Namespace, model: AttributeClassifier) -> dict[str, Any]:
        return {"train_seed": args.seed, "eval_seed": TEST_SEED}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m ldm_minimal.evaluation.attributes [flags]`` (``AttributesCommand``); returns the metrics."""
    return AttributesCommand().main(argv)


if __name__ == "__main__":
    main()
