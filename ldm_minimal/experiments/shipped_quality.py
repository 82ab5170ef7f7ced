"""The quality of the shipped models, measured the same way every time (what data/checkpoints/MANIFEST.json records).

    python -m ldm_minimal.experiments.shipped_quality --kind sr --checkpoint data/checkpoints/shapes32-sr.safetensors
    python -m ldm_minimal.experiments.shipped_quality --kind inpaint --checkpoint ... --out quality.json

- ``ae``       reconstruction PSNR / SSIM on 512 held-out shapes-32 pictures, and the attribute judge's accuracy on the
               reconstructions D(E(x)) of single-object pictures: the ceiling for any LDM on this first stage.
- ``sr``       x4 super-resolution (Sec. 4.4) of 8x8 area-downsampled held-out pictures: PSNR / SSIM against the
               ground truth, and the judge's shape-and-colour accuracy on the outputs, each next to bicubic.
- ``inpaint``  (Sec. 4.5) single-object pictures whose object is half covered by the hole (the left or right half
               of its box): can the model complete the shape in its colour? The judge's accuracy on the results,
               next to filling the hole with the background colour; PSNR inside the hole.
- ``class``    class-conditional synthesis (Sec. 4.3.1): one sample per held-out single-object picture's class
               (shape x colour); the judge's shape and colour accuracy.
- ``layout``   layout-to-image (Sec. 4.3.1, App. D.3): one sample per held-out single-object picture's layout (its
               object's class and pixel box); the judge's shape, colour, size and position accuracy, the last two
               being what a caption-conditioned model of this course does not learn (position at chance, 1 in 9).
- ``t2i``      see ``ldm_minimal.experiments.t2i_from_scratch`` (attribute accuracy for single-object prompts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ldm_minimal.autoencoder import load_autoencoder
from ldm_minimal.data import ShapesDataset, collate, shapes_preset
from ldm_minimal.data.shapes import BACKGROUND, class_id_for
from ldm_minimal.evaluation.attributes import attribute_accuracy, load_attribute_classifier
from ldm_minimal.evaluation.metrics import psnr, ssim
from ldm_minimal.experiments.common import TEST_SEED, sample_in_chunks, single_objects
from ldm_minimal.latent_diffusion_io import load_ldm
from ldm_minimal.pipelines import bicubic_upscale, class_to_image, inpaint, layout_to_image, upscale

N_EVAL = 256


def _judge(images: torch.Tensor, captions: list[str],
           keys: tuple[str, ...] = ("shape", "colour", "shape_and_colour", "size")) -> dict[str, float]:
    acc = attribute_accuracy(load_attribute_classifier(), images, captions)
    return {k: round(float(v), 4) for k, v in acc.items() if k in keys}


@torch.no_grad()
def ae_quality(path: str | Path, n: int = N_EVAL) -> dict[str, Any]:
    ae, _ = load_autoencoder(path)
    ds = ShapesDataset(shapes_preset("shapes32", seed=TEST_SEED), length=n)
    xm = collate([ds[i] for i in range(n)])["image"]
    xm_hat = ae.decode_latent(ae.encode_latent(xm, sample=False)).clamp(-1, 1)
    x, _, captions = single_objects(n)
    x_hat = ae.decode_latent(ae.encode_latent(x, sample=False)).clamp(-1, 1)
    return {"n": n, "psnr": round(float(psnr(xm_hat, xm).mean()), 2), "ssim": round(float(ssim(xm_hat, xm).mean()), 4),
            "psnr_single_object": round(float(psnr(x_hat, x).mean()), 2),
            "ssim_single_object": round(float(ssim(x_hat, x).mean()), 4),
            "judge_on_reconstructions": _judge(x_hat, captions)}


@torch.no_grad()
def sr_quality(path: str | Path, n: int = N_EVAL, steps: int = 50) -> dict[str, Any]:
    ldm, _ = load_ldm(path)
    x, _, captions = single_objects(n)
    low = torch.nn.functional.avg_pool2d(x, 4)  # (n, 3, 8, 8), as the model was trained
    out: dict[str, Any] = {"n": n, "ddim_steps": steps, "input": "8x8 area-downsampled held-out single-object"}
    sr = torch.cat([upscale(ldm, low[i:i + 128], steps=steps, generator=torch.Generator().manual_seed(i),
                            progress=False) for i in range(0, n, 128)])
    for name, y in (("ldm_sr", sr), ("bicubic", bicubic_upscale(low, 4))):
        out[name] = {"psnr": round(float(psnr(y, x).mean()), 2), "ssim": round(float(ssim(y, x).mean()), 4),
                     "judge": _judge(y, captions)}
    return out


def half_object_masks(objects: list[dict], size: int = 32) -> torch.Tensor:
    """(n, 1, size, size) holes covering the left (even i) or right (odd i) half of each object's box."""
    masks = torch.zeros(len(objects), 1, size, size)
    for i, o in enumerate(objects):
        x0, y0, x1, y1 = o["bbox"]
        mid = (x0 + x1) // 2
        if i % 2 == 0:
            masks[i, :, y0:y1, x0:mid] = 1.0
        else:
            masks[i, :, y0:y1, mid:x1] = 1.0
    return masks


@torch.no_grad()
def inpaint_quality(path: str | Path, n: int = N_EVAL, steps: int = 50) -> dict[str, Any]:
    ldm, _ = load_ldm(path)
    x, objects, captions = single_objects(n)
    m = half_object_masks(objects)
    filled = torch.cat([inpaint(ldm, x[i:i + 128], m[i:i + 128], steps=steps,
                                generator=torch.Generator().manual_seed(i), progress=False)
                        for i in range(0, n, 128)])
    bg = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1
    background_fill = x * (1 - m) + bg * m

    def hole_psnr(y: torch.Tensor) -> float:
        mse = (((y - x) / 2) ** 2 * m).sum() / (m.sum() * 3)
        return round(float(-10 * torch.log10(mse)), 2)

    return {"n": n, "ddim_steps": steps, "hole": "left or right half of the object's box",
            "ldm_inpaint": {"judge": _judge(filled, captions), "psnr_in_hole": hole_psnr(filled)},
            "background_fill": {"judge": _judge(background_fill, captions), "psnr_in_hole": hole_psnr(background_fill)}}


@torch.no_grad()
def class_quality(path: str | Path, n: int = N_EVAL, steps: int = 50) -> dict[str, Any]:
    ldm, _ = load_ldm(path)
    _, objects, captions = single_objects(n)
    ids = [class_id_for(o["shape"], o["colour"]) for o in objects]
    samples = sample_in_chunks(lambda a, b: class_to_image(ldm, ids[a:b], guidance=3.0, steps=steps, seed=a), n)
    return {"n": n, "ddim_steps": steps, "guidance": 3.0, "classes": "those of held-out single-object pictures",
            "judge": _judge(samples, captions, keys=("shape", "colour", "shape_and_colour"))}


@torch.no_grad()
def layout_quality(path: str | Path, n: int = N_EVAL, steps: int = 50) -> dict[str, Any]:
    ldm, _ = load_ldm(path)
    _, objects, captions = single_objects(n)
    layouts = [[{"shape": o["shape"], "colour": o["colour"], "bbox": list(o["bbox"])}] for o in objects]
    samples = sample_in_chunks(lambda a, b: layout_to_image(ldm, layouts[a:b], guidance=3.0, steps=steps, seed=a), n)
    return {"n": n, "ddim_steps": steps, "guidance": 3.0,
            "layouts": "one box each: the object of a held-out single-object picture",
            "judge": _judge(samples, captions, keys=("shape", "colour", "shape_and_colour", "size", "position", "all"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=["ae", "sr", "inpaint", "class", "layout"], required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=N_EVAL)
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    fn = {"ae": ae_quality, "sr": sr_quality, "inpaint": inpaint_quality, "class": class_quality,
          "layout": layout_quality}[args.kind]
    result = fn(args.checkpoint, n=args.n)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
