"""concat, images: the low-resolution image for super-resolution (Sec. 4.4) and the masked image for inpainting (Sec. 4.5).

Both are spatially aligned with the image being made, so they are brought to the latent size h x w = H/f x W/f
and concatenated to z_t along the channels:
    lowres    tau = identity on the low-resolution image (LDM-SR).
    inpaint   the masked image's latent E((1 - m) * x) (scaled like z) and the mask m, max-pooled to h x w.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm_minimal.conditioning.base import ConcatConditioner, ConditionInputs, batch_value
from ldm_minimal.masks import check_inpainting_mask, downsample_mask, random_inpainting_mask
from ldm_minimal.utils import check_images

__all__ = ["LowResConditioner", "InpaintConditioner"]


class LowResConditioner(ConcatConditioner):
    """Super-resolution LDM (paper Sec. 4.4): tau = identity on the low-resolution image, concatenated to z_t.

    The low-resolution image (B, 3, H/scale, W/scale) in [-1, 1] comes from batch[key] ("lowres") or, when absent,
    by area-downsampling batch["image"] by ``scale``. With scale = f (x4 SR on an f = 4 autoencoder) it already has
    the latent size; otherwise it is resized to it (bicubic up, area down).
    """

    trainable = False
    concat_channels = 3

    def __init__(self, scale: int = 4, key: str = "lowres", latent_size: int | Sequence[int] | None = None) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale is the super-resolution factor (e.g. 4), got {scale}.")
        self.scale = int(scale)
        self.key = key
        self.latent_size = latent_size

    def lowres(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, H/scale, W/scale) by averaging scale x scale blocks (area downsampling)."""
        check_images(image, channels=3, multiple_of=self.scale, name="batch['image']")
        return F.avg_pool2d(image.float(), self.scale)

    def encode(self, batch: dict, inputs: ConditionInputs) -> dict[str, torch.Tensor]:
        if self.key in batch:
            lr = batch[self.key]
            check_images(lr, channels=3, name=f"batch[{self.key!r}]")
        else:
            lr = self.lowres(batch_value(batch, "image", "LowResConditioner", f"Or give batch[{self.key!r}]."))
        big_h, big_w = lr.shape[-2] * self.scale, lr.shape[-1] * self.scale  # the high-resolution image size
        h, w = self.latent_hw(big_h, big_w, inputs)
        lr = lr.float()
        if (h, w) != tuple(lr.shape[-2:]):
            if h >= lr.shape[-2] and w >= lr.shape[-1]:
                lr = F.interpolate(lr, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)
            else:
                lr = F.interpolate(lr, size=(h, w), mode="area")
        return {"concat": lr}  # (B, 3, h, w)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class InpaintConditioner(ConcatConditioner):
    """Inpainting LDM (paper Sec. 4.5): concat = [E((1 - m) * x) * scale_factor, m resized to h x w].

    batch["image"] (B, 3, H, W) in [-1, 1], batch["mask"] (B, 1, H, W), 1 = hole. The masked image is encoded by the
    (frozen) first stage's mode (sample=False) and scaled like z; the mask is max-pooled to the latent size (a
    latent pixel is a hole if any of its pixels is). concat_channels = latent_channels + 1.
    """

    trainable = False

    def __init__(
        self,
        latent_channels: int = 3,
        scale_factor: float = 1.0,
        image_key: str = "image",
        mask_key: str = "mask",
        latent_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.latent_channels = int(latent_channels)
        self.concat_channels = self.latent_channels + 1
        self.scale_factor = float(scale_factor)
        self.image_key, self.mask_key = image_key, mask_key
        self.latent_size = latent_size

    @classmethod
    def first_stage_kwargs(cls, first_stage: nn.Module) -> dict[str, Any]:
        """The masked image is encoded by the first stage: latent_channels is the first stage's."""
        return {"latent_channels": int(first_stage.latent_channels)}

    def training_batch(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        """Inpainting is trained on random holes (boxes and brush strokes), 1 = hole: a batch without a mask gets
        one, drawn with ``generator``, as batch["mask"] (B, 1, H, W) float32 on the device of batch["image"]."""
        if batch.get(self.mask_key) is not None:
            return batch
        x = batch_value(batch, self.image_key, "InpaintConditioner")
        mask = random_inpainting_mask((x.shape[0], 1, x.shape[-2], x.shape[-1]), generator=generator)
        return {**batch, self.mask_key: mask.to(x.device, torch.float32)}

    def encode(self, batch: dict, inputs: ConditionInputs) -> dict[str, torch.Tensor]:
        first_stage = inputs.first_stage
        if first_stage is None:
            raise ValueError(
                "InpaintConditioner encodes the masked image with the first stage: call it as "
                "conditioner(batch, first_stage=autoencoder)."
            )
        if getattr(first_stage, "latent_channels", self.latent_channels) != self.latent_channels:
            raise ValueError(
                f"The first stage has {first_stage.latent_channels} latent channels but this conditioner was built "
                f"with latent_channels={self.latent_channels}; build it with latent_channels="
                f"{first_stage.latent_channels}."
            )
        image = batch_value(batch, self.image_key, "InpaintConditioner")
        mask = batch_value(
            batch, self.mask_key, "InpaintConditioner", "Draw masks with ldm_minimal.masks.random_inpainting_mask."
        )
        check_images(image, channels=3, multiple_of=int(getattr(first_stage, "f", 1)), name=f"batch[{self.image_key!r}]")
        mask = check_inpainting_mask(mask, image).to(image.dtype)  # (B, 1, H, W), 1 = hole
        scale = self.scale_factor if inputs.scale_factor is None else inputs.scale_factor
        masked = (1 - mask) * image  # the known pixels only; the hole is 0 (mid-grey)
        with torch.no_grad():  # the first stage is frozen while the diffusion model trains
            # c = [scale_factor * E((1 - m) * x), downsample(m)]: the known pixels in the latent space of z
            z_masked = first_stage.encode_latent(masked, sample=False) * scale  # (B, c, h, w)
        m = downsample_mask(mask.to(z_masked.device, z_masked.dtype), tuple(z_masked.shape[-2:]))  # (B, 1, h, w)
        return {"concat": torch.cat([z_masked, m], dim=1)}  # (B, c + 1, h, w)

    def extra_repr(self) -> str:
        return f"latent_channels={self.latent_channels}, scale_factor={self.scale_factor}"

