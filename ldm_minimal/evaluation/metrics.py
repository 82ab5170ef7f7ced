"""Metrics for reconstructions and restorations (PSNR, SSIM, LPIPS, sharpness), and for samples (FID, KID, P/R).

PSNR and SSIM come from torchmetrics (we never hand-write what a well-kept library does); LPIPS is ours
(``ldm_minimal.lpips``). Images are (B, C, H, W) in [-1, 1]; PSNR and SSIM are computed on [0, 1].
The paper reports PSNR and SSIM (with R-FID, R-IS and PSIM) for its first stages in Table 8 (App. D.2).

FID and KID (torchmetrics) and improved precision/recall compare generated with real images in the feature space
of a world's own classifier (Sec. 4, App. E.3; see the second half of this file). torchmetrics is imported inside
the functions that use it: it takes seconds to import, and most users of this module never need it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, (B,). Data range 1 after mapping [-1, 1] -> [0, 1].

    Identical images have infinite PSNR; we cap at 100 dB so that averages over a batch stay finite.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio  # heavy: see the module docstring

    a, b = (x.float().clamp(-1, 1) + 1) / 2, (y.float().clamp(-1, 1) + 1) / 2
    return peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3)).clamp(max=100.0)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5), (B,)."""
    from torchmetrics.functional.image import structural_similarity_index_measure  # heavy: see the module docstring

    a, b = (x.float().clamp(-1, 1) + 1) / 2, (y.float().clamp(-1, 1) + 1) / 2
    return structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")


def high_frequency_energy(x: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Spectral energy above ``cutoff`` cycles/pixel (Nyquist = 0.5), per image, (B,).

    A blurry reconstruction loses exactly this energy; the ratio of a model's value to the originals' value is
    a one-number sharpness score (1.0 = as sharp as the data, < 1 blurrier, > 1 noisier/over-sharpened).
    """
    x = x.float()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    spec = torch.fft.fft2(x).abs() ** 2  # (B, C, H, W)
    fy = torch.fft.fftfreq(x.shape[-2], device=x.device).abs()
    fx = torch.fft.fftfreq(x.shape[-1], device=x.device).abs()
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)  # (H, W) in cycles/pixel
    high = (radius > cutoff).to(spec.dtype)
    return (spec * high).sum(dim=(1, 2, 3)) / (x.shape[-2] * x.shape[-1])


def sharpness_ratio(x_hat: torch.Tensor, x: torch.Tensor, cutoff: float = 0.25) -> float:
    """High-frequency energy of reconstructions over that of the originals (summed over the batch)."""
    return float(high_frequency_energy(x_hat, cutoff).sum() / high_frequency_energy(x, cutoff).sum().clamp_min(1e-12))


@dataclass
class RunningMean:
    """Accumulates per-sample values over batches."""

    total: float = 0.0
    count: int = 0

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().float().flatten()
        self.total += float(values.sum())
        self.count += values.numel()

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)


@dataclass
class ReconstructionMetrics:
    """Collects PSNR, SSIM, LPIPS (optional) and the sharpness ratio over a stream of (x, x_hat) batches."""

    lpips: torch.nn.Module | None = None
    psnr: RunningMean = field(default_factory=RunningMean)
    ssim: RunningMean = field(default_factory=RunningMean)
    lpips_mean: RunningMean = field(default_factory=RunningMean)
    hf_model: float = 0.0
    hf_data: float = 0.0

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        x, x_hat = x.float(), x_hat.float().clamp(-1, 1)
        self.psnr.update(psnr(x_hat, x))
        self.ssim.update(ssim(x_hat, x))
        if self.lpips is not None:
            self.lpips_mean.update(self.lpips(x_hat, x))
        self.hf_model += float(high_frequency_energy(x_hat).sum())
        self.hf_data += float(high_frequency_energy(x).sum())

    def compute(self) -> dict[str, float]:
        out = {"psnr": self.psnr.mean, "ssim": self.ssim.mean, "sharpness": self.hf_model / max(self.hf_data, 1e-12)}
        if self.lpips is not None:
            out["lpips"] = self.lpips_mean.mean
        out["n"] = self.psnr.count
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else float("nan")) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------------
# Sample quality in a feature space: FID, KID (torchmetrics) and precision/recall (Kynkaanniemi et al. 2019)
#
# The paper reports FID on Inception-v3 pool features. Those weights cannot be downloaded offline, so the feature
# network here is a small classifier trained on the data world itself (for shapes: the attribute judge,
# ``ldm_minimal.evaluation.attributes``). Figures are comparable between our models, never with the paper's numbers.


class FeatureNet(torch.nn.Module):
    """Adapts a classifier with ``features(x in [-1, 1]) -> (B, D)`` to torchmetrics' custom-feature interface.

    torchmetrics (``normalize=True``) hands a custom network float images in [0, 1]; ``num_features`` spares it a
    dummy forward pass at the wrong (299x299) size. ``scale`` multiplies the features (see ``_feature_metric``).
    """

    def __init__(self, classifier: torch.nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        if not hasattr(classifier, "features") or not hasattr(classifier, "num_features"):
            raise TypeError(
                f"{type(classifier).__name__} has no features()/num_features; pass a world classifier such as "
                "ldm_minimal.evaluation.attributes.load_attribute_classifier()."
            )
        self.classifier = classifier.eval()
        self.num_features = int(classifier.num_features)
        self.scale = float(scale)

    @torch.no_grad()
    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        # [0, 1] -> [-1, 1] -> (B, D), float64 as torchmetrics accumulates in double
        return self.classifier.features(x01.float() * 2 - 1).double() * self.scale


@torch.no_grad()
def feature_scale(classifier: torch.nn.Module, real: torch.Tensor, batch: int = 256) -> float:
    """1 / RMS of the classifier's features on (up to 512 of) the real images: the factor that gives them unit RMS.

    KID's kernel k(a, b) = (a.b / D + 1)^3 assumes features of order one (Inception's pool features are); a world
    classifier's raw features are ~50 times larger there, and the cubic blows the estimator's variance up. FID and
    precision/recall are on the same standardised features (FID scales with the square of the features' scale).
    """
    x = real[:512].float().clamp(-1, 1)
    feats = torch.cat([classifier.features(x[i:i + batch]) for i in range(0, x.shape[0], batch)])
    return float(feats.double().pow(2).mean().rsqrt())


INCEPTION = "inception"  # pass as ``classifier`` for the paper's Inception-v3 features (needs internet once)


def _feature_metric(metric_cls, classifier: torch.nn.Module | str, real: torch.Tensor, fake: torch.Tensor,
                    batch: int, **kwargs):
    """Builds a torchmetrics feature metric (FID, KID), feeds it both image sets ([-1, 1]) and returns compute().

    For Inception features a missing torch-fidelity or failed weight download becomes one clear message.
    """
    if isinstance(classifier, str):
        if classifier != INCEPTION:
            raise ValueError(f"classifier must be a world classifier module or {INCEPTION!r}, got {classifier!r}.")
        feature: torch.nn.Module | int = 2048  # torchmetrics' name for Inception-v3's pool features
    else:
        feature = FeatureNet(classifier)  # checks the classifier's interface
        feature.scale = feature_scale(classifier, real)  # unit RMS on the real set
    try:
        metric = metric_cls(feature=feature, normalize=True, **kwargs)
    except (ModuleNotFoundError, OSError, RuntimeError) as e:
        if not isinstance(feature, int):
            raise
        raise RuntimeError(
            "Inception features need the torch-fidelity package and a one-time download of the FID Inception "
            "weights: `pip install torch-fidelity` with internet access (it also needs a torchvision that matches "
            f"your torch). The underlying error: {e}. Offline, use the world's classifier instead, e.g. "
            "fid(real, fake, load_attribute_classifier()); its figures compare our models with each other, not with "
            "the paper's."
        ) from e
    for images, is_real in ((real, True), (fake, False)):
        for i in range(0, images.shape[0], batch):
            metric.update((images[i:i + batch].float().clamp(-1, 1) + 1) / 2, real=is_real)  # torchmetrics: [0, 1]
    return metric.compute()


@torch.no_grad()
def fid(real: torch.Tensor, fake: torch.Tensor, classifier: torch.nn.Module | str, batch: int = 256) -> float:
    """Frechet distance between Gaussians fitted to the features of ``real`` and ``fake`` images ([-1, 1]).

    FID = |mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))   (Heusel et al. 2017; computed by torchmetrics)

    ``classifier``: a world classifier (offline; e.g. ``load_attribute_classifier()``), or ``"inception"`` for the
    paper's Inception-v3 features (torch-fidelity, downloads weights once; a clear error where that is impossible).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance  # heavy: see the module docstring

    if min(real.shape[0], fake.shape[0]) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {real.shape[0]} real and {fake.shape[0]} fake.")
    return float(_feature_metric(FrechetInceptionDistance, classifier, real, fake, batch))


@torch.no_grad()
def kid(real: torch.Tensor, fake: torch.Tensor, classifier: torch.nn.Module | str, subsets: int = 50,
        subset_size: int | None = None, batch: int = 256, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
    k(a, b) = (a.b / D + 1)^3, averaged over random subsets. Returns (mean, std). Unbiased, so it can dip below 0
    for two samples of one distribution."""
    from torchmetrics.image.kid import KernelInceptionDistance  # heavy: see the module docstring

    n = min(real.shape[0], fake.shape[0])
    size = min(subset_size or 100, n)
    if size < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {real.shape[0]} real and {fake.shape[0]} fake.")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # torchmetrics draws the subsets from
        torch.manual_seed(seed)  # the global generator: seeded here without changing the caller's random stream
        warnings.filterwarnings("ignore", message=".*will save all extracted features")  # we pass tensors we hold
        mean, std = _feature_metric(KernelInceptionDistance, classifier, real, fake, batch, subsets=subsets,
                                    subset_size=size)
    return float(mean), float(std)


def _knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour within the same set (the point itself excluded)."""
    d = torch.cdist(feats, feats)  # (N, N)
    return d.kthvalue(k + 1, dim=1).values  # k+1: the 0 distance to itself is the first


@torch.no_grad()
def precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) from features (N, D) and (M, D).

    Each set's manifold is the union of balls around its points with radius = distance to the k-th neighbour.
    precision = share of fake points inside the real manifold (are samples realistic?);
    recall    = share of real points inside the fake manifold (is the data's variety covered?).
    """
    if real_feats.ndim != 2 or fake_feats.ndim != 2 or real_feats.shape[1] != fake_feats.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D) with the same D, got {tuple(real_feats.shape)} and "
                         f"{tuple(fake_feats.shape)}.")
    if min(real_feats.shape[0], fake_feats.shape[0]) <= k:
        raise ValueError(f"each set needs more than k={k} points, got {real_feats.shape[0]} and {fake_feats.shape[0]}.")
    r, f = real_feats.double(), fake_feats.double()
    r_radii, f_radii = _knn_radii(r, k), _knn_radii(f, k)
    d = torch.cdist(f, r)  # (M, N): fake-to-real distances
    precision = (d <= r_radii[None, :]).any(dim=1).double().mean()  # a fake point inside some real ball
    recall = (d.T <= f_radii[None, :]).any(dim=1).double().mean()  # a real point inside some fake ball
    return {"precision": float(precision), "recall": float(recall)}
