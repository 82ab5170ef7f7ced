"""ldm-minimal: Latent Diffusion Models (Rombach et al., CVPR 2022) built from scratch, for learning.

The package follows the paper's structure, one module per concept:

- ``ldm_minimal.data``              the data worlds the course learns from (shapes, emoji, any HF image dataset)
- ``ldm_minimal.autoencoder``       the first stage E, D (Sec. 3.1, "Perceptual Image Compression")
- ``ldm_minimal.regularizers``      KL and VQ regularisation of the latent z (Sec. 3.1, App. G)
- ``ldm_minimal.lpips``             the LPIPS perceptual distance (Zhang et al. 2018) used in the first-stage loss
- ``ldm_minimal.discriminator``     the patch-based adversarial objective (Sec. 3.1, App. G)
- ``ldm_minimal.losses``            the first-stage training objective (App. G, Eq. 25)
- ``ldm_minimal.diffusion``         noise schedules, q(z_t | z_0) and the eps / v objectives (Sec. 3.2, Eq. 1-2)
- ``ldm_minimal.samplers``          DDPM and DDIM sampling with classifier-free guidance (Sec. 3.2, 4.3-4.5)
- ``ldm_minimal.unet``              the time-conditional UNet epsilon_theta (Sec. 3.2-3.3, App. E)
- ``ldm_minimal.attention``         cross-attention and the SpatialTransformer (Sec. 3.3, Eq. 3)
- ``ldm_minimal.conditioning``      the domain-specific encoders tau_theta (Sec. 3.3, 4.3)
- ``ldm_minimal.masks``             inpainting masks (Sec. 4.5)
- ``ldm_minimal.latent_diffusion``  LatentDiffusion: first stage + UNet + conditioner + schedule (Sec. 3.2-3.3)
- ``ldm_minimal.pipelines``         inpainting and x4 super-resolution (Sec. 4.4-4.5)
- ``ldm_minimal.evaluation.metrics``           PSNR, SSIM, LPIPS and sharpness of reconstructions (Tab. 8)
- ``ldm_minimal.checkpoint``        safetensors checkpoints with their config, written atomically
- ``ldm_minimal.training.trainer``             the training loop of every model: EMA, exact resume, DDP (``python -m ldm_minimal train``)
- ``ldm_minimal.generate``          text-to-image, inpainting, super-resolution commands and the demo (Sec. 4.3-4.5)
- ``ldm_minimal.evaluation.attributes``        the judge: reads shape, colour, size and position off a shapes picture
- ``ldm_minimal.training.autoencoder_loop`` the first-stage loop of the issue-2 experiments (kept for their reproducibility)
- ``ldm_minimal.experiments``       the paper's experiments in miniature (results in docs/results/)
"""

__version__ = "0.1.0"
