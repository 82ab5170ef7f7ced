"""The first-stage training objective: reconstruction + perceptual + regulariser + patch GAN (Sec. 3.1, App. G).

Paper Eq. 25 (App. G) trains the autoencoder (E, D) against a patch discriminator D_psi:

    L_Autoencoder = min_{E,D} max_psi ( L_rec(x, D(E(x))) - L_adv(D(E(x))) + log D_psi(x) + L_reg(x; E, D) )

As in the reference implementation this becomes two players with their own optimizers:

generator (E, D), one step on
    rec  = |x - x_hat| + w_p * LPIPS(x, x_hat)                 per pixel (LPIPS broadcast over the pixels)
    KL:  nll = sum(rec / exp(logvar) + logvar) / B,             loss = nll + w_kl * KL(q(z|x) || N(0, I)) / B
    VQ:  nll = mean(rec),                                        loss = nll + w_cb * L_codebook
    both: loss += lambda * disc_factor * g,   g = -mean(D_psi(x_hat)),
          lambda = clamp(||grad_W nll|| / (||grad_W g|| + 1e-4), 0, 1e4) * disc_weight   (W: decoder's last layer)
discriminator D_psi, one step on the hinge loss 0.5 * (mean relu(1 - D_psi(x)) + mean relu(1 + D_psi(x_hat))).

The adversarial game starts at ``disc_start``: before it, the generator's adversarial term is exactly 0 (and
D_psi is not even evaluated) and the discriminator is not trained; reconstructions first become good with L1 +
LPIPS alone. (Expect a transient: reconstructions get worse for a while when the discriminator switches on.)

``disc_ramp`` (our addition; 0 = the reference's behaviour) softens that transient: from ``disc_start`` the
discriminator trains at full strength, but the generator's adversarial weight rises linearly from 0 to
``disc_factor`` over ``disc_ramp`` steps. At switch-on the adaptive weight makes the adversarial gradient at the
decoder's last layer as large as ``disc_weight`` times the reconstruction gradient, while D_psi is still untrained
and its gradient carries no information; on a short CPU budget that transient never heals (measured in
docs/results/ae_reconstruction.md), so the CPU presets ramp.

Deliberate choices (see docs and ldm-reference.md section 2):
- logvar: the reference keeps a scalar ``logvar`` nn.Parameter in the loss but never gives it to an optimizer, so
  it stays at logvar_init (0) forever and nll = sum(rec) / B. We make that explicit: logvar is a fixed buffer.
- The reference evaluates D_psi(x_hat) and the adaptive weight before disc_start and multiplies by 0; we skip both
  (same result, less compute, and D_psi's BatchNorm statistics are not touched before the game starts).
- Without gradients (validation under torch.no_grad) the adaptive weight cannot be computed; like the reference we
  then use lambda = 0 for the total and still log g.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm_minimal.discriminator import PatchDiscriminator
from ldm_minimal.lpips import LPIPS
from ldm_minimal.utils import unknown_name_error

KINDS = ("kl", "vq")
PERCEPTUALS = ("lpips", "lpips-random", "none")
DISC_LOSSES = ("hinge", "vanilla")


@dataclass
class AutoencoderLossConfig:
    """Weights and switches of the first-stage objective (Eq. 25). Presets: LOSS_PRESETS / loss_config(name).

    perceptual: "lpips" (the real metric: ImageNet VGG16, downloaded once; or ``lpips_backbone_path``),
                "lpips-random" (offline: random frozen VGG16 trunk + calibrated heads), "none" (L1 only).
    disc_weight: None -> 0.5 for KL, 0.75 for VQ (the reference configs).
    """

    kind: str = "kl"
    perceptual: str = "lpips"
    perceptual_weight: float = 1.0
    lpips_backbone_path: str | None = None  # a local vgg16-397923af.pth for perceptual="lpips" without a download
    kl_weight: float = 1e-6
    codebook_weight: float = 1.0
    disc_start: int = 50001
    disc_weight: float | None = None
    disc_factor: float = 1.0
    disc_ramp: int = 0  # steps over which the generator's adversarial weight rises from 0 (0 = at once, as the reference)
    disc_loss: str = "hinge"
    disc_n_layers: int = 3
    disc_ndf: int = 64
    disc_in_channels: int = 3
    logvar_init: float = 0.0

    def __post_init__(self) -> None:
        for field_name, value, valid in (
            ("kind", self.kind, KINDS),
            ("perceptual", self.perceptual, PERCEPTUALS),
            ("disc_loss", self.disc_loss, DISC_LOSSES),
        ):
            if value not in valid:
                raise unknown_name_error(f"AutoencoderLossConfig.{field_name}", value, valid)
        if self.disc_weight is None:
            self.disc_weight = 0.5 if self.kind == "kl" else 0.75
        for field_name in ("perceptual_weight", "kl_weight", "codebook_weight", "disc_weight", "disc_factor"):
            if getattr(self, field_name) < 0:
                raise ValueError(f"AutoencoderLossConfig.{field_name} must be >= 0, got {getattr(self, field_name)}.")
        if int(self.disc_ramp) != self.disc_ramp or self.disc_ramp < 0:
            raise ValueError(f"disc_ramp must be a non-negative number of steps, got {self.disc_ramp}.")
        if int(self.disc_start) != self.disc_start or self.disc_start < 0:
            raise ValueError(
                f"disc_start must be a non-negative step number, got {self.disc_start}. Use 0 to train the "
                "discriminator from the first step, or a large number to never start it."
            )


LOSS_PRESETS: dict[str, AutoencoderLossConfig] = {
    # The reference's KL autoencoders (kl-f4/f8): the GAN starts after 50k steps, when reconstructions are good.
    "kl-paper": AutoencoderLossConfig(kind="kl", disc_start=50001, kl_weight=1e-6, disc_weight=0.5),
    # The reference's VQ autoencoders (vq-f4): GAN from the start, disc_weight 0.75, codebook weight 1.
    "vq-paper": AutoencoderLossConfig(kind="vq", disc_start=0, codebook_weight=1.0, disc_weight=0.75),
    # Course sizes (32x32 images, a few thousand CPU steps): offline perceptual net, GAN after 1000 steps.
    "tiny-kl": AutoencoderLossConfig(kind="kl", perceptual="lpips-random", disc_start=1000, disc_weight=0.5),
    "tiny-vq": AutoencoderLossConfig(kind="vq", perceptual="lpips-random", disc_start=1000, disc_weight=0.75),
}


def loss_config(name: str, **overrides: Any) -> AutoencoderLossConfig:
    """A copy of the preset ``name`` with ``overrides`` applied (e.g. loss_config("tiny-kl", disc_start=0))."""
    if name not in LOSS_PRESETS:
        raise unknown_name_error("loss preset", name, list(LOSS_PRESETS))
    fields = {f.name for f in dataclasses.fields(AutoencoderLossConfig)}
    bad = [k for k in overrides if k not in fields]
    if bad:
        raise unknown_name_error("AutoencoderLossConfig field", bad[0], sorted(fields))
    return dataclasses.replace(LOSS_PRESETS[name], **overrides)


# ---------------------------------------------------------------------------------------------------------------
# The pieces
# ---------------------------------------------------------------------------------------------------------------


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss: 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]). Logits of any shape -> ()."""
    # L_D = 1/2 ( E_x[max(0, 1 - D(x))] + E_x[max(0, 1 + D(x_hat))] )
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN discriminator loss (cross-entropy on logits).

    0.5 * (E[softplus(-D(x))] + E[softplus(D(x_hat))]). Logits of any shape -> ().
    """
    # L_D = 1/2 ( -E log sigmoid(D(x)) - E log(1 - sigmoid(D(x_hat))) )
    return 0.5 * (F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean())


_D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def adaptive_weight(
    nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, disc_weight: float = 1.0
) -> torch.Tensor:
    """lambda = clamp(||grad_W nll|| / (||grad_W g_loss|| + 1e-4), 0, 1e4) * disc_weight, detached. () tensor.

    W is the decoder's last layer (Esser et al. 2021, Eq. 7): the GAN gradient is rescaled to the size of the
    reconstruction gradient at the output, so neither term drowns the other whatever their raw scales.
    """
    if not isinstance(last_layer, torch.Tensor) or not last_layer.requires_grad:
        raise ValueError(
            "adaptive_weight needs the decoder's last-layer weight as a tensor that requires grad (e.g. "
            "model.last_layer, the decoder's conv_out.weight), computed with gradients enabled."
        )
    try:
        grad_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
        grad_g = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    except RuntimeError as err:
        raise RuntimeError(
            f"Could not differentiate the losses w.r.t. last_layer ({err}). Pass the weight of the layer that "
            "produced x_hat (model.last_layer) and compute the losses with gradients enabled."
        ) from err
    # lambda = ||grad_W L_rec|| / (||grad_W L_adv|| + delta),  delta = 1e-4
    weight = grad_nll.float().norm() / (grad_g.float().norm() + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * disc_weight


# ---------------------------------------------------------------------------------------------------------------
# The whole objective
# ---------------------------------------------------------------------------------------------------------------


class AutoencoderLoss(nn.Module):
    """First-stage loss of Eq. 25: holds the frozen perceptual net (LPIPS) and the discriminator D_psi.

    The autoencoder's optimizer takes model.parameters(); the discriminator's takes
    ``discriminator_parameters()``. Nothing else here is trained (LPIPS is frozen, logvar is a fixed buffer).
    """

    def __init__(self, cfg: AutoencoderLossConfig | None = None, **overrides: Any):
        super().__init__()
        cfg = cfg if cfg is not None else AutoencoderLossConfig()
        self.cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
        cfg = self.cfg
        if cfg.perceptual == "lpips":
            # The real metric. Offline this raises PerceptualWeightsUnavailable, which explains the options.
            self.perceptual: LPIPS | None = LPIPS(backbone=cfg.lpips_backbone_path or "imagenet")
        elif cfg.perceptual == "lpips-random":
            self.perceptual = LPIPS(backbone="random")
        else:
            self.perceptual = None
        self.discriminator = PatchDiscriminator(cfg.disc_in_channels, cfg.disc_ndf, cfg.disc_n_layers)
        self.d_loss_fn = _D_LOSSES[cfg.disc_loss]
        # Fixed, never optimised (the reference's logvar parameter is not in any optimizer; see module docstring).
        self.register_buffer("logvar", torch.tensor(float(cfg.logvar_init)))

    def adversarial_factor(self, step: int) -> float:
        """disc_factor times the linear ramp: 0 before disc_start, rising to disc_factor over disc_ramp steps."""
        if not self.disc_active(step):
            return 0.0
        if self.cfg.disc_ramp <= 0:
            return float(self.cfg.disc_factor)
        return float(self.cfg.disc_factor) * min(1.0, (step - self.cfg.disc_start + 1) / self.cfg.disc_ramp)

    def disc_active(self, step: int) -> bool:
        """Whether the adversarial game is on at ``step`` (step >= disc_start and disc_factor > 0)."""
        return step >= self.cfg.disc_start and self.cfg.disc_factor > 0

    def discriminator_parameters(self) -> Iterable[nn.Parameter]:
        """D_psi's parameters, for its own optimizer."""
        return self.discriminator.parameters()

    def _check_pair(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        if x.shape != x_hat.shape:
            raise ValueError(
                f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}. Pass the "
                "input batch and the autoencoder's reconstruction of it."
            )
        if x.ndim != 4:
            raise ValueError(f"x must be an image batch (B, C, H, W), got shape {tuple(x.shape)}.")

    def _frozen_d(self, x: torch.Tensor) -> torch.Tensor:
        """D_psi(x) without recording gradients for D_psi's own parameters (the generator step must not train D)."""
        flags = [p.requires_grad for p in self.discriminator.parameters()]
        self.discriminator.requires_grad_(False)
        try:
            return self.discriminator(x)
        finally:
            for p, flag in zip(self.discriminator.parameters(), flags):
                p.requires_grad_(flag)

    def generator_loss(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        reg: torch.Tensor,
        step: int,
        last_layer: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The autoencoder's loss. x, x_hat: (B, C, H, W) in [-1, 1].

        reg: the KL per sample, (B,) (posterior.kl()), for kind "kl"; the codebook loss, a scalar, for "vq".
        last_layer: the decoder's last weight (model.last_layer); needed once the discriminator is active.
        Returns (loss (), logs).
        """
        self._check_pair(x, x_hat)
        cfg, b = self.cfg, x.shape[0]
        x, x_hat = x.float(), x_hat.float()
        # L1 per pixel: (B, C, H, W)
        rec = (x - x_hat).abs()
        logs: dict[str, float] = {"l1": _item(rec.mean())}
        if self.perceptual is not None and cfg.perceptual_weight > 0:
            p = self.perceptual(x, x_hat)  # (B,)
            # rec = |x - x_hat| + w_p * LPIPS(x, x_hat)   (LPIPS broadcast over every pixel)
            rec = rec + cfg.perceptual_weight * p.view(b, 1, 1, 1)
            logs["lpips"] = _item(p.mean())

        if cfg.kind == "kl":
            if reg.ndim != 1 or reg.shape[0] != b:
                raise ValueError(
                    f"For kind='kl', reg must be the KL per sample with shape ({b},) (posterior.kl()), got shape "
                    f"{tuple(reg.shape)}."
                )
            # nll = sum_{b,c,h,w} (rec / exp(logvar) + logvar) / B     (a Laplace likelihood with fixed scale)
            nll = torch.sum(rec / torch.exp(self.logvar) + self.logvar) / b
            kl = reg.float().sum() / b
            # L = nll + w_kl * KL(q(z|x) || N(0, I))
            loss = nll + cfg.kl_weight * kl
            logs["kl"] = _item(kl)
        else:
            if reg.numel() != 1:
                raise ValueError(
                    f"For kind='vq', reg must be the scalar codebook loss returned by the quantizer, got shape "
                    f"{tuple(reg.shape)}."
                )
            # nll = mean(rec)
            nll = rec.mean()
            # L = nll + w_cb * L_codebook
            loss = nll + cfg.codebook_weight * reg.float().reshape(())
            logs["codebook_loss"] = _item(reg)
        logs["nll"] = _item(nll)

        if self.disc_active(step):
            # L_adv = -E[D_psi(x_hat)]   (the generator wants its reconstructions to look real)
            g_loss = -self._frozen_d(x_hat).float().mean()
            if torch.is_grad_enabled() and nll.requires_grad:
                if last_layer is None:
                    raise ValueError(
                        "The discriminator is active (step >= disc_start), so generator_loss needs last_layer=model."
                        "last_layer (the decoder's last weight) to compute the adaptive weight."
                    )
                d_weight = adaptive_weight(nll, g_loss, last_layer, float(cfg.disc_weight))
            else:  # validation without gradients: the adaptive weight is undefined; leave the GAN term out
                d_weight = torch.zeros((), device=x.device)
            # L += lambda * disc_factor * ramp(step) * L_adv
            factor = self.adversarial_factor(step)
            loss = loss + d_weight * factor * g_loss
            logs.update(g_loss=_item(g_loss), d_weight=_item(d_weight), adv_factor=factor)
        else:
            logs.update(g_loss=0.0, d_weight=0.0)
        logs["loss"] = _item(loss)
        return loss, logs

    def discriminator_loss(
        self, x: torch.Tensor, x_hat: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """D_psi's loss on detached real x and fake x_hat: (loss (), logs).

        Before disc_start the discriminator is not evaluated and the loss is a constant 0 that requires no grad:
        callers skip the backward/step (see ``autoencoder_train_step``), so D_psi does not train.
        """
        self._check_pair(x, x_hat)
        if not self.disc_active(step):
            return torch.zeros((), device=x.device), {"d_loss": 0.0}
        logits_real = self.discriminator(x.detach())  # (B, 1, h', w')
        logits_fake = self.discriminator(x_hat.detach())  # (B, 1, h', w')
        d_loss = self.cfg.disc_factor * self.d_loss_fn(logits_real, logits_fake)
        return d_loss, {
            "d_loss": _item(d_loss),
            "logits_real": _item(logits_real.float().mean()),
            "logits_fake": _item(logits_fake.float().mean()),
        }


def _item(t: torch.Tensor) -> float:
    """A logged number (detached first, so no autograd warning)."""
    return float(t.detach().float().mean())


def _last_layer(model: nn.Module) -> torch.Tensor:
    layer = getattr(model, "last_layer", None)
    if callable(layer) and not isinstance(layer, torch.Tensor):
        layer = layer()
    if not isinstance(layer, torch.Tensor):
        raise AttributeError(
            f"{type(model).__name__} has no .last_layer tensor. The adaptive GAN weight needs the decoder's last "
            "weight: add a `last_layer` property returning e.g. self.decoder.conv_out.weight."
        )
    return layer


def _before_step(opt: torch.optim.Optimizer, hook: Callable[[torch.optim.Optimizer], None] | None,
                 grad_clip: float | None) -> None:
    if hook is not None:
        hook(opt)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)


def autoencoder_train_step(
    model: nn.Module,
    loss_fn: AutoencoderLoss,
    x: torch.Tensor,
    step: int,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    *,
    before_step: Callable[[torch.optim.Optimizer], None] | None = None,
    grad_clip: float | None = None,
) -> dict[str, float]:
    """One two-player update: a generator step (opt_g on E, D), then a discriminator step (opt_d on D_psi).

    model: an AutoencoderKL (forward(x) -> (x_hat, posterior)) or a VQModel (forward(x) -> (x_hat, qloss, info)),
    with a ``last_layer`` attribute. Returns the merged logs (floats; "loss" is the generator's total).
    before_step(opt) runs between each backward pass and its optimizer step (the trainer averages gradients over
    processes there); grad_clip clips each player's gradient norm.
    """
    kind = loss_fn.cfg.kind
    out = model(x)
    if kind == "kl":
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                "The loss has kind='kl', so the model must return (x_hat, posterior) like AutoencoderKL; got "
                f"{type(out).__name__}{' of length ' + str(len(out)) if isinstance(out, tuple) else ''}. Use a "
                "VQ loss config (kind='vq') for a VQModel."
            )
        x_hat, posterior = out
        reg = posterior.kl()  # (B,)
    else:
        if not (isinstance(out, tuple) and len(out) == 3):
            raise TypeError(
                "The loss has kind='vq', so the model must return (x_hat, qloss, info) like VQModel. Use a KL loss "
                "config (kind='kl') for an AutoencoderKL."
            )
        x_hat, reg, info = out

    # Generator step on E and D.
    g_loss, logs = loss_fn.generator_loss(x, x_hat, reg, step, last_layer=_last_layer(model))
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    _before_step(opt_g, before_step, grad_clip)
    opt_g.step()

    # Discriminator step on D_psi (only once the game is on).
    if loss_fn.disc_active(step):
        d_loss, d_logs = loss_fn.discriminator_loss(x, x_hat.detach(), step)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        _before_step(opt_d, before_step, grad_clip)
        opt_d.step()
        logs.update(d_logs)
    else:
        logs["d_loss"] = 0.0
    if kind == "vq" and isinstance(info, dict):
        for key in ("perplexity", "codes_used"):
            if key in info and isinstance(info[key], torch.Tensor) and info[key].numel() == 1:
                logs[key] = _item(info[key])
    return logs
