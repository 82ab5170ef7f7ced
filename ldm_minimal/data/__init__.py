"""The data worlds the course learns from, each a Hugging Face ``datasets.Dataset`` and a torch dataset.

Every conditioning mode of latent diffusion (Rombach et al., CVPR 2022, Sec. 3.3 and 4) needs ground truth:

    "shapes"            procedural captioned shapes (default): image, caption, class_id, objects + bboxes, semantic
    "emoji"             Twemoji pictures with Unicode names as captions and groups as classes (offline, real images)
    "hf:<repo id>"      any hub image dataset (online); also a local path
    "folder:<path>"     a local image folder (the ``imagefolder`` builder)
    "parquet:<path>"    local parquet file(s) (a glob works)

Columns for every world: image (datasets Image, RGB, resolution x resolution), caption (str), class_id (int, -1 if
none). Shapes adds objects (JSON string), semantic (Image, mode L: 0 = background, 1 + SHAPES index) and index;
emoji adds group, subgroup, group_id, subgroup_id, char.

A world is built once and saved with ``save_to_disk`` under ``CACHE_DIR/<key>/`` (data/cache/, git-ignored).
When that folder exists it is loaded with ``load_from_disk`` and never regenerated: delete it to rebuild.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import asdict, fields
from pathlib import Path

from ldm_minimal.utils import CACHE_DIR, unknown_name_error
from ldm_minimal.data.emoji import emoji_entries, group_names, render_emoji, subgroup_names
from ldm_minimal.data.hf import load_hf_images
from ldm_minimal.data.shapes import (
    COLOURS,
    NUM_CLASSES,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeObject,
    ShapesConfig,
    ShapesSample,
    caption_for,
    class_name,
    objects_json,
    parse_caption,
    render_sample,
    shapes_preset,
)
from ldm_minimal.data.torch_datasets import ShapesDataset, WorldDataset, collate

FORMAT_VERSION = 1  # bump when a world's generator changes, so that old caches are not mistaken for new ones
WORLDS = ("shapes", "emoji", "hf:<repo id>", "folder:<path>", "parquet:<path>")
WORLD_PREFIXES = {"hf": "auto", "folder": "folder", "parquet": "parquet"}  # prefix -> load_hf_images kind
SHAPES_SPLITS = {"train": 0, "test": 1_000_000}  # seed offset: test pictures come from a different seed
SHAPES_DEFAULT_SIZE = {"train": 20_000, "test": 2_000}
EMOJI_SPLITS = ("train", "test", "all")  # test = every 10th emoji in file-name order, train = the rest
EMOJI_LABELS = ("group", "subgroup")
HF_OPTIONS = ("image_column", "caption_column", "class_column")


def list_worlds() -> list[str]:
    """The names load_world understands (the last three take a repo id or path after the colon)."""
    return list(WORLDS)


def _check_options(world: str, options: dict, valid) -> None:
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ValueError(
            f"Unknown option(s) {', '.join(bad)} for world {world!r}. Valid options: {', '.join(sorted(valid))}."
        )


def _short_hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _source_fingerprint(path: str) -> dict:
    """Path and newest modification time, so that editing a local folder or file gives a new cache key."""
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        newest = max([p.stat().st_mtime] + [Path(r, f).stat().st_mtime for r, _, fs in os.walk(p) for f in fs])
    elif p.exists():
        newest = p.stat().st_mtime
    else:
        newest = None  # a glob or a missing file: load_hf_images reports it
    return {"path": str(p), "mtime": newest}


def _shapes_config(split: str, resolution: int, seed: int, options: dict) -> ShapesConfig:
    if split not in SHAPES_SPLITS:
        raise unknown_name_error("split", split, SHAPES_SPLITS)
    valid = {f.name for f in fields(ShapesConfig)} - {"resolution", "seed"}
    _check_options("shapes", options, valid)
    return ShapesConfig(resolution=resolution, seed=seed + SHAPES_SPLITS[split], **options)


def _encode_png(array) -> dict:
    from PIL import Image  # Pillow: imported where pictures are encoded

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return {"bytes": buf.getvalue(), "path": None}


def build_shapes(cfg: ShapesConfig, size: int):
    """Render samples 0..size-1 of ``cfg`` into a datasets.Dataset (no caching here)."""
    import datasets

    rows: dict[str, list] = {k: [] for k in ("image", "caption", "class_id", "objects", "semantic", "index")}
    for i in range(size):
        s = render_sample(i, cfg)
        rows["image"].append(_encode_png(s.image))
        rows["caption"].append(s.caption)
        rows["class_id"].append(s.class_id)
        rows["objects"].append(objects_json(s.objects))
        rows["semantic"].append(_encode_png(s.semantic))
        rows["index"].append(i)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "class_id": datasets.Value("int64"),
            "objects": datasets.Value("string"),
            "semantic": datasets.Image(),
            "index": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def build_emoji(split: str, resolution: int, size: int | None, label: str = "group", skin_tones: bool = False):
    """Render the Twemoji pictures of one split into a datasets.Dataset (no caching here)."""
    import datasets

    entries = list(emoji_entries(skin_tones))
    if split == "test":
        entries = entries[::10]
    elif split == "train":
        entries = [e for i, e in enumerate(entries) if i % 10]
    if size is not None:
        entries = entries[:size]
    rows = {
        "image": [_encode_png(render_emoji(e, resolution)) for e in entries],
        "caption": [e.caption for e in entries],
        "class_id": [e.group_id if label == "group" else e.subgroup_id for e in entries],
        "group": [e.group for e in entries],
        "subgroup": [e.subgroup for e in entries],
        "group_id": [e.group_id for e in entries],
        "subgroup_id": [e.subgroup_id for e in entries],
        "char": [e.char for e in entries],
    }
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "class_id": datasets.Value("int64"),
            "group": datasets.Value("string"),
            "subgroup": datasets.Value("string"),
            "group_id": datasets.Value("int64"),
            "subgroup_id": datasets.Value("int64"),
            "char": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def _plan(name: str, split: str, resolution: int, size: int | None, seed: int, options: dict):
    """Validate the request; return (cache key, a function that builds the dataset)."""
    if not isinstance(name, str):
        raise TypeError(f"world name must be a string such as 'shapes', got {type(name).__name__}.")
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8 pixels (the course uses 32 or 64), got {resolution}.")
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive number of samples or None for the default, got {size}.")
    if name == "shapes":
        cfg = _shapes_config(split, resolution, seed, options)
        n = size or SHAPES_DEFAULT_SIZE[split]
        fields_ = asdict(cfg)
        if not fields_["held_out"]:
            del fields_["held_out"]  # worlds without held-out pairs keep the cache keys they had before the option
        key = f"shapes-{split}-r{resolution}-n{n}-s{seed}-{_short_hash(fields_)}"
        return key, lambda: build_shapes(cfg, n)
    if name == "emoji":
        if split not in EMOJI_SPLITS:
            raise unknown_name_error("split", split, EMOJI_SPLITS)
        _check_options("emoji", options, ("label", "skin_tones"))
        label, skin = options.get("label", "group"), bool(options.get("skin_tones", False))
        if label not in EMOJI_LABELS:
            raise unknown_name_error("emoji label", label, EMOJI_LABELS)
        key = f"emoji-{split}-r{resolution}-n{size or 'all'}-{label}{'-skin' if skin else ''}"
        return key, lambda: build_emoji(split, resolution, size, label, skin)
    prefix, sep, source = name.partition(":")
    if sep and prefix in WORLD_PREFIXES and source:
        _check_options(name, options, HF_OPTIONS)
        kind = WORLD_PREFIXES[prefix]
        local = kind != "auto" or Path(source).expanduser().exists()
        fingerprint = _source_fingerprint(source) if local else {"repo": source}
        tag = Path(source).stem if local else source.replace("/", "_")
        key = (
            f"{prefix}-{''.join(c if c.isalnum() or c in '-_' else '_' for c in tag)[:40]}-{split}-r{resolution}"
            f"-n{size or 'all'}-{_short_hash([fingerprint, options])}"
        )
        return key, lambda: load_hf_images(source, split=split, resolution=resolution, size=size, kind=kind, **options)
    raise unknown_name_error("world", name, WORLDS)


def world_cache_path(
    name: str, split: str = "train", resolution: int = 32, size: int | None = None, seed: int = 0,
    cache_dir: str | Path | None = None, **options,
) -> Path:  # fmt: skip
    """Where load_world keeps (or will keep) this world."""
    key, _ = _plan(name, split, resolution, size, seed, options)
    return Path(cache_dir or CACHE_DIR) / f"{key}-v{FORMAT_VERSION}"


def load_world(
    name: str = "shapes",
    split: str = "train",
    resolution: int = 32,
    size: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    **options,
):
    """A data world as a ``datasets.Dataset`` (built once, then loaded from ``cache_dir``, default data/cache/).

    size: number of samples (shapes: default 20,000 train / 2,000 test; others: all rows when None).
    seed: the shapes world's seed (train uses seed, test uses seed + 1,000,000 so it is held out).
    options: shapes -> ShapesConfig fields (min_objects, max_objects, supersample, ...);
             emoji -> label ("group" or "subgroup" as class_id), skin_tones (bool);
             hf/folder/parquet -> image_column, caption_column, class_column.
    """
    import datasets

    key, build = _plan(name, split, resolution, size, seed, options)
    root = Path(cache_dir or CACHE_DIR)
    path = root / f"{key}-v{FORMAT_VERSION}"
    if path.exists():
        return datasets.load_from_disk(str(path))
    ds = build()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    try:
        os.replace(tmp, path)  # atomic: a half-written cache is never mistaken for a finished one
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(path))


def world_dataset(name: str = "shapes", split: str = "train", **settings) -> WorldDataset:
    """load_world(name, split, **settings) wrapped as a torch dataset of tensors in [-1, 1], channels first."""
    return WorldDataset(load_world(name, split, **settings))


__all__ = [
    "COLOURS", "NUM_CLASSES", "POSITIONS", "SHAPES", "SIZES", "ShapeObject", "ShapesConfig", "ShapesDataset",
    "ShapesSample", "WorldDataset", "build_emoji", "build_shapes", "caption_for", "class_name", "collate",
    "emoji_entries", "group_names", "list_worlds", "load_hf_images", "load_world", "parse_caption", "render_emoji",
    "render_sample", "shapes_preset", "subgroup_names", "world_cache_path", "world_dataset",
]  # fmt: skip
