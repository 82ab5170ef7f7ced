"""Sample quality of a latent diffusion model, or of a folder of pictures, on a data world: ``python -m ldm_minimal eval``.

The paper judges its generators by comparing generated and real images in the feature space of a network trained
on real data (Rombach et al., CVPR 2022, Sec. 4 and App. E.3):

    FID        = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))          (Gaussians fitted to the features)
    KID        = unbiased MMD^2 with the kernel k(a, b) = (a.b / D + 1)^3        (mean and std over random subsets)
    precision  = share of generated points inside the real k-NN manifold         (are the samples realistic?)
    recall     = share of real points inside the generated k-NN manifold         (is the data's variety covered?)

(all computed by ``ldm_minimal.evaluation.metrics``). The feature network works offline: the world's own small classifier,
trained on its real training pictures (``load_feature_classifier``: the attribute judge for the shapes worlds, the
emoji group classifier for emoji). ``classifier="inception"`` switches to the paper's
Inception-v3 features for users online (torch-fidelity; a clear error otherwise).

What is compared
----------------
* reference: n held-out real pictures of the world (the test split; for emoji all 192 test emoji at most).
* generated: n samples of the checkpoint, reproducible from ``seed``, conditioned on the held-out pictures:
  text models get their captions, class models their class ids, layout/semantic models their layouts/label maps,
  unconditional models nothing. Concatenation-conditioned restorers (super-resolution, inpainting) are measured
  against ground truth instead: ``python -m ldm_minimal.experiments.shipped_quality``.
* or a folder of PNG/JPG pictures (the first n in name order), e.g. samples written by ``python -m ldm_minimal sample``.

On top of FID/KID/precision/recall, conditional models get a fidelity check by the world's classifier: the shapes
judge's attribute accuracy (per attribute and shape+colour) for text and class models, the emoji classifier's group
accuracy next to its accuracy on the real reference pictures (its ceiling).

    python -m ldm_minimal eval --checkpoint data/checkpoints/shapes32-t2i.safetensors --world single32 --n 256 \\
        --seed 0 --out results.json

Read docs/evaluation.md before comparing numbers: FID depends on n (compare only at equal n), and none of these
figures is comparable with the paper's Inception-based ones. The command line itself (argparse, writing the JSON) is
``ldm_minimal.cli.evaluate``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from ldm_minimal.training.data import fixed_batch
from ldm_minimal.checkpoint import SHIPPED, resolve_checkpoint
from ldm_minimal.conditioning import TEXT_CONDITIONERS
from ldm_minimal.pipelines import GenerationError, class_to_image, sample_conditions, text_to_image, unconditional_samples
from ldm_minimal.checkpoint import read_metadata, sha256_of
from ldm_minimal.latent_diffusion_io import load_ldm
from ldm_minimal.data.shapes import COLOURS, parse_caption
from ldm_minimal.evaluation.attributes import DEFAULT_CHECKPOINT, attribute_accuracy, load_attribute_classifier, predict
from ldm_minimal.evaluation.classifier import machine_description
from ldm_minimal.evaluation.metrics import INCEPTION, fid, kid, precision_recall
from ldm_minimal.evaluation.world_classifier import (
    DEFAULT_CHECKPOINTS,
    classifier_logits,
    default_checkpoint,
    load_world_classifier,
)
from ldm_minimal.utils import resolve_device, unknown_name_error

SHAPES_FEATURE_WORLDS = ("shapes32", "single32")  # served by the shapes attribute judge (trained at 32 x 32)
FEATURE_WORLDS = (*SHAPES_FEATURE_WORLDS, *DEFAULT_CHECKPOINTS)  # every world with a shipped feature network
EVAL_WORLDS = FEATURE_WORLDS  # ("shapes32", "single32", "emoji"): the worlds with an offline feature network
RESOLUTION = 32  # the feature networks were trained at 32 x 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# the overview pictures that `sample` (grid.png) and `inpaint` / `upscale` (panel.png) write next to their samples
OVERVIEW_PICTURES = ("grid.png", "panel.png")
FEATURE_CHOICES = ("world", INCEPTION)
CONCAT_CONDITIONERS = {"lowres": "sr", "inpaint": "inpaint"}  # -> shipped_quality --kind
KID_SUBSETS = 50
PR_K = 3  # neighbours that define each set's manifold (Kynkaanniemi et al. 2019 use k = 3)


class EvaluationError(ValueError):
    """Bad input to ``evaluate`` (source, world, n, image files); the message names the problem and the fix."""


class FeatureNetworkUnavailable(RuntimeError):
    """The Inception features were asked for but cannot be loaded here (no torch-fidelity, or offline)."""


# ----------------------------------------------------------------------------------------------------------------
# The feature networks


def load_feature_classifier(world: str, device: torch.device | str = "cpu") -> nn.Module:
    """The shipped feature network of a world, with ``features(x) -> (B, D)`` and ``num_features``.

    "shapes32", "single32" -> the shapes attribute judge (data/checkpoints/shapes32-attributes.safetensors);
    "emoji" -> the emoji group classifier (data/checkpoints/emoji32-features.safetensors). The model gets a
    ``feature_name`` attribute (the file it came from) for reports.
    """
    if world in SHAPES_FEATURE_WORLDS:
        model: nn.Module = load_attribute_classifier(device=device)
        model.feature_name = f"{DEFAULT_CHECKPOINT.name} (shapes attribute judge, D={model.num_features})"
        return model
    if world in DEFAULT_CHECKPOINTS:
        model = load_world_classifier(default_checkpoint(world), device=device)
        model.feature_name = f"{DEFAULT_CHECKPOINTS[world]} ({world} {model.cfg.label} classifier, D={model.num_features})"
        return model
    raise unknown_name_error("world with a feature network", world, FEATURE_WORLDS)


# ----------------------------------------------------------------------------------------------------------------
# Inputs: the reference set, a folder of images, samples of a checkpoint


def _check_world(world: str) -> None:
    if world not in EVAL_WORLDS:
        raise unknown_name_error("evaluation world", world, EVAL_WORLDS)


def reference_set(world: str, n: int) -> dict[str, Any]:
    """n held-out real pictures of ``world`` (at most the whole test split) as a collated batch.

    Returns {"image": (m, 3, 32, 32) in [-1, 1], "caption": [m], "class_id": (m,), ...}; shapes worlds add
    "objects" (JSON) and "semantic" (m, 32, 32). m = n, except for emoji, whose test split holds 192 pictures.
    """
    _check_world(world)
    return fixed_batch(world, RESOLUTION, n)  # the test split: shapes seed + 1,000,000, emoji every 10th emoji


def image_folder_files(folder: str | Path) -> tuple[list[Path], list[str]]:
    """The sample pictures of ``folder`` in name order, and the names of the pictures left out.

    A folder written by ``sample`` / ``inpaint`` / ``upscale`` has a samples.json: only the pictures it lists as
    samples are used (its grid.png / panel.png and anything else are left out). Without one, every PNG/JPG is used
    except files named grid.png or panel.png.
    """
    folder = Path(folder)
    pictures = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    keep = None
    try:
        record = json.loads((folder / "samples.json").read_text())
        listed = {f["file"] for f in record["files"] if isinstance(f, dict) and isinstance(f.get("file"), str)}
        keep = listed or None
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no samples.json, or not one of ours: fall back to the names
    if keep is not None:
        used = [p for p in pictures if p.name in keep]
    else:
        used = [p for p in pictures if p.name.lower() not in OVERVIEW_PICTURES]
    return used, [p.name for p in pictures if p not in used]


def load_image_folder(folder: str | Path, n: int, resolution: int = RESOLUTION) -> tuple[torch.Tensor, list[str]]:
    """The first n PNG/JPG pictures of ``folder`` in name order -> ((n, 3, r, r) in [-1, 1], their file names).

    Only sample pictures are read (``image_folder_files``): the grid.png / panel.png of a folder written by the
    ``sample``, ``inpaint`` or ``upscale`` command are left out.

    Transparent pictures are composited onto white (as the emoji world does); grey ones become RGB.
    """
    from PIL import Image  # optional: only reading a folder of pictures needs it

    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder. Pass a folder of PNG/JPG pictures, or --checkpoint for a model.")
    files, skipped = image_folder_files(folder)
    if not files:
        raise EvaluationError(
            f"{folder} holds no PNG/JPG pictures. Write samples there first (e.g. `python -m ldm_minimal sample "
            f"--out {folder} ...`) or point --images at the folder that has them."
        )
    if len(files) < n:
        left_out = f" (left out: {', '.join(skipped[:4])}{' ...' if len(skipped) > 4 else ''})" if skipped else ""
        raise EvaluationError(
            f"{folder} holds {len(files)} sample pictures{left_out} but n={n}: pass --n {len(files)} (FID is only "
            "comparable at equal n), or add pictures."
        )
    images = []
    for path in files[:n]:
        with Image.open(path) as im:
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)
            im = im.convert("RGB")
            if im.size != (resolution, resolution):
                raise EvaluationError(
                    f"{path.name} is {im.size[0]}x{im.size[1]} pixels but the feature networks judge {resolution}x"
                    f"{resolution} pictures. Resize the pictures first (e.g. PIL: im.resize(({resolution}, "
                    f"{resolution}), Image.LANCZOS)), or generate them at {resolution}x{resolution}."
                )
            a = torch.from_numpy(np.array(im, dtype=np.float32))  # (H, W, 3) in [0, 255]
        images.append(a.permute(2, 0, 1) / 127.5 - 1.0)  # (3, H, W) in [-1, 1]
    return torch.stack(images), [p.name for p in files[:n]]


def _cycle(values: Sequence[Any], n: int) -> list[Any]:
    """values[0], values[1], ..., repeated until n items (the reference may be shorter than n)."""
    return [values[i % len(values)] for i in range(n)]


def _conditions(ldm: nn.Module, ref: dict[str, Any], n: int, world: str) -> tuple[str, dict[str, Any] | None]:
    """(mode, per-sample conditions) for n samples, taken from the held-out pictures in order (cycled)."""
    cond = ldm.cfg.conditioner
    if cond in CONCAT_CONDITIONERS:
        raise GenerationError(
            f"This checkpoint is a {cond!r}-conditioned restorer (concatenation conditioning, Sec. 4.4/4.5): it has no "
            "samples to compare with a data distribution. Measure it against ground truth with `python -m "
            f"ldm_minimal.experiments.shipped_quality --kind {CONCAT_CONDITIONERS[cond]} --checkpoint PATH`."
        )
    m = ref["image"].shape[0]
    if cond is None:
        return "unconditional", None
    if cond in TEXT_CONDITIONERS:
        return "text", {"caption": _cycle(ref["caption"], n)}
    if cond == "class":
        ids = ref["class_id"]
        if bool((ids < 0).any()):
            raise GenerationError(
                f"The {world!r} world's held-out pictures have no class ids for this class-conditional model (shapes "
                "class ids exist for single-object pictures only). Evaluate it with --world single32."
            )
        return "class", {"class_id": _cycle(ids.tolist(), n)}
    if cond in ("layout", "semantic"):
        if world not in SHAPES_FEATURE_WORLDS:
            raise GenerationError(f"A {cond!r} model needs the shapes world's held-out {cond}s: use --world shapes32.")
        key = "objects" if cond == "layout" else "semantic"
        values = ref[key] if cond == "layout" else [ref[key][i] for i in range(m)]
        return cond, {key: _cycle(values, n)}
    raise GenerationError(f"Cannot evaluate a model with conditioner={cond!r}; supported: text, class, layout, "
                          "semantic, unconditional.")


@torch.no_grad()
def sample_checkpoint(
    ldm: nn.Module, mode: str, conditions: dict[str, Any] | None, n: int, seed: int, steps: int, guidance: float,
    sampler: str, eta: float, batch: int, progress: bool = False,
) -> torch.Tensor:
    """n samples (n, 3, H, W) in [-1, 1] on the CPU, in chunks of ``batch``; chunk k draws its noise from the
    seed ``seed * 100_003 + k``, so a (seed, batch) pair always gives the same pictures."""
    out = []
    for k, start in enumerate(range(0, n, batch)):
        stop = min(n, start + batch)
        s = seed * 100_003 + k
        common = dict(steps=steps, sampler=sampler, eta=eta, seed=s, progress=progress)
        if mode == "text":
            x = text_to_image(ldm, conditions["caption"][start:stop], 1, guidance=guidance, **common)
        elif mode == "class":
            x = class_to_image(ldm, conditions["class_id"][start:stop], 1, guidance=guidance, **common)
        elif mode == "unconditional":
            x = unconditional_samples(ldm, stop - start, **common)
        elif mode == "layout":
            x = sample_conditions(ldm, {"objects": conditions["objects"][start:stop]}, guidance=guidance, size=None,
                                  n=stop - start, **common)
        else:  # semantic label maps (B, H, W)
            maps = torch.stack(conditions["semantic"][start:stop])
            x = sample_conditions(ldm, {"semantic": maps}, guidance=guidance, size=None, n=stop - start, **common)
        out.append(x.float().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------------
# Features


def _inception_network() -> nn.Module:
    """torchmetrics' Inception-v3 (FID weights via torch-fidelity), or one clear error when it cannot be had."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance  # heavy and optional (online Inception features)

        return FrechetInceptionDistance(feature=2048, normalize=True).inception
    except (ModuleNotFoundError, ImportError, OSError, RuntimeError) as e:
        raise FeatureNetworkUnavailable(
            "Inception features (--features inception / classifier='inception') need the torch-fidelity package and "
            "a one-time download of the FID Inception weights: `pip install torch-fidelity` with internet access (it "
            f"also needs a torchvision that matches your torch). The underlying error: {e}. Offline, leave the "
            "default (the world's own classifier, --features world)."
        ) from e


@torch.no_grad()
def _features(net: nn.Module, images: torch.Tensor, inception: bool, batch: int = 256) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, D) float64 features of the world classifier or of Inception."""
    out = []
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].float().clamp(-1, 1)
        if inception:  # torchmetrics' Inception takes uint8 pictures and resizes them to 299 itself
            out.append(net(((x + 1) * 127.5).round().to(torch.uint8)).double())
        else:
            out.append(net.features(x).double())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------------
# Fidelity to the condition


def _attribute_scores(images: torch.Tensor, mode: str, conditions: dict[str, Any]) -> dict[str, Any] | None:
    """The shapes judge's reading of the samples against what was asked (text: single-object captions; class)."""
    judge = load_attribute_classifier()
    if mode == "text":
        single = [i for i, c in enumerate(conditions["caption"]) if len(parse_caption(c)) == 1]
        if not single:
            return None
        out: dict[str, Any] = attribute_accuracy(judge, images[single], [conditions["caption"][i] for i in single])
        out["scored"] = "single-object captions" if len(single) < images.shape[0] else "all"
        return out
    if mode == "class":  # class id = shape index * number of colours + colour index
        ids = torch.tensor(conditions["class_id"])
        pred = predict(judge, images)
        shape_ok, colour_ok = pred["shape"] == ids // len(COLOURS), pred["colour"] == ids % len(COLOURS)
        return {"shape": float(shape_ok.float().mean()), "colour": float(colour_ok.float().mean()),
                "shape_and_colour": float((shape_ok & colour_ok).float().mean()), "n": int(ids.numel())}
    return None


def _group_scores(classifier: nn.Module, images: torch.Tensor, targets: list[int], ref: dict[str, Any]) -> dict:
    """The emoji classifier's top-1 agreement with the asked group, next to its accuracy on the real pictures."""
    asked = torch.tensor(targets)
    samples = classifier_logits(classifier, images).argmax(1) == asked
    real = classifier_logits(classifier, ref["image"]).argmax(1) == ref["class_id"]
    return {"samples": float(samples.float().mean()), "real": float(real.float().mean()), "n": int(asked.numel())}


# ----------------------------------------------------------------------------------------------------------------
# The evaluation


def _resolve_source(source: str | Path) -> tuple[str, Path]:
    """("images", folder) or ("checkpoint", file); shipped names ("t2i", "emoji", ...) are looked up."""
    p = Path(source)
    if p.is_dir():
        return "images", p
    if p.is_file():
        return "checkpoint", p
    if isinstance(source, str) and source in SHIPPED:
        return "checkpoint", resolve_checkpoint(None, source)
    raise EvaluationError(
        f"{source} is neither a checkpoint file, a folder of pictures nor a shipped model name "
        f"({', '.join(sorted(SHIPPED))}). Check the path."
    )


def evaluate(
    source: str | Path,
    world: str,
    n: int = 256,
    seed: int = 0,
    steps: int = 50,
    guidance: float = 3.0,
    sampler: str = "ddim",
    classifier: nn.Module | str | None = None,
    batch: int = 64,
    eta: float = 0.0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """FID, KID, precision/recall (+ attribute/group accuracy) of a checkpoint's samples or a folder's pictures.

    source: a latent diffusion checkpoint (.safetensors from save_ldm), a shipped name ("t2i", "emoji", ...) or a
        folder of 32x32 PNG/JPG pictures (the first n in name order are used).
    world: "shapes32", "single32" or "emoji": the reference pictures (n held-out real ones) and the feature network.
    n, seed: number of generated pictures and the seed of their noise (the same n, seed and batch give the same
        numbers). steps, guidance (classifier-free scale s), sampler ("ddim"/"ddpm"), eta: the sampler settings.
    classifier: None (the world's shipped classifier), "inception" (the paper's features; online only) or any module
        with ``features(x in [-1, 1]) -> (B, D)`` and ``num_features``.
    Returns a JSON-friendly dict (see docs/evaluation.md for every key).
    """
    t_start = time.perf_counter()
    _check_world(world)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise EvaluationError(f"n must be an integer >= 2 (FID fits a covariance to each set), got {n!r}; 256 or more "
                              "is usual, and numbers are only comparable at equal n.")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise EvaluationError(f"batch must be a positive integer (samples drawn at once), got {batch!r}.")
    kind, path = _resolve_source(source)
    dev = resolve_device(device)

    # ---- the feature network (checked first: a missing Inception must not cost a sampling run)
    world_net = load_feature_classifier(world)  # CPU: tiny, and torchmetrics feeds it CPU tensors
    if classifier is None or classifier == "world":
        net, inception, feature_name = world_net, False, world_net.feature_name
    elif classifier == INCEPTION:
        net, inception, feature_name = _inception_network(), True, "inception-v3 pool3 (torch-fidelity FID weights, D=2048)"
    elif isinstance(classifier, nn.Module):
        net, inception, feature_name = classifier, False, type(classifier).__name__
    else:
        raise EvaluationError(f"classifier must be None (the world's classifier), {INCEPTION!r} or a module with "
                              f"features()/num_features, got {classifier!r}.")

    ref = reference_set(world, n)
    real = ref["image"]
    result: dict[str, Any] = {"world": world}
    t_sample = time.perf_counter()
    if kind == "images":
        fake, names = load_image_folder(path, n)
        mode, conditions = "images", None
        result["source"] = {"images": str(path), "first": names[0], "last": names[-1], "pictures_used": len(names),
                            "left_out": image_folder_files(path)[1]}
        result.update(steps=None, guidance=None, sampler=None, eta=None)
    else:
        if read_metadata(path).get("kind") != "ldm":
            raise EvaluationError(f"{path} holds a {read_metadata(path).get('kind')!r}, not a latent diffusion model. "
                                  "Pass a checkpoint written by save_ldm (a training run's model.safetensors).")
        ldm, _ = load_ldm(path, dev)
        if int(ldm.cfg.image_size) != RESOLUTION:
            raise EvaluationError(
                f"{path} makes {ldm.cfg.image_size}x{ldm.cfg.image_size} pictures, but the {world!r} feature network "
                f"judges {RESOLUTION}x{RESOLUTION}: evaluate a 32x32 model, or downsample its samples to 32x32 and "
                "evaluate the folder (--images)."
            )
        mode, conditions = _conditions(ldm, ref, n, world)
        fake = sample_checkpoint(ldm, mode, conditions, n, seed, steps, float(guidance), sampler, eta, batch, progress)
        result["source"] = {"checkpoint": str(path), "sha256": sha256_of(path)[:16],
                            "conditioner": ldm.cfg.conditioner, "model_world": ldm.cfg.world}
        result.update(steps=steps, guidance=float(guidance) if mode != "unconditional" else None, sampler=sampler,
                      eta=eta)
        del ldm
    sampling_s = time.perf_counter() - t_sample

    # ---- FID, KID and precision/recall in the feature space
    metric_net: nn.Module | str = INCEPTION if inception else net
    fid_value = fid(real, fake, metric_net)
    subset = min(100, real.shape[0], fake.shape[0])
    kid_mean, kid_std = kid(real, fake, metric_net, subsets=KID_SUBSETS, subset_size=subset, seed=seed)
    k = min(PR_K, real.shape[0] - 1, fake.shape[0] - 1)
    pr = precision_recall(_features(net, real, inception), _features(net, fake, inception), k=k)

    result.update({
        "mode": mode, "n": n, "n_real": int(real.shape[0]), "seed": seed, "batch": batch,
        "features": feature_name,
        "fid": fid_value,
        "kid": {"mean": kid_mean, "std": kid_std, "subsets": KID_SUBSETS, "subset_size": subset},
        "precision": pr["precision"], "recall": pr["recall"], "pr_k": k,
    })  # fmt: skip
    # ---- fidelity to the condition, read by the world's classifier
    if world in SHAPES_FEATURE_WORLDS and mode in ("text", "class"):
        scores = _attribute_scores(fake, mode, conditions)
        if scores is not None:
            result["attribute_accuracy"] = scores
    if world == "emoji" and mode in ("text", "class"):
        targets = _cycle(ref["class_id"].tolist(), n) if mode == "text" else conditions["class_id"]
        result["group_accuracy"] = _group_scores(world_net, fake, targets, ref)
    result["sampling_time_s"] = round(sampling_s, 2)
    result["wall_time_s"] = round(time.perf_counter() - t_start, 2)
    result["machine"] = machine_description(dev)
    return result
