"""Torch views of the data worlds: float images in [-1, 1], channels first, as the autoencoder E expects (Sec. 3.1).

    WorldDataset(hf_dataset)      wraps any load_world result (decodes one row per __getitem__)
    (world_dataset(name, ...) = WorldDataset(load_world(name, ...)) lives beside load_world in ldm_minimal.data)
    ShapesDataset(cfg, length)    renders shapes on the fly: no cache, no disk, the fast path for training
    collate(batch)                stacks tensors and numbers, keeps strings as lists

Each item is a dict: {"image": float32 (3, H, W) in [-1, 1], "caption": str, "class_id": int}, and for shapes also
"semantic": int64 (H, W) (0 = background, 1 + SHAPES index) and "objects": a JSON string.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset

from ldm_minimal.data.shapes import ShapesConfig, objects_json, render_sample


def image_to_tensor(image) -> torch.Tensor:
    """(H, W, 3) uint8 array or PIL image -> (3, H, W) float32 in [-1, 1] (x / 127.5 - 1)."""
    if not isinstance(image, np.ndarray):
        image = np.asarray(image.convert("RGB"))
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"Expected an (H, W, 3) uint8 RGB image, got shape {image.shape} and dtype {image.dtype}. "
            "Convert it first, e.g. PIL.Image.convert('RGB')."
        )
    x = torch.from_numpy(np.array(image, dtype=np.float32))  # a copy: PIL-backed arrays are read-only
    return rearrange(x, "h w c -> c h w").contiguous() / 127.5 - 1.0


class WorldDataset(Dataset):
    """A torch dataset over a ``datasets.Dataset`` produced by ``load_world``."""

    def __init__(self, hf_dataset) -> None:
        missing = {"image", "caption", "class_id"} - set(hf_dataset.column_names)
        if missing:
            raise ValueError(
                f"The dataset lacks the column(s) {sorted(missing)} (has {hf_dataset.column_names}). "
                "Build it with ldm_minimal.data.load_world or load_hf_images."
            )
        self.ds = hf_dataset
        self.has_shapes = "semantic" in hf_dataset.column_names and "objects" in hf_dataset.column_names

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.ds[int(i)]
        item = {"image": image_to_tensor(row["image"]), "caption": row["caption"], "class_id": int(row["class_id"])}
        if self.has_shapes:
            item["semantic"] = torch.from_numpy(np.asarray(row["semantic"].convert("L"), dtype=np.int64))
            item["objects"] = row["objects"]
        return item


class ShapesDataset(Dataset):
    """Shapes rendered on demand: item i is render_sample(i, cfg); nothing is cached or written to disk."""

    def __init__(self, cfg: ShapesConfig | None = None, length: int = 20_000) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1 (the number of samples per epoch), got {length}.")
        self.cfg = cfg or ShapesConfig()
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for a ShapesDataset of length {self.length}.")
        s = render_sample(int(i) % self.length, self.cfg)
        return {
            "image": image_to_tensor(s.image),
            "caption": s.caption,
            "class_id": s.class_id,
            "semantic": torch.from_numpy(s.semantic.astype(np.int64)),
            "objects": objects_json(s.objects),
        }


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of items: tensors -> (B, ...), ints/floats -> (B,) tensor, strings (and others) -> lists."""
    if not batch:
        raise ValueError("collate got an empty batch; use a DataLoader with batch_size >= 1.")
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (bool, int, np.integer)):
            out[key] = torch.tensor([int(v) for v in values], dtype=torch.int64)
        elif isinstance(values[0], (float, np.floating)):
            out[key] = torch.tensor(values, dtype=torch.float32)
        else:
            out[key] = values
    return out
