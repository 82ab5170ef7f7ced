"""Any image dataset through Hugging Face ``datasets``: a hub repository, a local image folder or parquet files.

The paper trains on large image sets (CelebA-HQ, FFHQ, LSUN, ImageNet, LAION; Sec. 4). Users who are online can
point the course at any hub dataset with an image column (e.g. a butterflies or faces set) and, optionally, a
caption column for text-to-image (Sec. 4.3.1) or a label column for class-conditional training (Sec. 4.3.1).
Offline, the same code reads a local folder of pictures (the ``imagefolder`` builder: sub-folders become labels;
a ``metadata.csv`` / ``metadata.jsonl`` with a ``file_name`` column adds captions and other columns instead, and
then ``datasets`` adds no folder labels) or parquet files.

Every image is centre-cropped to a square and resized anti-aliased to ``resolution``. The result always has the
columns ``image`` (datasets Image), ``caption`` (str, "" when there is none) and ``class_id`` (int, -1 when none).
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Sequence

import numpy as np

from ldm_minimal.utils import unknown_name_error

SOURCE_KINDS = ("auto", "hub", "folder", "parquet")


def center_crop_resize(image, resolution: int):
    """PIL image -> RGB PIL image of (resolution, resolution): centre square crop, then Lanczos resize.

    Transparent pictures are composited onto white (as for the emoji world) instead of dropping alpha to black.
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.LANCZOS, reducing_gap=3.0 if side > 3 * resolution else None)
    return image


def _resolve_kind(source: str | Sequence[str], kind: str) -> str:
    if kind not in SOURCE_KINDS:
        raise unknown_name_error("source kind", kind, SOURCE_KINDS)
    if kind != "auto":
        return kind
    if not isinstance(source, str):
        return "parquet"
    p = Path(source).expanduser()
    if p.is_dir():
        return "folder"
    if p.is_file() or source.endswith(".parquet") or any(ch in source for ch in "*?["):
        return "parquet"
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1:
        raise FileNotFoundError(
            f"{source!r} looks like a local path but does not exist. Check the path, or give a hub repository id "
            "such as 'huggan/smithsonian_butterflies_subset' (needs internet the first time)."
        )
    return "hub"


def _load_raw(source, kind: str, split: str, cache_dir: str | Path | None):
    import datasets

    cache = str(cache_dir) if cache_dir is not None else None
    if kind == "folder":
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Image folder {str(folder)!r} does not exist. Give an existing folder of pictures (sub-folders "
                "become class labels; a metadata.csv with a file_name column adds captions)."
            )
        # sub-folders become a ClassLabel "label" column, unless a metadata file is present (then its columns)
        return datasets.load_dataset("imagefolder", data_dir=str(folder), split=split, cache_dir=cache)
    if kind == "parquet":
        files = [source] if isinstance(source, str) else list(source)
        expanded: list[str] = []
        for f in files:
            f = str(Path(f).expanduser())
            matches = sorted(glob.glob(f)) if any(ch in f for ch in "*?[") else ([f] if Path(f).is_file() else [])
            if not matches:
                raise FileNotFoundError(
                    f"Parquet file {f!r} does not exist (or the pattern matches nothing). Check the path; a folder "
                    "of pictures is read with 'folder:<path>' instead."
                )
            expanded += matches
        # parquet files carry no split names: every file is the one split we were asked for
        return datasets.load_dataset("parquet", data_files={split: expanded}, split=split, cache_dir=cache)
    try:
        return datasets.load_dataset(source, split=split, cache_dir=cache)
    except Exception as e:  # network, unknown repo or split: keep the cause, add the fix
        raise RuntimeError(
            f"Could not load hub dataset {source!r} (split {split!r}): {e}. Check the repository id and split, "
            "that you are online (HF_DATASETS_OFFLINE must not be 1 the first time), or use a local "
            "'folder:<path>' / 'parquet:<path>' instead."
        ) from e


def load_hf_images(
    source: str | Sequence[str],
    image_column: str = "image",
    caption_column: str | None = None,
    split: str = "train",
    resolution: int = 64,
    class_column: str | None = None,
    size: int | None = None,
    kind: str = "auto",
    cache_dir: str | Path | None = None,
    num_proc: int | None = None,
):
    """Load an image dataset as a ``datasets.Dataset`` with columns image, caption, class_id.

    source: a hub repository id, a local image folder, or parquet file(s) / a glob (``kind`` forces one reading).
    caption_column: the column holding the text; None -> every caption is "".
    class_column: an integer/ClassLabel/string column; None -> the imagefolder "label" column if there is one,
        else class_id = -1. String labels become ids in sorted order.
    size: keep only the first ``size`` rows. cache_dir: where ``datasets`` keeps its own download/arrow cache.
    """
    import datasets

    if resolution < 8:
        raise ValueError(f"resolution must be >= 8 pixels (the course uses 32 or 64), got {resolution}.")
    kind = _resolve_kind(source, kind)
    ds = _load_raw(source, kind, split, cache_dir)
    if isinstance(ds, datasets.DatasetDict):  # pragma: no cover - we always pass split
        ds = ds[split]

    columns = list(ds.column_names)
    for what, col in (("image_column", image_column), ("caption_column", caption_column), ("class_column", class_column)):
        if col is not None and col not in columns:
            raise ValueError(
                f"{what}={col!r} is not a column of {source!r}. Available columns: {', '.join(columns)}. "
                f"Pass {what}=<one of them>."
            )
    if class_column is None and "label" in columns and isinstance(ds.features.get("label"), datasets.ClassLabel):
        class_column = "label"

    if size is not None:
        if size < 1:
            raise ValueError(f"size must be a positive number of rows or None for all of them, got {size}.")
        ds = ds.select(range(min(size, len(ds))))

    to_id = None
    if class_column is not None:
        feature = ds.features[class_column]
        is_int = isinstance(feature, datasets.ClassLabel) or (
            isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
        )
        if not is_int:  # strings (or anything else hashable): ids in sorted order of the distinct values
            values = sorted({str(v) for v in ds[class_column]})
            lookup = {v: i for i, v in enumerate(values)}
            to_id = lambda v: lookup[str(v)]  # noqa: E731

    def convert(batch: dict) -> dict:
        n = len(batch[image_column])
        images = [center_crop_resize(im, resolution) for im in batch[image_column]]
        captions = [("" if c is None else str(c)) for c in batch[caption_column]] if caption_column else [""] * n
        if class_column is None:
            ids = [-1] * n
        else:
            ids = [(-1 if v is None else (to_id(v) if to_id else int(v))) for v in batch[class_column]]
        return {"image": images, "caption": captions, "class_id": ids}

    features = datasets.Features(
        {"image": datasets.Image(), "caption": datasets.Value("string"), "class_id": datasets.Value("int64")}
    )
    return ds.map(
        convert,
        batched=True,
        batch_size=64,
        remove_columns=columns,
        features=features,
        num_proc=num_proc,
        desc=f"resizing to {resolution}x{resolution}",
    )
