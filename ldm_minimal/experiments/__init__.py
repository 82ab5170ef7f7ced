"""The paper's experiments in miniature, one module per experiment; each writes its numbers and figures under
docs/results/ and is run with ``python -m ldm_minimal.experiments.<name>``; ``python -m ldm_minimal.experiments``
runs them all and writes docs/results.md (``report``).

Issue 5, the paper's claims (docs/results.md):

- ``table8``            first stages with f in {1, 2, 4, 8, 16}, KL and VQ: PSNR, SSIM, LPIPS, rFID (Tab. 8)
- ``ldm_f``             LDM-f for f in {1, ..., 16}, one UNet, one budget: FID against training steps (Fig. 6)
- ``throughput``        pixel DM against LDM-4/8: training and sampling speed, FID at equal wall time (Fig. 7, Tab. 6)
- ``guidance``          classifier-free guidance scale s against FID, precision/recall and attribute accuracy
- ``samplers``          DDIM 10-250 steps, eta 0 and 1, against DDPM 1000: quality and wall time
- ``super_resolution``  LDM-SR x4 against bicubic: PSNR, SSIM, LPIPS, FID (Tab. 5)
- ``inpainting``        the inpainting LDM against the training-free baseline and a trivial fill, box and free-form holes (Tab. 7)
- ``text_encoder``      a jointly trained tau_theta against frozen MiniLM on held-out colour-shape pairs
- ``high_resolution``   sampling at twice the training size: text-to-image and super-resolution (Sec. 4.3.2)
- ``common``, ``report`` the shared scoring and the results page

Earlier issues:

- ``ae_reconstruction``  first stages on shapes-32: quality against f, loss ablation, dead VQ codes (issue 2)
- ``t2i_from_scratch``   the cpu preset's text-to-image run and its judge (issue 4)
- ``shipped_quality``    the shipped models' figures recorded in data/checkpoints/MANIFEST.json (issue 4)
"""
