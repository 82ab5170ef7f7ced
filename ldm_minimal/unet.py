"""The denoising network epsilon_theta(z_t, t, tau_theta(y)): a time-conditional UNet (paper Sec. 3.2-3.3, App. E).

The LDM objective (Eq. 2; Eq. 3 with a condition) trains epsilon_theta to predict the noise added to a latent:

    L_LDM = E_{E(x), y, eps ~ N(0, 1), t} [ || eps - epsilon_theta(z_t, t, tau_theta(y)) ||^2 ]

The backbone is the UNet of Ho et al. / Dhariwal & Nichol, built from:
  - a sinusoidal embedding of t followed by an MLP (the "time embedding"), to which a learned class embedding is
    added for class-conditional models (the "adm" mode);
  - ResBlocks that inject the embedding into every block by scale-shift normalisation;
  - a down path, a middle and an up path joined by skip connections;
  - SpatialTransformers (ldm_minimal.attention) at the chosen downsampling factors: self-attention, and
    cross-attention to the context tau_theta(y) when the model has context_dim (Sec. 3.3);
  - zero-initialised output layers, so that the untrained network predicts exactly zero.

Concat conditioning (inpainting, super-resolution, semantic synthesis) is plain channel concatenation: build the
model with in_channels = latent channels + condition channels and pass torch.cat([z_t, c], dim=1).

Shapes: B batch, C channels, h x w latent size, L context tokens, E = 4 * model_channels embedding width.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ldm_minimal.attention import SpatialTransformer, check_context, check_context_mask
from ldm_minimal.utils import ChannelsLastOnCPU, min_max, unknown_name_error

__all__ = [
    "timestep_embedding",
    "ResBlock",
    "Downsample",
    "Upsample",
    "UNetConfig",
    "UNET_PRESETS",
    "unet_config",
    "UNet",
]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the Transformer and DDPM.

    t: (B,) ints or floats. Returns (B, dim) float32 laid out [cos(t w_0..w_{k-1}), sin(t w_0..w_{k-1})]
    with k = dim // 2 and w_i = max_period^(-i / k) (the reference's order: cosines first). Odd dim: a zero column.
    """
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}. Use t.reshape(-1).")
    half = dim // 2
    # w_i = exp(-ln(max_period) * i / half)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    if channels % groups:
        raise ValueError(
            f"GroupNorm: {channels} channels cannot be split into {groups} groups. Choose model_channels and "
            f"channel_mult so that every width is divisible by norm_groups={groups}, or change norm_groups."
        )
    return nn.GroupNorm(groups, channels, eps=1e-5)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer's parameters (the block starts as the identity / the output starts at zero)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block conditioned on the time (+ class) embedding emb (App. E, following Dhariwal & Nichol).

    h = conv3(SiLU(GN(x))); with scale-shift norm h = GN(h) * (1 + scale) + shift, (scale, shift) = Linear(SiLU(emb));
    otherwise h = GN(h + Linear(SiLU(emb))); then SiLU, dropout, zero-initialised conv3; out = skip(x) + h.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.norm1 = _group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.norm2 = _group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, h, w); emb: (B, E). Returns (B, C_out, h, w)."""
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, h, w)
        e = rearrange(self.emb_proj(F.silu(emb)), "b c -> b c 1 1")  # (B, 2 C_out or C_out, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            # GN(h) * (1 + scale) + shift
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve h and w with a stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, h/2, w/2)


class Upsample(nn.Module):
    """Double h and w: nearest-neighbour upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2h, 2w)


@dataclass
class UNetConfig:
    """Hyper-parameters of epsilon_theta (mostly the reference UNetModel's names; App. E's tables call them Channels, Depth, Channel Multiplier, Attention resolutions, Number of Heads / Head Channels).

    in_channels counts the latent channels plus any concat-conditioning channels. attention_factors are
    downsampling factors (1 = full latent resolution, 2 = half, ...), not pixel sizes. Heads: dim_head fixes the
    head width (heads = channels // dim_head); otherwise num_heads fixes the count. context_dim=None: no
    cross-attention. num_classes=None: no class embedding; otherwise the table has num_classes + 1 rows, the last
    (index num_classes) being the learned "null" class for classifier-free guidance.
    """

    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_factors: tuple[int, ...] = (2, 4)
    num_heads: int = 4
    dim_head: int | None = None
    transformer_depth: int = 1
    context_dim: int | None = None
    num_classes: int | None = None
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    norm_groups: int = 32

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)
        self.attention_factors = tuple(self.attention_factors)
        if not self.channel_mult:
            raise ValueError("channel_mult must have at least one level, e.g. (1, 2, 2).")
        reachable = [2**i for i in range(len(self.channel_mult))]
        bad = [f for f in self.attention_factors if f not in reachable]
        if bad:
            raise ValueError(
                f"attention_factors {bad} are not downsampling factors of this UNet; with "
                f"{len(self.channel_mult)} levels the factors are {reachable}. (They are factors, not pixel sizes.)"
            )
        # widths that get a SpatialTransformer: the attention levels and the middle (the last level)
        attn_levels = {i for i, f in enumerate(reachable) if f in self.attention_factors} | {len(reachable) - 1}
        for c in sorted({self.model_channels * self.channel_mult[i] for i in attn_levels}):
            if self.dim_head is not None and c % self.dim_head:
                raise ValueError(
                    f"attention width {c} is not divisible by dim_head={self.dim_head}; choose a dim_head that "
                    f"divides it (or set dim_head=None and use num_heads)."
                )
            if self.dim_head is None and c % self.num_heads:
                raise ValueError(
                    f"attention width {c} is not divisible by num_heads={self.num_heads}; choose num_heads that "
                    f"divides it (or set dim_head)."
                )

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def downsampling(self) -> int:
        """The total downsampling factor 2^(levels-1): latent sizes must be divisible by it."""
        return 2 ** (self.levels - 1)

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, dim_head) of an attention layer on `channels` channels."""
        if self.dim_head is not None:
            return channels // self.dim_head, self.dim_head
        return self.num_heads, channels // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)


UNET_PRESETS: dict[str, UNetConfig] = {
    # CPU, for the tests and the first notebooks: < 2M parameters.
    "tiny": UNetConfig(
        model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_factors=(2, 4), dim_head=32,
        norm_groups=8,
    ),
    # CPU default for the course's small worlds (shapes, emoji latents): ~7M parameters.
    "small": UNetConfig(
        model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1, attention_factors=(2, 4), dim_head=32,
    ),
    # single-GPU default: ~42M parameters.
    "default": UNetConfig(
        model_channels=128, channel_mult=(1, 2, 2), num_res_blocks=2, attention_factors=(2, 4), dim_head=32,
    ),
    # the paper's CelebA-HQ LDM-VQ-4 (64x64x3 latents), with our SpatialTransformer in place of its attention blocks.
    "paper-celebahq-vq4": UNetConfig(
        model_channels=224, channel_mult=(1, 2, 3, 4), num_res_blocks=2, attention_factors=(8, 4, 2), dim_head=32,
    ),
    # Stable Diffusion v1's UNet (64x64x4 latents, CLIP ViT-L/14 context 77x768), no scale-shift norm.
    "paper-sd": UNetConfig(
        in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
        attention_factors=(1, 2, 4), num_heads=8, context_dim=768, use_scale_shift_norm=False,
    ),
}


def unet_config(name: str, **overrides) -> UNetConfig:
    """A copy of the preset `name` with fields replaced by `overrides` (e.g. context_dim=64, in_channels=7)."""
    if name not in UNET_PRESETS:
        raise unknown_name_error("UNet preset", name, list(UNET_PRESETS))
    valid = set(UNetConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"Unknown UNetConfig field(s) {unknown}. Valid fields: {', '.join(sorted(valid))}.")
    return replace(UNET_PRESETS[name], **overrides)


class EmbedSequential(nn.ModuleList):
    """A chain of layers, each fed what it needs: ResBlocks the embedding, SpatialTransformers the context.

    `name` (e.g. "down.ds2.0") keys the cross-attention maps of its SpatialTransformer.
    """

    def __init__(self, layers: list[nn.Module], name: str) -> None:
        super().__init__(layers)
        self.name = name

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        maps: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                if maps is not None:
                    x, block_maps = layer(x, context, context_mask, return_attention=True)
                    for i, m in enumerate(block_maps):
                        maps[self.name if len(block_maps) == 1 else f"{self.name}.block{i}"] = m
                else:
                    x = layer(x, context, context_mask)
            else:
                x = layer(x)
        return x


class UNet(ChannelsLastOnCPU):
    """epsilon_theta(z_t, t, y): the time-conditional UNet with cross-attention of Sec. 3.3 (Fig. 3).

    forward(x, t, context=None, context_mask=None, y=None, return_attention=False):
      x: (B, in_channels, h, w) = z_t (with any concat condition appended on channels), h, w divisible by
         cfg.downsampling; t: (B,) or scalar, int or float; context: (B, L, context_dim) = tau_theta(y);
      context_mask: (B, L) bool, True = real token; y: (B,) class indices in [0, num_classes], num_classes = null.
    Returns eps (B, out_channels, h, w); with return_attention=True, (eps, maps) where maps[name] is the
    cross-attention probability (B, heads, h'*w', L) of every SpatialTransformer, named by path, downsampling
    factor and block index ("down.ds2.0", "mid.ds4", "up.ds2.1"; with transformer_depth > 1 a ".block<i>" suffix),
    empty when no context is given.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mc, g = cfg.model_channels, cfg.norm_groups
        emb_dim = 4 * mc  # E

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # num_classes + 1 rows: the last is the "null" class used for classifier-free guidance
        self.class_embed = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes is not None else None

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, cfg.dropout, cfg.use_scale_shift_norm, g)

        def attn(ch: int) -> SpatialTransformer:
            heads, dim_head = cfg.heads_for(ch)
            return SpatialTransformer(ch, heads, dim_head, cfg.transformer_depth, cfg.context_dim, cfg.dropout, g)

        # ---- down path: conv_in, then per level num_res_blocks x [ResBlock (+ attention)], then Downsample
        self.conv_in = nn.Conv2d(cfg.in_channels, mc, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [mc]  # widths of the features handed to the up path, in order
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for j in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_factors:
                    layers.append(attn(ch))
                self.down.append(EmbedSequential(layers, f"down.ds{ds}.{j}"))
                skip_channels.append(ch)
            if level != cfg.levels - 1:
                self.down.append(EmbedSequential([Downsample(ch)], f"down.ds{ds}.downsample"))
                skip_channels.append(ch)
                ds *= 2

        # ---- middle: ResBlock, attention, ResBlock at the lowest resolution
        self.mid = EmbedSequential([res(ch, ch), attn(ch), res(ch, ch)], f"mid.ds{ds}")

        # ---- up path: per level num_res_blocks + 1 x [ResBlock on concat(h, skip) (+ attention)], then Upsample
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_factors:
                    layers.append(attn(ch))
                name = f"up.ds{ds}.{i}"
                if level != 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.up.append(EmbedSequential(layers, name))
        assert not skip_channels

        # ---- output head: GN, SiLU, zero-initialised conv3 (the untrained model predicts eps = 0)
        self.norm_out = _group_norm(ch, g)
        self.conv_out = _zero(nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        self.prefer_layout()  # channels-last weights on the CPU (see ChannelsLastOnCPU)

    @property
    def null_class(self) -> int:
        """Index of the learned "null" class (classifier-free guidance's unconditional label)."""
        if self.cfg.num_classes is None:
            raise ValueError("This UNet has no class embedding (num_classes=None), hence no null class.")
        return self.cfg.num_classes

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_inputs(
        self,
        x: torch.Tensor,
        t: torch.Tensor | int | float,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        y: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validate the inputs with messages that name the fix (shapes and dtypes; label values only on the CPU,
        where reading them costs no device sync). Returns t as a float tensor (B,) on x's device and the context
        mask as bool on x's device (or None)."""
        cfg = self.cfg
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a latent batch (B, C, h, w), got {shape}. Add a batch dim with x[None].")
        b, c, h, w = x.shape
        if c != cfg.in_channels:
            raise ValueError(
                f"x has {c} channels but this UNet expects in_channels={cfg.in_channels} (latent channels plus any "
                f"concat-conditioning channels). For concat conditioning pass torch.cat([z_t, c], dim=1) and build "
                f"the UNet with in_channels = latent channels + condition channels; otherwise build it with "
                f"in_channels={c}."
            )
        f = cfg.downsampling
        if h % f or w % f:
            raise ValueError(
                f"latent size {h}x{w} is not divisible by 2^(levels-1) = {f} (channel_mult has {cfg.levels} levels). "
                f"Use latents whose sides are multiples of {f} (e.g. {max(f, h // f * f)}x{max(f, w // f * f)}), "
                f"or fewer levels in channel_mult."
            )
        # ---- t
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t)
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"t must hold int or float timesteps, got dtype {t.dtype}.")
        if t.ndim == 0 or t.numel() == 1:
            t = t.reshape(1).expand(b)
        if t.ndim != 1 or t.shape[0] != b:
            raise ValueError(
                f"t must be a scalar or have shape (B,) = ({b},), got shape {tuple(t.shape)}. "
                "Give one timestep per sample."
            )
        t = t.to(device=x.device, dtype=torch.float32)
        # ---- y (class labels)
        if y is not None and cfg.num_classes is None:
            raise ValueError(
                "Class labels y were given but this UNet has no class embedding. Build it with "
                "num_classes=<number of classes> (unet_config(..., num_classes=K)), or pass y=None."
            )
        if y is None and cfg.num_classes is not None:
            raise ValueError(
                f"This UNet is class-conditional (num_classes={cfg.num_classes}) but y is None. Pass y (B,) class "
                f"indices; for unconditional samples pass the null class: torch.full((B,), {cfg.num_classes})."
            )
        if y is not None:
            if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.shape != (b,):
                desc = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(f"y must be an integer tensor of shape ({b},), got {desc}. Use y.long().reshape(-1).")
            # On an accelerator an out-of-range label fails in the embedding lookup itself (a device-side check);
            # reading the values here would stall the device every step, so only CPU labels are range-checked.
            lo, hi = min_max(y) if y.numel() and y.device.type == "cpu" else (0, 0)
            if lo < 0 or hi > cfg.num_classes:
                raise ValueError(
                    f"y holds labels in [{lo:g}, {hi:g}] but valid labels are "
                    f"0..{cfg.num_classes - 1} plus the null class {cfg.num_classes}. Remap the labels or build "
                    "with a larger num_classes."
                )
        # ---- context
        if context is not None and cfg.context_dim is None:
            raise ValueError(
                f"A context of shape {tuple(context.shape)} was given but this UNet has no cross-attention "
                f"(context_dim=None). Build it with context_dim={context.shape[-1]} "
                f"(unet_config(..., context_dim={context.shape[-1]})), or pass context=None."
            )
        if context is None and cfg.context_dim is not None:
            raise ValueError(
                f"This UNet has cross-attention (context_dim={cfg.context_dim}) but context is None. Pass "
                f"context = tau_theta(y) of shape (B, L, {cfg.context_dim}); for unconditional samples use the "
                "encoding of the empty prompt (or any context with a context_mask that is all False)."
            )
        if context is not None:
            check_context(context, cfg.context_dim, b, "this UNet")
            if context_mask is not None:
                # bool, on x's device, once: every cross-attention layer then takes it as it is
                context_mask = check_context_mask(context_mask, b, context.shape[1]).to(x.device)
        elif context_mask is not None:
            raise ValueError("context_mask was given without a context. Pass context too, or context_mask=None.")
        return t, context_mask

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | int | float,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t, context_mask = self._check_inputs(x, t, context, context_mask, y)
        cfg = self.cfg

        # time embedding: MLP(sinusoid(t)); class conditioning adds a learned embedding of y to it
        emb = self.time_embed(timestep_embedding(t, cfg.model_channels))  # (B, E)
        if self.class_embed is not None:
            emb = emb + self.class_embed(y.to(x.device))  # (B, E)

        maps: dict[str, torch.Tensor] | None = {} if return_attention else None
        h = self.conv_in(x)  # (B, mc, h, w)
        skips = [h]
        for block in self.down:
            h = block(h, emb, context, context_mask, maps)
            skips.append(h)
        h = self.mid(h, emb, context, context_mask, maps)  # (B, C, h / f, w / f)
        for block in self.up:
            # skip connection: concatenate the matching down-path feature on channels
            h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb, context, context_mask, maps)
        # epsilon_theta(z_t, t, tau_theta(y))
        eps = self.conv_out(F.silu(self.norm_out(h))).to(x.dtype).contiguous()  # (B, out_channels, h, w)
        if return_attention:
            return eps, maps
        return eps
