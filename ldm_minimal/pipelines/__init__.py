"""The paper's applications as typed library functions on a trained LatentDiffusion model (Rombach et al., CVPR 2022).

    Sec. 4.2    unconditional synthesis
    Sec. 4.3    conditional synthesis: text-to-image with classifier-free guidance
                eps_hat = eps_theta(z_t, t, null) + s * (eps_theta(z_t, t, tau_theta(y)) - eps_theta(z_t, t, null)),
                class-conditional and layout-to-image (App. D.3) models
    Sec. 4.4    super-resolution (LDM-SR): the low-resolution image is concatenated to z_t (tau = identity)
    Sec. 4.5    inpainting: the masked image's latent and the mask are concatenated to z_t; the known pixels are
                composited back, x_out = (1 - m) * x + m * x_hat

Tensors in [-1, 1], channels first; one module per application:

    sampling.py          GenerationError, sample_conditions(ldm, batch_or_n, guidance=, steps=, sampler=, ...), and
                         what every function shares: the input checks and the seeded generator
    synthesis.py         text_to_image(ldm, prompts, n_per_prompt, guidance, ...)   -> (len(prompts) * n, 3, H, W)
                         class_to_image(ldm, classes, ...)    classes: ints or names like "red circle"
                         unconditional_samples(ldm, n, ...)
    layout.py            layout_to_image(ldm, layouts, ...)   layouts: object lists with pixel bboxes, or captions
    inpainting.py        inpaint(ldm, image, mask, **sample_kwargs), inpaint_image(ldm, image, mask, n, ...),
                         inpaint_baseline(ldm_uncond, image, mask, ...) (training-free), latent_mask
    super_resolution.py  upscale(ldm_sr, lowres, **sample_kwargs), upscale_image(ldm_sr, lowres, n, ...),
                         bicubic_upscale(lowres) (the baseline), lowres_scale

The ``*_image`` / ``*_to_image`` functions take a seed and return CPU tensors (the same seed gives the same tensor on
every device); ``inpaint`` and ``upscale`` pass their keyword arguments to ``LatentDiffusion.sample``. Every public
function validates its inputs once: a bad input raises a ValueError (often its subclass GenerationError) whose
message names the problem and the fix.
The files, the commands and the demo that use them live in ``ldm_minimal.image_io`` and ``ldm_minimal.cli``.
"""

from ldm_minimal.pipelines.inpainting import inpaint, inpaint_baseline, inpaint_image, latent_mask
from ldm_minimal.pipelines.layout import caption_box, layout_objects, layout_to_image
from ldm_minimal.pipelines.sampling import GenerationError, sample_conditions
from ldm_minimal.pipelines.super_resolution import bicubic_upscale, lowres_scale, upscale, upscale_image
from ldm_minimal.pipelines.synthesis import class_index, class_to_image, text_to_image, unconditional_samples

__all__ = [
    "GenerationError",
    "sample_conditions",
    "text_to_image",
    "class_to_image",
    "class_index",
    "unconditional_samples",
    "layout_to_image",
    "layout_objects",
    "caption_box",
    "inpaint",
    "inpaint_image",
    "inpaint_baseline",
    "latent_mask",
    "upscale",
    "upscale_image",
    "bicubic_upscale",
    "lowres_scale",
]
