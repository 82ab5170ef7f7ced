"""The command line: the demo (the README's main job), training, listing worlds."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ldm_minimal.cli import main


def test_demo_writes_the_picture_from_the_shipped_models(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "3"]) == 0
    printed = capsys.readouterr().out
    for name in ["demo.png", "t2i.png", "inpaint.png", "upscale.png", "emoji.png"]:
        path = tmp_path / name
        assert path.exists() and str(path) in printed, name
        assert Image.open(path).size[0] > 100
    assert "Demo finished" in printed


def test_train_cli_every_setting_is_a_flag_and_refusals_are_clear_messages(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "ae", "--preset", "cpu", "--model", "tiny-kl-f2", "--steps", "2", "--batch-size", "2",
            "--perceptual", "none", "--no-adversarial", "--device", "cpu", "--betas", "0.5", "0.9",
            "--model-overrides", '{"embed_dim": 4}', "--no-progress", "--out", out]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["steps"] == 2 and summary["wall_time_s"] > 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["embed_dim"] == 4 and config["train"]["betas"] == [0.5, 0.9]
    assert main(args) == 1  # refuses: the folder holds a run
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "ae", "--out", out, "--resume", "--steps", "3", "--no-progress"]) == 0
    assert main(["train", "ae", "--out", out, "--resume", "--lr", "1"]) == 1
    assert "lr: run has" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_worlds_lists_the_data_worlds(capsys):
    assert main(["worlds"]) == 0
    out = capsys.readouterr().out
    assert "shapes" in out and "emoji" in out


def test_unknown_command_is_rejected():
    with pytest.raises(SystemExit):
        main(["no-such-command"])
