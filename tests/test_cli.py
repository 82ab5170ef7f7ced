"""The command line: the demo (the README's main job), training an autoencoder, listing worlds."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ldm_minimal.__main__ import SHIPPED_AE, main


def test_demo_writes_the_pictures(tmp_path, capsys):
    assert SHIPPED_AE.exists(), f"the shipped autoencoder {SHIPPED_AE} is missing"
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in ["shapes32_samples.png", "shapes64_samples.png", "emoji64_samples.png", "autoencoder_reconstructions.png"]:
        path = tmp_path / name
        assert path.exists() and str(path) in printed
        assert Image.open(path).size[0] > 100
    captions = (tmp_path / "shapes32_captions.txt").read_text().splitlines()
    assert len(captions) == 32 and all(c.startswith("a ") for c in captions)


def test_train_ae_cli_and_refusal_to_overwrite(tmp_path, capsys):
    args = ["train-ae", "--model", "tiny-kl-f2", "--steps", "2", "--batch-size", "2", "--perceptual", "none",
            "--no-adversarial", "--device", "cpu", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["wall_time_s"] > 0
    assert (tmp_path / "run" / "autoencoder.safetensors").exists()
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(args)
    assert main(args + ["--overwrite"]) == 0


def test_worlds_lists_the_data_worlds(capsys):
    assert main(["worlds"]) == 0
    out = capsys.readouterr().out
    assert "shapes" in out and "emoji" in out


def test_unknown_command_is_rejected():
    with pytest.raises(SystemExit):
        main(["no-such-command"])
