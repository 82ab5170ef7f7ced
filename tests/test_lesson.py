"""The notebooks' toolkit: modes, exercise checks that fall back to the package, hidden tests for the grader."""

from __future__ import annotations

import pytest
import torch

from ldm_minimal.course import lesson


def _doubles(f):
    assert f(2) == 4, f"f(2) returned {f(2)!r}, expected 4"


def reference(x):
    return 2 * x


def test_mode_comes_from_the_environment_and_bad_values_are_named(monkeypatch):
    monkeypatch.setenv("LDM_COURSE_MODE", "full")
    assert lesson.default_mode() == "FULL"
    monkeypatch.setenv("LDM_COURSE_MODE", "fastest")
    with pytest.raises(ValueError, match="LDM_COURSE_MODE='FASTEST' is not a mode; use one of FAST, FULL"):
        lesson.default_mode()
    monkeypatch.delenv("LDM_COURSE_MODE")
    assert lesson.default_mode() == ("FULL" if torch.cuda.is_available() else "FAST")


def test_setup_picks_fast_or_full_values(monkeypatch, capsys):
    L = lesson.setup("test", mode="fast")
    assert L.fast and L.pick(fast=1, full=2) == 1 and "mode FAST" in capsys.readouterr().out
    assert lesson.setup("test", mode="FULL").pick(fast=1, full=2) == 2
    L.finish()
    assert set(L.times) == {"wall_s", "cpu_s"} and "ran in" in capsys.readouterr().out


def test_a_passing_exercise_is_used_and_its_hidden_test_runs(capsys):
    lesson.setup("test", mode="FAST")
    mine = lambda x: x + x  # noqa: E731
    assert lesson.check("double", mine, _doubles, reference=reference) is mine
    assert "✅ double: correct." in capsys.readouterr().out
    lesson.hidden_test("double", lambda f: None)
    with pytest.raises(AssertionError, match="negative"):
        lesson.hidden_test("double", lambda f: (_ for _ in ()).throw(AssertionError("negative numbers")))


def test_an_unsolved_exercise_falls_back_to_the_package_with_a_note_and_fails_its_hidden_test(capsys):
    lesson.setup("test", mode="FAST")

    def stub(x):
        raise NotImplementedError()

    assert lesson.check("double", stub, _doubles, reference=reference, hint="multiply") is reference
    out = capsys.readouterr().out
    assert "⏳ double: not done yet" in out and "(test_lesson.reference) instead" in out and "Hint" not in out
    with pytest.raises(AssertionError, match="not done yet"):
        lesson.hidden_test("double")


def test_a_wrong_exercise_gets_the_error_and_the_hint(capsys):
    lesson.setup("test", mode="FAST")
    used = lesson.check("double", lambda x: x + 1, _doubles, reference=reference, hint="multiply by two")
    out = capsys.readouterr().out
    assert used is reference
    assert "❌ double: AssertionError: f(2) returned 3, expected 4" in out and "Hint: multiply by two" in out
    with pytest.raises(AssertionError, match="f\\(2\\) returned 3"):
        lesson.hidden_test("double")
    with pytest.raises(AssertionError, match="was never checked"):
        lesson.hidden_test("triple")


def test_assert_close_names_shape_and_value_problems():
    with pytest.raises(AssertionError, match=r"x: shape \(2,\), expected \(3,\)"):
        lesson.assert_close(torch.zeros(2), torch.zeros(3), "x")
    with pytest.raises(AssertionError, match="largest difference 0.5"):
        lesson.assert_close(torch.zeros(2), torch.tensor([0.0, 0.5]), "x")
    with pytest.raises(AssertionError, match="expected a torch.Tensor, got list"):
        lesson.assert_close([0.0], torch.zeros(1), "x")


def test_shipped_checkpoints_load_and_a_wrong_name_lists_the_real_ones():
    model, meta = lesson.load_shipped("shapes32-kl-f4")
    assert not model.training and meta
    with pytest.raises(FileNotFoundError, match="shapes32-kl-f4"):
        lesson.shipped("shapes32-kl-f8")


def test_picture_helpers_draw_rows_of_equal_height(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "show", lambda: figures.append(plt.gcf()))
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    lesson.show_rows([("eight", x), ("one", x[:1])], title="rows")
    heights = [ax.get_position().height for ax in figures[-1].axes]
    assert len(heights) == 2 and abs(heights[0] - heights[1]) < 1e-6, "a row of one picture is as tall as a row of eight"
    lesson.show_images(x, nrow=4, title="grid")
    lesson.plot_curves({"loss": [1.0, 0.5, 0.25]}, logy=True)
    assert len(figures) == 3
    plt.close("all")
