"""LPIPS, the learned perceptual distance (Zhang et al., CVPR 2018) used in the first-stage loss.

Sec. 3.1 of the LDM paper trains the autoencoder "by a combination of a perceptual loss and a patch-based
adversarial objective"; App. G (Eq. 25) writes the reconstruction term as L_rec(x, D(E(x))), which the reference
implementation computes as |x - x_hat| + LPIPS(x, x_hat). The perceptual term is what keeps reconstructions sharp:
a pure pixel loss averages over plausible details and gives blur.

LPIPS compares two images in the feature space of a frozen VGG16:

    d(x, y) = sum_l  mean_{h,w}  || w_l * ( phi_l(x)_{hw} / ||phi_l(x)_{hw}|| - phi_l(y)_{hw} / ||phi_l(y)_{hw}|| ) ||^2

with phi_l the VGG16 activations at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (channel-unit-normalised at
every position) and w_l >= 0 one weight per channel (the "linear heads", a 1x1 convolution without bias)
that Zhang et al. calibrated on human similarity judgements.

Where the weights come from
---------------------------
- The calibrated heads ship inside the ``lpips`` wheel as a small file (weights/v0.1/vgg.pth). We read that file
  directly (``load_lpips_heads``), because ``import lpips`` needs torchvision, which this course does not use.
- The VGG16 trunk ("backbone") needs ImageNet classification weights (528 MB, PyTorch's model zoo). They are
  fetched with ``torch.hub.load_state_dict_from_url`` (no torchvision needed) and cached in torch's hub directory.
  Offline, that fails and we raise ``PerceptualWeightsUnavailable``, which explains the two offline choices:
  ``backbone="random"`` (a frozen, seeded, randomly initialised trunk: a "random-feature" LPIPS) or no
  perceptual term at all. Nothing falls back silently.

Our trunk's parameter names match torchvision's ``vgg16().features`` (features.0, features.2, features.5, ...), so
the ImageNet file loads into it unchanged.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn as nn

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILENAME = "vgg16-397923af.pth"

# VGG16 "configuration D" (Simonyan & Zisserman 2015): output channels of each 3x3 conv, "M" = 2x2 max-pool.
# We stop after relu5_3 (LPIPS does not use the last pool or the classifier).
_VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# Indices in ``features`` of the ReLUs LPIPS reads: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
TAP_INDICES: tuple[int, ...] = (3, 8, 15, 22, 29)
TAP_NAMES: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
LPIPS_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)

BACKBONES = ("imagenet", "random")  # ... or a path to a .pth file
HEADS = ("wheel", "uniform")  # ... or a path to a .pth file in the lpips format


class PerceptualWeightsUnavailable(RuntimeError):
    """The ImageNet VGG16 weights that LPIPS needs could not be obtained (typically: no internet)."""


# ---------------------------------------------------------------------------------------------------------------
# The calibrated linear heads, read from the lpips wheel
# ---------------------------------------------------------------------------------------------------------------


def lpips_heads_path(net: str = "vgg") -> Path:
    """Path of the calibrated LPIPS v0.1 heads inside the installed ``lpips`` package (found without importing it)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The 'lpips' package is not installed, so its calibrated LPIPS heads (weights/v0.1/vgg.pth) cannot be "
            "read. Install it with `pip install lpips==0.1.4` (only its weight files are used; torchvision is not "
            "needed), or pass heads='uniform' / perceptual='none' to run without them."
        )
    path = Path(spec.submodule_search_locations[0]) / "weights" / "v0.1" / f"{net}.pth"
    if not path.is_file():
        raise FileNotFoundError(
            f"The lpips package was found but {path} is missing. Reinstall it with "
            "`pip install --force-reinstall lpips==0.1.4`."
        )
    return path


def load_lpips_heads(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The 5 calibrated VGG heads as {"lin0.model.1.weight": (1, 64, 1, 1), ..., "lin4...": (1, 512, 1, 1)}.

    The file stores CUDA tensors, so it is mapped to the CPU; weights_only=True never runs pickled code.
    """
    path = Path(path) if path is not None else lpips_heads_path("vgg")
    state = torch.load(path, map_location="cpu", weights_only=True)
    expected = [f"lin{i}.model.1.weight" for i in range(len(LPIPS_CHANNELS))]
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(
            f"{path} is not an LPIPS VGG heads file: it lacks {missing}. Use the lpips wheel's weights/v0.1/vgg.pth "
            "(load_lpips_heads() with no argument)."
        )
    for key, c in zip(expected, LPIPS_CHANNELS):
        if tuple(state[key].shape) != (1, c, 1, 1):
            raise ValueError(f"{path}: {key} has shape {tuple(state[key].shape)}, expected (1, {c}, 1, 1).")
    return {k: state[k].float() for k in expected}


# ---------------------------------------------------------------------------------------------------------------
# The VGG16 trunk
# ---------------------------------------------------------------------------------------------------------------


def vgg16_features() -> nn.Sequential:
    """VGG16's convolutional trunk up to relu5_3, indexed exactly like torchvision's ``vgg16().features[:30]``."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU()]
            c_in = int(v)
    return nn.Sequential(*layers)  # 30 modules: features.0 ... features.29


def random_init_(features: nn.Sequential, seed: int = 0) -> None:
    """The documented offline trunk: He (Kaiming) normal init, fan_out mode, zero biases, from a private generator.

    This is the initialisation torchvision gives an untrained VGG16 (what ``lpips.LPIPS(pnet_rand=True)`` uses),
    drawn from ``torch.Generator().manual_seed(seed)`` on the CPU so that the trunk is the same on every machine
    and the global random state is untouched. (With zero biases the trunk is positively homogeneous, and LPIPS
    unit-normalises the features, so only the directions of the weights matter, not their scale.)
    """
    g = torch.Generator().manual_seed(seed)
    for m in features:
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            std = (2.0 / fan_out) ** 0.5
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                m.bias.zero_()


def _trunk_state_from_file(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Pick the trunk weights out of a torchvision vgg16 file, a features-only file or an lpips.LPIPS state dict."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        parts = key.split(".")
        if parts[0] == "features":  # torchvision: features.<idx>.weight (classifier.* is ignored)
            parts = parts[1:]
        elif parts[0] == "net" and len(parts) > 1 and parts[1].startswith("slice"):  # lpips: net.sliceK.<idx>.weight
            parts = parts[2:]
        elif parts[0] in ("trunk",):  # our own LPIPS state dict: trunk.<idx>.weight
            parts = parts[1:]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) < 30:
            out[f"{parts[0]}.{parts[1]}"] = value.float()
    expected = {k for k, _ in vgg16_features().state_dict().items()}
    missing = sorted(expected - out.keys(), key=lambda k: (int(k.split(".")[0]), k))
    if missing:
        raise ValueError(
            f"{source} does not contain VGG16 trunk weights: missing {missing[:4]}"
            f"{' ...' if len(missing) > 4 else ''}. "
            f"Expected torchvision's vgg16 state dict (keys features.0.weight ... features.28.bias), e.g. the file "
            f"{VGG16_URL}."
        )
    return out


def _unavailable_message(error: BaseException) -> str:
    cache = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME
    return (
        "LPIPS needs the ImageNet-trained VGG16 trunk, but its weights could not be obtained.\n"
        f"  What failed: downloading {VGG16_URL} ({type(error).__name__}: {error}).\n"
        "  To fix it, either:\n"
        f"  - download that file on a machine with internet and put it at {cache}\n"
        "    (torch's hub cache; it is then found without a download), or pass its path: LPIPS(backbone='/path/to/"
        f"{VGG16_FILENAME}') / AutoencoderLossConfig(lpips_backbone_path='/path/...');\n"
        "  - or choose an offline option explicitly:\n"
        "    perceptual='lpips-random' (LPIPS with a frozen, seeded random VGG16 trunk and the calibrated heads: "
        "still penalises structure and edges beyond L1, but its features were never trained, so it is a weaker, "
        "uncalibrated perceptual signal; numbers are not comparable with published LPIPS), or\n"
        "    perceptual='none' (L1 only: no VGG cost, but blurrier reconstructions, the reason the paper adds a "
        "perceptual loss)."
    )


def load_vgg16_trunk_state(backbone: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The trunk weights for ``backbone`` = "imagenet" (torch.hub download/cache) or a local .pth path."""
    if isinstance(backbone, str) and backbone == "imagenet":
        try:
            state = torch.hub.load_state_dict_from_url(
                VGG16_URL, map_location="cpu", check_hash=True, weights_only=True, progress=True
            )
        except Exception as err:  # URLError/OSError offline, RuntimeError on a bad hash, unpickling errors, ...
            raise PerceptualWeightsUnavailable(_unavailable_message(err)) from err
        return _trunk_state_from_file(state, VGG16_URL)
    path = Path(backbone)
    if not path.is_file():
        raise FileNotFoundError(
            f"LPIPS backbone {str(backbone)!r} is neither one of {BACKBONES} nor an existing file. Pass "
            f"backbone='imagenet' (download), 'random' (offline) or the path of a VGG16 .pth file such as "
            f"{VGG16_FILENAME}."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    return _trunk_state_from_file(state, str(path))


# ---------------------------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------------------------


def unit_normalize(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide every feature vector (over channels) by its Euclidean norm. feat: (B, C, H, W), computed in float32."""
    feat = feat.float()
    # phi_hat = phi / ||phi||_2   (norm over the channel axis at each position h, w)
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS distance d(x, y) with a VGG16 trunk and 5 linear heads (Zhang et al. 2018, Eq. 1).

    backbone: "imagenet" (the real metric; downloads PyTorch's VGG16 weights once into torch's hub cache),
              "random" (offline: frozen seeded random trunk, see ``random_init_``), or a path to a .pth file.
    heads:    "wheel" (the calibrated v0.1 heads from the lpips package), "uniform" (all ones: the unweighted
              "baseline" distance), or a path to an lpips-format heads file.

    The whole module is frozen (eval mode, requires_grad False) but stays differentiable w.r.t. its inputs,
    so it can be used as a loss. ``train()`` is a no-op for it.
    """

    def __init__(self, backbone: str | os.PathLike = "imagenet", heads: str | os.PathLike = "wheel", seed: int = 0):
        super().__init__()
        self.backbone = str(backbone)
        # Input normalisation LPIPS was calibrated with: x in [-1, 1] -> (x - shift) / scale.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        # Built on the meta device, then given real (uninitialised) storage: no default init is wasted and the
        # global random generator is left untouched. Every weight is then set below.
        with torch.device("meta"):
            self.trunk = vgg16_features()
            # w_l: one non-negative weight per channel of each tapped layer, as a 1x1 conv without bias.
            self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LPIPS_CHANNELS)
        self.trunk.to_empty(device="cpu")
        self.heads.to_empty(device="cpu")
        if isinstance(backbone, str) and backbone == "random":
            random_init_(self.trunk, seed)
        else:
            self.trunk.load_state_dict(load_vgg16_trunk_state(backbone))
        if isinstance(heads, str) and heads == "uniform":
            for h in self.heads:
                nn.init.ones_(h.weight)
        else:
            path = None if (isinstance(heads, str) and heads == "wheel") else heads
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(
                    f"LPIPS heads {str(heads)!r} is neither one of {HEADS} nor an existing file. Use heads='wheel' "
                    "(the calibrated heads from the lpips package) or 'uniform'."
                )
            state = load_lpips_heads(path)
            for i, h in enumerate(self.heads):
                h.weight.data.copy_(state[f"lin{i}.model.1.weight"])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        # Always frozen: the trunk has no dropout/batch-norm, but keep eval mode so nothing can change behaviour.
        return super().train(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 5 tapped VGG activations of x (B, 3, H, W) in [-1, 1]: (B, 64, H, W), ..., (B, 512, H/16, W/16)."""
        h = (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        out = []
        for i, layer in enumerate(self.trunk):
            h = layer(h)
            if i in TAP_INDICES:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor, per_layer: bool = False) -> torch.Tensor:
        """x, y: (B, 3, H, W) in [-1, 1], H, W >= 16 -> (B,) distances (or (B, 5) per layer if per_layer)."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS compares images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects RGB batches (B, 3, H, W), got shape {tuple(x.shape)}. "
                "Grey images: x.repeat(1, 3, 1, 1)."
            )
        if min(x.shape[-2:]) < 16:
            raise ValueError(
                f"LPIPS needs images of at least 16x16 (VGG16 halves the size 4 times before relu5_3), got "
                f"{tuple(x.shape[-2:])}. Upsample the images first (F.interpolate) or use perceptual='none'."
            )
        # Two trunk passes: the trunk is frozen, so an input that needs no gradient (the target x in a loss)
        # records no autograd graph and costs no backward pass.
        feats_x, feats_y = self.features(x), self.features(y)
        dists = []
        for feat_x, feat_y, head in zip(feats_x, feats_y, self.heads):
            fx, fy = unit_normalize(feat_x), unit_normalize(feat_y)  # (B, C_l, H_l, W_l), float32
            # d_l = mean_{h,w} sum_c w_c (phi_hat(x) - phi_hat(y))^2
            # (an elementwise weighted sum rather than a 1x1 conv, so that autocast keeps it in float32)
            d = ((fx - fy).pow(2) * head.weight.float()[0]).sum(dim=1)  # (B, H_l, W_l)
            dists.append(d.mean(dim=(1, 2)))  # (B,)
        per = torch.stack(dists, dim=1)  # (B, 5)
        return per if per_layer else per.sum(dim=1)
