"""ldm-minimal: Latent Diffusion Models (Rombach et al., CVPR 2022) built from scratch, for learning.

The package follows the paper's structure, one module per concept:

- ``ldm_minimal.data``            the data worlds the course learns from (shapes, emoji, any HF image dataset)
- ``ldm_minimal.autoencoder``     the first stage E, D (Sec. 3.1, "Perceptual Image Compression")
- ``ldm_minimal.regularizers``    KL and VQ regularisation of the latent z (Sec. 3.1, App. G)
- ``ldm_minimal.lpips``           the LPIPS perceptual distance (Zhang et al. 2018) used in the first-stage loss
- ``ldm_minimal.discriminator``   the patch-based adversarial objective (Sec. 3.1, App. G)
- ``ldm_minimal.losses``          the first-stage training objective (Eq. 25 of App. G)
"""

__version__ = "0.1.0"
