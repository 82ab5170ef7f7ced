"""The notebooks' toolkit: modes, exercise checks that fall back to the package, stepped hints, banned package\nanswers, grading specs, sealed blocks."""

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


def _cases(g):
    return [(int(v),) for v in torch.randint(-50, 50, (4,), generator=g)]


def test_a_passing_exercise_is_used_and_its_grading_spec_proves_it(capsys):
    lesson.setup("test", mode="FAST")
    mine = lambda x: x + x  # noqa: E731
    assert lesson.check("double", mine, _doubles, reference=reference) is mine
    assert "✅ double: correct." in capsys.readouterr().out
    spec = lesson.grading_spec("double", cases=_cases, reference=reference)
    assert spec.name == "double" and len(spec.cases(torch.Generator().manual_seed(1))) == 4
    with pytest.raises(AssertionError, match="expected"):  # a spec whose reference disagrees fails here, in the notebook
        lesson.grading_spec("double", cases=_cases, reference=lambda x: 3 * x)


def test_an_unsolved_exercise_falls_back_to_the_package_with_a_note_and_fails_its_spec(capsys):
    lesson.setup("test", mode="FAST")

    def stub(x):
        raise NotImplementedError()

    assert lesson.check("double", stub, _doubles, reference=reference, hints=["a nudge", "the formula"]) is reference
    out = capsys.readouterr().out
    assert "⏳ double: not done yet" in out and "(test_lesson.reference) instead" in out and "Hint" not in out
    with pytest.raises(AssertionError, match="not done yet"):
        lesson.grading_spec("double", cases=_cases, reference=reference)


def test_hints_come_in_steps_one_per_failed_attempt(capsys):
    lesson.setup("test", mode="FAST")
    for attempt in range(3):
        used = lesson.check("double", lambda x: x + 1, _doubles, reference=reference,
                            hints=["look at f(2)", "multiply by two"])
        out = capsys.readouterr().out
        assert used is reference
        assert "❌ double: AssertionError: f(2) returned 3, expected 4" in out
        assert ("Hint 1 of 2: look at f(2)" in out) == (attempt == 0)
        assert ("Hint 2 of 2: multiply by two" in out) == (attempt >= 1)
    with pytest.raises(AssertionError, match="f\\(2\\) returned 3"):
        lesson.grading_spec("double", cases=_cases, reference=reference)


def test_calling_the_banned_package_answer_is_named_in_the_self_check(capsys):
    from ldm_minimal.data.torch_datasets import image_to_tensor
    import numpy as np

    lesson.setup("test", mode="FAST")
    picture = np.zeros((2, 3, 3), dtype=np.uint8)

    def test(f):
        lesson.assert_close(f(picture), image_to_tensor(picture), "f(picture)")  # the test itself may use it

    used = lesson.check("to_model_range", lambda im: image_to_tensor(im), test, reference=image_to_tensor,
                        banned=["ldm_minimal.data.torch_datasets.image_to_tensor"])
    out = capsys.readouterr().out
    assert used is image_to_tensor
    assert "your code calls ldm_minimal.data.torch_datasets.image_to_tensor" in out
    assert "write your own implementation" in out
    assert image_to_tensor(picture).shape == (3, 2, 3)  # the ban ends with the check
    own = lambda im: torch.from_numpy(im.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1  # noqa: E731
    assert lesson.check("to_model_range", own, test, banned=["ldm_minimal.data.torch_datasets.image_to_tensor"]) is own


def test_a_sealed_block_runs_the_same_code_without_showing_it():
    from ldm_minimal.course.notebooks import seal, student_source

    source = "x = 1\n### BEGIN SEALED\ny = x + 41  # the hint: add 41\n### END SEALED\nz = y"
    plain = student_source(source, "code")
    assert plain == "x = 1\ny = x + 41  # the hint: add 41\nz = y"
    sealed = student_source(source, "code", assignment=True)
    assert "add 41" not in sealed and "BEGIN SEALED" not in sealed and sealed.startswith("x = 1\nexec(lesson.unseal(")
    scope = {"lesson": lesson}
    exec(sealed, scope)
    assert scope["z"] == 42
    assert lesson.unseal(seal("a = 2").split('"')[1]) == "a = 2"


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


def test_an_answer_that_reads_notebook_state_is_warned_before_grading(monkeypatch, capsys):
    lesson.setup("test", mode="FAST")
    monkeypatch.setattr(lesson, "_imported_names", lambda: {"torch"})  # as in a kernel whose cells imported torch
    scope = {"torch": torch, "offset": 1}
    exec("def helper(x):\n    return x\n\ndef double(x):\n    return helper(2 * x) + offset - 1\n\n"
         "def clean(x):\n    return helper(torch.tensor(2 * x)).item()", scope)
    assert lesson.check("double", scope["double"], _doubles) is scope["double"]
    out = capsys.readouterr().out
    assert "✅ double" in out and "double reads offset from this notebook" in out  # helper is in the same cell: fine
    lesson.check("clean", scope["clean"], _doubles)
    assert "reads" not in capsys.readouterr().out
