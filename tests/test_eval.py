"""The offline feature networks (shapes judge, emoji group classifier) and ``python -m ldm_minimal eval`` (issue 5).

No trained diffusion model is needed: a micro text-to-image model with random weights is saved with save_ldm and
driven through the real CLI entry point with n = 8 and 2 DDIM steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm_minimal.cli import main as cli
from ldm_minimal.evaluation.attributes import AttributeClassifier, render_single
from ldm_minimal.checkpoint import MANIFEST_NAME
from ldm_minimal.latent_diffusion_io import save_ldm
from ldm_minimal.evaluation.evaluate import EvaluationError, FeatureNetworkUnavailable, evaluate, load_feature_classifier
from ldm_minimal.pipelines import GenerationError
from ldm_minimal.image_io import to_uint8
from ldm_minimal.utils import DATA_DIR
from ldm_minimal.evaluation.world_classifier import (
    WorldClassifier,
    default_checkpoint,
    evaluate_world_classifier,
    load_world_classifier,
    world_images,
)
from test_latent_diffusion import micro

MANIFEST = json.loads((DATA_DIR / "checkpoints" / MANIFEST_NAME).read_text())["checkpoints"]
KEYS = {"world", "source", "mode", "n", "n_real", "seed", "steps", "guidance", "sampler", "features", "fid", "kid",
        "precision", "recall", "wall_time_s", "machine", "command"}


@pytest.fixture(scope="module")
def emoji_classifier() -> WorldClassifier:
    return load_world_classifier()


@pytest.fixture(scope="module")
def t2i_ckpt(tmp_path_factory) -> Path:
    m = micro("shapes-t2i")
    m.scale_factor.fill_(1.0)
    m.scale_factor_set.fill_(True)
    return save_ldm(tmp_path_factory.mktemp("ckpt") / "t2i.safetensors", m)


def write_pngs(folder: Path, images: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(to_uint8(images)):
        Image.fromarray(a).save(folder / f"{i:03d}.png")
    return folder


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli(["eval", *[str(a) for a in argv]])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------------------------------------
# The feature networks


def test_shipped_emoji_classifier_matches_its_manifest_and_beats_chance(emoji_classifier):
    entry = MANIFEST[default_checkpoint("emoji").name]
    assert entry["kind"] == "world-classifier" and entry["world"] == "emoji"
    report = evaluate_world_classifier(emoji_classifier, "test")
    assert report["n"] == 192  # every 10th emoji: never seen in training
    recorded = entry["quality"]["test"]["top1"]
    assert abs(report["top1"] - recorded) <= 0.005, (report["top1"], recorded)
    # well above chance (1/10 groups) and above always answering the most common group (~20 %)
    assert report["top1"] > max(0.4, report["majority_baseline"] + 0.2), report
    assert report["top3"] >= report["top1"]


def test_load_feature_classifier_for_both_worlds(emoji_classifier):
    shapes = load_feature_classifier("single32")
    assert isinstance(shapes, AttributeClassifier) and isinstance(load_feature_classifier("shapes32"), AttributeClassifier)
    x, _ = render_single(range(4), 1_000_000)
    assert shapes.features(x).shape == (4, shapes.num_features)
    emoji = load_feature_classifier("emoji")
    assert isinstance(emoji, WorldClassifier) and "emoji32-features" in emoji.feature_name
    images, labels, _ = world_images("emoji", "test")
    with torch.no_grad():
        f = emoji.features(images[:6])
        # features do not depend on batch-mates (GroupNorm, eval mode)
        assert torch.allclose(f[:2], emoji.features(images[:2]), atol=1e-5)
    assert f.shape == (6, emoji.num_features) and torch.isfinite(f).all()
    with pytest.raises(ValueError, match="emoji.*shapes32.*single32"):
        load_feature_classifier("shapes64")
    with pytest.raises(ValueError, match="trained at 32x32"):
        emoji.features(torch.zeros(1, 3, 64, 64))


# ---------------------------------------------------------------------------------------------------------------
# The eval command


def test_eval_cli_on_a_tiny_checkpoint_is_repeatable_and_refuses_to_overwrite(t2i_ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["--checkpoint", t2i_ckpt, "--world", "single32", "--n", 8, "--seed", 3, "--steps", 2, "--batch", 4,
            "--out", out]
    code, printed, _ = run_cli(capsys, *argv)
    assert code == 0
    first = json.loads(out.read_text())
    assert json.loads(printed) == first
    assert KEYS <= set(first), KEYS - set(first)
    assert first["mode"] == "text" and first["n"] == first["n_real"] == 8 and first["steps"] == 2
    assert set(first["kid"]) >= {"mean", "std"} and 0.0 <= first["precision"] <= 1.0 and 0.0 <= first["recall"] <= 1.0
    assert np.isfinite(first["fid"]) and first["fid"] > 0  # random weights: samples are nothing like the data
    acc = first["attribute_accuracy"]  # the judge's reading of text-model samples (single-object captions)
    assert {"shape", "colour", "size", "position", "shape_and_colour"} <= set(acc) and acc["n"] == 8

    # an existing --out is never replaced silently; the refusal comes before any work
    out.write_text("keep me")
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and "--overwrite" in err and out.read_text() == "keep me"

    # same seed -> the same numbers
    code, _, _ = run_cli(capsys, *argv, "--overwrite")
    again = json.loads(out.read_text())
    assert code == 0
    for key in ("fid", "kid", "precision", "recall", "attribute_accuracy"):
        assert again[key] == first[key], key


def test_eval_of_a_folder_of_the_real_pictures_is_perfect(tmp_path, capsys):
    images, _, _ = world_images("emoji", "test")
    folder = write_pngs(tmp_path / "pics", images[:16])
    out = tmp_path / "folder.json"
    code, _, _ = run_cli(capsys, "--images", folder, "--world", "emoji", "--n", 16, "--out", out)
    assert code == 0
    r = json.loads(out.read_text())
    assert r["mode"] == "images" and r["steps"] is None and "emoji32-features" in r["features"]
    # the folder holds exactly the reference pictures: zero distance, full precision and recall
    assert abs(r["fid"]) < 1e-2 and r["precision"] == 1.0 and r["recall"] == 1.0
    # noise pictures are far away and cover none of the data's variety (their precision is NOT low in this feature
    # space: the noise features fall inside the wide k-NN balls of 16 very different emoji; see docs/evaluation.md)
    noise = write_pngs(tmp_path / "noise", torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    far = evaluate(noise, "emoji", n=16)
    assert far["fid"] > 100 * max(r["fid"], 1e-3) and far["recall"] < 0.2


def test_eval_of_a_class_model_scores_shape_and_colour(tmp_path):
    m = micro("shapes-class")
    m.scale_factor.fill_(1.0)
    m.scale_factor_set.fill_(True)
    path = save_ldm(tmp_path / "class.safetensors", m)
    r = evaluate(path, "single32", n=8, steps=2, batch=8)
    assert r["mode"] == "class" and set(r["attribute_accuracy"]) == {"shape", "colour", "shape_and_colour", "n"}
    with pytest.raises(GenerationError, match="--world single32"):
        evaluate(path, "shapes32", n=8, steps=2)  # class ids exist only for single-object pictures


def test_eval_bad_input_gets_clear_errors(t2i_ckpt, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvaluationError, match="no PNG/JPG"):
        evaluate(empty, "single32", n=4)
    big = write_pngs(tmp_path / "big", torch.zeros(4, 3, 64, 64))
    with pytest.raises(EvaluationError, match="64x64.*Resize"):
        evaluate(big, "single32", n=4)
    few = write_pngs(tmp_path / "few", torch.zeros(3, 3, 32, 32))
    with pytest.raises(EvaluationError, match="--n 3"):
        evaluate(few, "single32", n=4)
    with pytest.raises(EvaluationError, match=">= 2"):
        evaluate(t2i_ckpt, "single32", n=1)
    with pytest.raises(ValueError, match="Unknown evaluation world 'mnist'.*emoji"):
        evaluate(t2i_ckpt, "mnist", n=8)
    with pytest.raises(EvaluationError, match="neither a checkpoint"):
        evaluate(tmp_path / "missing.safetensors", "single32", n=8)
    # restorers (concatenation conditioning) are measured against ground truth elsewhere
    sr = micro("shapes-sr")
    sr.scale_factor.fill_(1.0)
    sr.scale_factor_set.fill_(True)
    with pytest.raises(GenerationError, match="shipped_quality --kind sr"):
        evaluate(save_ldm(tmp_path / "sr.safetensors", sr), "shapes32", n=4, steps=1)
    # the CLI: unknown world (argparse), a folder given as --checkpoint
    with pytest.raises(SystemExit):
        cli(["eval", "--checkpoint", str(t2i_ckpt), "--world", "mnist", "--out", str(tmp_path / "x.json")])
    code, _, err = run_cli(capsys, "--checkpoint", empty, "--world", "single32", "--out", tmp_path / "y.json")
    assert code == 1 and "--images" in err


def test_inception_features_fail_clearly_offline(t2i_ckpt):
    pytest.importorskip("torch")
    try:
        import torch_fidelity  # noqa: F401

        pytest.skip("torch-fidelity is installed here; the offline error path cannot be exercised")
    except ImportError:
        pass
    with pytest.raises(FeatureNetworkUnavailable, match="pip install torch-fidelity"):
        evaluate(t2i_ckpt, "single32", n=8, steps=2, classifier="inception")


@pytest.mark.parametrize("kind", ["class", "layout"])
def test_shipped_quality_of_class_and_layout_models_reads_the_judge(kind, tmp_path):
    from ldm_minimal.experiments.shipped_quality import class_quality, layout_quality

    m = micro(f"shapes-{kind}")
    m.scale_factor.fill_(1.0)
    m.scale_factor_set.fill_(True)
    path = save_ldm(tmp_path / f"{kind}.safetensors", m)
    result = (class_quality if kind == "class" else layout_quality)(path, n=3, steps=2)
    assert result["n"] == 3 and result["ddim_steps"] == 2
    keys = {"shape", "colour", "shape_and_colour"} | ({"size", "position", "all"} if kind == "layout" else set())
    assert set(result["judge"]) == keys and all(0.0 <= v <= 1.0 for v in result["judge"].values())


def test_eval_of_a_sample_folder_reads_only_the_samples(t2i_ckpt, tmp_path, capsys):
    folder = tmp_path / "samples"
    assert cli(["sample", "--checkpoint", str(t2i_ckpt), "--prompt", "a large red circle in the center", "--n", "4",
                "--steps", "1", "--out", str(folder)]) == 0
    capsys.readouterr()
    out = tmp_path / "r.json"
    code, _, err = run_cli(capsys, "--images", folder, "--world", "single32", "--n", 4, "--out", out)
    assert code == 0, err
    src = json.loads(out.read_text())["source"]
    assert src["pictures_used"] == 4 and src["left_out"] == ["grid.png"] and src["last"] == "sample_003.png"
    assert "read 4 pictures" in err and "grid.png" in err
    # without a samples.json, files named grid.png / panel.png are still left out
    (folder / "samples.json").unlink()
    (folder / "sample_003.png").rename(folder / "panel.png")
    with pytest.raises(EvaluationError, match=r"holds 3 sample pictures \(left out: grid.png, panel.png\).*--n 3"):
        evaluate(folder, "single32", n=4)


def test_eval_bad_device_seed_and_out_are_one_line_errors(t2i_ckpt, tmp_path, capsys):
    base = ["--checkpoint", t2i_ckpt, "--world", "single32", "--n", 4, "--steps", 1]
    code, _, err = run_cli(capsys, *base, "--device", "bogus", "--out", tmp_path / "a.json")
    assert code == 1 and "--device 'bogus' is not a device name" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, *base, "--seed", 2**70, "--out", tmp_path / "a.json")
    assert code == 1 and "out of range" in err
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "file" / "a.json")
    assert code == 1 and "The folder of --out" in err and "is a file, not a folder" in err
    with pytest.raises(ValueError, match="not a device name"):
        evaluate(t2i_ckpt, "single32", n=4, steps=1, device="bogus")
