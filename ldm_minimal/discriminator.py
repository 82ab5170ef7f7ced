"""The patch-based discriminator D_psi of the first-stage objective (Sec. 3.1 and App. G, Eq. 25).

Sec. 3.1: the autoencoder is trained with "a patch-based [Isola et al., pix2pix] adversarial objective", which
ensures that the reconstructions are confined to the image manifold by enforcing local realism". Eq. 25 writes
the objective as  min_{E,D} max_psi ( L_rec(x, D(E(x))) - L_adv(D(E(x))) + log D_psi(x) + L_reg(x; E, D) ).

A PatchGAN classifies overlapping patches instead of whole images: its output is a map of logits (B, 1, h', w'),
one per receptive field (70x70 pixels for n_layers=3 on large images; at 32x32 every logit sees the whole image).

Layout (as in the reference, Isola et al.'s "NLayerDiscriminator"):
    Conv4 s2 (3 -> ndf), LeakyReLU(0.2)
    (n_layers - 1) x [Conv4 s2 (channels x2, at most 8 ndf), BatchNorm, LeakyReLU(0.2)]
    Conv4 s1 (-> min(2^n_layers, 8) ndf), BatchNorm, LeakyReLU(0.2)
    Conv4 s1 (-> 1): the logits
Convolutions followed by BatchNorm have no bias. Init: conv weights N(0, 0.02), BN weights N(1, 0.02), BN bias 0.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def patch_map_size(size: int, n_layers: int) -> int:
    """Side of the logit map for an input side ``size``: n_layers stride-2 convs then two stride-1 convs (k4, p1)."""
    for _ in range(n_layers):
        size = (size + 2 - 4) // 2 + 1  # Conv4, stride 2, padding 1
    for _ in range(2):
        size = size + 2 - 4 + 1  # Conv4, stride 1, padding 1: loses one pixel
    return size


def max_n_layers(size: int) -> int:
    """The largest n_layers that still gives a non-empty patch map for images of side ``size`` (0 if none)."""
    n = 0
    while patch_map_size(size, n + 1) >= 1:
        n += 1
    return n


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator D_psi: (B, in_channels, H, W) -> patch logits (B, 1, h', w') (Sec. 3.1, Eq. 25)."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1 (the number of stride-2 convolutions), got {n_layers}.")
        self.in_channels, self.ndf, self.n_layers = in_channels, ndf, n_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers):  # halve the resolution, double the channels (capped at 8 ndf)
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(ndf * mult),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1),  # one logit per patch
        ]
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DCGAN-style init: conv weights ~ N(0, 0.02), BatchNorm weights ~ N(1, 0.02) and biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) images in [-1, 1] -> (B, 1, h', w') logits (h' = 2 for 32x32 and n_layers=3)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PatchDiscriminator expects (B, {self.in_channels}, H, W) images, got shape {tuple(x.shape)}. "
                f"Build it with in_channels={x.shape[1] if x.ndim == 4 else '...'} or pass RGB batches."
            )
        h, w = x.shape[-2:]
        if patch_map_size(min(h, w), self.n_layers) < 1:
            fits = max_n_layers(min(h, w))
            fix = f"use n_layers={fits} (or fewer)" if fits >= 1 else "use images of at least 16x16"
            raise ValueError(
                f"PatchDiscriminator with n_layers={self.n_layers} gives an empty patch map for {h}x{w} images "
                f"(each stride-2 layer halves the size, the last two layers remove a pixel each): {fix}."
            )
        return self.main(x)
