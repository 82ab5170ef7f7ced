"""Regularisers of the first-stage latent z: a KL penalty or vector quantisation (paper Sec. 3.1, App. G).

The autoencoder alone would happily produce latents of arbitrary scale and variance. The paper keeps the
latent space well-behaved in one of two ways:

- **KL-reg.** (``DiagonalGaussian``): the encoder outputs a diagonal Gaussian posterior q(z|x) = N(mu, sigma^2)
  and a *slight* KL penalty towards N(0, I) is added to the loss (weight ~1e-6, as in a VAE but much weaker).
- **VQ-reg.** (``VectorQuantizer``): z is snapped to the nearest entry of a learned codebook (van den Oord et al.
  2017, VQ-VAE); the paper absorbs this layer into the decoder, so the diffusion model sees continuous
  pre-quantisation latents and quantisation happens only when decoding.

Both classes are written so that they also run under ``torch.autocast("cuda", dtype=torch.bfloat16)``: every
statistic (log-variance, KL, distances, losses) is computed in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class DiagonalGaussian:
    """The KL-regularised posterior q(z|x) = N(mu, diag(sigma^2)) (paper Sec. 3.1, "KL-reg.").

    ``parameters`` (B, 2C, h, w) is what the encoder (plus quant_conv) outputs: the first C channels are the mean
    mu, the last C the log-variance log sigma^2. The log-variance is clamped to [-30, 20] (as in the reference) so
    that exp() can neither underflow to a zero std nor overflow.
    """

    def __init__(self, parameters: Tensor, deterministic: bool = False) -> None:
        if parameters.ndim < 2 or parameters.shape[1] % 2:
            raise ValueError(
                f"DiagonalGaussian expects parameters of shape (B, 2C, ...) with an even channel count "
                f"(mean and log-variance stacked), got shape {tuple(parameters.shape)}. "
                "Make the encoder output 2 * embed_dim channels (double_z)."
            )
        # float32 statistics even when the encoder ran under bf16 autocast
        self.parameters = parameters.float()
        # mean, logvar: (B, C, h, w) each
        self.mean, logvar = torch.chunk(self.parameters, 2, dim=1)
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.deterministic = deterministic
        if deterministic:
            # a point mass at the mean: zero variance (used e.g. to turn the posterior into a plain AE)
            self.logvar = torch.full_like(self.mean, LOGVAR_MIN)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @property
    def shape(self) -> torch.Size:
        return self.mean.shape

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised sample z = mu + sigma * eps, eps ~ N(0, I). (B, C, h, w).

        ``generator`` makes the draw reproducible; a CPU generator also works for a model on a GPU (the noise is
        drawn on the generator's device and then moved).
        """
        noise_device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=noise_device, dtype=self.mean.dtype)
        # z = mu + sigma * eps   (the reparameterisation trick, so gradients reach mu and sigma)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> Tensor:
        """The most likely latent, the mean mu. (B, C, h, w)."""
        return self.mean

    def kl(self, other: "DiagonalGaussian | None" = None) -> Tensor:
        """KL(q || p) per sample, summed over C, h, w -> (B,). p = N(0, I) unless ``other`` is given.

        Closed form for two diagonal Gaussians; against N(0, I) it is 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2).
        """
        dims = tuple(range(1, self.mean.ndim))
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device)
        if other is None:
            # KL(N(mu, sigma^2) || N(0, 1)) = 0.5 * (mu^2 + sigma^2 - 1 - log sigma^2)
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        # KL(N(mu1, s1^2) || N(mu2, s2^2)) = 0.5 * ((mu1 - mu2)^2 / s2^2 + s1^2 / s2^2 - 1 - log s1^2 + log s2^2)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )

    def nll(self, x: Tensor) -> Tensor:
        """Negative log-likelihood -log q(x) per sample, summed over C, h, w -> (B,)."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device)
        dims = tuple(range(1, self.mean.ndim))
        # -log N(x; mu, sigma^2) = 0.5 * (log 2 pi + log sigma^2 + (x - mu)^2 / sigma^2)
        return 0.5 * torch.sum(math.log(2.0 * math.pi) + self.logvar + (x.float() - self.mean).pow(2) / self.var, dim=dims)

    def __repr__(self) -> str:
        return f"DiagonalGaussian(shape={tuple(self.mean.shape)})"


def perplexity(weights: Tensor) -> Tensor:
    """exp(H(p)) of the distribution p proportional to ``weights`` (K,): 1 if one code is used, K if all equally.

    Used for a batch's code shares, the running EMA usage, and code counts over a whole evaluation set.
    """
    p = weights.float() / weights.float().sum().clamp_min(1e-12)
    # perplexity = exp(-sum_k p_k log p_k)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())


class VectorQuantizer(nn.Module):
    """Vector quantisation of z with a learned codebook {e_k}, k = 1..n_embed (paper Sec. 3.1, "VQ-reg."; VQ-VAE).

    forward(z) with z (B, embed_dim, h, w) returns
      z_q   (B, embed_dim, h, w)  nearest codebook entries, with straight-through gradients to z,
      loss  ()                    beta * ||sg[z_q] - z||^2 + ||z_q - sg[z]||^2 (means over all entries),
      info  dict(indices (B, h, w), perplexity (), used_codes (), restarted ()).

    **Commitment weighting.** The standard VQ-VAE loss puts beta on the *commitment* term (the one whose gradient
    reaches the encoder) and weight 1 on the codebook term. The reference's default (``legacy=True`` in
    taming-transformers' VectorQuantizer2) swaps them: beta multiplies the codebook term instead, a known bug
    (taming-transformers issues 46 and 57). We implement the standard weighting.

    **Dead codes.** Codes that no encoder output ever selects receive no gradient and stay dead forever, which
    wastes capacity (low perplexity). We keep an exponential moving average of each code's share of the
    assignments (buffer ``usage``); in training mode, codes whose share falls below ``dead_threshold / n_embed``
    (a fraction of the uniform share) are re-initialised to randomly chosen encoder outputs of the current batch
    plus a little noise. Buffer ``n_restarts`` counts them so an experiment can report how many were revived.
    """

    def __init__(
        self,
        n_embed: int,
        embed_dim: int,
        beta: float = 0.25,
        restart_dead_codes: bool = True,
        dead_threshold: float = 0.05,
        usage_decay: float = 0.99,
        restart_noise: float = 0.01,
    ) -> None:
        super().__init__()
        if n_embed < 1 or embed_dim < 1:
            raise ValueError(f"VectorQuantizer needs n_embed >= 1 and embed_dim >= 1, got {n_embed} and {embed_dim}.")
        if beta < 0:
            raise ValueError(f"beta (the commitment weight) must be >= 0, got {beta}. The paper uses 0.25.")
        if dead_threshold < 0:
            raise ValueError(f"dead_threshold must be >= 0 (0 disables restarts), got {dead_threshold}.")
        if not 0.0 <= usage_decay < 1.0:
            raise ValueError(f"usage_decay must be in [0, 1), got {usage_decay}. A typical value is 0.99.")
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.restart_dead_codes = restart_dead_codes
        self.dead_threshold, self.usage_decay, self.restart_noise = dead_threshold, usage_decay, restart_noise
        # the codebook e: (n_embed, embed_dim), initialised uniform(-1/n_e, 1/n_e) as in VQ-VAE / the reference
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)
        # EMA of each code's share of assignments; starts uniform so that no code counts as dead at step 0
        self.register_buffer("usage", torch.full((n_embed,), 1.0 / n_embed))
        self.register_buffer("n_restarts", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"n_embed={self.n_embed}, embed_dim={self.embed_dim}, beta={self.beta}, "
            f"restart_dead_codes={self.restart_dead_codes}, dead_threshold={self.dead_threshold}"
        )

    @torch.no_grad()
    def nearest_code(self, z_flat: Tensor) -> Tensor:
        """Index of the nearest codebook entry for each row of z_flat (N, embed_dim) -> (N,) long."""
        e = self.embedding.weight.float()  # (K, D)
        # ||z - e||^2 = ||z||^2 + ||e||^2 - 2 z.e      -> d: (N, K)
        d = z_flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1)[None, :] - 2.0 * z_flat @ e.t()
        return d.argmin(dim=1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        if z.ndim != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(
                f"VectorQuantizer expects z of shape (B, {self.embed_dim}, h, w), got {tuple(z.shape)}. "
                "Pass the encoder's pre-quantisation latent (VQModel.encode), not an image or indices."
            )
        b, _, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()  # distances and losses in float32, also under bf16 autocast
            z_flat = rearrange(z, "b d h w -> (b h w) d")  # (N, D), N = B*h*w
            idx = self.nearest_code(z_flat)  # (N,)
            z_q = rearrange(self.embedding(idx).float(), "(b h w) d -> b d h w", b=b, h=h, w=w)

            # L_VQ = beta * ||sg[z_q] - z||^2  +  ||z_q - sg[z]||^2
            #        (commitment: moves E's output)  (codebook: moves the codes)
            loss = self.beta * F.mse_loss(z, z_q.detach()) + F.mse_loss(z_q, z.detach())

            # straight-through estimator: forward value z_q, backward identity, dL/dz := dL/dz_q
            z_q = z + (z_q - z).detach()

            # codebook usage in this batch
            counts = torch.bincount(idx, minlength=self.n_embed).float()  # (K,)
            share = counts / idx.numel()  # (K,), sums to 1
            # perplexity = exp(H(mean one-hot)) = exp(-sum_k p_k log p_k): 1 if one code, K if all equally used
            batch_perplexity = perplexity(share)
            used_codes = (counts > 0).sum()

            restarted = torch.zeros((), dtype=torch.long, device=z.device)
            if self.training:
                restarted = self._update_usage_and_restart(share, z_flat.detach())

        info = {
            "indices": rearrange(idx, "(b h w) -> b h w", b=b, h=h, w=w),
            "perplexity": batch_perplexity.detach(),
            "used_codes": used_codes,
            "restarted": restarted,
        }
        return z_q, loss, info

    @torch.no_grad()
    def _update_usage_and_restart(self, share: Tensor, z_flat: Tensor) -> Tensor:
        """EMA of usage; re-initialise dead codes to random encoder outputs of this batch. Returns the count."""
        # usage <- decay * usage + (1 - decay) * share
        self.usage.mul_(self.usage_decay).add_(share, alpha=1.0 - self.usage_decay)
        dead = self.usage < self.dead_threshold / self.n_embed  # (K,) bool
        n_dead = dead.sum()
        # (one host sync per training step; it keeps the random stream untouched while no code is dead)
        if not self.restart_dead_codes or not bool(n_dead):
            return torch.zeros((), dtype=torch.long, device=z_flat.device)
        dead_idx = dead.nonzero().squeeze(1)  # (n_dead,)
        # new codes: random encoder outputs of this batch + small noise (relative to z's spread per dimension)
        pick = torch.randint(0, z_flat.shape[0], (dead_idx.numel(),), device=z_flat.device)
        noise_scale = self.restart_noise * z_flat.std(dim=0, keepdim=True).nan_to_num(0.0).clamp_min(1e-6)  # (1, D)
        new_codes = z_flat[pick] + noise_scale * torch.randn_like(z_flat[pick])  # (n_dead, D)
        self.embedding.weight[dead_idx] = new_codes.to(self.embedding.weight.dtype)
        # a revived code gets the uniform share again (a grace period before it can be declared dead again)
        self.usage[dead_idx] = 1.0 / self.n_embed
        self.n_restarts.add_(n_dead)
        return n_dead

    def get_codebook_entry(self, indices: Tensor) -> Tensor:
        """Codebook vectors for integer indices (B, h, w) -> (B, embed_dim, h, w)."""
        if indices.ndim != 3 or indices.is_floating_point():
            raise ValueError(
                f"indices must be an integer tensor of shape (B, h, w), got {indices.dtype} {tuple(indices.shape)}. "
                "Use info['indices'] returned by the quantiser."
            )
        return rearrange(self.embedding(indices), "b h w d -> b d h w")

    @torch.no_grad()
    def codebook_usage(self) -> dict[str, Tensor | int | float]:
        """Running codebook statistics: EMA usage shares, their perplexity, dead codes and restarts so far."""
        return {
            "usage": self.usage.clone(),
            "perplexity": float(perplexity(self.usage)),
            "dead_codes": int((self.usage < self.dead_threshold / self.n_embed).sum()),
            "n_restarts": int(self.n_restarts),
            "n_embed": self.n_embed,
        }
