"""Small shared helpers: device choice, mixed precision, input checks (devices, seeds, output folders).

Nothing here is specific to one paper concept; every module may import it.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
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


def resolve_device(spec: torch.device | str | None, flag: str = "--device") -> torch.device:
    """A device given by the user -> torch.device, checked to exist on this machine (None or "auto": the best one).

    Raises a ValueError whose one line names the problem and the fix: an unknown name ("bogus"), or a device that
    this machine lacks (e.g. "cuda" without CUDA, "cuda:3" with one GPU). ``flag`` names the setting in messages.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return default_device()
    if isinstance(spec, torch.device):
        dev = spec
    else:
        try:
            dev = torch.device(str(spec).strip())
        except (RuntimeError, ValueError, TypeError):
            raise ValueError(
                f"{flag} {spec!r} is not a device name. Use auto (the best available), cpu, cuda, cuda:0 or mps."
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {spec} was asked for, but CUDA is not available on this machine (no GPU or a "
                             "CPU-only PyTorch). Use --device cpu, or --device auto to pick the best available.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0.."
                             f"cuda:{torch.cuda.device_count() - 1}). Use one of them, or --device auto.")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{flag} {spec} was asked for, but Apple's MPS is not available on this machine. Use "
                             "--device cpu, or --device auto to pick the best available.")
    elif dev.type != "cpu":
        backend = getattr(torch, dev.type, None)
        if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
            raise ValueError(f"{flag} {spec}: no {dev.type} device is available on this machine. Use --device cpu, "
                             "or --device auto to pick the best available.")
    return dev


# the seeds torch.Generator.manual_seed accepts (negative ones wrap around modulo 2**64)
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def check_seed(seed: object, flag: str = "seed") -> int:
    """``seed`` checked to be an integer that torch.Generator.manual_seed accepts -> int, else a one-line ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{flag} must be an integer, got {seed!r}.")
    if not SEED_MIN <= int(seed) <= SEED_MAX:
        raise ValueError(f"{flag} {seed} is out of range: a seed must lie in 0..2**64-1 = {SEED_MAX} (negative "
                         f"seeds down to -2**63 also work). Use a smaller number, e.g. {int(seed) % 2**63}.")
    return int(seed)


def check_writable_folder(folder: str | Path, flag: str = "--out") -> Path:
    """Check that ``folder`` can be created and written to, before any work: a probe file is written and removed,
    and folders this check had to create are removed again (the real writes create them). -> the folder as a Path.

    Raises a ValueError naming the folder, the problem and the fix.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} is a file, not a folder. Choose a folder path instead.")
    created: list[Path] = []
    try:
        missing = [p for p in [folder, *folder.parents] if not p.exists()]
        for p in reversed(missing):  # outermost first
            if p.is_file():
                raise NotADirectoryError(f"{p} is a file")
            p.mkdir()
            created.append(p)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"{flag} {folder} cannot be written ({e.strerror or e}). Choose a folder you can write to, "
                         "or fix its permissions.") from None
    finally:
        for p in reversed(created):  # innermost first; only the empty folders this check made
            try:
                p.rmdir()
            except OSError:
                pass
    return folder


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
