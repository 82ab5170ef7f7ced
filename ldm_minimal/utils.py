"""Small shared helpers: device choice, mixed precision and input checks.

Nothing here is specific to one paper concept; every module may import it.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("LDM_MINIMAL_DATA", REPO_ROOT / "data"))
CACHE_DIR = DATA_DIR / "cache"


def default_device() -> torch.device:
    """The best available device: CUDA if present, else Apple's MPS, else the CPU. Never hard-coded."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device | str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (the paper trained in mixed precision); a no-op elsewhere."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class ChannelsLastOnCPU(torch.nn.Module):
    """Base class for our convolutional networks: 4-D weights stay channels-last while they live on the CPU.

    Why: PyTorch's CPU convolutions (oneDNN) work natively in N, H, W, C order. With channels-last weights every
    convolution's output is channels-last too, so a whole network runs without layout conversions; with the usual
    N, C, H, W order each convolution converts its input and output. Measured by ``benchmarks/layout.py`` on this
    project's CPU, one thread, paired rounds (docs/results/layout.json): the tiny autoencoders encode 1.12-1.34x
    and decode 1.17-1.25x faster and the cpu preset's first stage trains 1.08x faster; the cpu preset's UNet
    trains 1.06x faster; the GPU-sized default UNet's forward pass is 0.96x (4% slower), its training step the
    same. On other devices the weights go back to the default layout: GPU layouts are a separate, measured decision.

    Subclasses call ``self.prefer_layout()`` at the end of ``__init__``; ``.to()``/``.cpu()``/``.cuda()`` re-apply
    it. Set ``cpu_channels_last = False`` on a model (or class) to keep N, C, H, W on the CPU too. Outputs of the
    public methods are made contiguous, so callers can ``.view()`` them as usual.
    """

    cpu_channels_last: bool = True

    def prefer_layout(self) -> None:
        for p in self.parameters():
            if p.ndim != 4:
                continue
            fmt = (torch.channels_last if p.device.type == "cpu" and self.cpu_channels_last
                   else torch.contiguous_format)
            if not p.is_contiguous(memory_format=fmt):
                p.data = p.data.contiguous(memory_format=fmt)

    def _apply(self, fn, recurse=True):  # called by .to(), .cpu(), .cuda(), .float(), ...
        super()._apply(fn, recurse)
        self.prefer_layout()
        return self


def min_max(x: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a non-empty tensor in one pass and one device sync (a pair of .min()/.max() reads costs two:
    each Python number read from a GPU tensor waits for the GPU)."""
    lo, hi = torch.aminmax(x.detach())
    return tuple(torch.stack([lo, hi]).double().tolist())


def check_images(
    x: torch.Tensor,
    *,
    channels: int | None = None,
    multiple_of: int = 1,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    name: str = "x",
    tol: float = 1e-3,
) -> None:
    """Raise a ValueError that names the problem and the fix when ``x`` is not a valid image batch.

    x: (B, C, H, W). ``multiple_of`` is the first stage's downsampling factor f: H and W must be divisible by it.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}.")
    if x.ndim != 4:
        raise ValueError(
            f"{name} must have shape (B, C, H, W) (4 dimensions), got shape {tuple(x.shape)}. "
            "Add a batch dimension with x.unsqueeze(0) for a single image."
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} has {x.shape[1]} channels but the model expects {channels}. "
            f"Convert the images (e.g. grey -> RGB with x.repeat(1, 3, 1, 1)) or build the model with "
            f"in_channels={x.shape[1]}."
        )
    h, w = x.shape[-2:]
    if h % multiple_of or w % multiple_of:
        ok_h, ok_w = (h // multiple_of) * multiple_of, (w // multiple_of) * multiple_of
        raise ValueError(
            f"{name} has size {h}x{w}, which is not divisible by the downsampling factor f={multiple_of}. "
            f"Resize or crop to a multiple of {multiple_of} (e.g. {max(ok_h, multiple_of)}x{max(ok_w, multiple_of)})."
        )
    if value_range is not None and x.numel() and x.is_floating_point():
        lo, hi = value_range
        xmin, xmax = min_max(x)
        if xmin < lo - tol or xmax > hi + tol:
            hint = " It looks like [0, 1] data: use x * 2 - 1." if xmin >= 0 and xmax <= 1 else ""
            hint = " It looks like [0, 255] data: use x / 127.5 - 1." if xmax > 1.5 else hint
            raise ValueError(
                f"{name} has values in [{xmin:.3g}, {xmax:.3g}] but the model expects images in [{lo:g}, {hi:g}].{hint}"
            )


def unknown_name_error(kind: str, name: str, valid: Sequence[str]) -> ValueError:
    """A ValueError for an unknown world/preset/option name that lists the valid ones."""
    return ValueError(f"Unknown {kind} {name!r}. Valid {kind}s: {', '.join(sorted(valid))}.")


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Temporarily put a module in eval mode, restoring its previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch, numpy and Python's random; returns a CPU torch.Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore them."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
