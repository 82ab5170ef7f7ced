"""python -m ldm_minimal.conditioning [world ...]: re-train the shipped caption tokenizers (data/tokenizers/<world>.json)."""

from __future__ import annotations

import sys

from ldm_minimal.conditioning.text import build_world_tokenizer, load_caption_tokenizer


def main(worlds: list[str]) -> int:
    for world in worlds or ["shapes", "emoji"]:
        p = build_world_tokenizer(world)
        tok = load_caption_tokenizer(p)
        print(f"{world}: {len(tok)} tokens -> {p} ({p.stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
