"""What every course notebook shares: the FAST/FULL setting, exercise checks with a fallback, pictures.

A notebook starts with::

    from ldm_minimal.course import lesson
    L = lesson.setup("05 DDPM from scratch")      # prints torch, device, mode; seeds everything

and then uses

- ``L.fast`` / ``L.pick(fast=300, full=20_000)``: the FAST setting (default without a GPU: the notebook runs in
  about a minute on 2 CPU cores) or the FULL one (default with a GPU: trains to the shipped quality). Choose
  with the environment variable ``LDM_COURSE_MODE=FAST|FULL`` before starting Jupyter.
- ``lesson.check(name, your_function, test, reference=..., hints=[...], banned=[...])`` right after an exercise:
  runs a visible test with the package's own answer (``banned``) switched off, prints a helpful message and the
  next hint when it fails, and returns the function the rest of the notebook should use: yours when it passes,
  else the package's ``reference`` with a visible note, so one unsolved exercise never stops the later cells.
- ``lesson.grading_spec(name, cases=..., reference=...)`` inside an nbgrader ``### BEGIN HIDDEN TESTS`` block:
  how the grader (``python -m ldm_minimal grade``) grades the exercise, from cases it draws at grading time.
- ``lesson.show_images``, ``lesson.show_rows``, ``lesson.plot_curves`` for pictures, and
  ``lesson.load_shipped(name)`` for the small checkpoints under ``data/checkpoints/``.
- ``L.finish()`` as the last cell: prints the notebook's wall time and CPU time.
"""

from __future__ import annotations

import ast
import base64
import builtins
import dis
import functools
import os
import platform
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FunctionType
from typing import Any, Callable, Sequence

import torch

from ldm_minimal import __version__
from ldm_minimal.course import exercise
from ldm_minimal.image_io import image_grid
from ldm_minimal.latent_diffusion_io import load_model
from ldm_minimal.utils import REPO_ROOT, autocast, seed_everything

MODES = ("FAST", "FULL")
CHECKPOINTS = REPO_ROOT / "data" / "checkpoints"

# name -> {"status": "passed" | "todo" | "wrong", "submitted": the learner's object, "message": str}
RESULTS: dict[str, dict[str, Any]] = {}


def default_mode() -> str:
    """FAST without a GPU, FULL with one; ``LDM_COURSE_MODE`` overrides both."""
    mode = os.environ.get("LDM_COURSE_MODE", "").strip().upper()
    if mode and mode not in MODES:
        raise ValueError(f"LDM_COURSE_MODE={mode!r} is not a mode; use one of {', '.join(MODES)} (or leave it unset).")
    return mode or ("FULL" if torch.cuda.is_available() else "FAST")


@dataclass
class Lesson:
    """The settings of one notebook run (made by :func:`setup`)."""

    title: str
    mode: str
    device: torch.device
    seed: int
    started: float = field(default_factory=time.perf_counter)
    cpu_started: float = field(default_factory=time.process_time)
    times: dict[str, float] = field(default_factory=dict)

    @property
    def fast(self) -> bool:
        return self.mode == "FAST"

    def pick(self, fast: Any, full: Any) -> Any:
        """The FAST value or the FULL one, by the current mode."""
        return fast if self.fast else full

    def autocast(self):
        """bf16 autocast on CUDA, a no-op on CPU (``with L.autocast(): ...``)."""
        return autocast(self.device)

    def generator(self, seed: int | None = None) -> torch.Generator:
        """A CPU generator (sampling noise is drawn on the CPU, so FAST and FULL runs draw the same noise)."""
        return torch.Generator().manual_seed(self.seed if seed is None else seed)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def finish(self) -> None:
        """Print this notebook's wall time and CPU time so far (kept in ``self.times``)."""
        wall, cpu = self.elapsed(), time.process_time() - self.cpu_started
        self.times = {"wall_s": wall, "cpu_s": cpu}
        print(f"'{self.title}' ran in {wall:.1f} s wall time ({cpu:.1f} s CPU) in {self.mode} mode on {self.device}.")


def _inline_figures() -> None:
    """In a Jupyter kernel, draw figures inline even where MPLBACKEND says otherwise (CI sets it to Agg, which the
    kernels of nbval and of a test-started JupyterLab inherit: the figures would silently not be drawn)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        shell.run_line_magic("matplotlib", "inline")


def setup(title: str, seed: int = 0, mode: str | None = None, device: str | torch.device | None = None) -> Lesson:
    """Seed everything, pick the mode and device, set plotting defaults, and print what was chosen."""
    mode = (mode or default_mode()).upper()
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a mode; use one of {', '.join(MODES)}.")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = os.environ.get("LDM_COURSE_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    seed_everything(seed)
    RESULTS.clear()
    _inline_figures()
    import matplotlib as mpl

    mpl.rcParams.update({"figure.dpi": 100, "axes.grid": False, "image.interpolation": "nearest"})
    lesson = Lesson(title=title, mode=mode, device=torch.device(device), seed=seed)
    other = "FULL" if mode == "FAST" else "FAST"
    print(f"{title}\n  ldm_minimal {__version__} · torch {torch.__version__} · python {platform.python_version()}"
          f" · device {lesson.device} · {torch.get_num_threads()} CPU threads")
    print(f"  mode {mode} (set LDM_COURSE_MODE={other} before starting Jupyter for the other one) · seed {seed}")
    return lesson


# ---------------------------------------------------------------------------------------------------------
# exercises


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
    return f"{module}.{name}" if module and module != "__main__" else str(name)


def _guarded(fn: Any, banned: list[str]) -> Any:
    """``fn`` with the banned symbols raising DelegationError while it runs; for a class, a subclass whose own
    methods run with the bans (so a test may still use the package outside the answer's code)."""
    if not banned:
        return fn
    if isinstance(fn, type):
        own = {name: _guarded(attr, banned) for name, attr in vars(fn).items() if isinstance(attr, FunctionType)}
        return type(fn.__name__, (fn,), {**own, "__qualname__": fn.__qualname__, "__module__": fn.__module__})

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        with exercise.banned_symbols(banned):
            return fn(*args, **kwargs)

    return guarded


def _imported_names() -> set[str] | None:
    """Names bound by the top-level imports of every cell run so far in this Jupyter kernel (None outside one)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or "In" not in shell.user_ns:
        return None
    names: set[str] = set()
    for source in shell.user_ns["In"]:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names |= {a.asname or a.name for a in node.names}
    return names


def _globals_read(code: CodeType) -> set[str]:
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _globals_read(const)
    return names


def notebook_state_read(answer: Any, answer_name: str) -> list[str]:
    """The notebook variables ``answer`` reads that the grader will not have: it runs an answer cell with only the
    notebook's imports and the earlier answers. Empty outside a Jupyter kernel (nothing to compare with)."""
    imported = _imported_names()
    functions = exercise.functions_of(answer)
    if imported is None or not functions:
        return []
    scope, home = functions[0].__globals__, functions[0].__code__.co_filename
    allowed = imported | set(RESULTS) | {answer_name} | set(dir(builtins))
    flagged = set()
    for fn in functions:
        for name in _globals_read(fn.__code__) - allowed:
            value = scope.get(name)
            if name not in scope:
                continue  # undefined here too: the check itself shows that
            same_cell = getattr(getattr(value, "__code__", None), "co_filename", None) == home or (
                isinstance(value, type) and any(f.__code__.co_filename == home for f in exercise.functions_of(value)))
            if not same_cell:
                flagged.add(name)
    return sorted(flagged)


def check(name: str, submitted: Any, test: Callable[[Any], Any], reference: Any = None,
          hints: str | Sequence[str] = (), banned: Sequence[str] = (), hint: str = "") -> Any:
    """Run ``test(submitted)`` and say how the exercise ``name`` went; return what later cells should use.

    ``test`` raises (usually ``AssertionError`` with a message) when ``submitted`` is wrong. A stub that still
    raises ``NotImplementedError`` counts as "not done yet". While the test runs, the package symbols in ``banned``
    (the package's own answer) raise :class:`~ldm_minimal.course.exercise.DelegationError`: an answer that calls
    them is told to write its own implementation, exactly as the grader will tell it. ``hints`` come in steps: the
    first after the first failed attempt, the next after the next one. When the test does not pass, ``reference``
    (the package's own implementation) is returned, with a note saying so, so the rest of the notebook still runs.
    """
    steps = [hints] if isinstance(hints, str) else list(hints)
    steps += [hint] if hint else []
    try:
        if callable(submitted):
            test(_guarded(submitted, list(banned)))  # the bans hold while the answer runs, not the test's own code
        else:
            with exercise.banned_symbols(list(banned)):
                test(submitted)
    except NotImplementedError:
        status, message = "todo", "not done yet (the stub still raises NotImplementedError)"
    except exercise.DelegationError as err:
        status, message = "wrong", (f"your code calls {err.symbol}, the package's own answer to this exercise: "
                                    f"{exercise.DELEGATION_FEEDBACK}")
    except Exception as err:  # a wrong answer can fail in any way; we report it and carry on
        status = "wrong"
        frames = traceback.extract_tb(err.__traceback__)
        where = f" (line {frames[-1].lineno} of {frames[-1].name})" if frames else ""
        message = f"{type(err).__name__}: {err}{where}"
    else:
        status, message = "passed", "correct"
    state = notebook_state_read(submitted, name) if status != "todo" else []
    if state:
        print(f"⚠️  {name} reads {', '.join(state)} from this notebook. The grader runs each answer cell with only the "
              "notebook's imports and your earlier answers, so there it would be undefined: pass it in as an argument, "
              "import it, or compute it inside your answer.")
    attempts = RESULTS.get(name, {}).get("failures", 0) + (status == "wrong")
    RESULTS[name] = {"status": status, "submitted": submitted, "message": message, "failures": attempts}
    if status == "passed":
        print(f"✅ {name}: {message}.")
        return submitted
    mark = "⏳" if status == "todo" else "❌"
    print(f"{mark} {name}: {message}.")
    if steps and status == "wrong":
        step = min(attempts, len(steps))
        print(f"   Hint {step} of {len(steps)}: {steps[step - 1]}"
              + ("  (run the check again after your next try for the next hint)" if step < len(steps) else ""))
    if reference is not None:
        print(f"   The rest of this notebook uses the package's implementation ({_qualname(reference)}) instead, so you "
              "can run on; "
              "fix your answer and run the exercise and this cell again to use yours.")
        return reference
    print("   (No fallback for this one: the cells that use it will show the problem too.)")
    return submitted


def grading_spec(name: str, cases: Callable[[torch.Generator], list[tuple]], reference: Any,
                 probe: Callable[..., Any] | None = None, compare: Callable[[Any, Any], None] | None = None,
                 atol: float = 1e-5, rtol: float = 1e-4, exact_dtype: bool = False,
                 fallback: Any = None) -> exercise.Spec:
    """The grader's spec of exercise ``name`` (it sits in a hidden-test block; see ``course/exercise.py``).

    In a notebook where the exercise was checked, the spec also runs here, on a fixed seed, against the answer the
    check kept, and raises when the answer fails it: a solution notebook proves its own specs when it runs.
    """
    spec = exercise.register(exercise.Spec(name=name, cases=cases, reference=reference,
                                           probe=probe or exercise.call_answer, compare=compare, atol=atol, rtol=rtol,
                                           exact_dtype=exact_dtype, fallback=fallback))
    if name in RESULTS:
        result = RESULTS[name]
        if result["status"] != "passed":
            raise AssertionError(f"exercise {name!r}: {result['message']}")
        g = torch.Generator().manual_seed(0)
        for case in spec.cases(g):
            want = exercise.run_probe(spec.probe, spec.reference, exercise.round_trip(tuple(case)))
            got = exercise.run_probe(spec.probe, result["submitted"], exercise.round_trip(tuple(case)))
            spec.check(exercise.round_trip(got), exercise.round_trip(want))
    return spec


def unseal(packed: str) -> str:
    """The code of a sealed block of an assignment notebook (see ``course/notebooks.py``), to ``exec``."""
    return zlib.decompress(base64.b64decode(packed)).decode("utf-8")


def summary() -> None:
    """One line per exercise checked so far in this notebook."""
    if not RESULTS:
        print("No exercises checked yet.")
    for name, result in RESULTS.items():
        mark = {"passed": "✅", "todo": "⏳", "wrong": "❌"}[result["status"]]
        print(f"{mark} {name}: {result['message']}")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """An AssertionError that names the tensor, the shapes and the largest difference (for exercise tests)."""
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(actual).__name__}")
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    actual = actual.detach().float().cpu()
    expected = expected.detach().float().cpu()
    if not torch.allclose(actual, expected, atol=atol, rtol=rtol):
        diff = (actual - expected).abs().max().item()
        raise AssertionError(f"{what}: values differ from the expected ones (largest difference {diff:.3g})")


# ---------------------------------------------------------------------------------------------------------
# pictures


def _plt():
    import matplotlib.pyplot as plt

    return plt


def show_images(x: torch.Tensor, nrow: int = 8, title: str | None = None, scale: float = 1.0, ax: Any = None) -> None:
    """Show a batch (B, C, H, W) in [-1, 1] as one grid (on ``ax`` when given, else in a figure of its own)."""
    plt = _plt()
    grid = image_grid(x.detach().float().cpu(), nrow=nrow)
    own = ax is None
    if own:
        h, w = grid.shape[:2]
        _, ax = plt.subplots(figsize=(max(2.0, scale * w / 40), max(1.5, scale * h / 40)))
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray" if grid.shape[-1] == 1 else None)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    if own:
        plt.show()


def show_rows(rows: Sequence[tuple[str, torch.Tensor]], title: str | None = None, scale: float = 1.0) -> None:
    """One labelled row of pictures per (label, images (B, C, H, W) in [-1, 1]); labels sit left of the rows.

    Every picture is drawn at the same size, so a row of one picture is as tall as a row of eight."""
    plt = _plt()
    n = max(r[1].shape[0] for r in rows)
    grids = [image_grid(images.detach().float().cpu(), nrow=n) for _, images in rows]
    label_in = 0.075 * max(len(label) for label, _ in rows) + 0.1  # inches of text at fontsize 9
    inch_per_px = scale * 0.9 * n / max(g.shape[1] for g in grids)  # the widest row spans 0.9 * scale inches a picture
    gap, title_h = 0.08, (0.35 if title else 0.05)
    heights = [g.shape[0] * inch_per_px for g in grids]
    fig_w = label_in + max(g.shape[1] for g in grids) * inch_per_px
    fig_h = title_h + sum(heights) + gap * (len(rows) - 1)
    fig = plt.figure(figsize=(fig_w, fig_h))
    top = fig_h - title_h
    for (label, _), grid, h in zip(rows, grids, heights):
        top -= h
        ax = fig.add_axes((label_in / fig_w, top / fig_h, grid.shape[1] * inch_per_px / fig_w, h / fig_h))
        top -= gap
        ax.imshow(grid)
        ax.set_axis_off()
        ax.text(-0.01, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, y=1 - 0.05 / fig_h, va="top")
    plt.show()


def plot_curves(curves: dict[str, Sequence[float]], title: str = "", xlabel: str = "step", ylabel: str = "loss",
                logy: bool = False, smooth: int = 1) -> None:
    """Line plot of named series (a moving average over ``smooth`` points when smooth > 1)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, values in curves.items():
        v = torch.as_tensor(list(values), dtype=torch.float64)
        if smooth > 1 and len(v) >= smooth:
            v = torch.nn.functional.avg_pool1d(v[None, None], smooth, stride=1)[0, 0]
        ax.plot(range(len(v)), v.tolist(), label=name)
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    plt.show()


# ---------------------------------------------------------------------------------------------------------
# shipped checkpoints


def shipped(name: str) -> Path:
    """Path of a shipped checkpoint by name (``"shapes32-t2i"`` or ``"shapes32-t2i.safetensors"``)."""
    file = name if name.endswith(".safetensors") else f"{name}.safetensors"
    path = CHECKPOINTS / file
    if not path.exists():
        have = sorted(p.stem for p in CHECKPOINTS.glob("*.safetensors"))
        raise FileNotFoundError(f"no shipped checkpoint {name!r} under {CHECKPOINTS}; the shipped ones are: "
                                f"{', '.join(have)}. (In a fresh clone they are all there; git-lfs is not needed.)")
    return path


def load_shipped(name: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a shipped autoencoder or latent diffusion model in eval mode: ``(model, metadata)``."""
    model, meta = load_model(shipped(name), device=device)
    return model.eval(), meta
