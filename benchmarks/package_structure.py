"""The package's shape, read from the source with ``ast`` (nothing is imported): the figures of issue 15's
before/after table.

    python benchmarks/package_structure.py                      # this checkout -> JSON on stdout
    python benchmarks/package_structure.py /path/to/other/clone # e.g. a worktree of an older commit

Counted: Python files and lines under ldm_minimal/, files at the top level, the sub-packages, the largest files and
how many exceed 500 lines, import statements inside functions (all, and those of ldm_minimal modules), private
names (``_x``) imported from another module of the package, and import cycles among the package's modules counting
imports inside functions too (a cycle hidden behind a lazy import is still a cycle; a sub-module importing its own
package is not counted). ``tests/test_layout.py`` enforces the rules these figures describe.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(name: str, path: Path) -> list[tuple[str, list[str], bool]]:
    """(target module, imported names, inside a function) for each import statement of a module."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, list[str], bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, [], in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                out.append((target, [a.name for a in child.names], in_function))
            visit(child, inside)

    visit(tree, False)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def measure(repo: Path) -> dict:
    package = repo / "ldm_minimal"
    modules = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    in_function = in_function_package = private = 0
    for m, path in modules.items():
        for target, names, inside in imports(m, path):
            in_function += inside
            if not target.startswith("ldm_minimal"):
                continue
            in_function_package += inside
            private += sum(1 for n in names if n.startswith("_") and not n.startswith("__"))
            for t in [f"{target}.{n}" for n in names if f"{target}.{n}" in modules] or [target]:
                if t in graph and t != m and not m.startswith(t + "."):
                    graph[m].add(t)
    lines = {m: len(p.read_text().splitlines()) for m, p in modules.items()}
    return {
        "files": len(modules),
        "lines": sum(lines.values()),
        "mean_lines_per_file": round(sum(lines.values()) / len(lines)),
        "files_at_top_level": sum(1 for p in modules.values() if p.parent == package),
        "subpackages": sorted({m.split(".")[1] for m, p in modules.items() if p.parent != package}),
        "largest_files": sorted(lines.items(), key=lambda kv: -kv[1])[:5],
        "files_over_500_lines": sum(1 for n in lines.values() if n > 500),
        "imports_inside_functions": in_function,
        "of_which_ldm_minimal_modules": in_function_package,
        "private_names_imported_across_modules": private,
        "import_cycles_counting_lazy_imports": cycles(graph),
    }


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT), indent=1))
