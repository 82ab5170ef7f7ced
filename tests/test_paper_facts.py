"""Every reference the course makes to the paper (Sec., Eq., Tab., Fig., App.) is listed in docs/paper-facts.md, where
each is checked against the paper's text (arXiv 2112.10752 v2) or the CompVis reference code."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACTS = REPO / "docs" / "paper-facts.md"
CITATION = re.compile(r"\b(Sec\.|Section|Eq\.|Tab\.|Table|Fig\.|Figure|App\.|Appendix)\s?([A-H](?:\.\d+)*|\d+(?:\.\d+)*)")
SHORT = {"Section": "Sec.", "Table": "Tab.", "Figure": "Fig.", "Appendix": "App."}
# a citation of another paper names it shortly before the reference (e.g. "Ho et al., Eq. 11", "VQGAN's Eq. 7")
OTHER_PAPER = re.compile(r"(et al\.?|VQGAN|DDIM|DDPM|DPM-Solver|Esser|Ho |Song |Nichol|Karras|Lu |Salimans|Heusel|"
                         r"Kynk|Dhariwal|Ramesh|Radford|CLIP|DALL|Zhang|Johnson|Isola|Rombach et|Saharia|Kingma)"
                         r"[^.;\n]{0,30}$")


def course_files() -> list[Path]:
    return [*sorted((REPO / "solutions").glob("*.ipynb")), *sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]


def text_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells)
    return path.read_text()


def citations(text: str) -> list[tuple[str, str]]:
    """(normalised reference, the 60 characters before it) for every citation of the paper in ``text``."""
    out = []
    for m in CITATION.finditer(text):
        before = text[max(0, m.start() - 60): m.start()]
        if OTHER_PAPER.search(before):
            continue
        out.append((f"{SHORT.get(m.group(1), m.group(1))} {m.group(2)}", before))
    return out


def listed() -> set[str]:
    rows = set()
    for line in FACTS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and CITATION.fullmatch(cells[0].strip("`")):
            m = CITATION.fullmatch(cells[0].strip("`"))
            rows.add(f"{SHORT.get(m.group(1), m.group(1))} {m.group(2)}")
    return rows


def test_paper_facts_lists_every_reference_the_course_makes():
    known = listed()
    assert len(known) >= 20, "docs/paper-facts.md should list the paper's sections, equations, tables and figures"
    missing = {}
    for path in course_files():
        if path == FACTS:
            continue
        for ref, _ in citations(text_of(path)):
            if ref not in known:
                missing.setdefault(ref, set()).add(path.name)
    assert not missing, "cited but not in docs/paper-facts.md: " + "; ".join(
        f"{ref} ({', '.join(sorted(files))})" for ref, files in sorted(missing.items()))


def test_every_listed_fact_says_how_it_was_verified():
    for line in FACTS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and CITATION.fullmatch(cells[0].strip("`")):
            assert len(cells) >= 4 and cells[-1], f"paper-facts row without a verification: {line}"
