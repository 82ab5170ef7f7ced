"""Experiment 8, the text encoder tau_theta (paper Sec. 3.3 and 4.3.1): trained jointly, or a frozen pretrained one?

    python -m ldm_minimal.experiments.text_encoder            # two text-to-image LDMs, ~30 min on 2 cores
    python -m ldm_minimal.experiments.text_encoder --quick

The paper trains its transformer tau_theta jointly with the UNet (LDM-KL-8-G on LAION: a BERT-like encoder
trained from scratch); Stable Diffusion later froze a pretrained CLIP text encoder. Both go through the same
cross-attention, Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V with Q = W_Q phi(z_t), K = W_K tau(y), V = W_V tau(y).

Here two models that differ only in tau_theta train on ``single32-heldout``: single-object shapes-32 pictures in
which five colour-shape pairs never occur ("green star", "red heart", "blue triangle", "yellow square",
"purple circle"; an object drawn with such a pair takes the next allowed colour). Both models see every colour
and every shape, just never these pairs. Then both draw

- prompts of held-out pairs (e.g. "a large green star at the top left"): compositional generalisation;
- prompts of seen pairs: the control.

``text-joint``: a 2-layer transformer (width 64) over the world's word-level tokenizer, trained with the UNet;
``text-frozen``: all-MiniLM-L6-v2 (pretrained on a billion sentence pairs, 22M parameters, D = 384), frozen.
Scores: the judge's shape-and-colour accuracy (DDIM 50, guidance 3), and for held-out prompts how often the model
drew the *substitute* colour that the training data showed instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ldm_minimal.data import caption_for
from ldm_minimal.data.shapes import COLOUR_NAMES, HELD_OUT_COMBOS, render_sample, shapes_preset
from ldm_minimal.evaluation.attributes import VOCAB, attribute_accuracy, predict
from ldm_minimal.experiments.common import (CHECKPOINTS, RUNS_DIR, TEST_SEED, base_parser, judge, pyplot, save_figure,
                                            save_rows, setup, timer, write_result)
from ldm_minimal.latent_diffusion_io import load_ldm
from ldm_minimal.training import train, train_config

NAME = "text_encoder"
ENCODERS = {"joint": "shapes-t2i", "minilm": "shapes-t2i-minilm"}
WORLD = "single32-heldout"


def prompt_sets(n: int) -> dict[str, tuple[list[str], list[dict]]]:
    """n captions (and objects) of held-out single32 test pictures whose pair was held out, and n whose was not."""
    cfg = shapes_preset("single32", seed=TEST_SEED)
    sets: dict[str, tuple[list[str], list[dict]]] = {"held_out_pairs": ([], []), "seen_pairs": ([], [])}
    i = 0
    while min(len(v[0]) for v in sets.values()) < n:
        s = render_sample(i, cfg)
        o = s.objects[0].as_dict()
        key = "held_out_pairs" if f"{o['colour']} {o['shape']}" in HELD_OUT_COMBOS else "seen_pairs"
        if len(sets[key][0]) < n:
            sets[key][0].append(caption_for([o]))
            sets[key][1].append(o)
        i += 1
    return sets


def substitute(colour: str, shape: str) -> str:
    """The colour the training world drew instead of a held-out pair."""
    i = COLOUR_NAMES.index(colour)
    while f"{COLOUR_NAMES[i]} {shape}" in HELD_OUT_COMBOS:
        i = (i + 1) % len(COLOUR_NAMES)
    return COLOUR_NAMES[i]


def train_model(encoder: str, steps: int, first_stage: Path, run_root: Path) -> Path:
    out = run_root / encoder
    if (out / "summary.json").exists():
        return out
    cfg = train_config("cpu", "ldm", model=ENCODERS[encoder], world=WORLD, first_stage=str(first_stage), steps=steps,
                       warmup=min(200, steps // 4), sample_every=steps, ckpt_every=steps, progress=False)
    train(cfg, out, overwrite=True, command=f"python -m ldm_minimal train ldm --preset cpu --model {ENCODERS[encoder]} "
                                            f"--world {WORLD} --first-stage {first_stage} --steps {steps} --out {out}")
    return out


@torch.no_grad()
def score(model_path: Path, sets: dict, guidance: float, steps: int) -> tuple[dict, dict]:
    ldm, _ = load_ldm(model_path)
    out, pictures = {}, {}
    for name, (captions, objects) in sets.items():
        row: dict = {"n": len(captions)}
        with timer(row, "sampling_s"):
            fake = torch.cat([ldm.sample({"caption": captions[i:i + 128]}, steps=steps, guidance_scale=guidance,
                                         progress=False, generator=torch.Generator().manual_seed(i))
                              for i in range(0, len(captions), 128)])
        acc = attribute_accuracy(judge(), fake, captions)
        row.update({f"acc_{k}": round(float(acc[k]), 4) for k in ("shape_and_colour", "shape", "colour")})
        if name == "held_out_pairs":
            colours = [VOCAB["colour"][int(c)] for c in predict(judge(), fake)["colour"]]
            row["drew_substitute_colour"] = round(sum(
                c == substitute(o["colour"], o["shape"]) for c, o in zip(colours, objects)) / len(objects), 4)
        out[name] = row
        pictures[name] = (captions[:8], fake[:8])
    return out, pictures


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__, n=128)
    p.add_argument("--steps", type=int, default=1500, help="training steps of each model (batch 32)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--first-stage", type=Path, default=CHECKPOINTS / "shapes32-kl-f2.safetensors")
    p.add_argument("--run-root", type=Path, default=RUNS_DIR / NAME)
    args = p.parse_args(argv)
    setup(args)
    if args.quick:
        args.n, args.steps, args.sample_steps, args.run_root = 8, 3, 2, RUNS_DIR / f"{NAME}-quick"
    sets = prompt_sets(args.n)
    result: dict = {"world": WORLD, "steps": args.steps, "batch_size": 32, "first_stage": str(args.first_stage),
                    "guidance": args.guidance, "sampler": f"DDIM {args.sample_steps}", "models": {}}
    pictures = {}
    with timer(result):
        for enc in ENCODERS:
            run = train_model(enc, args.steps, args.first_stage, args.run_root)
            summary = json.loads((run / "summary.json").read_text())
            scores, pictures[enc] = score(run / "model.safetensors", sets, args.guidance, args.sample_steps)
            result["models"][enc] = {"preset": ENCODERS[enc], "run": str(run), "train_wall_s": summary["wall_time_s"],
                                     "train_images_per_s": summary["images_per_s"],
                                     "parameters_trained": summary["parameters_trained"], **scores}
            print(enc, result["models"][enc])
    write_result(NAME, result, args.out_dir, argv)
    figure(result, pictures, args.out_dir)
    return result


def figure(result: dict, pictures: dict, out_dir) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.4))
    encs = list(result["models"])
    for k, (name, label) in enumerate((("seen_pairs", "seen pairs"), ("held_out_pairs", "held-out pairs"))):
        vals = [result["models"][e][name]["acc_shape_and_colour"] for e in encs]
        ax.bar([i + 0.38 * k for i in range(len(encs))], vals, width=0.36, label=label)
    ax.set_xticks([i + 0.19 for i in range(len(encs))], [f"{e} ({result['models'][e]['preset']})" for e in encs])
    ax.set(ylabel="judge: shape and colour", ylim=(0, 1), title="does the model draw the pair it was asked for?")
    ax.legend()
    save_figure(fig, NAME, out_dir)
    captions = pictures[encs[0]]["held_out_pairs"][0]
    rows = [(f"{e}: held-out pairs", pictures[e]["held_out_pairs"][1]) for e in encs]
    title = "prompts: " + "; ".join(c.replace("a ", "", 1) for c in captions[:4]) + " ..."
    save_rows(rows, f"{NAME}_samples", out_dir, title=title)


if __name__ == "__main__":
    main()
    sys.exit(0)
