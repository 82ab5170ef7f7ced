"""class: a class label y, embedded by the UNet and added to its time embedding (the paper's Sec. 4.3.1 / Tab. 3 model uses one cross-attention token instead, App. E.2.1).

This is the "adm" mode of the reference code; its class-conditional ImageNet configs (cin256-v2.yaml) use crossattn with a ClassEmbedder instead. The embedding table itself
(num_classes + 1 rows, the last one the learned null class for classifier-free guidance) lives in the UNet; the
conditioner only maps a batch to the labels y.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ldm_minimal.conditioning.base import ConditionInputs, Conditioner, batch_value
from ldm_minimal.data.shapes import NUM_CLASSES as SHAPES_NUM_CLASSES
from ldm_minimal.utils import min_max

__all__ = ["ClassConditioner"]


class ClassConditioner(Conditioner):
    """Class labels for the class-conditional LDM (paper Sec. 4.3.1, Tab. 3): batch[key] -> y (B,) long.

    The embedding table (num_classes + 1 rows) lives in the UNet; this maps a batch to y and provides the null
    class, index num_classes (a learned embedding in the UNet's table).
    """

    mode = "class"
    trainable = False

    def __init__(self, num_classes: int = SHAPES_NUM_CLASSES, key: str = "class_id") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.key = key

    def encode(self, batch: dict, inputs: ConditionInputs) -> dict[str, torch.Tensor]:
        y = batch_value(batch, self.key, "ClassConditioner", "Build it with key=<the batch's label key>.")
        y = torch.as_tensor(y).long().reshape(-1)  # (B,)
        lo, hi = (int(v) for v in min_max(y)) if y.numel() else (0, 0)
        if lo < 0 or hi >= self.num_classes:
            hint = (
                " -1 marks a multi-object shapes sample, which has no class: use a single-object preset "
                "(shapes_preset('single32')) for class-conditional training."
                if lo == -1
                else ""
            )
            raise ValueError(
                f"batch[{self.key!r}] holds labels in [{lo}, {hi}] but this conditioner has "
                f"classes 0..{self.num_classes - 1} (null class = {self.num_classes}).{hint}"
            )
        return {"y": y}

    def null_condition(
        self, batch_size: int, device: torch.device | str | None = None, *, latent_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        return {"y": torch.full((batch_size,), self.num_classes, dtype=torch.long, device=device)}

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, key={self.key!r}"
