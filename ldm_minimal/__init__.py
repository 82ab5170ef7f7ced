"""ldm-minimal: Latent Diffusion Models (Rombach et al., CVPR 2022) built from scratch, for learning.

The map. Part 1 is the paper's own code, one concept per file, in the order the paper reads; part 2 uses it; part 3
is the tooling around it. The paper's code imports nothing from part 3 and, of part 2, only the checkpoint format,
the data worlds' vocabularies and the small helpers in utils; part 2 imports nothing from part 3; there is no import
cycle (``tests/test_layout.py`` checks all three).

Part 1, the paper (package root)
    Sec. 3.1  perceptual image compression: the first stage E, D
        autoencoder.py              E and D, the KL and VQ autoencoders, build and load them
        regularizers.py             the KL term and vector quantisation of the latent z (App. G)
        lpips.py                    the LPIPS perceptual distance (Zhang et al. 2018) of the first-stage loss
        discriminator.py            the patch-based adversarial discriminator (App. G)
        losses.py                   the first-stage objective: L1 + LPIPS + adversarial + regulariser (App. G)
    Sec. 3.2  latent diffusion models: epsilon_theta on z = E(x)
        diffusion.py                noise schedules, q(z_t | z_0), the eps / v objectives
        samplers.py                 DDPM and DDIM sampling, the one list of sampler names and their settings
        guidance.py                 classifier-free guidance: condition dropout, the null condition,
                                    eps_u + s (eps_c - eps_u)
    Sec. 3.3  conditioning mechanisms: tau_theta and cross-attention
        attention.py                cross-attention and the SpatialTransformer
        unet.py                     the time-conditional UNet epsilon_theta (App. E)
        conditioning/               the encoders tau_theta, one file per kind of condition, one call signature:
                                    base.py (the interface), text.py, classes.py, spatial.py (layout boxes,
                                    semantic maps), images.py (low-resolution images, inpainting inputs)
    Sec. 4.5  inpainting masks
        masks.py                    box and free-form holes, resizing a mask to the latent size
    Sec. 3.2-3.3, the whole model
        latent_diffusion_config.py  LatentDiffusionConfig and the presets of the course's models
        latent_diffusion.py         LatentDiffusion: frozen (E, D) + epsilon_theta + tau_theta + the schedule
        latent_diffusion_io.py      saving and loading a LatentDiffusion (and any shipped model)

Part 2, using it (package root)
    pipelines/                  typed library functions, inputs validated once: text-, class- and
                                layout-to-image (Sec. 4.3), super-resolution (Sec. 4.4), inpainting (Sec. 4.5)
    image_io.py                 image and mask files <-> tensors, grids, labelled figures, PNGs
    checkpoint.py               the checkpoint file format (safetensors + config), atomic writes, the manifest,
                                the shipped checkpoints; it imports no model class
    interop.py                  the maps from our parameter names to diffusers' models
    utils.py                    devices, autocast, the channels-last rule, input checks, seeding
    data/                       the data worlds the course learns from (shapes, emoji, any HF image dataset)

Part 3, the tooling (sub-packages)
    cli/                        ``python -m ldm_minimal <command>``: argparse, writing files, the demo
    training/                   one training loop (loop.py) with a task object per model (tasks.py), the run folder
                                and exact resume (run.py), DDP (distributed.py), configs and presets (config.py)
    evaluation/                 FID / KID / precision-recall and reconstruction metrics, and the judges: one
                                classifier design (classifier.py) for the shapes attribute judge and the emoji
                                feature network
    course/                     the notebooks' toolkit (lesson.py), building and running notebooks, grading
    experiments/                the paper's experiments in miniature (results in docs/results/)
"""

__version__ = "0.1.0"
