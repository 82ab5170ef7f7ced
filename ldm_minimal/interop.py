"""Interop with diffusers: the maps from our parameter names to those of diffusers' models of the same architecture.

Our UNet and KL autoencoder hold the same tensors as diffusers' ``UNet2DConditionModel`` and ``AutoencoderKL`` built
to the same sizes, under other names. With these maps a state dict moves from one to the other: the tests use them
to check that both compute the same function, and ``benchmarks/peer.py`` to time both on the same weights.
Nothing here imports diffusers.
"""

from __future__ import annotations

import re

from ldm_minimal.attention import SpatialTransformer
from ldm_minimal.autoencoder import AutoencoderKL
from ldm_minimal.unet import UNet, Upsample

__all__ = ["unet_diffusers_names", "autoencoder_diffusers_names"]


def unet_diffusers_names(model: UNet) -> dict[str, str]:
    """Our UNet's parameter names -> those of diffusers' ``UNet2DConditionModel`` built to the same architecture.

    The two hold the same tensors under other names (the course's "compare with the library" step): with this map
    a state dict moves from one to the other, which the tests use to check that both compute the same function and
    ``benchmarks/peer.py`` to time them on the same weights.
    """
    cfg = model.cfg
    prefixes = {
        "time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
        "class_embed.": "class_embedding.", "norm_out.": "conv_norm_out.",
        "mid.0.": "mid_block.resnets.0.", "mid.1.": "mid_block.attentions.0.", "mid.2.": "mid_block.resnets.1.",
    }
    k = 0
    for level in range(cfg.levels):
        for j in range(cfg.num_res_blocks):
            prefixes[f"down.{k}.0."] = f"down_blocks.{level}.resnets.{j}."
            prefixes[f"down.{k}.1."] = f"down_blocks.{level}.attentions.{j}."
            k += 1
        if level != cfg.levels - 1:
            prefixes[f"down.{k}.0."] = f"down_blocks.{level}.downsamplers.0."
            k += 1
    for k, block in enumerate(model.up):
        level, j = divmod(k, cfg.num_res_blocks + 1)
        prefixes[f"up.{k}.0."] = f"up_blocks.{level}.resnets.{j}."
        for i, layer in enumerate(block):
            if isinstance(layer, SpatialTransformer):
                prefixes[f"up.{k}.{i}."] = f"up_blocks.{level}.attentions.{j}."
            elif isinstance(layer, Upsample):
                prefixes[f"up.{k}.{i}."] = f"up_blocks.{level}.upsamplers.0."
    renames = ((".emb_proj.", ".time_emb_proj."), (".skip.", ".conv_shortcut."), (".blocks.", ".transformer_blocks."))
    names = {}
    for name in model.state_dict():
        new = next((b + name[len(a):] for a, b in prefixes.items() if name.startswith(a)), name)
        for a, b in renames:
            new = new.replace(a, b)
        names[name] = new
    return names


def autoencoder_diffusers_names(model: AutoencoderKL) -> dict[str, str]:
    """Our KL autoencoder's parameter names -> those of diffusers' ``AutoencoderKL`` of the same architecture.

    The counterpart of ``unet_diffusers_names``. Besides the names, one layout differs: our attention
    projections q, k, v, proj_out are 1x1 convolutions with weights (C, C, 1, 1), diffusers' are Linear layers with
    weights (C, C); ``weight.flatten(1)`` (or ``reshape(C, C, 1, 1)`` the other way) moves them. Same group counts
    in both need ``norm_groups`` set (diffusers uses one count for every GroupNorm).
    """
    if not isinstance(model, AutoencoderKL):
        raise TypeError(f"autoencoder_diffusers_names maps an AutoencoderKL (diffusers has no VQ autoencoder of this layout), "
                        f"got {type(model).__name__}.")
    rules = (
        (r"^encoder\.levels\.(\d+)\.blocks\.", r"encoder.down_blocks.\1.resnets."),
        (r"^encoder\.levels\.(\d+)\.attns\.", r"encoder.down_blocks.\1.attentions."),
        (r"^encoder\.levels\.(\d+)\.resample\.", r"encoder.down_blocks.\1.downsamplers.0."),
        (r"^decoder\.levels\.(\d+)\.blocks\.", r"decoder.up_blocks.\1.resnets."),
        (r"^decoder\.levels\.(\d+)\.attns\.", r"decoder.up_blocks.\1.attentions."),
        (r"^decoder\.levels\.(\d+)\.resample\.", r"decoder.up_blocks.\1.upsamplers.0."),
        (r"\.mid\.block_1\.", ".mid_block.resnets.0."), (r"\.mid\.attn_1\.", ".mid_block.attentions.0."),
        (r"\.mid\.block_2\.", ".mid_block.resnets.1."), (r"\.norm_out\.", ".conv_norm_out."),
        (r"\.shortcut\.", ".conv_shortcut."), (r"(attentions\.\d+)\.norm\.", r"\1.group_norm."),
        (r"(attentions\.\d+)\.q\.", r"\1.to_q."), (r"(attentions\.\d+)\.k\.", r"\1.to_k."),
        (r"(attentions\.\d+)\.v\.", r"\1.to_v."), (r"(attentions\.\d+)\.proj_out\.", r"\1.to_out.0."),
    )
    names = {}
    for name in model.state_dict():
        new = name
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        names[name] = new
    return names
