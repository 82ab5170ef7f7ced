"""Channels-last or not: our models on the CPU with their default layout against the same models in N, C, H, W.

The measurement behind ``ldm_minimal.utils.ChannelsLastOnCPU`` (issue 7): the same weights, the same inputs, the two
layouts interleaved round by round (``benchmarks/peer.py``'s clock and statistics). A speed-up > 1 means
channels-last is faster. Rows: the autoencoders' encode and decode, the UNets' forward pass, and training steps
(forward + backward) at the batch sizes the ``cpu`` preset trains with.

    python benchmarks/layout.py                      # -> docs/results/layout.json (about 4 minutes)
    python benchmarks/layout.py --threads 2 --out /tmp/layout2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer  # noqa: E402

from ldm_minimal.autoencoder import AutoencoderKL, autoencoder_config  # noqa: E402


def compare(name: str, step, call, cl_model, nchw_model, clock: peer.Clock, rounds: int) -> dict:
    """``step`` (peer.forward_pass or peer.training_step) of ``call`` on the two layouts, interleaved."""
    tg = peer.time_group({"channels_last": step(cl_model, call), "nchw": step(nchw_model, call)}, clock, rounds)
    r = peer.paired_ratio(tg["channels_last"], tg["nchw"])  # nchw seconds / channels-last seconds
    row = {"measurement": name, "channels_last_ms": statistics.median(tg["channels_last"]) * 1e3,
           "nchw_ms": statistics.median(tg["nchw"]) * 1e3, "speedup": r["ratio"], "speedup_ci95": r["ratio_ci95"],
           "verdict": r["verdict"].replace("faster", "channels-last faster").replace("slower", "channels-last slower")}
    print(f"{name:55s} channels-last {row['channels_last_ms']:8.1f} ms  N,C,H,W {row['nchw_ms']:8.1f} ms  speed-up "
          f"{r['ratio']:.3f} [{r['ratio_ci95'][0]:.3f}, {r['ratio_ci95'][1]:.3f}]", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", default=str(peer.ROOT / "docs" / "results" / "layout.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = peer.Clock(torch.device("cpu"), args.threads)
    rows = []

    for preset, batch, size in (("tiny-kl-f4", 8, 32), ("tiny-kl-f2", 16, 32), ("kl-f4", 2, 64)):
        torch.manual_seed(0)
        ours = AutoencoderKL(autoencoder_config(preset)).eval()
        nchw = peer.without_channels_last(ours)
        x = torch.rand(batch, 3, size, size) * 2 - 1
        z = torch.randn(batch, ours.latent_channels, size // ours.f, size // ours.f)
        rows.append(compare(f"autoencoder {preset} encode, batch {batch}", peer.forward_pass,
                            lambda m: m.encode(x).mean,
                            ours, nchw, clock, args.rounds))
        rows.append(compare(f"autoencoder {preset} decode, batch {batch}", peer.forward_pass, lambda m: m.decode(z),
                            ours, nchw, clock, args.rounds))
        if preset == "tiny-kl-f2":  # the cpu preset's first stage: its training step (reconstruction path)
            ours.train(), nchw.train()
            rows.append(compare(f"autoencoder {preset} training step, batch {batch}", peer.training_step,
                                lambda m: m(x)[0],
                                ours, nchw, clock, args.rounds))
    for size, batch in (("tiny", 8), ("tiny", 32), ("default", 4)):
        cfg, ours, _, _, (tokens, width) = peer.build_unet_pair(size, torch.device("cpu"))
        nchw = peer.without_channels_last(ours)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, cfg.in_channels, 16, 16, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        ctx = torch.randn(batch, tokens, width, generator=g)
        rows.append(compare(f"unet {size} forward, batch {batch}", peer.forward_pass, lambda m: m(x, t, ctx),
                            ours, nchw, clock, args.rounds))
        rows.append(compare(f"unet {size} training step, batch {batch}" + (" (the cpu preset's)" if batch == 32 else ""),
                            peer.training_step, lambda m: m(x, t, ctx), ours, nchw, clock, args.rounds))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"threads": args.threads, "rounds": args.rounds, "clock": clock.name, "torch": torch.__version__,
            "cpu_model": peer._cpu_model(), "command": "python benchmarks/layout.py " + " ".join(argv or sys.argv[1:])}
    out.write_text(json.dumps({"info": info, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
