"""Tests of the generation commands (sample, inpaint, upscale) and the demo (paper Sec. 4.3-4.5) on micro models.

No trained checkpoint is needed: micro models with random weights are saved with save_ldm to a temporary folder and
driven through a parser built with add_generation_commands, exactly as the CLI does, with 2-3 DDIM steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm_minimal import checkpoint
from ldm_minimal.checkpoint import sha256_of
from ldm_minimal.cli.demo import run_demo
from ldm_minimal.cli.generate import add_generation_commands
from ldm_minimal.data.shapes import ShapesConfig, render_sample
from ldm_minimal.image_io import load_image, load_mask
from ldm_minimal.latent_diffusion_io import load_ldm, save_ldm
from ldm_minimal.pipelines import GenerationError, caption_box, layout_objects, text_to_image
from test_latent_diffusion import micro

PROMPTS = ["a large red circle in the center", "a small blue star at the top left"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Micro checkpoints of every kind the commands load (scale factor fixed at 1)."""
    d = tmp_path_factory.mktemp("ckpts")
    out = {}
    for kind, preset in [("t2i", "shapes-t2i"), ("class", "shapes-class"), ("layout", "shapes-layout"),
                         ("uncond", "shapes-uncond"), ("inpaint", "shapes-inpaint"), ("sr", "shapes-sr")]:
        m = micro(preset)
        m.scale_factor.fill_(1.0)
        m.scale_factor_set.fill_(True)
        out[kind] = save_ldm(d / f"{kind}.safetensors", m)
    return out


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ldm_minimal")
    add_generation_commands(p.add_subparsers(dest="command", required=True))
    return p


def run(parser: argparse.ArgumentParser, *argv: str | Path) -> int:
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def sample_t2i(parser, ckpts, out, *extra) -> None:
    argv = ["sample", "--checkpoint", ckpts["t2i"], "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--n", "2",
            "--steps", "2", "--out", out, *extra]
    assert run(parser, *argv) == 0


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ----------------------------------------------------------------------------------------------------------------
# sample


def test_sample_writes_pngs_grid_and_record(parser, ckpts, tmp_path, capsys):
    out = tmp_path / "s"
    sample_t2i(parser, ckpts, out)
    names = [f"sample_{i:03d}.png" for i in range(4)]
    for n in names:
        assert png(out / n).shape == (32, 32, 3)
    # grid: 2 prompts as rows x 2 samples, 2-pixel padding
    assert png(out / "grid.png").shape == (2 * 34 + 2, 2 * 34 + 2, 3)
    rec = json.loads((out / "samples.json").read_text())
    assert rec["checkpoint"]["sha256"] == sha256_of(ckpts["t2i"])[:16]
    assert rec["checkpoint"]["conditioner"] == "text-joint"
    assert (rec["seed"], rec["guidance"], rec["steps"], rec["sampler"], rec["eta"]) == (0, 3.0, 2, "ddim", 0.0)
    assert [f["file"] for f in rec["files"]] == names
    assert [f["prompt"] for f in rec["files"]] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    printed = capsys.readouterr().out
    assert str(out / "grid.png") in printed and str(out / "samples.json") in printed


def test_same_seed_same_bytes_other_seed_differs(parser, ckpts, tmp_path):
    sample_t2i(parser, ckpts, tmp_path / "a")
    sample_t2i(parser, ckpts, tmp_path / "b")
    sample_t2i(parser, ckpts, tmp_path / "c", "--seed", "1")
    for i in range(4):
        name = f"sample_{i:03d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    # the two samples of one prompt differ (each gets its own noise)
    assert not np.array_equal(png(tmp_path / "a" / "sample_000.png"), png(tmp_path / "a" / "sample_001.png"))


def test_refuses_to_overwrite_unless_asked(parser, ckpts, tmp_path):
    out = tmp_path / "s"
    sample_t2i(parser, ckpts, out)
    before = (out / "sample_000.png").read_bytes()
    (out / "sample_000.png").write_bytes(b"mine")
    with pytest.raises(SystemExit, match="Refusing to overwrite.*--overwrite"):
        sample_t2i(parser, ckpts, out)
    assert (out / "sample_000.png").read_bytes() == b"mine"  # untouched
    sample_t2i(parser, ckpts, out, "--overwrite")
    assert (out / "sample_000.png").read_bytes() == before


def test_wrong_condition_for_the_checkpoint(parser, ckpts, tmp_path):
    out = tmp_path / "x"
    with pytest.raises(SystemExit, match="expects --class .*conditioner is 'class'.*got --prompt"):
        run(parser, "sample", "--checkpoint", ckpts["class"], "--prompt", "a red circle", "--out", out)
    with pytest.raises(SystemExit, match="expects --prompt .*'text-joint'.*got --class"):
        run(parser, "sample", "--checkpoint", ckpts["t2i"], "--class", "0", "--out", out)
    with pytest.raises(SystemExit, match="expects --prompt .*got no condition"):
        run(parser, "sample", "--checkpoint", ckpts["t2i"], "--out", out)
    with pytest.raises(SystemExit, match="unconditional model.*takes no --layout"):
        run(parser, "sample", "--checkpoint", ckpts["uncond"], "--layout", PROMPTS[0], "--out", out)
    with pytest.raises(SystemExit, match="inpainting model: use `python -m ldm_minimal inpaint"):
        run(parser, "sample", "--checkpoint", ckpts["inpaint"], "--prompt", "x", "--out", out)
    with pytest.raises(SystemExit, match="inpaint needs conditioner='inpaint'.*'text-joint'"):
        run(parser, "inpaint", "--checkpoint", ckpts["t2i"], "--image", "a.png", "--mask", "b.png", "--out", out)
    assert not out.exists()  # nothing written on errors


def test_bad_size_is_a_clear_error(parser, ckpts, tmp_path):
    with pytest.raises(SystemExit, match=r"size=30 .*multiple of f \* UNet downsampling = 4 \* 2 = 8 \(e.g. 24"):
        run(parser, "sample", "--checkpoint", ckpts["t2i"], "--prompt", PROMPTS[0], "--size", "30",
            "--out", tmp_path / "x")
    ldm, _ = load_ldm(ckpts["t2i"])
    with pytest.raises(GenerationError, match="multiple of"):
        text_to_image(ldm, PROMPTS, size=36, steps=1)
    # a valid larger size works: the UNet is convolutional
    x = text_to_image(ldm, PROMPTS[:1], n_per_prompt=1, size=48, steps=1)
    assert x.shape == (1, 3, 48, 48) and float(x.abs().max()) <= 1.0


def test_missing_shipped_checkpoint_says_which_file(parser, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "CHECKPOINT_DIR", tmp_path / "empty")
    with pytest.raises(SystemExit, match="shipped 't2i' checkpoint is missing: .*shapes32-t2i.safetensors.*--checkpoint"):
        run(parser, "sample", "--prompt", PROMPTS[0], "--out", tmp_path / "x")
    with pytest.raises(SystemExit, match="shapes32-sr.safetensors"):
        run(parser, "upscale", "--image", tmp_path / "lr.png", "--out", tmp_path / "x")
    with pytest.raises(SystemExit, match="Checkpoint .*nope.safetensors does not exist"):
        run(parser, "sample", "--checkpoint", tmp_path / "nope.safetensors", "--prompt", "x", "--out", tmp_path / "x")


def test_class_names_layouts_and_unconditional(parser, ckpts, tmp_path):
    out = tmp_path / "c"
    run(parser, "sample", "--checkpoint", ckpts["class"], "--class", "red circle", "--class", "3", "--n", "1",
        "--steps", "2", "--out", out)
    assert json.loads((out / "samples.json").read_text())["class_ids"] == [0, 3]
    with pytest.raises(SystemExit, match="Unknown class 'blue'.*'red circle'"):
        run(parser, "sample", "--checkpoint", ckpts["class"], "--class", "blue", "--out", tmp_path / "c2")
    with pytest.raises(SystemExit, match="out of range: this model has classes 0..39"):
        run(parser, "sample", "--checkpoint", ckpts["class"], "--class", "40", "--out", tmp_path / "c2")

    out = tmp_path / "l"
    layout_json = json.dumps([{"shape": "square", "colour": "green", "bbox": [2, 3, 12, 13]}])
    run(parser, "sample", "--checkpoint", ckpts["layout"], "--layout", "a large red circle at the top left",
        "--layout", layout_json, "--n", "1", "--steps", "2", "--out", out)
    rec = json.loads((out / "samples.json").read_text())
    assert rec["objects"][0][0]["bbox"] == caption_box("top left", "large", 32)
    assert rec["objects"][1] == json.loads(layout_json)
    assert png(out / "grid.png").shape == (2 * 34 + 2, 34 + 2, 3)

    out = tmp_path / "u"
    run(parser, "sample", "--checkpoint", ckpts["uncond"], "--n", "3", "--steps", "2", "--out", out)
    assert sorted(p.name for p in out.glob("sample_*.png")) == [f"sample_{i:03d}.png" for i in range(3)]


def test_caption_boxes_match_the_shapes_world():
    """A caption's centred grid box holds the centre of the real object of every rendered sample."""
    cfg = ShapesConfig(resolution=32, seed=123)
    for i in range(40):
        s = render_sample(i, cfg)
        boxes = layout_objects(s.caption, 32)
        assert len(boxes) == len(s.objects)
        for obj, lay in zip(s.objects, boxes):
            assert (lay["shape"], lay["colour"]) == (obj.shape, obj.colour)
            x0, y0, x1, y1 = lay["bbox"]
            cx, cy = (obj.bbox[0] + obj.bbox[2]) / 2, (obj.bbox[1] + obj.bbox[3]) / 2
            assert x0 <= cx <= x1 and y0 <= cy <= y1
            # the box side is within 2 px of the real one (size small ~0.57 cell, large ~0.89 cell)
            assert abs((x1 - x0) - (obj.bbox[2] - obj.bbox[0])) <= 2
    with pytest.raises(GenerationError, match="neither a JSON list of objects nor a shapes caption"):
        layout_objects("a big dog", 32)
    with pytest.raises(GenerationError, match="not a non-empty box inside the 32x32 image"):
        layout_objects([{"shape": "circle", "colour": "red", "bbox": [0, 0, 40, 10]}], 32)


# ----------------------------------------------------------------------------------------------------------------
# inpaint and upscale


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    d = tmp_path_factory.mktemp("pics")
    img = render_sample(7, ShapesConfig(resolution=32, seed=1_000_000)).image  # (32, 32, 3) uint8
    hole = np.zeros((32, 32), dtype=np.uint8)
    hole[8:20, 10:26] = 255
    Image.fromarray(img).save(d / "img.png")
    Image.fromarray(hole).save(d / "mask.png")
    return d / "img.png", d / "mask.png", img, hole


def test_inpaint_keeps_the_known_region_exactly(parser, ckpts, picture, tmp_path):
    img_path, mask_path, img, hole = picture
    out = tmp_path / "inp"
    run(parser, "inpaint", "--checkpoint", ckpts["inpaint"], "--image", img_path, "--mask", mask_path, "--n", "2",
        "--steps", "2", "--out", out)
    known = hole == 0
    for i in range(2):
        res = png(out / f"sample_{i:03d}.png")
        assert np.array_equal(res[known], img[known])  # after the PNG round trip, bit for bit
        assert not np.array_equal(res[~known], img[~known])  # the hole was generated
    # panel: input | masked input | 2 results
    assert png(out / "panel.png").shape == (34 + 2, 4 * 34 + 2, 3)
    rec = json.loads((out / "samples.json").read_text())
    assert rec["guidance"] == 1.0 and rec["hole_fraction"] == pytest.approx(12 * 16 / 1024, abs=1e-4)


def test_upscale_is_x4(parser, ckpts, tmp_path):
    lr = render_sample(3, ShapesConfig(resolution=32, seed=1_000_000)).image[::4, ::4]  # (8, 8, 3)
    Image.fromarray(np.ascontiguousarray(lr)).save(tmp_path / "lr.png")
    out = tmp_path / "up"
    run(parser, "upscale", "--checkpoint", ckpts["sr"], "--image", tmp_path / "lr.png", "--n", "1", "--steps", "2",
        "--out", out)
    assert png(out / "sample_000.png").shape == (32, 32, 3)
    assert png(out / "panel.png").shape == (34 + 2, 3 * 34 + 2, 3)  # nearest | bicubic | LDM-SR
    rec = json.loads((out / "samples.json").read_text())
    assert rec["input_size"] == [8, 8] and rec["output_size"] == [32, 32]
    # a low-res image whose x4 output the model cannot make
    Image.fromarray(np.zeros((5, 5, 3), dtype=np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(SystemExit, match="lowres has size 5x5.*output would be 20x20"):
        run(parser, "upscale", "--checkpoint", ckpts["sr"], "--image", tmp_path / "odd.png", "--out", tmp_path / "o")


def test_load_image_and_mask_errors(picture, tmp_path):
    img_path, mask_path, img, hole = picture
    x = load_image(img_path)
    assert x.shape == (1, 3, 32, 32) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert load_image(img_path, size=16).shape == (1, 3, 16, 16)
    m = load_mask(mask_path, x)
    assert m.shape == (1, 1, 32, 32) and int(m.sum()) == 12 * 16 and set(m.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(GenerationError, match="is 16x16 .*but the image is 32x32"):
        Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(tmp_path / "small.png")
        load_mask(tmp_path / "small.png", x)
    Image.fromarray(np.full((32, 32), 20, dtype=np.uint8)).save(tmp_path / "dark.png")
    with pytest.raises(GenerationError, match="has no hole.*white"):
        load_mask(tmp_path / "dark.png", x)
    with pytest.raises(GenerationError, match="does not look like a black/white mask"):
        load_mask(img_path, x)  # a picture, not a mask (mostly light grey)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(GenerationError, match="not an image file"):
        load_image(tmp_path / "junk.png")


# ----------------------------------------------------------------------------------------------------------------
# the demo


def test_run_demo_writes_one_picture(ckpts, tmp_path):
    cks = {"t2i": ckpts["t2i"], "inpaint": ckpts["inpaint"], "sr": ckpts["sr"], "emoji": ckpts["t2i"]}
    res = run_demo(tmp_path / "demo", cks, steps=2)
    demo = png(res["demo"])
    assert set(res["parts"]) == {"t2i", "inpaint", "upscale", "emoji"}
    heights = [png(p).shape[0] for p in res["parts"].values()]
    assert demo.shape[0] == sum(heights) + 8 * 3  # the parts stacked with 8-pixel gaps
    assert res["seconds"]["total"] > 0
    # the held-out inpainting inputs are kept outside the hole: the part is not blank
    assert png(res["parts"]["inpaint"]).std() > 10
    # without the (optional) emoji checkpoint: three parts; an unknown key is an error
    threads = torch.get_num_threads()
    res2 = run_demo(tmp_path / "demo2", {k: cks[k] for k in ("t2i", "inpaint", "sr")} | {"emoji": None}, steps=1,
                    num_threads=threads + 1)
    assert set(res2["parts"]) == {"t2i", "inpaint", "upscale"}
    assert torch.get_num_threads() == threads  # the demo's thread setting is undone
    with pytest.raises(GenerationError, match="Unknown demo checkpoint key"):
        run_demo(tmp_path / "demo3", {"text": ckpts["t2i"]})


# ----------------------------------------------------------------------------------------------------------------
# user input checked before any work, nothing lost (probe fixes)


def test_demo_refuses_to_replace_an_earlier_demo_unless_overwrite(ckpts, tmp_path):
    cks = {"t2i": ckpts["t2i"], "inpaint": ckpts["inpaint"], "sr": ckpts["sr"], "emoji": ckpts["t2i"]}
    out = tmp_path / "demo"
    run_demo(out, cks, steps=1)
    (out / "demo.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match=r"already holds demo\.png, t2i\.png.*--overwrite"):
        run_demo(out, cks, steps=1)
    assert (out / "demo.png").read_bytes() == b"mine"  # untouched
    # --overwrite replaces them, and removes the earlier run's emoji.png that this run does not make
    res = run_demo(out, {k: cks[k] for k in ("t2i", "inpaint", "sr")} | {"emoji": None}, steps=1, overwrite=True)
    assert (out / "demo.png").read_bytes() != b"mine" and not (out / "emoji.png").exists()
    assert set(res["parts"]) == {"t2i", "inpaint", "upscale"}
    # the command has the flag (and keeps its others)
    from ldm_minimal.cli import build_parser
    args = build_parser().parse_args(["demo", "--out", str(out), "--steps", "2", "--threads", "1", "--overwrite"])
    assert args.overwrite and args.steps == 2 and args.threads == 1 and args.device == "auto"


def test_overwrite_removes_the_earlier_runs_extra_samples_only(parser, ckpts, tmp_path):
    out = tmp_path / "s"
    sample_t2i(parser, ckpts, out)  # 2 prompts x 2 samples: sample_000..003
    (out / "notes.txt").write_text("mine")
    (out / "photo.png").write_bytes(b"mine")
    assert run(parser, "sample", "--checkpoint", ckpts["t2i"], "--prompt", PROMPTS[0], "--n", "1", "--steps", "1",
               "--out", out, "--overwrite") == 0
    left = sorted(p.name for p in out.iterdir())
    assert left == ["grid.png", "notes.txt", "photo.png", "sample_000.png", "samples.json"], left
    assert [f["file"] for f in json.loads((out / "samples.json").read_text())["files"]] == ["sample_000.png"]


def test_large_pictures_are_refused_before_any_work_unless_allowed(parser, ckpts, tmp_path):
    missing = tmp_path / "no-such.safetensors"  # the limit is checked before the checkpoint is even looked at
    with pytest.raises(SystemExit, match=r"--size 100000 is 100000x100000 pixels.*limit of 128 px.*--allow-large"):
        run(parser, "sample", "--checkpoint", missing, "--prompt", PROMPTS[0], "--size", "100000",
            "--out", tmp_path / "x")
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((2048, 2048, 3), dtype=np.uint8)).save(big)
    # the image commands check the model's kind first (a quick load), then the image, before any sampling
    with pytest.raises(SystemExit, match=r"--image .*big.png is 2048x2048 pixels.*limit of 32 px.*--allow-large"):
        run(parser, "upscale", "--checkpoint", ckpts["sr"], "--image", big, "--out", tmp_path / "u")
    with pytest.raises(SystemExit, match=r"2048x2048 pixels.*limit of 128 px.*--allow-large"):
        run(parser, "inpaint", "--checkpoint", ckpts["inpaint"], "--image", big, "--mask", big, "--out", tmp_path / "i")
    assert not any((tmp_path / d).exists() for d in ("x", "u", "i"))
    # lifted by the flag: the next check (the missing checkpoint) is reached
    with pytest.raises(SystemExit, match="no-such.safetensors"):
        run(parser, "sample", "--checkpoint", missing, "--prompt", PROMPTS[0], "--size", "160", "--allow-large",
            "--out", tmp_path / "x")
    assert "--allow-large" in parser._subparsers._group_actions[0].choices["sample"].format_help()


def test_16_bit_grey_png_loads_with_its_values(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    x = load_image(path)
    assert x.shape == (1, 3, 32, 32)
    want = torch.from_numpy(ramp.astype(np.float32) / 65535 * 2 - 1)
    assert torch.allclose(x[0, 0], want, atol=1e-5) and torch.equal(x[0, 0], x[0, 2])
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0  # not pure white
    assert load_image(path, size=16).shape == (1, 3, 16, 16)
    # a 16-bit mask: white half = the hole
    half = np.zeros((32, 32), dtype=np.uint16)
    half[:, 16:] = 65535
    Image.fromarray(half).save(tmp_path / "mask16.png")
    assert int(load_mask(tmp_path / "mask16.png", x).sum()) == 32 * 16


def test_non_finite_samples_are_never_written(parser, ckpts, tmp_path, monkeypatch):
    # with a trained model, guidance 1e38 overflows eps_u + s (eps_c - eps_u) to NaN (tried by hand on the shipped
    # one); the micro model's eps_c - eps_u is exactly 0, so its sampler's output is made NaN here
    from ldm_minimal.latent_diffusion import LatentDiffusion
    real_sample = LatentDiffusion.sample
    monkeypatch.setattr(LatentDiffusion, "sample", lambda self, *a, **k: real_sample(self, *a, **k) * float("nan"))
    Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8)).save(tmp_path / "img.png")
    hole = np.zeros((32, 32), dtype=np.uint8)
    hole[8:24, 8:24] = 255
    Image.fromarray(hole).save(tmp_path / "mask.png")
    for cmd in (["sample", "--checkpoint", ckpts["t2i"], "--prompt", PROMPTS[0]],
                ["inpaint", "--checkpoint", ckpts["inpaint"], "--image", tmp_path / "img.png",
                 "--mask", tmp_path / "mask.png"]):
        out = tmp_path / f"nan-{cmd[0]}"
        with pytest.raises(SystemExit, match=r"NaN or infinite.*no picture is written.*guidance scale 1e\+38 is the"):
            run(parser, *cmd, "--n", "1", "--steps", "2", "--guidance", "1e38", "--out", out)
        assert not out.exists() or not any(out.iterdir())
    with pytest.raises(SystemExit, match=r"NaN or infinite"):
        run(parser, "upscale", "--checkpoint", ckpts["sr"], "--image", tmp_path / "img.png", "--n", "1", "--steps", "1",
            "--out", tmp_path / "nan-upscale")
    assert not (tmp_path / "nan-upscale").exists()


def test_unknown_prompt_words_warn_naming_them_and_the_vocabulary(ckpts):
    ldm, _ = load_ldm(ckpts["t2i"])
    assert ldm.conditioner.unknown_words("빨간 원") == ["빨간", "원"]
    assert ldm.conditioner.unknown_words(PROMPTS[0]) == []
    with pytest.warns(UserWarning, match=r"'빨간', '원' are unknown.*as if unconditional.*data/tokenizers/shapes\.json"):
        text_to_image(ldm, ["빨간 원"], steps=1)
    with pytest.warns(UserWarning, match=r"'reddish' is unknown.*ignored"):
        text_to_image(ldm, ["a large reddish circle"], steps=1)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        text_to_image(ldm, PROMPTS, steps=1)  # known words: no warning


def test_bad_device_seed_and_out_are_one_line_errors_before_any_work(parser, ckpts, tmp_path, monkeypatch):
    missing = tmp_path / "no-such.safetensors"  # every check below comes before the checkpoint is looked at
    base = ["sample", "--checkpoint", missing, "--prompt", PROMPTS[0]]
    with pytest.raises(SystemExit, match=r"--device 'bogus' is not a device name.*cpu"):
        run(parser, *base, "--device", "bogus", "--out", tmp_path / "a")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for cmd in (base, ["upscale", "--checkpoint", missing, "--image", missing],
                ["inpaint", "--checkpoint", missing, "--image", missing, "--mask", missing]):
        with pytest.raises(SystemExit, match=r"--device cuda was asked for, but CUDA is not available"):
            run(parser, *cmd, "--device", "cuda", "--out", tmp_path / "a")
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_demo(tmp_path / "d", {"t2i": ckpts["t2i"], "inpaint": ckpts["inpaint"], "sr": ckpts["sr"]},
                 device="cuda")
    with pytest.raises(SystemExit, match=r"--seed 1180591620717411303424 is out of range"):
        run(parser, *base, "--seed", str(2**70), "--out", tmp_path / "a")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"--out .*file/sub cannot be written"):
        run(parser, *base, "--out", tmp_path / "file" / "sub")
    with pytest.raises(ValueError, match="--out .*file/sub cannot be written"):
        run_demo(tmp_path / "file" / "sub", {"t2i": ckpts["t2i"], "inpaint": ckpts["inpaint"], "sr": ckpts["sr"]})
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()
    with pytest.raises(GenerationError, match="out of range"):
        text_to_image(load_ldm(ckpts["t2i"])[0], PROMPTS, steps=1, seed=2**64)
