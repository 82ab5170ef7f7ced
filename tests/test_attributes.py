"""The shapes attribute classifier: the judge of text-to-image fidelity (ldm_minimal.evaluation.attributes)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from ldm_minimal.evaluation.attributes import (
    DEFAULT_CHECKPOINT,
    TEST_SEED,
    VOCAB,
    AttributeClassifier,
    attribute_accuracy,
    attribute_classifier_config,
    evaluate_attribute_classifier,
    load_attribute_classifier,
    main,
    predict,
    render_single,
    save_attribute_classifier,
    targets_from_captions,
    targets_from_objects,
)
from ldm_minimal.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from ldm_minimal.evaluation.augment import augment_batch, gaussian_blur
from ldm_minimal.data import ShapesDataset, collate, shapes_preset
from ldm_minimal.utils import count_parameters


@pytest.fixture(scope="module")
def shipped() -> AttributeClassifier:
    assert DEFAULT_CHECKPOINT.is_file(), f"the shipped judge {DEFAULT_CHECKPOINT} is missing"
    return load_attribute_classifier()


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, list[str]]:
    """300 single-object pictures of the test world (never seen in training) and their captions."""
    batch = collate([ShapesDataset(shapes_preset("single32", seed=TEST_SEED), 300)[i] for i in range(300)])
    return batch["image"], batch["caption"]


def tiny() -> AttributeClassifier:
    torch.manual_seed(0)
    return AttributeClassifier(attribute_classifier_config("tiny"))


def test_forward_shapes_and_parameter_budget():
    model = tiny()
    out = model(torch.rand(4, 3, 32, 32) * 2 - 1)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "shape": (4, 5), "colour": (4, 8), "size": (4, 2), "position": (4, 9)
    }  # fmt: skip
    assert count_parameters(AttributeClassifier(attribute_classifier_config("shapes32"))) < 300_000
    # the 64 preset is the same design with one more halving
    big = AttributeClassifier(attribute_classifier_config("shapes64"))
    assert big(torch.zeros(1, 3, 64, 64))["position"].shape == (1, 9)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(3, 32, 32), "batch dimension"),
        (torch.zeros(2, 1, 32, 32), "channels"),
        (torch.full((2, 3, 32, 32), 200.0), "x / 127.5 - 1"),
        (torch.zeros(2, 3, 64, 64), "mode='area'"),
    ],
)
def test_bad_inputs_have_clear_errors(x, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny()(x)


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError, match="shapes32"):
        attribute_classifier_config("shapes128")


def test_targets_from_objects_and_captions_agree_with_the_rendered_objects():
    ds = ShapesDataset(shapes_preset("single32", seed=3), 50)
    batch = collate([ds[i] for i in range(50)])
    a, b = targets_from_objects(batch["objects"]), targets_from_captions(batch["caption"])
    for attr in ("shape", "colour", "size", "position"):
        assert torch.equal(a[attr], b[attr])
        assert a[attr].dtype == torch.long
        # the labels decode back to the rendered objects
        names = [json.loads(o)[0][attr] for o in batch["objects"]]
        assert [VOCAB[attr][i] for i in a[attr].tolist()] == names
    t = targets_from_captions(["a large red circle in the center", "a small pink heart at the bottom right"])
    assert t["shape"].tolist() == [0, 4] and t["colour"].tolist() == [0, 7]
    assert t["size"].tolist() == [1, 0] and t["position"].tolist() == [4, 8]


def test_multi_object_items_raise_a_clear_error():
    with pytest.raises(ValueError, match="2 objects.*exactly one object"):
        targets_from_captions(["a large red circle at the top left and a small blue star in the center"])
    two = [{"shape": "circle", "colour": "red", "size": "large", "position": "top", "bbox": [0, 0, 1, 1]}] * 2
    with pytest.raises(ValueError, match="exactly one object"):
        targets_from_objects([json.dumps(two)])
    with pytest.raises(ValueError, match="Cannot parse"):
        targets_from_captions(["a photo of a cat"])


def test_blur_and_noise_keep_colours():
    """The augmentation must not shift colours: a flat image stays flat through the blur, and noise is zero-mean."""
    flat = torch.tensor([0.5, -0.2, 0.1]).view(1, 3, 1, 1).expand(8, 3, 32, 32).contiguous()
    blurred = gaussian_blur(flat, torch.linspace(0.3, 1.0, 8))
    assert torch.allclose(blurred, flat, atol=1e-5)
    x, _ = render_single(range(16), seed=0)
    y = augment_batch(x, torch.Generator().manual_seed(0), p_blur=1.0, p_noise=1.0)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert not torch.equal(x, y)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), x.mean(dim=(0, 2, 3)), atol=0.01)  # per-channel mean kept


def test_shipped_classifier_is_right_on_every_held_out_picture(shipped, held_out):
    images, captions = held_out
    acc = attribute_accuracy(shipped, images, captions)
    # every attribute of every real held-out picture (the manifest records 100% on 2000 of them)
    assert all(acc[k] == 1.0 for k in ("shape", "colour", "size", "position", "shape_and_colour", "all")), acc
    assert acc["n"] == 300
    # the same figure through the evaluation helper (which renders the test world itself)
    ev = evaluate_attribute_classifier(shipped, n=100)
    assert ev["shape_and_colour"] >= 0.99 and ev["seed"] == TEST_SEED


def test_attribute_accuracy_discriminates(shipped, held_out):
    """Right captions score ~1; the same images against shuffled captions score near chance (1/40 for shape and
    colour), so a high score really means the picture shows what was asked for."""
    images, captions = held_out
    shuffled = captions[1:] + captions[:1]
    acc = attribute_accuracy(shipped, images, shuffled)
    assert acc["shape_and_colour"] < 0.15, acc
    assert acc["position"] < 0.3, acc
    # predictions decode to the caption's words
    pred = predict(shipped, images[:5])
    for i in range(5):
        words = " ".join(VOCAB[a][int(pred[a][i])] for a in ("size", "colour", "shape"))
        assert words in captions[i]
    with pytest.raises(ValueError, match="captions"):
        attribute_accuracy(shipped, images[:3], captions[:2])


def test_save_load_round_trip_and_wrong_kind(tmp_path):
    model = tiny().eval()
    path = save_attribute_classifier(tmp_path / "judge.safetensors", model)
    again = load_attribute_classifier(path)
    assert again.cfg == model.cfg
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    for a, v in model(x).items():
        assert torch.allclose(v, again(x)[a], atol=1e-6)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_attribute_classifier(path, model)
    other = save_checkpoint(tmp_path / "ae.safetensors", model, kind="autoencoder", config=model.cfg)
    with pytest.raises(CheckpointError, match="not an 'attribute-classifier'"):
        load_attribute_classifier(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_attribute_classifier(tmp_path / "missing.safetensors")


def test_main_trains_evaluates_and_ships(tmp_path):
    """The CLI end to end on a tiny model: metrics.json, a shipped file and its manifest entry, no silent overwrite."""
    ckpt = tmp_path / "ckpts" / "judge.safetensors"
    argv = ["--steps", "3", "--batch-size", "8", "--preset", "tiny", "--n-eval", "16", "--out", str(tmp_path / "run"),
            "--ship", "--checkpoint", str(ckpt), "--no-progress"]  # fmt: skip
    metrics = main(argv)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["quality"]["real"]["n"] == 16 and "autoencoder_reconstructions" in saved["quality"]
    assert 0.0 <= metrics["quality"]["real"]["shape_and_colour"] <= 1.0
    _, meta = read_checkpoint(ckpt)
    assert meta["kind"] == "attribute-classifier"
    entry = json.loads((ckpt.parent / "MANIFEST.json").read_text())["checkpoints"]["judge.safetensors"]
    assert entry["kind"] == "attribute-classifier" and entry["steps"] == 3
    assert entry["command"].startswith("python -m ldm_minimal.evaluation.attributes --steps 3")
    assert set(entry["quality"]) >= {"real", "autoencoder_reconstructions"}
    with pytest.raises(SystemExit, match="overwrite"):
        main(argv)
