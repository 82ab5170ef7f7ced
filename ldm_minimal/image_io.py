"""Pictures in and out: image and mask files <-> tensors, grids, labelled rows and PNG files.

Tensors are (B, C, H, W) in [-1, 1] (the models' range); pictures are (H, W, C) uint8 numpy arrays.

    load_image(path, size) / load_mask(path, like)   files -> tensors, with clear errors
    to_uint8(x), image_grid(x, nrow)                 tensors -> pictures
    labeled_rows(rows, title), stack_pictures(pics)  the demo's and the experiments' labelled figures
    save_image(picture, path)                        -> PNG

PIL is imported inside the functions that need it (an optional heavy dependency: the rest of the package runs
without it).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ldm_minimal.data.torch_datasets import image_to_tensor
from ldm_minimal.pipelines.sampling import GenerationError

__all__ = [
    "to_uint8",
    "image_grid",
    "save_image",
    "load_image",
    "load_mask",
    "WIDE_GREY_MODES",
    "labeled_rows",
    "stack_pictures",
]


# --------------------------------------------------------------------------------------------------------------
# Tensors -> pictures -> files
# --------------------------------------------------------------------------------------------------------------


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8 in [0, 255]."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(x: torch.Tensor, nrow: int = 8, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile a batch (B, C, H, W) in [-1, 1] into one (H', W', C) uint8 picture (like torchvision's make_grid)."""
    b, c, h, w = x.shape
    ncol = min(nrow, b)
    nrows = (b + ncol - 1) // ncol
    canvas = torch.full((c, nrows * (h + pad) + pad, ncol * (w + pad) + pad), pad_value, dtype=torch.float32)
    for i in range(b):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, top : top + h, left : left + w] = x[i].detach().float().cpu()
    return to_uint8(canvas[None])[0]


def save_image(array: np.ndarray, path: str | Path) -> Path:
    """Save an (H, W, C) uint8 array as PNG, creating parent folders. Returns the path."""
    from PIL import Image  # optional heavy dependency

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    Image.fromarray(array).save(path)
    return path


# --------------------------------------------------------------------------------------------------------------
# Files in
# --------------------------------------------------------------------------------------------------------------


def _open_image(path: str | Path, what: str) -> Any:
    """The PIL image at ``path`` (loaded), or a FileNotFoundError / GenerationError that names the file."""
    from PIL import Image, UnidentifiedImageError  # optional heavy dependency

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"The {what} {p} does not exist. Check the path (PNG or JPEG).")
    try:
        im = Image.open(p)
        im.load()
    except (UnidentifiedImageError, OSError) as e:
        raise GenerationError(f"The {what} {p} is not an image file that PIL can read ({e}). Save it as PNG.") from e
    return im


# PIL modes of grey pictures with more than 8 bits (16-bit PNGs open as "I;16" or "I"), read on a 0..65535 scale
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _unit_grey(im: Any) -> np.ndarray:
    """A grey PIL image -> (H, W) float32 in [0, 1]: 16-bit (and 32-bit integer) values on 0..65535, else 0..255."""
    if im.mode in WIDE_GREY_MODES:
        return np.clip(np.asarray(im, dtype=np.float64) / 65535.0, 0.0, 1.0).astype(np.float32)
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def load_image(path: str | Path, size: int | tuple[int, int] | None = None) -> Tensor:
    """An image file -> (1, 3, H, W) float32 in [-1, 1]. Transparency is composited onto white.

    size: resize to size x size (or (H, W)) with bicubic filtering; None keeps the file's size.
    """
    from PIL import Image  # optional heavy dependency

    im = _open_image(path, "image")
    if im.mode in WIDE_GREY_MODES:  # 16-bit (or 32-bit integer) grey: convert("RGB") would clip it to white
        grey = _unit_grey(im)  # (H, W) float32 in [0, 1]
        if size is not None:
            h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
            if h < 1 or w < 1:
                raise GenerationError(f"size must be positive, got {size!r}.")
            if grey.shape != (h, w):
                resized = Image.fromarray(grey).resize((w, h), Image.Resampling.BICUBIC)
                grey = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
        x = torch.from_numpy(np.ascontiguousarray(grey)) * 2.0 - 1.0  # (H, W) in [-1, 1]
        return x.expand(3, -1, -1).clone()[None]  # (1, 3, H, W)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    im = im.convert("RGB")
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if h < 1 or w < 1:
            raise GenerationError(f"size must be positive, got {size!r}.")
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BICUBIC)
    return image_to_tensor(im)[None]  # (1, 3, H, W)


def load_mask(path: str | Path, like: Tensor | tuple[int, int]) -> Tensor:
    """A mask file -> (1, 1, H, W) float32 in {0, 1}: white (>= 0.5 after grey conversion) = the hole to fill.

    ``like`` is the image (…, H, W) the mask belongs to, or its (H, W). Raises a GenerationError for a mask of
    another size, a mask with no hole, or a picture that is not a black/white mask (many grey pixels).
    """
    im = _open_image(path, "mask")
    h, w = (int(like.shape[-2]), int(like.shape[-1])) if isinstance(like, Tensor) else (int(like[0]), int(like[1]))
    if im.size != (w, h):
        raise GenerationError(
            f"The mask {path} is {im.size[1]}x{im.size[0]} (HxW) but the image is {h}x{w}: draw the mask at the "
            f"image's size (or resize it to {w}x{h} with nearest-neighbour filtering, which keeps it black/white)."
        )
    v = torch.from_numpy(_unit_grey(im))  # (H, W) in [0, 1] (16-bit masks too)
    m = (v >= 0.5).float()  # 1 = hole
    if not bool(m.any()):
        raise GenerationError(
            f"The mask {path} has no hole: every pixel is below 0.5 (dark). Paint the region to fill white (255) "
            "on black (0)."
        )
    # a black/white mask (maybe anti-aliased or JPEG-noisy at its edges) has few pixels far from both 0 and 1
    grey = float(((v > 0.06) & (v < 0.94)).float().mean())
    if grey > 0.2:
        raise GenerationError(
            f"The mask {path} does not look like a black/white mask: {grey:.0%} of its pixels are grey. Paint the "
            "hole white (255) on black (0); values are thresholded at 0.5 (128)."
        )
    return m[None, None]  # (1, 1, H, W)


# --------------------------------------------------------------------------------------------------------------
# Labelled figures
# --------------------------------------------------------------------------------------------------------------


def _font(size: int = 12) -> Any:
    from PIL import ImageFont  # optional heavy dependency

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, which has one size
        return ImageFont.load_default()


def _text_width(draw: Any, text: str, font: Any) -> float:
    return float(draw.textlength(text, font=font))


def labeled_rows(
    rows: Sequence[tuple[str, Tensor]],
    title: str | None = None,
    zoom: int = 4,
    label_width: int = 220,
    pad: int = 4,
    columns: int | None = None,
) -> np.ndarray:
    """A labelled picture: one row per (label, images (k, 3, h, w) in [-1, 1]), each image enlarged ``zoom`` times
    with nearest neighbours, the label (wrapped) on the left, an optional title on top. -> (H', W', 3) uint8."""
    from PIL import Image, ImageDraw  # optional heavy dependency

    font, title_font = _font(12), _font(14)
    h, w = (int(s) * zoom for s in rows[0][1].shape[-2:])
    ncol = columns or max(int(x.shape[0]) for _, x in rows)
    width = label_width + ncol * (w + pad) + pad
    title_h = 24 if title else 0
    height = title_h + len(rows) * (h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 4), title, fill=(0, 0, 0), font=title_font)
    for r, (label, x) in enumerate(rows):
        top = title_h + pad + r * (h + pad)
        # wrap the label to the label column
        chars = max(8, int((label_width - 2 * pad) / max(_text_width(draw, "abcdefghij", font) / 10, 1)))
        lines = textwrap.wrap(label, width=chars) or [""]
        line_h = 14
        y = top + max(0, (h - line_h * len(lines)) // 2)
        for line in lines:
            draw.text((pad, y), line, fill=(40, 40, 40), font=font)
            y += line_h
        big = x.detach().float().cpu()
        if zoom != 1:
            big = F.interpolate(big, scale_factor=zoom, mode="nearest")  # (k, 3, h * zoom, w * zoom)
        tiles = to_uint8(big)  # (k, H, W, 3)
        for c, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (label_width + pad + c * (w + pad), top))
    return np.asarray(canvas)


def stack_pictures(pictures: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    """Stack (H_i, W_i, 3) uint8 pictures vertically on white, left-aligned, ``gap`` pixels apart."""
    width = max(p.shape[1] for p in pictures)
    height = sum(p.shape[0] for p in pictures) + gap * (len(pictures) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    y = 0
    for p in pictures:
        out[y : y + p.shape[0], : p.shape[1]] = p
        y += p.shape[0] + gap
    return out
