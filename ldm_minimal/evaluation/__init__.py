"""Evaluation: how good are a first stage's reconstructions and a diffusion model's samples (Sec. 4, App. D.2, E.3).

- ``metrics``           the numbers. Reconstructions and restorations: PSNR, SSIM (torchmetrics), LPIPS and the
                        sharpness ratio, collected over batches by ``ReconstructionMetrics`` (the first stages of
                        Tab. 8). Samples: FID, KID (torchmetrics) and improved precision/recall, in the feature
                        space of a world's own classifier (or Inception-v3 when online).
- ``classifier``        the one design both judges share: config, the GroupNorm conv trunk, the training loop,
                        batched logits, their checkpoint files, and the train / evaluate / ship command
                        (metrics.json, a MANIFEST.json entry).
- ``augment``           the judges' training augmentation: blur and noise (generated pictures are soft and a little
                        noisy), and for the emoji classifier random shift / zoom / flip and colour jitter.
- ``attributes``        the shapes judge: reads shape, colour, size and position off a single-object picture, so a
                        text-to-image sample can be checked against its prompt (attribute accuracy); its pooled
                        trunk features are the shapes worlds' feature space (shapes32-attributes.safetensors).
- ``world_classifier``  the emoji feature network: an emoji group classifier whose pooled trunk features are the
                        emoji world's feature space (emoji32-features.safetensors).
- ``evaluate``          the library part of ``python -m ldm_minimal eval``: reference set, samples of a checkpoint
                        or a folder of pictures, the world -> feature network map (``load_feature_classifier``),
                        FID / KID / precision-recall and the judges' fidelity scores as one JSON-friendly dict
                        (its argparse part is ``ldm_minimal.cli.evaluate``).
"""
