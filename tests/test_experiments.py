"""Issue 5's experiment helpers: the held-out-pairs world, the scores the scripts compute, and docs/results.md."""

from __future__ import annotations

import json

import pytest
import torch

from ldm_minimal.data import shapes_preset
from ldm_minimal.data.shapes import COLOUR_NAMES, HELD_OUT_COMBOS, ShapesConfig, render_sample


def test_held_out_pairs_never_appear_and_other_pictures_are_unchanged():
    held, plain = shapes_preset("single32-heldout"), shapes_preset("single32")
    seen_combos, changed = set(), 0
    for i in range(1500):
        a, b = render_sample(i, held), render_sample(i, plain)
        o, p = a.objects[0], b.objects[0]
        seen_combos.add(f"{o.colour} {o.shape}")
        if f"{p.colour} {p.shape}" in HELD_OUT_COMBOS:
            changed += 1
            assert o.shape == p.shape and o.colour != p.colour and o.bbox == p.bbox  # only the colour moves
        else:
            assert a.caption == b.caption and (a.image == b.image).all()
    assert not seen_combos & set(HELD_OUT_COMBOS)
    assert len(seen_combos) == 40 - len(HELD_OUT_COMBOS)  # every other pair still occurs
    assert 100 < changed < 300  # 5 of 40 pairs: ~12.5% of the pictures
    with pytest.raises(ValueError, match="'colour shape'"):
        ShapesConfig(held_out=("star green",))
    with pytest.raises(ValueError, match="every colour"):
        ShapesConfig(held_out=tuple(f"{c} star" for c in COLOUR_NAMES))


def test_the_held_out_world_trains_at_32_and_its_substitute_colour_is_allowed():
    from ldm_minimal.experiments.text_encoder import prompt_sets, substitute
    from ldm_minimal.training import resolve_world, train_config

    assert resolve_world(train_config("cpu", "ldm", world="single32-heldout")) == ("single32-heldout", 32)
    sets = prompt_sets(6)
    held, seen = sets["held_out_pairs"], sets["seen_pairs"]
    assert all(f"{o['colour']} {o['shape']}" in HELD_OUT_COMBOS for o in held[1])
    assert not any(f"{o['colour']} {o['shape']}" in HELD_OUT_COMBOS for o in seen[1])
    for combo in HELD_OUT_COMBOS:
        colour, shape = combo.split()
        assert substitute(colour, shape) != colour and f"{substitute(colour, shape)} {shape}" not in HELD_OUT_COMBOS


def test_object_count_mean_fill_and_hole_psnr():
    from ldm_minimal.experiments.common import single_objects
    from ldm_minimal.experiments.high_resolution import count_objects
    from ldm_minimal.experiments.inpainting import hole_psnr, mean_fill

    x, _, _ = single_objects(16)
    assert count_objects(x) == [1] * 16
    blank = torch.full_like(x[:1], 0) + x[:1, :, :1, :1]  # the background colour everywhere
    assert count_objects(blank) == [0]
    blank[..., 2:8, 2:8] = -1.0
    blank[..., 20:28, 20:28] = -1.0
    assert count_objects(blank) == [2]
    m = torch.zeros(16, 1, 32, 32)
    m[:, :, 8:24, 8:24] = 1
    filled = mean_fill(x, m)
    assert torch.equal(filled * (1 - m), x * (1 - m))
    known_mean = (x * (1 - m)).sum(dim=(2, 3)) / (1 - m).sum(dim=(2, 3))  # (16, 3)
    assert torch.allclose(filled[:, :, 16, 16], known_mean, atol=1e-6)
    assert hole_psnr(filled, x, m) < hole_psnr(x + 0.01 * m, x, m)


def test_fid_at_equal_wall_time_takes_the_last_checkpoint_reached():
    from ldm_minimal.experiments.throughput import equal_wall_time

    curve = lambda pts: [{"train_elapsed_s": t, "fid": fid, "step": s} for t, fid, s in pts]  # noqa: E731
    rows = equal_wall_time({"models": [{"f": 1, "curve": curve([(100, 50.0, 10), (200, 40.0, 20)])},
                                       {"f": 4, "curve": curve([(30, 20.0, 10), (60, 10.0, 20), (150, 5.0, 30)])}]})
    assert rows == [{"wall_time_s": 100, "fid_f1": 50.0, "step_f1": 10, "fid_f4": 10.0, "step_f4": 20},
                    {"wall_time_s": 200, "fid_f1": 40.0, "step_f1": 20, "fid_f4": 5.0, "step_f4": 30}]


def test_features_are_standardised_to_unit_rms_on_the_real_set():
    from ldm_minimal.evaluation.attributes import load_attribute_classifier
    from ldm_minimal.experiments.common import single_objects
    from ldm_minimal.evaluation.metrics import feature_scale

    judge = load_attribute_classifier()
    x, _, _ = single_objects(64)
    s = feature_scale(judge, x)
    rms = float((judge.features(x) * s).pow(2).mean().sqrt())
    assert abs(rms - 1.0) < 1e-4 and s < 0.5  # the raw features are far larger than 1


def test_results_page_is_generated_from_the_committed_json():
    from ldm_minimal.experiments import report
    from ldm_minimal.experiments.common import RESULTS_DIR
    from ldm_minimal.utils import REPO_ROOT

    page = (REPO_ROOT / "docs" / "results.md").read_text()
    assert page == report.build(RESULTS_DIR), "docs/results.md is stale: run python -m ldm_minimal.experiments.report"
    for name, _, _ in report.EXPERIMENTS:  # every experiment has its numbers, and every verdict is a real one
        r = json.loads((RESULTS_DIR / f"{name}.json").read_text())
        assert r["machine"] and r["wall_time_s"] > 0 and r["command"].startswith("python -m ldm_minimal.experiments.")
    assert f"**{report.MISSING}**" not in page and "Not run yet" not in page
