"""Command line: ``python -m ldm_minimal <command>``.

Commands
  demo        the main job: data-world samples and autoencoder reconstructions under outputs/
  train-ae    train a first-stage autoencoder (KL or VQ, any f) on a data world
  worlds      list the data worlds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .utils import DATA_DIR

SHIPPED_AE = DATA_DIR / "checkpoints" / "shapes32-kl-f4.safetensors"


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_autoencoder
    from .data import ShapesConfig, ShapesDataset, collate, world_dataset
    from .train_autoencoder import reconstruct
    from .utils import image_grid, save_image

    t0 = time.perf_counter()
    out = Path(args.out)
    torch.manual_seed(0)
    written = []
    # 1. The data worlds.
    for res in (32, 64):
        ds = ShapesDataset(ShapesConfig(resolution=res, seed=0), length=32)
        batch = collate([ds[i] for i in range(32)])
        written.append(save_image(image_grid(batch["image"], nrow=8), out / f"shapes{res}_samples.png"))
        (out / f"shapes{res}_captions.txt").write_text("\n".join(batch["caption"]) + "\n")
    emoji = world_dataset("emoji", split="train", resolution=64)
    idx = torch.randperm(len(emoji), generator=torch.Generator().manual_seed(0))[:32].tolist()
    batch = collate([emoji[i] for i in idx])
    written.append(save_image(image_grid(batch["image"], nrow=8), out / "emoji64_samples.png"))
    (out / "emoji64_captions.txt").write_text("\n".join(batch["caption"]) + "\n")
    # 2. The first stage: x (top rows) and D(E(x)) (bottom rows) on held-out shapes.
    model, meta = load_autoencoder(SHIPPED_AE)
    ds = ShapesDataset(ShapesConfig(resolution=32, seed=10_000), length=16)
    x = collate([ds[i] for i in range(16)])["image"]
    with torch.no_grad():
        x_hat = reconstruct(model.eval(), x)
    written.append(save_image(image_grid(torch.cat([x, x_hat]), nrow=16), out / "autoencoder_reconstructions.png"))
    print(f"Demo finished in {time.perf_counter() - t0:.1f} s. Pictures:")
    for p in written:
        print(f"  {p}")
    print(f"Autoencoder: {SHIPPED_AE.name} (f={model.f}, latent {model.latent_channels}x{32 // model.f}x{32 // model.f}); "
          "top row originals, bottom row reconstructions.")
    return 0


def cmd_train_ae(args: argparse.Namespace) -> int:
    import dataclasses

    from .train_autoencoder import AETrainConfig, train_autoencoder

    fields = {f.name for f in dataclasses.fields(AETrainConfig)}
    cfg = AETrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    _, summary = train_autoencoder(cfg, out_dir=args.out, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_worlds(args: argparse.Namespace) -> int:
    from .data import list_worlds

    for name in list_worlds():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ldm_minimal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="render data samples and autoencoder reconstructions to outputs/")
    d.add_argument("--out", default="outputs/demo")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train-ae", help="train a first-stage autoencoder")
    t.add_argument("--model", help="autoencoder preset, e.g. tiny-kl-f4, tiny-vq-f8, kl-f4")
    t.add_argument("--world", help="data world: shapes, emoji, hf:<repo>, folder:<path>, parquet:<path>")
    t.add_argument("--resolution", type=int)
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--perceptual", choices=["lpips", "lpips-random", "none"])
    t.add_argument("--disc-start", dest="disc_start", type=int)
    t.add_argument("--disc-ramp", dest="disc_ramp", type=int, help="steps over which the adversarial weight rises (0: at once)")
    t.add_argument("--disc-ndf", dest="disc_ndf", type=int, help="PatchGAN base width (reference: 64)")
    t.add_argument("--disc-n-layers", dest="disc_n_layers", type=int, help="PatchGAN depth (reference: 3)")
    t.add_argument("--no-adversarial", dest="adversarial", action="store_false", default=None)
    t.add_argument("--seed", type=int)
    t.add_argument("--device")
    t.add_argument("--out", required=True, help="run folder (metrics.jsonl, reconstructions.png, autoencoder.safetensors)")
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    t.set_defaults(func=cmd_train_ae)

    w = sub.add_parser("worlds", help="list the data worlds")
    w.set_defaults(func=cmd_worlds)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
