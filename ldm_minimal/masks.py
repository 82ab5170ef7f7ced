"""Hole masks for inpainting with a latent diffusion model (Rombach et al., CVPR 2022, Sec. 4.5).

The paper's inpainting LDM is trained on images with random holes: the UNet sees z_t concatenated with the latent of
the masked image and the mask itself, and learns to fill the hole. Following the paper (which uses the mask
generator of LaMa), we draw a mix of two kinds of holes:

    box        an axis-aligned rectangle                         random_box_mask
    freeform   a few thick brush strokes (a random polyline)     random_freeform_mask

Convention everywhere in the course: mask (B, 1, H, W) float32, **1 = hole** (the pixels to generate), 0 = known.
The masked image the conditioner encodes is (1 - mask) * x, and the final picture is the composite
(1 - mask) * x + mask * x_hat (``composite``).

Every random mask is a pure function of its ``shape`` and a torch.Generator: it is drawn on the CPU (so the same
seed gives the same mask on every machine) and then moved to ``device``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = [
    "random_box_mask",
    "random_freeform_mask",
    "random_inpainting_mask",
    "box_mask",
    "check_inpainting_mask",
    "composite",
    "downsample_mask",
]


def _split_shape(shape: Sequence[int]) -> tuple[tuple[int, ...], int, int]:
    """(..., H, W) -> (leading dims, H, W), with a clear error for anything else."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise ValueError(
            f"mask shape must be (H, W) or (B, 1, H, W) with positive sizes, got {shape}. "
            "For a batch of masks for 32x32 images use shape=(B, 1, 32, 32)."
        )
    return shape[:-2], shape[-2], shape[-1]


def _pixel_grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres in [0, 1] coordinates: xs (1, 1, W), ys (1, H, 1)."""
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    return xs.view(1, 1, w), ys.view(1, h, 1)


def random_box_mask(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    min_frac: float = 0.25,
    max_frac: float = 0.6,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One random rectangular hole per mask: a float32 tensor of ``shape`` (..., H, W) with values in {0, 1}.

    Each side of the box is a uniform fraction in [min_frac, max_frac] of the image side (at least one pixel),
    and the box lies fully inside the image.
    """
    if not 0.0 < min_frac <= max_frac <= 1.0:
        raise ValueError(f"Need 0 < min_frac <= max_frac <= 1 (fractions of the image side), got {min_frac}, {max_frac}.")
    lead, h, w = _split_shape(shape)
    n = math.prod(lead)
    u = torch.rand(n, 4, generator=generator)  # (N, 4): box width, height, x offset, y offset
    bw = (min_frac + (max_frac - min_frac) * u[:, 0]) * w
    bh = (min_frac + (max_frac - min_frac) * u[:, 1]) * h
    bw, bh = bw.round().clamp(1, w), bh.round().clamp(1, h)  # (N,) whole pixels
    x0 = (u[:, 2] * (w - bw + 1)).floor().clamp(max=w - bw)  # (N,) in [0, W - bw]
    y0 = (u[:, 3] * (h - bh + 1)).floor().clamp(max=h - bh)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    inside_x = (xs >= x0.view(n, 1, 1)) & (xs < (x0 + bw).view(n, 1, 1))  # (N, 1, W)
    inside_y = (ys >= y0.view(n, 1, 1)) & (ys < (y0 + bh).view(n, 1, 1))  # (N, H, 1)
    mask = (inside_x & inside_y).float()  # (N, H, W)
    return mask.reshape(*lead, h, w).to(device)


def _distance_to_segment(
    xs: torch.Tensor, ys: torch.Tensor, a: torch.Tensor, b: torch.Tensor, aspect: float
) -> torch.Tensor:
    """Distance (in units of the image height) from every pixel centre to the segment a-b.

    xs (1, 1, W), ys (1, H, 1) in [0, 1]; a, b (N, 2) as (x, y) in [0, 1]; aspect = W / H. Returns (N, H, W).
    """
    ax, ay = a[:, 0].view(-1, 1, 1) * aspect, a[:, 1].view(-1, 1, 1)
    bx, by = b[:, 0].view(-1, 1, 1) * aspect, b[:, 1].view(-1, 1, 1)
    px, py = xs * aspect, ys
    dx, dy = bx - ax, by - ay
    # projection of p onto the segment, clamped to its end points: t = <p - a, b - a> / |b - a|^2
    t = ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy).clamp_min(1e-12)
    t = t.clamp(0.0, 1.0)
    return torch.sqrt((px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2)


def random_freeform_mask(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    max_strokes: int = 4,
    max_vertices: int = 6,
    width_frac: tuple[float, float] = (0.1, 0.2),
    step_frac: tuple[float, float] = (0.15, 0.4),
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Brush-stroke holes (LaMa / DeepFill style): a float32 tensor of ``shape`` (..., H, W) in {0, 1}.

    Each mask gets 1..max_strokes strokes; a stroke starts at a uniform point and takes 1..max_vertices-1 steps
    of length step_frac * H in uniform directions (staying inside the image), painted with a round brush whose
    width is a fraction width_frac of the image height (at least 1.5 pixels, so no stroke is ever invisible).
    """
    if max_strokes < 1 or max_vertices < 2:
        raise ValueError(f"Need max_strokes >= 1 and max_vertices >= 2, got {max_strokes} and {max_vertices}.")
    lead, h, w = _split_shape(shape)
    n, k, v = math.prod(lead), max_strokes, max_vertices
    aspect = w / h
    # all random numbers are drawn up front in fixed shapes, so the result only depends on (shape, generator)
    n_strokes = 1 + (torch.rand(n, generator=generator) * k).long().clamp(max=k - 1)  # (N,) in [1, K]
    n_steps = 1 + (torch.rand(n, k, generator=generator) * (v - 1)).long().clamp(max=v - 2)  # (N, K) in [1, V-1]
    start = torch.rand(n, k, 2, generator=generator)  # (N, K, 2) as (x, y) in [0, 1]
    angle = torch.rand(n, k, v - 1, generator=generator) * (2 * math.pi)  # (N, K, V-1)
    length = step_frac[0] + (step_frac[1] - step_frac[0]) * torch.rand(n, k, v - 1, generator=generator)
    width = width_frac[0] + (width_frac[1] - width_frac[0]) * torch.rand(n, k, generator=generator)  # (N, K)
    radius = torch.maximum(width / 2, torch.tensor(0.75 / h))  # (N, K) in units of H; >= 0.75 px

    xs, ys = _pixel_grid(h, w)
    mask = torch.zeros(n, h, w, dtype=torch.bool)
    for s in range(k):
        stroke_on = s < n_strokes  # (N,)
        p = start[:, s]  # (N, 2)
        # a single point is painted too (a stroke that has not moved yet is a round dab)
        mask |= (_distance_to_segment(xs, ys, p, p, aspect) <= radius[:, s].view(n, 1, 1)) & stroke_on.view(n, 1, 1)
        for j in range(v - 1):
            step = torch.stack([torch.cos(angle[:, s, j]) / aspect, torch.sin(angle[:, s, j])], dim=-1)  # (N, 2)
            q = (p + length[:, s, j, None] * step).clamp(0.0, 1.0)  # (N, 2): the next vertex, inside the image
            on = stroke_on & (j < n_steps[:, s])  # (N,)
            near = _distance_to_segment(xs, ys, p, q, aspect) <= radius[:, s].view(n, 1, 1)  # (N, H, W)
            mask |= near & on.view(n, 1, 1)
            p = torch.where(on[:, None], q, p)
    return mask.float().reshape(*lead, h, w).to(device)


def random_inpainting_mask(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    p_box: float = 0.5,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The training masks of the inpainting LDM: each mask is a box (probability p_box) or free-form strokes.

    shape (..., H, W), usually (B, 1, H, W); float32 in {0, 1}, 1 = hole. Deterministic for a seeded generator.
    """
    if not 0.0 <= p_box <= 1.0:
        raise ValueError(f"p_box is a probability in [0, 1], got {p_box}.")
    lead, h, w = _split_shape(shape)
    boxes = random_box_mask((*lead, h, w), generator)
    strokes = random_freeform_mask((*lead, h, w), generator)
    use_box = (torch.rand(math.prod(lead), generator=generator) < p_box).reshape(*lead, 1, 1)
    return torch.where(use_box, boxes, strokes).to(device)


def box_mask(
    size: int | tuple[int, int],
    box: tuple[int, int, int, int],
    batch_size: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A rectangular hole at pixel box (x0, y0, x1, y1) (x1, y1 exclusive, like the shapes world's bboxes).

    Returns (batch_size, 1, H, W) float32, 1 inside the box. Use it to ask the inpainting model to redraw one
    object of a shapes picture: box_mask(32, sample.objects[0].bbox).
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    x0, y0, x1, y1 = (int(round(float(c))) for c in box)
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(
            f"box {tuple(box)} is not a non-empty (x0, y0, x1, y1) box inside a {h}x{w} image "
            f"(need 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}; x1, y1 are exclusive)."
        )
    mask = torch.zeros(batch_size, 1, h, w)
    mask[:, :, y0:y1, x0:x1] = 1.0
    return mask.to(device)


def check_inpainting_mask(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Validate an inpainting mask against its images (B, C, H, W) and return it as (B, 1, H, W) float.

    Accepts (B, 1, H, W) or (B, H, W); values must lie in [0, 1] with 1 = hole. A mask of another size raises a
    ValueError that names both sizes and the fix.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor of shape (B, 1, H, W) (1 = hole), got {type(mask).__name__}.")
    b, _, h, w = image.shape
    if mask.ndim == 3:
        mask = rearrange(mask, "b h w -> b 1 h w")
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(
            f"mask must have shape (B, 1, H, W) with one channel (1 = hole), got {tuple(mask.shape)}. "
            "Reduce a multi-channel mask with mask.amax(1, keepdim=True)."
        )
    if tuple(mask.shape[-2:]) != (h, w):
        raise ValueError(
            f"mask has size {mask.shape[-2]}x{mask.shape[-1]} but the image is {h}x{w}: the mask must be at image "
            f"resolution, shape ({b}, 1, {h}, {w}). Resize it with F.interpolate(mask, size=({h}, {w}), "
            f"mode='nearest') or draw one with ldm_minimal.masks.random_inpainting_mask(({b}, 1, {h}, {w}), generator)."
        )
    if mask.shape[0] != b:
        if mask.shape[0] == 1:
            mask = mask.expand(b, -1, -1, -1)
        else:
            raise ValueError(
                f"mask has batch size {mask.shape[0]} but there are {b} images. Give one mask per image "
                "(or a single mask of batch size 1, which is shared)."
            )
    mask = mask.to(device=image.device, dtype=torch.float32)
    if mask.numel() and (float(mask.min()) < 0.0 or float(mask.max()) > 1.0):
        raise ValueError(
            f"mask values must be in [0, 1] (1 = hole, 0 = known pixel), got [{float(mask.min()):.3g}, "
            f"{float(mask.max()):.3g}]. A 0/255 mask needs mask / 255; a boolean mask needs mask.float()."
        )
    return mask


def composite(image: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The final inpainting result: keep the known pixels, take the hole from the model.

    image, generated (B, C, H, W); mask (B, 1, H, W), 1 = hole.
    """
    mask = check_inpainting_mask(mask, image).to(image.dtype)
    if generated.shape != image.shape:
        raise ValueError(f"generated has shape {tuple(generated.shape)} but image has {tuple(image.shape)}; decode to image size.")
    # x_out = (1 - m) * x + m * x_hat
    return (1 - mask) * image + mask * generated


def downsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 1, h, w) at latent size: a latent pixel is a hole if ANY image pixel it covers is.

    Max pooling rather than the reference's nearest-neighbour resize: a thin stroke can fall between the sampled
    pixels of a nearest resize, and the hole the model is told about would then miss part of the real hole.
    """
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.adaptive_max_pool2d(mask, size)
