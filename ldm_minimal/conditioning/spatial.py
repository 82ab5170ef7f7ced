"""Spatial conditions: layouts as cross-attention tokens (Sec. 4.3.1, App. D.3) and semantic maps (Sec. 4.3.2).

    layout     bounding boxes with classes, one token per object: token_k = E_class(c_k) + MLP(gamma(box_k)), read
               by the UNet's cross-attention (mode "crossattn"). The boxes are in pixels of the image being made.
    semantic   the one-hot semantic map, area-downsampled to the latent size h x w = H/f x W/f and concatenated to
               z_t (mode "concat").
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from ldm_minimal.conditioning.base import ConcatConditioner, ConditionInputs, Conditioner, batch_value, pair
from ldm_minimal.data.shapes import NUM_CLASSES as SHAPES_NUM_CLASSES
from ldm_minimal.data.shapes import SHAPES, class_id_for
from ldm_minimal.utils import min_max

__all__ = ["LayoutConditioner", "SemanticConditioner"]


# ----------------------------------------------------------------------------------------------------------------
# crossattn: layouts (bounding boxes with classes as tokens)


class LayoutConditioner(Conditioner):
    """Layout-to-image (paper Sec. 4.3.1, App. D.3): here one token per object for cross-attention (the paper tokenises each box as an (l, b, c) tuple, App. E.2.1).

    token_k = E_class(shape x colour of object k) + MLP(gamma(box_k)),  gamma = Fourier features of the box
    (x0, y0, x1, y1) / image size. A learned null token is always the first token, so a sample without objects
    (and the null condition, which is the null token alone) still has one unmasked key (no all-masked softmax row).
    Output: context (B, 1 + max_objects, width), context_mask (B, 1 + max_objects).
    """

    mode = "crossattn"
    trainable = True

    def __init__(
        self,
        num_classes: int = SHAPES_NUM_CLASSES,
        width: int = 128,
        max_objects: int = 9,
        num_frequencies: int = 8,
        image_size: int | Sequence[int] | None = None,
        key: str = "objects",
    ) -> None:
        super().__init__()
        self.num_classes, self.context_dim, self.max_objects = int(num_classes), int(width), int(max_objects)
        self.max_length = 1 + self.max_objects
        self.image_size = image_size
        self.key = key
        self.class_embed = nn.Embedding(self.num_classes, width)
        n_fourier = 4 * (1 + 2 * num_frequencies)  # per coordinate: itself, then sin and cos per frequency
        self.box_mlp = nn.Sequential(nn.Linear(n_fourier, width), nn.SiLU(), nn.Linear(width, width))
        self.null_token = nn.Parameter(torch.randn(width) * 0.02)
        # frequencies 2^k * pi, k = 0..F-1
        self.register_buffer("freqs", (2.0 ** torch.arange(num_frequencies)) * math.pi, persistent=False)

    def fourier(self, boxes: torch.Tensor) -> torch.Tensor:
        """(..., 4) normalised boxes -> (..., 4 (1 + 2F)): [p, sin(2^k pi p), cos(2^k pi p)] per coordinate."""
        # gamma(p) = (p, sin(2^0 pi p), ..., sin(2^{F-1} pi p), cos(2^0 pi p), ..., cos(2^{F-1} pi p))
        angles = boxes[..., None] * self.freqs  # (..., 4, F)
        feats = torch.cat([boxes[..., None], torch.sin(angles), torch.cos(angles)], dim=-1)  # (..., 4, 1 + 2F)
        return rearrange(feats, "... c k -> ... (c k)")

    def _parse(self, objects: Any) -> list[list[dict]]:
        out = []
        for item in objects:
            if isinstance(item, (str, bytes)):
                item = json.loads(item)
            if not isinstance(item, list):
                raise TypeError(
                    "batch['objects'] must hold, per sample, a JSON string (or a list) of object dicts with keys "
                    f"shape, colour and bbox; got {type(item).__name__}."
                )
            out.append(item)
        return out

    def _class_id(self, obj: dict) -> int:
        if "class_id" in obj:
            cid = int(obj["class_id"])
        else:
            try:
                cid = class_id_for(obj["shape"], obj["colour"])
            except KeyError as e:
                raise KeyError(
                    f"A layout object needs 'shape' and 'colour' (or 'class_id') and 'bbox'; got keys {sorted(obj)}."
                ) from e
        if not 0 <= cid < self.num_classes:
            raise ValueError(f"Object class {cid} is outside 0..{self.num_classes - 1}; build with a larger num_classes.")
        return cid

    def encode(self, batch: dict, inputs: ConditionInputs) -> dict[str, torch.Tensor]:
        objects = self._parse(batch_value(batch, self.key, "LayoutConditioner"))
        size = inputs.image_size or self.image_size
        if size is None and "image" in batch:
            size = tuple(batch["image"].shape[-2:])
        if size is None:
            raise ValueError(
                "LayoutConditioner needs the image size to normalise the boxes: include batch['image'], pass "
                "image_size=(H, W), or build it with image_size=..."
            )
        h, w = pair(size)
        b, m = len(objects), self.max_objects
        too_many = max((len(o) for o in objects), default=0)
        if too_many > m:
            raise ValueError(f"A sample has {too_many} objects but max_objects={m}; build with max_objects>={too_many}.")
        device = self.null_token.device
        classes = torch.zeros(b, m, dtype=torch.long)
        boxes = torch.zeros(b, m, 4)
        present = torch.zeros(b, m, dtype=torch.bool)
        for i, objs in enumerate(objects):
            for k, obj in enumerate(objs):
                classes[i, k] = self._class_id(obj)
                x0, y0, x1, y1 = (float(c) for c in obj["bbox"])
                boxes[i, k] = torch.tensor([x0 / w, y0 / h, x1 / w, y1 / h])
                present[i, k] = True
        classes, boxes, present = classes.to(device), boxes.to(device), present.to(device)
        # token_k = E_class(c_k) + MLP(gamma(box_k))
        tokens = self.class_embed(classes) + self.box_mlp(self.fourier(boxes))  # (B, M, D)
        tokens = tokens * present[..., None]  # padding tokens are zero (and masked)
        null = repeat(self.null_token, "d -> b 1 d", b=b).to(tokens.dtype)
        context = torch.cat([null, tokens], dim=1)  # (B, 1 + M, D)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=device), present], dim=1)  # (B, 1 + M)
        return {"context": context, "context_mask": mask}

    def null_condition(
        self, batch_size: int, device: torch.device | str | None = None, *, latent_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Only the learned null token (first position) is unmasked."""
        device = device if device is not None else self.null_token.device
        context = torch.zeros(batch_size, self.max_length, self.context_dim, device=device, dtype=self.null_token.dtype)
        context = context.clone()
        context[:, 0] = self.null_token.to(device)
        mask = torch.zeros(batch_size, self.max_length, dtype=torch.bool, device=device)
        mask[:, 0] = True
        return {"context": context, "context_mask": mask}

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, context_dim={self.context_dim}, max_objects={self.max_objects}"


# ----------------------------------------------------------------------------------------------------------------
# concat: semantic maps (Sec. 4.3.2)


class SemanticConditioner(ConcatConditioner):
    """Semantic synthesis (paper Sec. 4.3.2): the one-hot semantic map, area-downsampled to the latent size.

    batch[key] (B, H, W) integer labels in [0, num_labels) -> concat (B, num_labels, h, w): per latent pixel, the
    fraction of its f x f image pixels with each label (channels sum to 1).
    """

    trainable = False

    def __init__(
        self, num_labels: int = 1 + len(SHAPES), key: str = "semantic", latent_size: int | Sequence[int] | None = None
    ) -> None:
        super().__init__()
        self.num_labels = self.concat_channels = int(num_labels)
        self.key = key
        self.latent_size = latent_size

    def encode(self, batch: dict, inputs: ConditionInputs) -> dict[str, torch.Tensor]:
        s = torch.as_tensor(batch_value(batch, self.key, "SemanticConditioner"))
        if s.ndim == 4 and s.shape[1] == 1:
            s = rearrange(s, "b 1 h w -> b h w")
        if s.ndim != 3 or s.is_floating_point():
            raise ValueError(
                f"batch[{self.key!r}] must be integer labels of shape (B, H, W), got dtype {s.dtype} and shape "
                f"{tuple(s.shape)}. Use the label map itself (not a one-hot or an image); cast with .long()."
            )
        lo, hi = (int(v) for v in min_max(s)) if s.numel() else (0, 0)
        if lo < 0 or hi >= self.num_labels:
            raise ValueError(
                f"batch[{self.key!r}] has labels in [{lo}, {hi}] but num_labels={self.num_labels}; "
                f"build the conditioner with num_labels={hi + 1}."
            )
        h, w = self.latent_hw(s.shape[-2], s.shape[-1], inputs)
        onehot = rearrange(F.one_hot(s.long(), self.num_labels), "b h w c -> b c h w").float()  # (B, K, H, W)
        return {"concat": F.interpolate(onehot, size=(h, w), mode="area")}  # (B, K, h, w)

    def extra_repr(self) -> str:
        return f"num_labels={self.num_labels}"

