"""Tests for the conditioning encoders tau_theta (ldm_minimal.conditioning) and inpainting masks (ldm_minimal.masks)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from ldm_minimal import masks  # noqa: E402
from ldm_minimal.conditioning import CONDITIONERS, build_conditioner  # noqa: E402
from ldm_minimal.conditioning.classes import ClassConditioner  # noqa: E402
from ldm_minimal.conditioning.images import InpaintConditioner  # noqa: E402
from ldm_minimal.conditioning.spatial import SemanticConditioner  # noqa: E402
from ldm_minimal.conditioning.text import (  # noqa: E402
    SPECIAL_TOKENS,
    TOKENIZER_DIR,
    FrozenTextConditioner,
    JointTextConditioner,
    load_caption_tokenizer,
    train_caption_tokenizer,
    world_captions,
)
from ldm_minimal.guidance import condition_keep_mask  # noqa: E402
from ldm_minimal.data.shapes import (  # noqa: E402
    COLOUR_NAMES,
    NUM_CLASSES,
    POSITION_PHRASES,
    SHAPES,
    SIZES,
    ShapesConfig,
    render_sample,
)

B, RES = 4, 32
KEEP = torch.tensor([True, False, True, False])


def _batch_from_render(cfg: ShapesConfig, n: int) -> dict:
    samples = [render_sample(i, cfg) for i in range(n)]
    image = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1) for s in samples]).float() / 127.5 - 1
    return {
        "image": image,
        "caption": [s.caption for s in samples],
        "class_id": torch.tensor([s.class_id for s in samples]),
        "semantic": torch.stack([torch.from_numpy(s.semantic).long() for s in samples]),
        "objects": [json.dumps([o.as_dict() for o in s.objects]) for s in samples],
    }


def _make_batch(cfg: ShapesConfig, n: int = B) -> dict:
    """A batch as the data worlds' collate makes it (ShapesDataset when it exists, else the same by hand)."""
    try:
        from ldm_minimal.data import ShapesDataset, collate
    except ImportError:
        return _batch_from_render(cfg, n)
    ds = ShapesDataset(cfg, length=n)
    return collate([ds[i] for i in range(n)])


@pytest.fixture(scope="module")
def batch() -> dict:
    return _make_batch(ShapesConfig(resolution=RES, seed=3))


@pytest.fixture(scope="module")
def single_batch() -> dict:
    return _make_batch(ShapesConfig(resolution=RES, seed=4, min_objects=1, max_objects=1))


@pytest.fixture(scope="module")
def minilm() -> FrozenTextConditioner:
    return FrozenTextConditioner("minilm", max_length=32)


class PoolFirstStage(nn.Module):
    """A stand-in first stage with f = 4: E = 4x4 average pooling, D = nearest upsampling."""

    def __init__(self, f: int = 4, latent_channels: int = 3) -> None:
        super().__init__()
        self.f, self.latent_channels = f, latent_channels
        self.calls: list[bool] = []

    def encode_latent(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        self.calls.append(sample)
        return F.avg_pool2d(x, self.f)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z, scale_factor=self.f, mode="nearest")


def _check_drop(cond_module, cond: dict, keep: torch.Tensor = KEEP) -> None:
    """drop() keeps exactly the kept rows and puts the null condition into the others."""
    b = keep.shape[0]
    latent = tuple(cond["concat"].shape[-2:]) if "concat" in cond else None
    null = cond_module.null_condition(b, latent_size=latent)
    out = cond_module.drop(cond, keep)
    assert set(out) == set(cond)
    for k in cond:
        assert out[k].shape == cond[k].shape and out[k].dtype == cond[k].dtype
        assert torch.equal(out[k][keep], cond[k][keep]), k
        assert torch.allclose(out[k][~keep].float(), null[k][~keep].to(out[k].dtype).float(), atol=1e-6), k


# ------------------------------------------------------------------------------------------------------------
# class


def test_class_conditioner(single_batch):
    c = build_conditioner("class", num_classes=NUM_CLASSES)
    out = c(single_batch)
    assert set(out) == {"y"} and out["y"].dtype == torch.long and out["y"].shape == (B,)
    assert torch.equal(out["y"], torch.as_tensor(single_batch["class_id"]))
    assert c.mode == "class" and not c.trainable
    assert torch.equal(c.null_condition(3)["y"], torch.full((3,), NUM_CLASSES))
    _check_drop(c, out)
    dropped = c.drop(out, KEEP)["y"]
    assert (dropped[~KEEP] == NUM_CLASSES).all()


def test_class_conditioner_rejects_multi_object_label():
    c = ClassConditioner(NUM_CLASSES)
    with pytest.raises(ValueError, match="single-object preset"):
        c({"class_id": torch.tensor([0, -1])})
    with pytest.raises(KeyError, match="class_id"):
        c({"caption": ["x"]})


def test_keep_mask_deterministic_and_rate():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    k1, k2 = condition_keep_mask(2000, 0.1, g1), condition_keep_mask(2000, 0.1, g2)
    assert k1.dtype == torch.bool and torch.equal(k1, k2)
    assert 0.05 < 1 - k1.float().mean().item() < 0.15
    assert condition_keep_mask(5, 0.0).all() and not condition_keep_mask(5, 1.0).any()


def test_drop_rejects_bad_keep(single_batch):
    c = ClassConditioner(NUM_CLASSES)
    with pytest.raises(ValueError, match="condition_keep_mask"):
        c.drop(c(single_batch), torch.ones(B + 1, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------------------
# tokenizers


def test_tokenizer_trains_and_round_trips(tmp_path):
    caps = ["a red circle at the top", "a blue star on the left and a pink heart", "a small green square"] * 20
    path = tmp_path / "tok.json"
    tok = train_caption_tokenizer(caps, vocab_size=100, path=path)
    assert path.is_file()
    assert [tok.convert_ids_to_tokens(i) for i in range(4)] == list(SPECIAL_TOKENS)
    ids = tok("A Red circle at the top")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "a red circle at the top"
    again = load_caption_tokenizer(path)
    assert again("a blue star on the left")["input_ids"] == tok("a blue star on the left")["input_ids"]


def test_shipped_shapes_tokenizer_covers_the_world():
    assert (TOKENIZER_DIR / "shapes.json").is_file()
    tok = load_caption_tokenizer("shapes")
    words = set(SHAPES) | set(COLOUR_NAMES) | set(SIZES) | {"a", "and", ",", "an", "empty", "picture"}
    words |= {w for p in POSITION_PHRASES.values() for w in p.split()}
    for w in sorted(words):
        assert tok.tokenize(w) == [w], w  # every word of the world is one whole token
    captions = world_captions("shapes", n=300, seed=123)  # other captions than the tokenizer was trained on
    enc = tok(captions)["input_ids"]
    assert all(tok.unk_token_id not in ids for ids in enc)
    assert max(len(ids) for ids in enc) <= 32  # the default max_length holds every shapes caption


def test_shipped_emoji_tokenizer_if_present():
    if not (TOKENIZER_DIR / "emoji.json").is_file():
        pytest.skip("data/tokenizers/emoji.json not shipped")
    tok = load_caption_tokenizer("emoji")
    ids = tok(["grinning face", "flag of Côte d’Ivoire", "pickup truck"])["input_ids"]
    assert all(tok.unk_token_id not in x for x in ids)


def test_unknown_tokenizer_name_lists_shipped():
    with pytest.raises(FileNotFoundError, match="shapes"):
        load_caption_tokenizer("no-such-world")


# ------------------------------------------------------------------------------------------------------------
# text, trained jointly


def test_joint_text_conditioner(batch):
    torch.manual_seed(0)
    c = build_conditioner("text-joint", tokenizer_path="shapes", width=64, layers=2, heads=4, max_length=32)
    assert c.mode == "crossattn" and c.trainable and c.context_dim == 64
    out = c(batch)
    assert set(out) == {"context", "context_mask"}
    assert out["context"].shape == (B, 32, 64) and out["context"].dtype == torch.float32
    assert out["context_mask"].dtype == torch.bool and out["context_mask"].shape == (B, 32)
    for i, cap in enumerate(batch["caption"]):
        pieces = c.token_strings(cap)
        assert len(pieces) == int(out["context_mask"][i].sum())
        assert pieces[0] == "[BOS]" and pieces[-1] == "[EOS]" and "[UNK]" not in pieces
    # the null condition is the encoding of "" : [BOS] [EOS]
    null = c.null_condition(B)
    assert null["context"].shape == (B, 32, 64)
    assert null["context_mask"].sum(1).tolist() == [2] * B
    assert torch.allclose(null["context"][0], c.encode_text([""])["context"][0])
    _check_drop(c, out)
    # the encoder is trained with the UNet: gradients reach its embeddings
    loss = c.drop(c(batch), KEEP)["context"].square().mean()
    loss.backward()
    grad = c.encoder.get_input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0
    # the exact tokenizer travels as JSON text (for checkpoints) and rebuilds the same ids
    again = load_caption_tokenizer(c.tokenizer_json)
    assert again(batch["caption"])["input_ids"] == c.tokenizer(batch["caption"])["input_ids"]


def test_joint_text_padding_does_not_change_real_tokens():
    """The causal mask + right padding: a caption's context is the same whatever max_length pads it to."""
    torch.manual_seed(0)
    a = JointTextConditioner("shapes", width=32, layers=1, heads=2, max_length=16)
    b = JointTextConditioner("shapes", width=32, layers=1, heads=2, max_length=32)
    pos = "position_embedding.weight"
    state = {k: v for k, v in a.encoder.state_dict().items() if not k.endswith(pos)}
    b.encoder.load_state_dict(state, strict=False)
    pa = next(v for k, v in a.encoder.named_parameters() if k.endswith(pos))
    pb = next(v for k, v in b.encoder.named_parameters() if k.endswith(pos))
    with torch.no_grad():
        pb[:16] = pa  # same first 16 positions, 16 more that only padding would use
    ca, cb = a.encode_text(["a red circle"]), b.encode_text(["a red circle"])
    n = int(ca["context_mask"].sum())
    assert torch.allclose(ca["context"][0, :n], cb["context"][0, :n], atol=1e-5)


def test_text_rejects_single_string(batch):
    c = JointTextConditioner("shapes", width=32, layers=1, heads=2)
    with pytest.raises(TypeError, match=r"\[caption\]"):
        c({"caption": "a red circle"})
    with pytest.raises(ValueError, match="divisible"):
        JointTextConditioner("shapes", width=30, heads=4)


# ------------------------------------------------------------------------------------------------------------
# text, frozen and pretrained


def test_frozen_minilm(minilm, batch):
    c = minilm
    assert c.mode == "crossattn" and not c.trainable and c.context_dim == 384
    assert all(not p.requires_grad for p in c.parameters())
    c.train()
    assert not c.encoder.training  # stays in eval mode (no dropout) while the UNet trains
    out = c(batch)
    assert out["context"].shape == (B, 32, 384) and not out["context"].requires_grad
    assert out["context_mask"].dtype == torch.bool
    pieces = c.token_strings(batch["caption"][0])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and len(pieces) == int(out["context_mask"][0].sum())
    null = c.null_condition(2)
    assert null["context_mask"].sum(1).tolist() == [2, 2]  # "" -> [CLS] [SEP]
    _check_drop(c, out)
    # different captions -> different contexts (the encoder really reads the text)
    two = c.encode_text(["a red circle", "a blue star"])["context"]
    assert not torch.allclose(two[0], two[1])


def test_frozen_local_clip_folder(tmp_path):
    """The hub / local-path loading path, with a tiny random CLIPTextModel and a tokenizer saved to tmp_path."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = train_caption_tokenizer(world_captions("shapes", n=200), vocab_size=80)
    cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=24, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPTextModel(cfg).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    c = build_conditioner("text-frozen", name_or_path=str(tmp_path), max_length=16)
    assert c.context_dim == 48 and not c.trainable
    out = c.encode_text(["a red circle", "a small blue star on the left"])
    assert out["context"].shape == (2, 16, 48)
    ids = c.tokenize(["a red circle"])
    with torch.no_grad():
        ref = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"].long()).last_hidden_state
    assert torch.allclose(out["context"][0], ref[0], atol=1e-5)
    with pytest.raises(ValueError, match="position embeddings"):
        FrozenTextConditioner(str(tmp_path), max_length=64)


def test_frozen_hub_id_offline_error():
    with pytest.raises(OSError, match="minilm") as e:
        FrozenTextConditioner("ldm-minimal-tests/no-such-text-encoder")
    assert "save_pretrained" in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FrozenTextConditioner("./no/such/folder")


# ------------------------------------------------------------------------------------------------------------
# layout


def test_layout_conditioner(batch):
    torch.manual_seed(0)
    c = build_conditioner("layout", num_classes=NUM_CLASSES, width=32, max_objects=3)
    assert c.mode == "crossattn" and c.trainable and c.context_dim == 32
    out = c(batch)
    assert out["context"].shape == (B, 4, 32) and out["context_mask"].shape == (B, 4)
    n_objects = [len(json.loads(o)) for o in batch["objects"]]
    assert out["context_mask"].sum(1).tolist() == [1 + n for n in n_objects]
    assert out["context_mask"][:, 0].all()  # the null token is always there
    assert torch.allclose(out["context"][:, 0], c.null_token.detach().expand(B, -1))
    # the first object token depends on its box: move the box, the token changes
    objs = json.loads(batch["objects"][0])
    moved = [dict(o, bbox=[o["bbox"][0] + 1, o["bbox"][1], o["bbox"][2] + 1, o["bbox"][3]]) for o in objs]
    out2 = c({"objects": [json.dumps(moved)], "image": batch["image"][:1]})
    assert not torch.allclose(out2["context"][0, 1], out["context"][0, 1])
    null = c.null_condition(B)
    assert null["context_mask"].sum(1).tolist() == [1] * B
    _check_drop(c, out)
    empty = c({"objects": ["[]"]}, image_size=RES)
    assert empty["context_mask"].tolist() == [[True, False, False, False]]
    with pytest.raises(ValueError, match="max_objects"):
        c({"objects": [json.dumps(objs * 4)]}, image_size=RES)


# ------------------------------------------------------------------------------------------------------------
# concat: semantic, low-res, inpainting


def test_semantic_conditioner(batch):
    c = build_conditioner("semantic")
    fs = PoolFirstStage(f=4)
    out = c(batch, first_stage=fs)
    assert out["concat"].shape == (B, 1 + len(SHAPES), RES // 4, RES // 4) and c.concat_channels == 1 + len(SHAPES)
    assert torch.allclose(out["concat"].sum(1), torch.ones(B, RES // 4, RES // 4))
    onehot = F.one_hot(torch.as_tensor(batch["semantic"]).long(), 1 + len(SHAPES)).permute(0, 3, 1, 2).float()
    assert torch.allclose(out["concat"], F.avg_pool2d(onehot, 4))
    assert c(batch, latent_size=16)["concat"].shape[-2:] == (16, 16)
    assert c.null_condition(2, latent_size=8)["concat"].abs().sum() == 0
    _check_drop(c, out)
    with pytest.raises(ValueError, match="latent size"):
        c(batch)
    with pytest.raises(ValueError, match="num_labels"):
        SemanticConditioner(num_labels=2)(batch, latent_size=8)


def test_lowres_conditioner(batch):
    c = build_conditioner("lowres", scale=4)
    out = c(batch, first_stage=PoolFirstStage(f=4))
    assert out["concat"].shape == (B, 3, 8, 8) and c.concat_channels == 3
    assert torch.allclose(out["concat"], F.avg_pool2d(batch["image"], 4))
    # given low-res images, on an f = 2 first stage: resized up to the 16x16 latent
    lr = F.avg_pool2d(batch["image"], 4)
    out2 = c({"lowres": lr}, first_stage=PoolFirstStage(f=2))
    assert out2["concat"].shape == (B, 3, 16, 16)
    assert out2["concat"].min() >= -1 and out2["concat"].max() <= 1
    _check_drop(c, out)
    with pytest.raises(ValueError, match=r"\[0, 255\] data"):
        c({"lowres": (lr + 1) * 127.5}, first_stage=PoolFirstStage(f=4))


def test_inpaint_conditioner(batch):
    fs = PoolFirstStage(f=4, latent_channels=3)
    c = build_conditioner("inpaint", latent_channels=3, scale_factor=0.5)
    assert c.concat_channels == 4
    mask = masks.box_mask(RES, (8, 8, 20, 16), batch_size=B)
    out = c({"image": batch["image"], "mask": mask}, first_stage=fs)
    assert out["concat"].shape == (B, 4, 8, 8)
    assert fs.calls[-1] is False  # the masked image is encoded with the posterior mode
    assert torch.allclose(out["concat"][:, :3], 0.5 * F.avg_pool2d((1 - mask) * batch["image"], 4))
    assert torch.equal(out["concat"][:, 3:], F.max_pool2d(mask, 4))
    # the pixels inside the hole never reach the condition
    noisy = batch["image"] * (1 - mask) + mask * torch.rand_like(batch["image"]).mul(2).sub(1)
    assert torch.equal(c({"image": noisy, "mask": mask}, first_stage=fs)["concat"], out["concat"])
    _check_drop(c, out)


def test_inpaint_errors(batch):
    fs = PoolFirstStage(f=4)
    c = InpaintConditioner(latent_channels=3)
    with pytest.raises(ValueError, match=r"16x16 but the image is 32x32") as e:
        c({"image": batch["image"], "mask": torch.zeros(B, 1, 16, 16)}, first_stage=fs)
    assert "F.interpolate" in str(e.value)
    with pytest.raises(ValueError, match="first_stage"):
        c({"image": batch["image"], "mask": torch.zeros(B, 1, RES, RES)})
    with pytest.raises(ValueError, match="latent_channels=4"):
        c({"image": batch["image"], "mask": torch.zeros(B, 1, RES, RES)}, first_stage=PoolFirstStage(latent_channels=4))
    with pytest.raises(ValueError, match="255"):
        c({"image": batch["image"], "mask": torch.full((B, 1, RES, RES), 255.0)}, first_stage=fs)


# ------------------------------------------------------------------------------------------------------------
# masks


@pytest.mark.parametrize("fn", [masks.random_box_mask, masks.random_freeform_mask, masks.random_inpainting_mask])
def test_masks_deterministic_binary_nonempty(fn):
    shape = (16, 1, 32, 32)
    a = fn(shape, torch.Generator().manual_seed(1))
    b = fn(shape, torch.Generator().manual_seed(1))
    c = fn(shape, torch.Generator().manual_seed(2))
    assert a.shape == shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    area = a.mean(dim=(1, 2, 3))
    assert (area > 0).all() and (area < 1).all()  # every mask has a hole and some known pixels
    assert len({tuple(m.flatten().tolist()) for m in a}) > 8  # masks in a batch differ


def test_box_mask_and_composite():
    m = masks.box_mask((8, 10), (2, 1, 5, 4))
    assert m.shape == (1, 1, 8, 10) and m.sum() == 9 and m[0, 0, 1, 2] == 1 and m[0, 0, 4, 5] == 0
    x, x_hat = -torch.ones(1, 3, 8, 10), torch.ones(1, 3, 8, 10)
    out = masks.composite(x, x_hat, m)
    assert torch.equal(out, torch.where(m.bool(), x_hat, x))
    with pytest.raises(ValueError, match="inside"):
        masks.box_mask(8, (0, 0, 9, 4))


# ------------------------------------------------------------------------------------------------------------
# registry


def test_unknown_conditioner_lists_valid():
    with pytest.raises(ValueError) as e:
        build_conditioner("txt")
    for name in CONDITIONERS:
        assert name in str(e.value)
    assert set(CONDITIONERS) == {"class", "text-joint", "text-frozen", "layout", "semantic", "lowres", "inpaint"}


def test_every_conditioner_declares_its_interface():
    for name, cls in CONDITIONERS.items():
        assert cls.mode in ("crossattn", "class", "concat"), name
        assert isinstance(cls.trainable, bool), name
