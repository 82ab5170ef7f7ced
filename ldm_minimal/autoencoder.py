"""The first stage: an autoencoder E, D that compresses images x to latents z = E(x) (paper Sec. 3.1, App. G).

"Perceptual Image Compression": given x in R^{H x W x 3}, the encoder E gives z = E(x) in R^{h x w x c} with
h = H / f, w = W / f, and the decoder reconstructs x_hat = D(z) = D(E(x)). The downsampling factor f = 2^m is
set by the number of levels in ``ch_mult`` (m = len(ch_mult) - 1); the paper studies f in {1, 2, 4, 8, 16, 32}
and finds f = 4..16 the sweet spot between perceptual detail and the cost of the diffusion model.

The architecture follows the reference (VQGAN-style): ResNet blocks with GroupNorm and SiLU, single-head
self-attention in the middle block (and at any level listed in ``attn_resolutions``), stride-2 convolutions to
downsample and nearest-neighbour upsampling + conv in the decoder, which mirrors the encoder with one extra
ResNet block per level.

Two regularised variants (see ``ldm_minimal.regularizers``):

- ``AutoencoderKL``: E outputs a diagonal Gaussian posterior; a slight KL penalty keeps z near N(0, I).
- ``VQModel``: a vector-quantisation layer, "absorbed into the decoder": ``encode`` returns the continuous
  pre-quantisation latent (what the diffusion model learns), ``decode`` quantises first.

Every first stage (and ``IdentityFirstStage``, the pixel-space baseline f = 1) exposes the interface the latent
diffusion model uses: attributes ``f`` and ``latent_channels``, ``encode_latent(x)`` and ``decode_latent(z)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ldm_minimal.checkpoint import CheckpointError, check_config_fits, load_state_into, read_checkpoint, read_metadata
from ldm_minimal.regularizers import DiagonalGaussian, VectorQuantizer
from ldm_minimal.utils import ChannelsLastOnCPU, check_images, unknown_name_error

# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------


@dataclass
class AutoencoderConfig:
    """Hyper-parameters of a first-stage autoencoder (paper Tab. 8 / App. G; reference configs).

    ``attn_resolutions`` lists *downsampling factors* (1, 2, 4, ...) of the levels that get attention blocks
    (the reference lists pixel sizes at 256 x 256 input instead; 32 there is factor 8 here). The middle block
    always has attention.
    """

    kind: str = "kl"  # "kl" | "vq"
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128  # base width
    ch_mult: tuple[int, ...] = (1, 2, 4)  # width multipliers per level; f = 2 ** (len(ch_mult) - 1)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()  # downsampling factors with attention
    z_channels: int = 3  # channels at the encoder's output (before quant_conv)
    embed_dim: int = 3  # channels of the latent z that the diffusion model sees
    n_embed: int = 8192  # VQ codebook size
    beta: float = 0.25  # VQ commitment weight
    dropout: float = 0.0
    restart_dead_codes: bool = True  # VQ dead-code remedy
    dead_threshold: float = 0.05  # a code is dead below this fraction of the uniform usage share
    usage_decay: float = 0.99  # EMA decay of the per-code usage
    norm_groups: int | None = None  # GroupNorm groups in every layer; None: num_groups(width) per layer

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(a) for a in self.attn_resolutions)
        if self.kind not in ("kl", "vq"):
            raise ValueError(f"AutoencoderConfig.kind must be 'kl' or 'vq', got {self.kind!r}.")
        if len(self.ch_mult) == 0 or min(self.ch_mult) < 1:
            raise ValueError(f"ch_mult must be a non-empty tuple of positive ints (e.g. (1, 2, 4)), got {self.ch_mult}.")
        for name in ("in_channels", "out_channels", "ch", "z_channels", "embed_dim", "n_embed"):
            if getattr(self, name) < 1:
                raise ValueError(f"AutoencoderConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1 (each level needs a block to change width), got {self.num_res_blocks}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        widths = [self.ch * m for m in self.ch_mult]
        if self.norm_groups is not None and (self.norm_groups < 1 or any(w % self.norm_groups for w in widths)):
            raise ValueError(
                f"norm_groups={self.norm_groups} must be a positive divisor of every width {widths} (ch * ch_mult); "
                f"leave it None to pick the groups per layer with num_groups(width)."
            )
        valid = [2**i for i in range(len(self.ch_mult))]
        bad = [a for a in self.attn_resolutions if a not in valid]
        if bad:
            raise ValueError(
                f"attn_resolutions {bad} are not downsampling factors of this model; with ch_mult={self.ch_mult} "
                f"the levels have factors {valid}. (Pixel sizes from the reference configs must be converted: "
                f"factor = input size / pixel size.)"
            )

    @property
    def f(self) -> int:
        """Downsampling factor f = H / h = 2^m."""
        return 2 ** (len(self.ch_mult) - 1)


def _paper(kind: str, ch_mult: tuple[int, ...], z: int, attn: tuple[int, ...] = (), n_embed: int = 8192) -> AutoencoderConfig:
    return AutoencoderConfig(kind, ch=128, ch_mult=ch_mult, num_res_blocks=2, attn_resolutions=attn,
                             z_channels=z, embed_dim=z, n_embed=n_embed)


def _tiny(kind: str, ch_mult: tuple[int, ...], z: int, n_embed: int) -> AutoencoderConfig:
    return AutoencoderConfig(kind, ch=32, ch_mult=ch_mult, num_res_blocks=1, attn_resolutions=(),
                             z_channels=z, embed_dim=z, n_embed=n_embed)


# ch_mult per f for the CPU-sized presets, with latent channels (3 for f <= 4, 4 for f = 8, 8 for f = 16)
_TINY_LEVELS = {1: ((1,), 3, 256), 2: ((1, 2), 3, 256), 4: ((1, 2, 2), 3, 512),
                8: ((1, 2, 2, 4), 4, 1024), 16: ((1, 2, 2, 4, 4), 8, 1024)}

AUTOENCODER_PRESETS: dict[str, AutoencoderConfig] = {
    # the paper's first stages (reference configs; attention factors converted from pixel sizes at 256 x 256)
    "kl-f4": _paper("kl", (1, 2, 4), 3),
    "kl-f8": _paper("kl", (1, 2, 4, 4), 4),
    "vq-f4": _paper("vq", (1, 2, 4), 3, n_embed=8192),
    "vq-f8": _paper("vq", (1, 2, 2, 4), 4, attn=(8,), n_embed=16384),
    "vq-f16": _paper("vq", (1, 1, 2, 2, 4), 8, attn=(16,), n_embed=16384),
    # CPU-sized versions that train in minutes at 32 x 32
    **{f"tiny-{k}-f{f}": _tiny(k, m, z, n) for k in ("kl", "vq") for f, (m, z, n) in _TINY_LEVELS.items()},
}


def autoencoder_config(name: str, **overrides) -> AutoencoderConfig:
    """A copy of preset ``name`` with fields replaced by ``overrides`` (e.g. ``ch=64``)."""
    if name not in AUTOENCODER_PRESETS:
        raise unknown_name_error("autoencoder preset", name, list(AUTOENCODER_PRESETS))
    return _replace(AUTOENCODER_PRESETS[name], overrides)


def _replace(cfg: AutoencoderConfig, overrides: dict) -> AutoencoderConfig:
    fields = [f.name for f in dataclasses.fields(AutoencoderConfig)]
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        raise ValueError(f"Unknown AutoencoderConfig field(s) {unknown}. Valid fields: {', '.join(fields)}.")
    return dataclasses.replace(cfg, **overrides)


# --------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------


def num_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """Number of GroupNorm groups: 32 as in the reference when there are >= 128 channels, fewer for tiny widths.

    The reference's GroupNorm(32) at ch=128 puts 4 channels in a group; we keep at least ``min_group_size``
    channels per group (so ch=32 gets 8 groups rather than 32 one-channel "instance norms"), and always return a
    divisor of ``channels``.
    """
    g = max(1, min(max_groups, channels // min_group_size))
    while channels % g:
        g -= 1
    return g


def group_norm(channels: int, groups: int | None = None) -> nn.GroupNorm:
    """GroupNorm(groups or num_groups(channels), channels, eps=1e-6) with a learned affine map."""
    # GroupNorm statistics are computed in float32 by autocast (group_norm is on its float32 list)
    return nn.GroupNorm(groups or num_groups(channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """x + F(x) with F = [GroupNorm, SiLU, conv3] x 2 (dropout before the second conv); no time embedding."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 groups: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # 1x1 projection of the skip path when the width changes
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, 1x1 q/k/v/proj, residual."""

    def __init__(self, channels: int, groups: int | None = None) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        # q, k, v: (B, 1, h*w, C)  (one head)
        q, k, v = (rearrange(m(hn), "b c h w -> b 1 (h w) c") for m in (self.q, self.k, self.v))
        # Attention(Q, K, V) = softmax(Q K^T / sqrt(C)) V   (SDPA's default scale is C^-0.5)
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve H and W: asymmetric pad (0, 1, 0, 1), then a stride-2 3x3 conv without padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour interpolation, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ResNet blocks (each followed by attention if requested) and an optional resampler."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, attn: bool, dropout: float, resample: nn.Module | None,
                 groups: int | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(ResnetBlock(in_ch if i == 0 else out_ch, out_ch, dropout, groups)
                                    for i in range(n_blocks))
        self.attns = nn.ModuleList(AttnBlock(out_ch, groups) if attn else nn.Identity() for _ in range(n_blocks))
        self.resample = resample if resample is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        for block, attn in zip(self.blocks, self.attns):
            x = attn(block(x))
        return self.resample(x)


class MidBlock(nn.Module):
    """ResNet - attention - ResNet at the lowest resolution (always has attention)."""

    def __init__(self, channels: int, dropout: float, groups: int | None = None) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """E: (B, in_channels, H, W) -> (B, z_out, H/f, W/f), z_out = 2*z_channels (KL: mean, logvar) or z_channels (VQ)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        levels, in_ch = [], cfg.ch
        for i, out_ch in enumerate(widths):
            last = i == len(widths) - 1
            levels.append(Level(in_ch, out_ch, cfg.num_res_blocks, 2**i in cfg.attn_resolutions, cfg.dropout,
                                None if last else Downsample(out_ch), cfg.norm_groups))
            in_ch = out_ch
        self.levels = nn.ModuleList(levels)
        self.mid = MidBlock(widths[-1], cfg.dropout, cfg.norm_groups)
        self.norm_out = group_norm(widths[-1], cfg.norm_groups)
        z_out = 2 * cfg.z_channels if cfg.kind == "kl" else cfg.z_channels
        self.conv_out = nn.Conv2d(widths[-1], z_out, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.levels:
            h = level(h)  # ... -> (B, ch*ch_mult[-1], H/f, W/f)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, z_out, H/f, W/f)


class Decoder(nn.Module):
    """D: (B, z_channels, h, w) -> (B, out_channels, h*f, w*f); mirrors E with num_res_blocks + 1 blocks per level."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1], cfg.dropout, cfg.norm_groups)
        levels, in_ch = [], widths[-1]
        for i in reversed(range(len(widths))):  # from the lowest resolution up
            out_ch = widths[i]
            levels.append(Level(in_ch, out_ch, cfg.num_res_blocks + 1, 2**i in cfg.attn_resolutions, cfg.dropout,
                                Upsample(out_ch) if i > 0 else None, cfg.norm_groups))
            in_ch = out_ch
        self.levels = nn.ModuleList(levels)
        self.norm_out = group_norm(widths[0], cfg.norm_groups)
        self.conv_out = nn.Conv2d(widths[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))  # (B, ch*ch_mult[-1], h, w)
        for level in self.levels:
            h = level(h)  # ... -> (B, ch*ch_mult[0], h*f, w*f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)


# --------------------------------------------------------------------------------------------------------------
# First stages
# --------------------------------------------------------------------------------------------------------------


class _FirstStage(ChannelsLastOnCPU):
    """Shared plumbing: config, input checks, the latent interface attributes, the CPU memory layout."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.f = cfg.f
        self.latent_channels = cfg.embed_dim
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last conv weight W (the adaptive GAN weight compares gradients w.r.t. it)."""
        return self.decoder.conv_out.weight

    def _check_input(self, x: Tensor) -> Tensor:
        check_images(x, channels=self.cfg.in_channels, multiple_of=self.f, value_range=(-1.0, 1.0))
        return x.to(self.encoder.conv_in.weight.dtype)

    def _check_latent(self, z: Tensor) -> Tensor:
        if not isinstance(z, Tensor) or z.ndim != 4 or z.shape[1] != self.latent_channels:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(
                f"The decoder expects latents of shape (B, {self.latent_channels}, h, w), got {shape}. "
                f"Pass z from encode()/encode_latent() of this model (f={self.f}, latent_channels="
                f"{self.latent_channels}); images must be encoded first."
            )
        return z.to(self.decoder.conv_in.weight.dtype)


class AutoencoderKL(_FirstStage):
    """KL-regularised autoencoder (paper Sec. 3.1): x -> E -> quant_conv -> q(z|x) -> z -> post_quant_conv -> D."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        if cfg.kind != "kl":
            raise ValueError(f"AutoencoderKL needs a config with kind='kl', got {cfg.kind!r}. Use VQModel or build_autoencoder.")
        super().__init__(cfg)
        # 1x1 maps between the encoder's channels and the latent channels: (mean, logvar) and back
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.prefer_layout()  # channels-last weights on the CPU (see ChannelsLastOnCPU)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """x (B, C, H, W) in [-1, 1] -> posterior q(z|x) over z (B, embed_dim, H/f, W/f)."""
        moments = self.quant_conv(self.encoder(self._check_input(x)))  # (B, 2*embed_dim, h, w)
        return DiagonalGaussian(moments.contiguous())

    def decode(self, z: Tensor) -> Tensor:
        """z (B, embed_dim, h, w) -> x_hat = D(z) (B, out_channels, h*f, w*f)."""
        return self.decoder(self.post_quant_conv(self._check_latent(z))).contiguous()

    def forward(
        self, x: Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def encode_latent(self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """The latent the diffusion model learns: a posterior sample (as the reference does) or its mode."""
        posterior = self.encode(x)
        return posterior.sample(generator) if sample else posterior.mode()

    def decode_latent(self, z: Tensor) -> Tensor:
        return self.decode(z)


class VQModel(_FirstStage):
    """VQ-regularised autoencoder with the quantiser absorbed into the decoder (paper Sec. 3.1, App. G).

    encode(x) -> continuous pre-quantisation z; decode(z) quantises (nearest code), then runs D.
    """

    def __init__(self, cfg: AutoencoderConfig) -> None:
        if cfg.kind != "vq":
            raise ValueError(f"VQModel needs a config with kind='vq', got {cfg.kind!r}. Use AutoencoderKL or build_autoencoder.")
        super().__init__(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantizer = VectorQuantizer(
            cfg.n_embed, cfg.embed_dim, beta=cfg.beta, restart_dead_codes=cfg.restart_dead_codes,
            dead_threshold=cfg.dead_threshold, usage_decay=cfg.usage_decay,
        )
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.prefer_layout()  # channels-last weights on the CPU (see ChannelsLastOnCPU)

    def encode(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) in [-1, 1] -> pre-quantisation z (B, embed_dim, H/f, W/f)."""
        return self.quant_conv(self.encoder(self._check_input(x))).contiguous()

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """z -> (z_q, commitment + codebook loss, usage info). Updates usage statistics in training mode."""
        return self.quantizer(self._check_latent(z))

    def decode(self, z: Tensor, quantize: bool = True) -> Tensor:
        """z (B, embed_dim, h, w) -> x_hat; quantises z first unless ``quantize=False`` (z already quantised)."""
        z = self._check_latent(z)
        if quantize:
            z, _, _ = self.quantizer(z)
        return self.decoder(self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype))).contiguous()

    def decode_code(self, indices: Tensor) -> Tensor:
        """Codebook indices (B, h, w) -> x_hat."""
        return self.decode(self.quantizer.get_codebook_entry(indices), quantize=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        z_q, qloss, info = self.quantize(self.encode(x))
        return self.decode(z_q, quantize=False), qloss, info

    def encode_latent(self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Pre-quantisation z (deterministic; ``sample`` and ``generator`` are accepted for a common interface)."""
        return self.encode(x)

    def decode_latent(self, z: Tensor) -> Tensor:
        return self.decode(z, quantize=True)


class IdentityFirstStage(nn.Module):
    """No compression (f = 1): the pixel-space diffusion baseline, with the same interface as the autoencoders."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.f = 1
        self.latent_channels = channels

    def encode_latent(self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        check_images(x, channels=self.latent_channels, multiple_of=1, value_range=(-1.0, 1.0))
        return x

    def decode_latent(self, z: Tensor) -> Tensor:
        return z

    def forward(self, x: Tensor) -> Tensor:
        return self.decode_latent(self.encode_latent(x))


def build_autoencoder(cfg_or_preset_name: AutoencoderConfig | str, **overrides) -> AutoencoderKL | VQModel:
    """Build an AutoencoderKL or a VQModel from a config or a preset name (see AUTOENCODER_PRESETS)."""
    if isinstance(cfg_or_preset_name, str):
        cfg = autoencoder_config(cfg_or_preset_name, **overrides)
    elif isinstance(cfg_or_preset_name, AutoencoderConfig):
        cfg = _replace(cfg_or_preset_name, overrides)
    else:
        raise TypeError(
            f"build_autoencoder expects an AutoencoderConfig or a preset name, got {type(cfg_or_preset_name).__name__}. "
            f"Valid presets: {', '.join(sorted(AUTOENCODER_PRESETS))}."
        )
    return AutoencoderKL(cfg) if cfg.kind == "kl" else VQModel(cfg)


def load_autoencoder(path: str | Path, device: torch.device | str = "cpu") -> tuple[AutoencoderKL | VQModel, dict[str, Any]]:
    """Rebuild a first-stage autoencoder from a checkpoint written by ``save_checkpoint(kind="autoencoder")``.

    Weights are cast to float32 (shipped checkpoints are float16). Returns (model in eval mode, metadata).
    """
    meta = read_metadata(path)
    if meta.get("kind") != "autoencoder":
        raise CheckpointError(f"Checkpoint {path} holds a {meta.get('kind')!r}, not an autoencoder.")
    fields = {f.name for f in dataclasses.fields(AutoencoderConfig)}
    raw = meta["config"]
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise CheckpointError(f"Checkpoint {path} has config keys this version does not know: {unknown}.")
    try:
        cfg = AutoencoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"Checkpoint {path} has an autoencoder config this version cannot build ({e}).") from e
    # the config's model, built on the meta device, must have the file's tensor shapes before any memory is spent
    check_config_fits(path, lambda: build_autoencoder(cfg), "autoencoder")
    state, meta = read_checkpoint(path)
    model = build_autoencoder(cfg)
    load_state_into(model, state, path)
    return model.to(device).eval(), meta
