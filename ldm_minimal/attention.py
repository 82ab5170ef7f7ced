"""Attention layers of the denoising UNet: cross-attention and the SpatialTransformer (paper Sec. 3.3).

Latent Diffusion conditions the UNet epsilon_theta on a condition y (text, layouts, ...) by mapping y with a
domain-specific encoder tau_theta to a sequence of tokens tau_theta(y) in R^{M x d_tau}, and letting the
(flattened) intermediate UNet features phi_i(z_t) in R^{N x d_eps^i} attend to them (Sec. 3.3; the objective they are trained with is Eq. 3):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,
    Q = W_Q phi_i(z_t),   K = W_K tau_theta(y),   V = W_V tau_theta(y).

Queries come from the image, keys and values from the condition. The layer that does this is a small
transformer block applied at every pixel of a feature map (the "SpatialTransformer"):

    x = x + SelfAttn(LN(x));  x = x + CrossAttn(LN(x), tau_theta(y));  x = x + FF(LN(x))

When the model has no context (context_dim=None) the cross-attention becomes a second self-attention, so the
same block also serves unconditional and class-conditional models.

Shapes: B batch, N = h*w query tokens (pixels), L context tokens, C channels, H heads, d = dim_head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = [
    "CrossAttention",
    "GEGLU",
    "FeedForward",
    "BasicTransformerBlock",
    "SpatialTransformer",
    "aggregate_attention",
    "check_context",
    "check_context_mask",
]


# ----------------------------------------------------------------------------------------------------------------
# Input checks. They read shapes and dtypes only (never tensor values), so they cost no device sync: the UNet runs
# them once per forward on its inputs, and a layer called on its own (as the tests and notebooks do) runs them too.


def check_context(context: torch.Tensor, expected_width: int, batch: int, where: str) -> None:
    """Raise a ValueError naming the problem and the fix for a malformed context tau_theta(y) (B, L, width)."""
    if not isinstance(context, torch.Tensor):
        raise TypeError(
            f"context must be a torch.Tensor of shape (B, L, {expected_width}), got {type(context).__name__}."
        )
    if context.ndim != 3:
        raise ValueError(
            f"context must have shape (B, L, {expected_width}) (batch, tokens, width), got shape "
            f"{tuple(context.shape)}. For a single vector condition use context.unsqueeze(1) (one token)."
        )
    if context.shape[-1] != expected_width:
        raise ValueError(
            f"context has width {context.shape[-1]} but {where} expects context_dim={expected_width}. "
            f"Build the UNet with context_dim={context.shape[-1]} (e.g. unet_config(..., "
            f"context_dim={context.shape[-1]})), or project the encoder output tau_theta(y) to width "
            f"{expected_width} (e.g. nn.Linear({context.shape[-1]}, {expected_width}))."
        )
    if context.shape[0] != batch:
        raise ValueError(
            f"context has batch size {context.shape[0]} but the features have batch size {batch}. "
            f"Give one context per sample (e.g. context.expand({batch}, -1, -1) to share one prompt)."
        )


def check_context_mask(mask: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """Validate a key padding mask (B, L) (True / 1 = keep) and return it as bool (the same tensor if it is)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"context_mask must be a torch.Tensor of shape ({batch}, {length}), got {type(mask).__name__}."
        )
    if tuple(mask.shape) != (batch, length):
        raise ValueError(
            f"context_mask has shape {tuple(mask.shape)} but must be (B, L) = ({batch}, {length}), one flag per "
            "context token (True = real token, False = padding). Pass the tokenizer's attention_mask."
        )
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(
            f"context_mask must be bool or integer 0/1 (True = keep), got dtype {mask.dtype}. "
            "Use context_mask.bool() if it holds 0/1 values."
        )
    return mask if mask.dtype == torch.bool else mask.bool()


class CrossAttention(nn.Module):
    """Multi-head (cross-)attention of the paper's Sec. 3.3: softmax(Q K^T / sqrt(d)) V.

    Q = W_Q x (queries from the image features), K = W_K c, V = W_V c with c = context (tau_theta(y)),
    or c = x (self-attention) when no context is given. Projections q/k/v have no bias; the output projection
    has one. context_mask (B, L), True = keep, hides padding tokens from the softmax. A sample whose tokens are
    all masked attends to nothing: its output (and its attention map) is exactly zero ("no condition").
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.query_dim = query_dim
        self.context_dim = context_dim if context_dim is not None else query_dim
        self.heads, self.dim_head = heads, dim_head
        # 1 / sqrt(d) of the attention in Sec. 3.3
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(query_dim, inner, bias=False)  # W_Q
        self.to_k = nn.Linear(self.context_dim, inner, bias=False)  # W_K
        self.to_v = nn.Linear(self.context_dim, inner, bias=False)  # W_V
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, query_dim); context: (B, L, context_dim) or None (self-attention); context_mask: (B, L).

        Returns (B, N, query_dim), or with return_attention=True also the probabilities (B, H, N, L) in float32.
        """
        b, n, _ = x.shape
        if x.shape[-1] != self.query_dim:
            raise ValueError(
                f"x has width {x.shape[-1]} but this attention layer expects query_dim={self.query_dim}."
            )
        if context is None:
            context = x
            if self.context_dim != self.query_dim:
                raise ValueError(
                    f"This cross-attention layer needs a context of width {self.context_dim}, but none was given. "
                    "Pass context=tau_theta(y), or build the layer with context_dim=None for self-attention."
                )
        else:
            check_context(context, self.context_dim, b, "this attention layer")
        keep = None
        if context_mask is not None:
            keep = check_context_mask(context_mask, b, context.shape[1]).to(x.device)  # a no-op inside the UNet

        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)  # (B, H, N, d)
        k = rearrange(self.to_k(context), "b l (h d) -> b h l d", h=self.heads)  # (B, H, L, d)
        v = rearrange(self.to_v(context), "b l (h d) -> b h l d", h=self.heads)  # (B, H, L, d)

        any_kept = None
        attn_mask = None
        if keep is not None:
            # A fully masked row would be softmax over nothing (NaN). Let it attend to every token and zero it after.
            any_kept = keep.any(dim=1)  # (B,)
            attn_mask = rearrange(keep | ~any_kept[:, None], "b l -> b 1 1 l")  # (B, 1, 1, L) broadcast over H, N

        probs = None
        if return_attention:
            # Explicit path: the maps are needed. Compute the logits and softmax in float32 even under autocast.
            with torch.autocast(device_type=q.device.type, enabled=False):
                # Q K^T / sqrt(d) (Sec. 3.3)
                sim = torch.einsum("b h i d, b h j d -> b h i j", q.float(), k.float()) * self.scale  # (B, H, N, L)
                if attn_mask is not None:
                    sim = sim.masked_fill(~attn_mask, torch.finfo(sim.dtype).min)
                # softmax over the L context tokens
                probs = sim.softmax(dim=-1)  # (B, H, N, L)
                if any_kept is not None:
                    probs = probs * rearrange(any_kept, "b -> b 1 1 1").to(probs.dtype)
            # softmax(.) V (Sec. 3.3)
            out = torch.einsum("b h i j, b h j d -> b h i d", probs.to(v.dtype), v)  # (B, H, N, d)
        else:
            # Fast path: fused kernel (flash / memory-efficient on GPU). Same maths.
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)  # (B, H, N, d)
            if any_kept is not None:
                out = out * rearrange(any_kept, "b -> b 1 1 1").to(out.dtype)

        out = self.to_out(rearrange(out, "b h n d -> b n (h d)"))  # (B, N, query_dim)
        if return_attention:
            return out, probs
        return out


class GEGLU(nn.Module):
    """Gated GELU unit (Shazeer 2020): (x W + b) * GELU(x V + c), the feed-forward gate of the transformer block."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # (..., dim_out) each
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """Position-wise feed-forward: GEGLU to mult * dim, dropout, Linear back to dim."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block on pixel tokens (Sec. 3.3): self-attention, cross-attention to tau_theta(y), FF.

    With context_dim=None the second attention is a self-attention too (unconditional / class-conditional models).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.has_context = context_dim is not None
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout)  # self-attention
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout)  # cross-attention
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, N, dim); context: (B, L, context_dim). Returns x, or (x, cross-attention maps (B, H, N, L) | None)."""
        if context is not None and not self.has_context:
            raise ValueError(
                f"A context of shape {tuple(context.shape)} was given to a transformer block built without "
                "context_dim (no cross-attention). Build it with context_dim=<width of tau_theta(y)>, or pass "
                "context=None."
            )
        if context is None and self.has_context:
            raise ValueError(
                f"This transformer block has cross-attention (context_dim={self.attn2.context_dim}) but got no "
                "context. Pass context=tau_theta(y) (for an unconditional sample use the encoding of the empty "
                "prompt, or a context_mask that is all False)."
            )
        maps = None
        x = x + self.attn1(self.norm1(x))
        if self.has_context and return_attention:
            h, maps = self.attn2(self.norm2(x), context, context_mask, return_attention=True)
        else:
            h = self.attn2(self.norm2(x), context, context_mask if self.has_context else None)
        x = x + h
        x = x + self.ff(self.norm3(x))
        if return_attention:
            return x, maps
        return x


class SpatialTransformer(nn.Module):
    """A transformer over the pixels of a feature map (Sec. 3.3, Fig. 3): the UNet's conditioning layer.

    GroupNorm, 1x1 conv to heads*dim_head, `depth` BasicTransformerBlocks on the h*w tokens, zero-initialised 1x1
    conv back to `channels`, residual. Because proj_out starts at zero, the layer starts as the identity.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int = 1,
        context_dim: int | None = None,
        dropout: float = 0.0,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        if channels % norm_groups:
            raise ValueError(
                f"SpatialTransformer: {channels} channels cannot be split into {norm_groups} GroupNorm groups. "
                f"Choose channels divisible by {norm_groups} or set norm_groups to a divisor of {channels}."
            )
        inner = heads * dim_head
        self.context_dim = context_dim
        self.depth = depth
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, kernel_size=1)
        self.blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, dropout, context_dim) for _ in range(depth)]
        )
        self.proj_out = nn.Conv2d(inner, channels, kernel_size=1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, C, h, w); context: (B, L, context_dim). Returns x, or (x, a list of depth maps (B, H, h*w, L))."""
        b, c, h, w = x.shape
        x_in = x
        x = self.proj_in(self.norm(x))  # (B, inner, h, w)
        x = rearrange(x, "b c h w -> b (h w) c")  # (B, N, inner), N = h*w pixel tokens
        maps: list[torch.Tensor] = []
        for block in self.blocks:
            if return_attention:
                x, m = block(x, context, context_mask, return_attention=True)
                if m is not None:
                    maps.append(m)
            else:
                x = block(x, context, context_mask)
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        x = self.proj_out(x) + x_in  # (B, C, h, w)
        if return_attention:
            return x, maps
        return x


def aggregate_attention(
    maps: dict[str, torch.Tensor] | list[torch.Tensor], size: int | tuple[int, int]
) -> torch.Tensor:
    """Average cross-attention maps over heads and layers into one picture per token (for the notebooks).

    maps: the dict returned by UNet(..., return_attention=True) (or a list), each (B, H, h*w, L) from square
    (or common aspect) feature maps; size: the output (height, width), e.g. the latent size.
    Returns (B, L, height, width): how much each pixel attends to each context token, averaged.
    """
    items = list(maps.values()) if isinstance(maps, dict) else list(maps)
    if not items:
        raise ValueError(
            "No attention maps to aggregate. Call the UNet with a context and return_attention=True "
            "(maps exist only for models built with context_dim)."
        )
    out_h, out_w = (size, size) if isinstance(size, int) else size
    total = None
    for m in items:
        n = m.shape[2]
        # recover h, w of this layer from the token count and the output aspect ratio
        scale = math.sqrt(n / (out_h * out_w))
        h, w = round(out_h * scale), round(out_w * scale)
        if h * w != n:
            raise ValueError(f"Cannot reshape {n} query tokens into the aspect ratio of {out_h}x{out_w}.")
        m = rearrange(m.float().mean(dim=1), "b (h w) l -> b l h w", h=h, w=w)  # (B, L, h, w)
        m = F.interpolate(m, size=(out_h, out_w), mode="bilinear", align_corners=False)
        total = m if total is None else total + m
    return total / len(items)
