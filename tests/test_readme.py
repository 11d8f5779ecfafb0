"""The README's promises name their tests: every row of the errno table and of the failure-behaviour
table, and every caching bullet, names at least one test (`file.py::test_name`), and every test it
names exists. (That each named test fails when its promise is broken was checked by changing the
code, one promise at a time: see the notes of issue 14.)"""

from __future__ import annotations

import ast
import re

from conftest import parse_python
from pathlib import Path

TESTS = Path(__file__).parent
README = (TESTS.parent / "README.md").read_text()
REFERENCE = re.compile(r"`(test_\w+\.py)::(test_\w+)`")


def section(title: str) -> str:
    start = README.index(title)
    return README[start:README.index("\n### ", start + 1)]


def defined_tests() -> set[tuple[str, str]]:
    found = set()
    for path in TESTS.glob("test_*.py"):
        for node in parse_python(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found.add((path.name, node.name))
    return found


def rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| situation")
            and not line.startswith("| what happens")]


def test_every_row_of_both_tables_names_a_test():
    for title in ("### Errors a program sees", "### Failure behaviour"):
        table = rows(section(title))
        assert len(table) >= 7, title
        unproved = [row[:80] for row in table if not REFERENCE.search(row.rsplit("|", 2)[-2])]
        assert unproved == [], f"{title}: rows without a test"


def test_every_caching_bullet_names_a_test():
    bullets = re.split(r"\n- ", section("### Caching and staleness"))[1:]
    assert len(bullets) >= 8
    unproved = [b[:60] for b in bullets if "*Proved by*" not in b or not REFERENCE.search(b.split("*Proved by*")[1])]
    assert unproved == []


def test_every_named_test_exists():
    named = set(REFERENCE.findall(README))
    assert len(named) > 40
    assert named - defined_tests() == set()
