"""The course's Korean uses one term per concept: the table "One term per concept" in docs/glossary.md, checked in
every notebook's Korean text (summaries, takeaways, discussion questions) and in the glossary itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GLOSSARY = REPO / "docs" / "glossary.md"
HANGUL = re.compile(r"[\uac00-\ud7a3]")


def policy() -> list[tuple[str, str, list[str]]]:
    """(concept, chosen term as first written, [phrases never used]) from the glossary's table."""
    text = GLOSSARY.read_text()
    table = text.split("## One term per concept", 1)[1]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("concept", "---") and not set(cells[0]) <= {"-"}:
            rows.append((cells[0], cells[1], [p.strip() for p in cells[2].split(",") if p.strip()]))
    return rows


def korean_text(nb: dict) -> str:
    """Every line of every markdown cell that holds Hangul."""
    lines = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            lines += [line for line in source.splitlines() if HANGUL.search(line)]
    return "\n".join(lines)


def test_the_policy_table_is_there_and_complete():
    rows = policy()
    assert len(rows) >= 15
    chosen = " ".join(r[1] for r in rows)
    for term in ("타임스텝", "규제", "크로스 어텐션", "조건화", "강좌", "이미지", "노이즈", "바운딩 박스", "시맨틱 맵"):
        assert term in chosen, f"the glossary's policy has no row choosing {term}"


def test_the_glossary_itself_uses_the_chosen_terms():
    body = GLOSSARY.read_text().split("## One term per concept", 1)[0]
    for concept, _, avoid in policy():
        for phrase in avoid:
            assert phrase not in body, f"glossary: {phrase!r} ({concept}); use the chosen term"


@pytest.mark.parametrize("path", sorted((REPO / "solutions").glob("*.ipynb")), ids=lambda p: p.stem)
def test_each_notebook_uses_one_korean_term_per_concept(path):
    text = korean_text(json.loads(path.read_text()))
    assert text, f"{path.name} has no Korean text"
    problems = []
    for concept, chosen, avoid in policy():
        for phrase in avoid:
            for m in re.finditer(re.escape(phrase), text):
                around = text[max(0, m.start() - 20): m.end() + 20].replace("\n", " ")
                problems.append(f"{phrase!r} for {concept} (use {chosen.split('(')[0]}): ...{around}...")
        base = chosen.split("(")[0]
        if "(" in chosen and base in text:
            first = text.index(base)
            assert text[first + len(base): first + len(base) + 1] == "(", \
                f"{path.name}: the first {base!r} should carry its English, as {chosen!r}"
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", sorted((REPO / "solutions").glob("*.ipynb")), ids=lambda p: p.stem)
def test_each_notebook_has_its_takeaways_and_questions_in_korean(path):
    nb = json.loads(path.read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    for heading in ("핵심 정리", "토론 질문"):
        m = re.search(rf"^#+ .*{heading}.*$", text, re.M)
        assert m, f"{path.name}: no '{heading}' heading (the Korean takeaways / discussion questions)"
        section = text[m.end():].split("\n#", 1)[0]
        assert len(HANGUL.findall(section)) > 40, f"{path.name}: the '{heading}' section is nearly empty"
