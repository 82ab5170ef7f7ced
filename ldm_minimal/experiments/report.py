"""docs/results.md from the experiments' JSON files: the paper's claim, our measurement, and whether it holds.

    python -m ldm_minimal.experiments.report            # reads docs/results/<experiment>.json
    python -m ldm_minimal.experiments.report --quick    # reads docs/results/quick/, writes docs/results/quick/results.md

Every number in the page comes from a JSON file an experiment script wrote; every verdict comes from a rule written
here next to the claim (``holds`` / ``partly`` / ``does not hold``), so a re-run with other numbers rewrites the
verdicts too. Where a claim does not reproduce, the section says what we think the reason is (CPU scale).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from ldm_minimal.experiments.common import RESULTS_DIR
from ldm_minimal.utils import REPO_ROOT

HOLDS, PARTLY, NO, MISSING = "holds", "partly", "does not hold", "not run"


def _verdict(ok: int, total: int) -> str:
    return HOLDS if ok == total else (NO if ok == 0 else PARTLY)


def _mins(s: float | None) -> str:
    return "?" if s is None else f"{s / 60:.1f} min"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def _footer(r: dict, figures: list[str]) -> str:
    pics = "\n\n".join(f"![{f}](results/{f})" for f in figures)
    return (f"\n\nCommand: `{r['command']}` · machine: {r['machine']} · wall time {_mins(r.get('wall_time_s'))}"
            f"\n\n{pics}")


# ---------------------------------------------------------------------------------------------------------------
# One function per experiment: (claim, measurement in one line, verdict, markdown section)


def _table8_counts(r: dict) -> tuple[int, int, int, int, dict]:
    by = {(x["kind"], x["f"]): x for x in r["rows"]}
    fs = sorted({x["f"] for x in r["rows"]})
    steps = [(k, a, b) for k in ("kl", "vq") for a, b in zip(fs, fs[1:]) if (k, a) in by and (k, b) in by]
    falls = sum(by[k, a]["psnr"] > by[k, b]["psnr"] for k, a, b in steps)
    both = [f for f in fs if ("kl", f) in by and ("vq", f) in by]
    kl_wins = sum(by["kl", f]["psnr"] > by["vq", f]["psnr"] for f in both)
    return falls, len(steps), kl_wins, len(both), by


def _table8_table(r: dict) -> str:
    return _table(["model", "f", "latent", "compression", "params", "PSNR", "SSIM", "LPIPS (offline)", "rFID",
                   "judge on D(E(x))", "train"],
                  [[x["model"], x["f"], x["latent"], f"{x['compression']}x", f"{x['parameters'] / 1e6:.2f}M",
                    x["psnr"], x["ssim"], x["lpips_offline"], x["rfid"], f"{100 * x['judge_shape_and_colour']:.1f}%",
                    _mins(x["train_wall_s"])] for x in r["rows"]])


def table8(r: dict) -> tuple[str, str, str, str]:
    claim = "Reconstruction quality falls as f grows; at equal f a KL first stage reconstructs better than a VQ one."
    budgets = [r] + ([r["_longer"]] if "_longer" in r else [])
    falls = pairs = kl_wins = both = 0
    parts = []
    for b in budgets:
        fa, pa, kw, bo, by = _table8_counts(b)
        falls, pairs, kl_wins, both = falls + fa, pairs + pa, kl_wins + kw, both + bo
        kl_psnr = " / ".join(str(by["kl", f]["psnr"]) for f in sorted({x["f"] for x in b["rows"]}) if ("kl", f) in by)
        parts.append(f"{b['steps']} steps: PSNR falls in {fa} of {pa} steps from f to 2f, KL beats VQ at {kw} of {bo} "
                     f"f (KL {kl_psnr} dB)")
    verdict = HOLDS if falls == pairs and kl_wins == both else (PARTLY if falls + kl_wins > 0 else NO)
    body = (f"Every autoencoder: the `cpu` recipe of `train ae` (L1 + offline LPIPS, batch {r['batch_size']}, "
            f"{r['world']}), scored on {r['n_eval']} held-out single-object pictures. rFID: FID between D(E(x)) and x "
            "on the judge's features. \"judge on D(E(x))\": the share of reconstructions whose shape and colour the "
            "attribute judge still reads correctly, the ceiling of any LDM on that first stage.")
    figures = ["table8.png", "table8_reconstructions.png"]
    for b in budgets:
        body += f"\n\n**{b['steps']} training steps** (wall time {_mins(b.get('wall_time_s'))}):\n\n{_table8_table(b)}"
    if "_longer" in r:
        figures += ["table8_600.png", "table8_600_reconstructions.png"]
    return claim, "; ".join(parts), verdict, body + _footer(r, figures)


def ldm_f(r: dict) -> tuple[str, str, str, str]:
    claim = ("LDM-1 (pixels) trains slowly; moderate compression (LDM-4 to 16 on ImageNet) reaches good FID fastest; "
             "too much compression (LDM-32 there; the largest f here is 16 on 32x32 pictures) plateaus early at a "
             "worse FID.")
    models = {m["f"]: m for m in r["models"]}
    final = {f: m["curve"][-1]["fid"] for f, m in models.items()}
    best = min(final, key=final.get)
    first = {f: m["curve"][0]["fid"] for f, m in models.items()}
    checks = []
    if 1 in final:
        checks.append(final[1] > final[best] and best != 1)  # the pixel model is not the best at equal steps
    big = max(final)
    if big != best:
        m = models[big]["curve"]
        half = m[len(m) // 2]["fid"]
        checks.append(final[big] > final[best] and (half - final[big]) < (first[big] - half) + 1e-9)  # flattening
    mid_best = best in (2, 4, 8)
    checks.append(mid_best)
    verdict = _verdict(sum(checks), len(checks))
    meas = (f"final FID at {r['steps']} steps: " + ", ".join(f"LDM-{f} {final[f]}" for f in sorted(final))
            + f"; best LDM-{best}")
    rows = []
    for f in sorted(models):
        m = models[f]
        rows.append([f"LDM-{f}", m["unet_parameters"], m["train_images_per_s"], _mins(m["train_wall_s"])]
                    + [f"{c['fid']} / {100 * c['acc_shape_and_colour']:.0f}%" for c in m["curve"]])
    steps = [c["step"] for c in r["models"][0]["curve"]]
    table = _table(["model", "UNet params", "train img/s", "train time"] + [f"FID / acc @ {s}" for s in steps], rows)
    body = (f"Class-conditional, {r['world']}, batch {r['batch_size']}, same `tiny` UNet and schedule for every f; "
            f"{r['n']} samples per checkpoint ({r['sampler']}) for the classes of {r['n']} held-out pictures; "
            f"FID between two disjoint real sets of this size: {r['real_floor_fid']}. \"acc\": the judge reads the "
            f"class's shape and colour.\n\n{table}")
    return claim, meas, verdict, body + _footer(r, ["ldm_f.png", "ldm_f_samples.png"])


def throughput(r: dict) -> tuple[str, str, str, str]:
    claim = ("LDMs train and sample faster than the pixel DM (at least 2.7x, Tab. 6), and reach a better FID after the same "
             "training (Fig. 7, Tab. 6; App. D.5, Fig. 17 for equal V100 days).")
    rows = {x["f"]: x for x in r["rows"]}
    latent = [f for f in (4, 8) if f in rows]
    speed = [rows[f].get("train_speedup_vs_pixel", 0) > 1 and rows[f].get("sample_speedup_vs_pixel", 0) > 1
             for f in latent]
    eq = r.get("fid_at_equal_wall_time", [])
    better = [all((row.get(f"fid_f{f}") is not None and row[f"fid_f{f}"] < row["fid_f1"]) for f in latent)
              for row in eq if row.get("fid_f1") is not None]
    checks = speed + ([all(better)] if better else [])
    verdict = _verdict(sum(checks), len(checks))
    meas = ", ".join(f"LDM-{f}: training x{rows[f].get('train_speedup_vs_pixel')}, sampling "
                     f"x{rows[f].get('sample_speedup_vs_pixel')}" for f in latent)
    if better:
        meas += f"; better FID than the pixel DM at {sum(better)} of {len(better)} equal-time points"
    t1 = _table(["model", "latent", "train img/s", "sample img/s", "train speed-up", "sample speed-up"],
                [[f"LDM-{x['f']}" if x["f"] > 1 else "pixel DM (f=1)", x["latent"], x["train_images_per_s"],
                  x["sample_images_per_s"], x.get("train_speedup_vs_pixel"), x.get("sample_speedup_vs_pixel")]
                 for x in r["rows"]])
    t2 = ""
    if eq:
        keys = [k for k in eq[0] if k.startswith("fid_f")]
        t2 = "\n\nFID reached by each model by the time the pixel DM is evaluated (its steps in brackets):\n\n" + _table(
            ["wall time"] + [k.replace("fid_f", "LDM-") for k in keys],
            [[_mins(row["wall_time_s"])] + [f"{row[k]} ({row[k.replace('fid', 'step')]})" if row[k] is not None
                                            else "-" for k in keys] for row in eq])
    body = (f"Measured back to back in one process: training at batch {r['train_batch']} (forward through E, UNet, "
            f"backward, AdamW), sampling at batch {r['sample_batch']} ({r['sampler']}, decoder included).\n\n{t1}{t2}")
    return claim, meas, verdict, body + _footer(r, ["throughput.png"])


def guidance(r: dict) -> tuple[str, str, str, str]:
    claim = ("Classifier-free guidance (s > 1) improves sample quality markedly over s = 1; larger s trades "
             "diversity (recall) for fidelity (precision) (Tab. 10); the paper reports no scale past its best.")
    rows = r["rows"]
    by = {x["guidance"]: x for x in rows}
    best = min(rows, key=lambda x: x["fid"])
    top = max(rows, key=lambda x: x["guidance"])
    checks = [best["guidance"] > 1 and best["fid"] < by[1.0]["fid"],
              max(x["acc_shape_and_colour"] for x in rows if x["guidance"] > 1) > by[1.0]["acc_shape_and_colour"],
              top["fid"] > best["fid"], top["recall"] < by[1.0]["recall"]]
    verdict = _verdict(sum(checks), len(checks))
    meas = (f"FID {by[1.0]['fid']} at s=1, best {best['fid']} at s={best['guidance']:g}, {top['fid']} at "
            f"s={top['guidance']:g}; shape+colour {100 * by[1.0]['acc_shape_and_colour']:.1f}% -> "
            f"{100 * max(x['acc_shape_and_colour'] for x in rows):.1f}%; recall {by[1.0]['recall']} -> {top['recall']}")
    table = _table(["s", "FID", "KID x1000", "precision", "recall", "shape+colour", "size", "sampling"],
                   [[f"{x['guidance']:g}", x["fid"], f"{x['kid_x1000']} ± {x['kid_std_x1000']}", x["precision"],
                     x["recall"], f"{100 * x['acc_shape_and_colour']:.1f}%", f"{100 * x['acc_size']:.1f}%",
                     f"{x['sampling_s']:.0f} s"] for x in rows])
    body = (f"`{Path(r['checkpoint']).name}`, {r['n']} {r['prompts']}, {r['sampler']}, the same seeds at every s. "
            f"Real-vs-real FID at this n: {r['real_floor_fid']}.\n\n{table}")
    return claim, meas, verdict, body + _footer(r, ["guidance.png", "guidance_samples.png"])


def samplers(r: dict) -> tuple[str, str, str, str]:
    claim = ("DDIM with 50-250 steps matches ancestral DDPM with 1000 steps at a fraction of the cost (why the "
             "paper samples with DDIM); very few steps cost quality.")
    rows = r["rows"]
    ddpm = next((x for x in rows if x["sampler"] == "ddpm"), None)
    d50 = next((x for x in rows if x["sampler"] == "ddim" and x["steps"] == 50 and x["eta"] == 0), None)
    ddim = {(x["steps"], x["eta"]): x for x in rows if x["sampler"] == "ddim"}
    checks, meas = [], ""
    if ddpm and d50:
        tol = max(0.03, 2 * (d50["acc_shape_and_colour"] * (1 - d50["acc_shape_and_colour"]) / d50["n"]) ** 0.5)
        checks.append(d50["acc_shape_and_colour"] >= ddpm["acc_shape_and_colour"] - tol)
        checks.append(d50["ms_per_image"] * 5 < ddpm["ms_per_image"])
        meas = (f"DDIM 50 (eta 0): FID {d50['fid']}, shape+colour {100 * d50['acc_shape_and_colour']:.1f}%, "
                f"{d50['ms_per_image']:.0f} ms/image; DDPM 1000: FID {ddpm['fid']}, "
                f"{100 * ddpm['acc_shape_and_colour']:.1f}%, {ddpm['ms_per_image']:.0f} ms/image")
    short = [(eta, ddim[10, eta], ddim[50, eta]) for eta in (0.0, 1.0) if (10, eta) in ddim and (50, eta) in ddim]
    if short:
        checks.append(any(a["fid"] > b["fid"] for _, a, b in short))  # 10 steps worse than 50 for some eta
        meas += "; DDIM 10 against 50: " + ", ".join(f"FID {a['fid']} vs {b['fid']} (eta {eta:g})" for eta, a, b in short)
    verdict = _verdict(sum(checks), len(checks)) if checks else MISSING
    table = _table(["sampler", "steps", "eta", "FID", "KID x1000", "precision", "recall", "shape+colour",
                    "ms / image"],
                   [[x["sampler"].upper(), x["steps"], f"{x['eta']:g}", x["fid"],
                     f"{x['kid_x1000']} ± {x['kid_std_x1000']}", x["precision"], x["recall"],
                     f"{100 * x['acc_shape_and_colour']:.1f}%", f"{x['ms_per_image']:.0f}"] for x in rows])
    body = (f"`{Path(r['checkpoint']).name}`, {r['n']} held-out captions, guidance s = {r['guidance']:g}, the same "
            f"seeds everywhere. Real-vs-real FID at this n: {r['real_floor_fid']}.\n\n{table}")
    return claim, meas, verdict, body + _footer(r, ["samplers.png"])


def super_resolution(r: dict) -> tuple[str, str, str, str]:
    claim = ("LDM-SR beats the simple baseline on FID, while PSNR/SSIM can favour a regression-like baseline "
             "that averages the plausible answers (Tab. 5).")
    a, b = r["ldm_sr"], r["bicubic"]
    fid_win = a["fid"] < b["fid"]
    pix = [b["psnr"] > a["psnr"], b["ssim"] > a["ssim"]]
    verdict = HOLDS if fid_win and all(pix) else (PARTLY if fid_win else NO)
    meas = (f"FID {a['fid']} vs bicubic {b['fid']}; PSNR {a['psnr']} vs {b['psnr']} dB; SSIM {a['ssim']} vs "
            f"{b['ssim']}")
    table = _table(["method", "PSNR", "SSIM", "LPIPS (offline)", "FID", "KID x1000", "shape+colour"],
                   [[name, x["psnr"], x["ssim"], x["lpips_offline"], x["fid"], x["kid_x1000"],
                     f"{100 * x['acc_shape_and_colour']:.1f}%"] for name, x in (("LDM-SR", a), ("bicubic", b))])
    body = (f"`{Path(r['checkpoint']).name}`, {r['n']} {r['input']}, {r['sampler']}. Real-vs-real FID at this n: "
            f"{r['real_floor_fid']}.\n\n{table}")
    return claim, meas, verdict, body + _footer(r, ["super_resolution.png"])


def inpainting(r: dict) -> tuple[str, str, str, str]:
    claim = ("(Course hypothesis; the paper's Tab. 7 compares trained inpainting models only) A latent diffusion model trained for inpainting beats training-free and trivial fills on FID and "
             "LPIPS (Tab. 7).")
    checks, parts, body = [], [], ""
    for res_all in [r] + ([r["_other_world"]] if "_other_world" in r else []):
        rows = []
        world = res_all.get("world", "single32")
        for kind, res in res_all["masks"].items():
            ours = res["ldm_inpaint"]
            others = [res[k] for k in ("training_free", "mean_fill")]
            checks += [all(ours["fid"] < o["fid"] for o in others),
                       all(ours["lpips_offline"] < o["lpips_offline"] for o in others)]
            parts.append(f"{world} {kind}: FID {ours['fid']} vs {res['training_free']['fid']} (training-free) and "
                         f"{res['mean_fill']['fid']} (mean fill)")
            for name in ("ldm_inpaint", "training_free", "mean_fill"):
                x = res[name]
                acc = x.get("acc_shape_and_colour")
                rows.append([kind, f"{100 * res['hole_fraction']:.0f}%", name, x["fid"], x["kid_x1000"],
                             x["lpips_offline"], x["psnr_in_hole"], "-" if acc is None else f"{100 * acc:.1f}%"])
        what = ("single-object pictures (the world the text-to-image model was trained on)" if world == "single32"
                else "1-3-object shapes-32 pictures (the world the inpainting model was trained on; no judge)")
        body += (f"\n\n**{res_all['n']} held-out {what}** per mask family (wall time "
                 f"{_mins(res_all.get('wall_time_s'))}, `{res_all['command']}`):\n\n"
                 + _table(["mask", "hole", "method", "FID", "KID x1000", "LPIPS (offline)", "PSNR in hole",
                           "shape+colour"], rows))
    verdict = _verdict(sum(checks), len(checks))
    head = (f"{r['sampler']}; inpainting model `{Path(r['inpaint_checkpoint']).name}`, training-free baseline on "
            f"`{Path(r['training_free_model']).name}`.")
    figures = ["inpainting.png"] + (["inpainting_shapes32.png"] if "_other_world" in r else [])
    return claim, "; ".join(parts), verdict, head + body + _footer(r, figures)


def text_encoder(r: dict) -> tuple[str, str, str, str]:
    claim = ("(Design question, Sec. 3.3 vs Stable Diffusion) A tau_theta trained jointly from scratch suffices "
             "for conditioning; does it, or a frozen pretrained encoder, compose unseen colour-shape pairs?")
    ms = r["models"]
    parts = [f"{e}: held-out pairs {100 * m['held_out_pairs']['acc_shape_and_colour']:.1f}% vs seen "
             f"{100 * m['seen_pairs']['acc_shape_and_colour']:.1f}%" for e, m in ms.items()]
    compose = [m["held_out_pairs"]["acc_shape_and_colour"] >= 0.5 for m in ms.values()]
    verdict = f"{sum(compose)} of {len(compose)} encoders compose (>= 50% on held-out pairs)"
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    table = _table(["encoder", "preset", "trained params", "train", "seen: shape+colour", "held-out: shape+colour",
                    "seen: colour", "held-out: colour", "seen: shape", "held-out: shape",
                    "held-out: drew the substitute colour"],
                   [[e, m["preset"], f"{m['parameters_trained'] / 1e6:.2f}M", _mins(m["train_wall_s"]),
                     pct(m["seen_pairs"]["acc_shape_and_colour"]), pct(m["held_out_pairs"]["acc_shape_and_colour"]),
                     pct(m["seen_pairs"]["acc_colour"]), pct(m["held_out_pairs"]["acc_colour"]),
                     pct(m["seen_pairs"]["acc_shape"]), pct(m["held_out_pairs"]["acc_shape"]),
                     pct(m["held_out_pairs"]["drew_substitute_colour"])] for e, m in ms.items()])
    body = (f"Two models that differ only in tau_theta, {r['steps']} steps of batch {r['batch_size']} on "
            f"`{r['world']}` (first stage `{Path(r['first_stage']).name}`), {r['sampler']}, guidance {r['guidance']:g}; "
            f"judge's shape-and-colour accuracy.\n\n{table}")
    return claim, "; ".join(parts), verdict, body + _footer(r, ["text_encoder.png", "text_encoder_samples.png"])


def high_resolution(r: dict) -> tuple[str, str, str, str]:
    claim = ("Convolutional sampling beyond the training size works for spatially conditioned models (SR, "
             "semantic synthesis, Fig. 9); for its text model the paper needs the rescaled latent and guidance (Fig. 13).")
    t, s = r["t2i"], r["sr"]
    sr_big = s.get("16->64", {})
    checks = [sr_big.get("ldm_sr", {}).get("psnr", 0) > sr_big.get("bicubic", {}).get("psnr", 1e9),
              t["64x64"]["exactly_one_object"] < t["32x32"]["exactly_one_object"]]
    verdict = _verdict(sum(checks), len(checks))
    meas = (f"SR 16->64: PSNR {sr_big['ldm_sr']['psnr']} vs bicubic {sr_big['bicubic']['psnr']} dB; t2i single-object "
            f"prompts: one object in {100 * t['32x32']['exactly_one_object']:.0f}% of 32x32 samples, "
            f"{100 * t['64x64']['exactly_one_object']:.0f}% at 64x64 (mean {t['64x64']['mean_objects']} objects)")
    t1 = _table(["size", "mean objects", "exactly one object", "judge (downsampled to 32)", "sampling"],
                [[k, v["mean_objects"], f"{100 * v['exactly_one_object']:.0f}%",
                  f"{100 * v['judge_shape_and_colour_at_32']:.1f}%", f"{v['sampling_s']:.0f} s"]
                 for k, v in t.items() if isinstance(v, dict)])
    t2 = _table(["SR", "LDM-SR PSNR", "bicubic PSNR", "LDM-SR SSIM", "bicubic SSIM"],
                [[k, v["ldm_sr"]["psnr"], v["bicubic"]["psnr"], v["ldm_sr"]["ssim"], v["bicubic"]["ssim"]]
                 for k, v in s.items() if isinstance(v, dict)])
    body = (f"{r['n']} prompts / pictures, {r['sampler']}. Real 32x32 pictures hold {t.get('real_32x32_mean_objects')} "
            f"objects on average by the same count.\n\nText-to-image (`shapes32-t2i`, trained at 32x32):\n\n{t1}\n\n"
            f"x4 super-resolution (`shapes32-sr`, trained 8->32):\n\n{t2}")
    return claim, meas, verdict, body + _footer(r, ["high_resolution_t2i.png", "high_resolution_sr.png"])


EXPERIMENTS: list[tuple[str, str, Callable[[dict], tuple[str, str, str, str]]]] = [
    ("table8", "1. Table 8: first stages against f", table8),
    ("ldm_f", "2. Figure 6: LDM-f against training steps", ldm_f),
    ("throughput", "3. Figure 7 / Table 6: pixel DM against LDMs in wall time", throughput),
    ("guidance", "4. Classifier-free guidance", guidance),
    ("samplers", "5. Samplers: DDIM against DDPM", samplers),
    ("super_resolution", "6. Super-resolution x4 against bicubic", super_resolution),
    ("inpainting", "7. Inpainting against training-free and trivial fills", inpainting),
    ("text_encoder", "8. Text encoder: joint against frozen MiniLM on held-out pairs", text_encoder),
    ("high_resolution", "9. Beyond the training size", high_resolution),
]


def build(results_dir: Path, notes: dict[str, str] | None = None) -> str:
    notes = notes or NOTES
    summary, sections, total = [], [], 0.0
    for name, title, fn in EXPERIMENTS:
        path = results_dir / f"{name}.json"
        if not path.exists():
            summary.append([title, "", "", MISSING])
            sections.append(f"## {title}\n\nNot run yet: `python -m ldm_minimal.experiments.{name}`.")
            continue
        r = json.loads(path.read_text())
        total += r.get("wall_time_s", 0.0)
        for suffix, key in (("_600", "_longer"), ("_shapes32", "_other_world")):  # a second budget / world
            extra = results_dir / f"{name}{suffix}.json"
            if extra.exists():
                r[key] = json.loads(extra.read_text())
                total += r[key].get("wall_time_s", 0.0)
        claim, meas, verdict, body = fn(r)
        summary.append([title, claim, meas, f"**{verdict}**"])
        note = notes.get(name, "")
        sections.append(f"## {title}\n\n**Paper:** {claim}\n\n**Here:** {meas}. **Verdict: {verdict}.**"
                        + (f"\n\n{note}" if note else "") + f"\n\n{body}")
    head = (
        "# The paper's claims in miniature\n\n"
        "Generated by `python -m ldm_minimal.experiments.report` from the JSON files under `docs/results/`, which "
        "the experiment scripts write (`python -m ldm_minimal.experiments` runs all nine, then this report). Each "
        "verdict is a rule in `ldm_minimal/experiments/report.py`, next to the claim it checks.\n\n"
        f"Machine: 2-core x86_64 CPU, no GPU; the scripts ran with 1 torch thread each, two (at times three) at a "
        f"time, so each wall time below includes sharing the cores. Sum of the scripts' wall times: {_mins(total)}; "
        f"{ELAPSED}\n\n"
        "How to read the numbers: FID, KID and precision/recall are computed by torchmetrics / "
        "`ldm_minimal.evaluation.metrics` on the features of the shapes attribute judge (offline; standardised to unit RMS on "
        "the real set), not on Inception, so they compare our models with each other, never with the paper's "
        "figures. FID is biased upwards at small n: compare only within a table, and against the real-vs-real FID "
        "given for that n. \"shape+colour\" is the judge's accuracy (100% on real held-out pictures). LPIPS uses "
        "the offline random-VGG trunk. Everything is CPU-sized: tiny models, minutes of training; see "
        "[evaluation.md](evaluation.md) for the metrics.\n\n"
        + _table(["experiment", "paper's claim", "our measurement", "holds?"], summary)
    )
    return head + "\n\n" + "\n\n".join(sections) + "\n"


ELAPSED = ("the committed run took 1 h 44 min from the first script's start to the last one's end (2026-11-22, "
           "03:03-04:47 UTC), plus 2 min for the 600-step Table 8 evaluation.")

# Discussion of the committed run (written by hand after reading its numbers; the tables above are generated).
NOTES: dict[str, str] = {
    "table8": (
        "At 250 steps four models (VQ f = 4, 8, 16 and KL f = 16) had not left the first phase of training, in "
        "which the decoder paints the background only: their PSNR is that of a blank picture (20.46 dB) and the judge "
        "reads nothing off their reconstructions (see the figure). At that budget the table mostly measures how fast "
        "a model leaves this phase, and both more compression and the quantiser slow it down. The 600-step table "
        "(f = 2 to 16, the first stages of experiment 2) is the fairer comparison: KL 35.5 / 29.4 / 26.6 / 21.6 dB "
        "against VQ 30.7 / 25.7 / 20.5 / 20.5 dB, so KL wins at every f and quality falls with f, except that VQ "
        "f = 8 and 16 are still blank at 600 steps (their 0.01 dB difference is no real fall). Only the f = 2 "
        "autoencoders keep what the judge reads (KL 97.7%): from f = 4 on, the shape of small objects is lost. "
        "Issue 2's 800-step table "
        "([results/ae_reconstruction.md](results/ae_reconstruction.md), with the patch discriminator) agrees on the "
        "ordering: KL 31.5 / 23.0 / 17.7 dB against VQ 23.2 / 19.9 / 14.4 dB at f = 2 / 4 / 8. What the paper's "
        "Table 8 also shows and ours cannot: at f = 4 to 8 its KL autoencoders still reconstruct ImageNet-val at "
        "24-28 dB PSNR with R-FID below 1 (27.53 dB / 0.27 at f = 4, 24.19 dB / 0.90 at f = 8); ours lose the shape of small stars already at f = 4."
    ),
    "guidance": (
        "The robust signal is the judge: shape and colour right in 82.8% of samples without guidance, 96.9% at "
        "s = 3 and 98.0% at s = 5, a little lower again at s = 7 (94.9%). FID follows the paper's U shape (4.06 at "
        "s = 1, lowest at s = 2, rising to 3.61 at s = 7) and recall falls at the largest scales, but every FID here "
        "is within about one point of the FID between two real sets of the same size (3.22), so the FID curve is "
        "suggestive, not conclusive, at n = 256; KID cannot separate any two scales (all within one standard "
        "deviation of zero). Each sample is drawn from the caption of one reference picture, which is why a good "
        "model's FID can reach the real-vs-real level."
    ),
    "samplers": (
        "Without guidance and at n = 128, every sampler lands within about one FID point of the real-vs-real level "
        "(5.57) and within the noise of the judge's accuracy (one standard deviation is about 3.5 points at "
        "n = 128). Deterministic DDIM (eta = 0) is as good with 10 steps as with 250; the stochastic sampler "
        "(eta = 1) needs about 25 (FID 6.3 at 10 steps, 5.7 from 25 on), and from there on it is slightly better "
        "than the deterministic one (accuracy 87-91% against 80-84%, FID 5.7 against 6.6): its fresh noise "
        "corrects errors of earlier steps. DDPM with 1000 steps costs 4.1 s per image against 0.24 s "
        "for DDIM 50, for no measurable gain: why the paper samples with DDIM."
    ),
    "super_resolution": (
        "LDM-SR wins on FID (4.6 against bicubic's 17.8, the real-vs-real level being 3.2) and on what the judge "
        "can read (65.2% against 45.3%), as in the paper. Unlike the paper's comparison, it also wins on PSNR: "
        "bicubic is not a regression model trained for the task, and on flat-coloured shapes the LDM's sharp "
        "edges are mostly right. SSIM ties (0.937 against 0.940): a plausible but shifted edge costs SSIM what a "
        "blurred one does. A regression UNet trained with L2 on the same data would be the paper's real "
        "comparison; it is not run here."
    ),
    "ldm_f": (
        "The shape of the paper's Fig. 6 appears: after the same 600 steps LDM-4 has the lowest FID (28.8), then "
        "LDM-8 (33.4) and LDM-2 (40.2); the pixel model LDM-1 is still drawing noise (58.8; see the samples) and "
        "LDM-16 stopped improving after 300 steps (55.3, 53.8, 56.6), because its first stage throws away "
        "what it would need (its own reconstructions keep the judge's reading on 5% of the pictures). Two caveats "
        "of scale: 600 steps are very early (no model follows its class yet: the judge's class accuracy is near "
        "chance, 1/40, everywhere, and the paper trains for hundreds of thousands of steps), and an FID difference "
        "of a few points at n = 256 is within the noise. Wall times differ a lot because the models ran beside "
        "other experiments; experiment 3 measures speed back to back."
    ),
    "throughput": (
        "In one process, one after the other: a training step of LDM-4 processes 13 times as many images per "
        "second as the pixel model and LDM-8 18 times; sampling is 15 and 27 times faster. These ratios are larger "
        "than the paper's (Tab. 6 / Sec. 4.5: at least 2.7x between the pixel and latent inpainting models) because at 32x32 on a CPU the cost is "
        "almost all UNet convolutions at full resolution, and the tiny first stage costs little. At every moment "
        "the pixel model was evaluated, every latent model had already finished its 600 steps with a better FID "
        "(LDM-16 only against the pixel model's first three evaluations). FID at equal wall time is taken from "
        "experiment 2's curves, whose wall times include sharing the cores with other runs."
    ),
    "inpainting": (
        "At our scale the training-free baseline wins on both worlds, and the trivial fill is the worst on FID "
        "but ties on LPIPS and PSNR in the hole (on these pictures most of a random hole is background, which a "
        "mean colour gets nearly right). Why the trained model loses: it was trained for 3000 steps on 1-3-object "
        "pictures and paints extra objects into empty holes (see the figure), which is plausible in its world but "
        "wrong in the single-object one; on its own world it is closer (FID 1.8 against 1.4) but still behind. The "
        "baseline's model is the shipped text-to-image model, trained for 3800 steps on single-object pictures, "
        "whose unconditional half never invents a second object. The paper's inpainting model was trained far "
        "longer on a matched distribution; the comparison here says that at a few thousand CPU steps, a model that "
        "has learned the data well with replacement beats a less-trained conditional one."
    ),
    "high_resolution": (
        "Text-to-image at 64x64: the prompts ask for one object, and at the trained size the model draws exactly "
        "one in 98% of the samples; at twice the size only in 30% (1.9 objects on average), because the "
        "caption constrains what, not where, and the UNet's receptive field covers a 32x32 picture: a 64x64 canvas "
        "is filled like several 32x32 ones. Super-resolution at twice the size works in the sense that matters to "
        "the paper (coherent 64x64 outputs from a model trained on 32x32, see the figure), but it loses its PSNR "
        "lead over bicubic (29.5 against 30.0 dB; 31.7 against 27.1 at the trained size): a 16x16 input of a "
        "64x64 picture already holds most of the shape, so bicubic does well, while the model sprinkles faint "
        "noise over the large background that it never saw at this size."
    ),
    "text_encoder": (
        "At 1500 steps both models are far from converged: a third of the samples are still coloured noise (see the "
        "samples) and shapes are right on only 38% (joint) and 66% (MiniLM) of seen pairs, against 96% for the "
        "shipped model after 3800 steps. Within that, colour composes: both models paint held-out pairs in the "
        "asked colour (91% and 83%) and almost never in the substitute colour their training data showed (2%), and "
        "the gap between held-out and seen pairs is the same 8-9 points for both, set by shape. The frozen MiniLM "
        "learns faster per step (59% against 34% on seen pairs, 50% against 26% on held-out pairs): its pretrained "
        "embeddings already tell the words apart, so cross-attention only has to learn to read them. Each of its "
        "steps costs about twice as much here (a 22M-parameter encoder forward; 27 against 59 images/s, both "
        "measured while other experiments shared the cores). The paper's choice (a small encoder trained jointly) "
        "is the cheaper step; Stable Diffusion's (a frozen pretrained encoder) the more sample-efficient one."
    ),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    src = RESULTS_DIR / "quick" if args.quick else RESULTS_DIR
    out = src / "results.md" if args.quick else REPO_ROOT / "docs" / "results.md"
    text = build(src)
    if args.quick:
        text = text.replace("](results/", "](")
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
