"""The README and docs/ stand alone: no contract files, seed files or issue numbers a user does not have,
no paths into the repository that do not exist, no links that go nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# What only the project's makers have: the contract, its sections, the seed apps, issue numbers.
OUTSIDE = [
    (re.compile(r"\bSPEC\b|SPEC\.md|§"), "the product contract"),
    (re.compile(r"\bseeds?\b(?![_-])|seeds/", re.I), "a seed file"),  # (seed-reference: a bench system)
    (re.compile(r"\bissues? #?\d+|(?<![\w&/])#\d+\b", re.I), "an issue number"),
    (re.compile(r"\bshared/|/work/"), "a path outside the repository"),
]
REPO_PATH = re.compile(r"`((?:src|tests|examples|docs|deploy|bench)/[\w./-]*\w)`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def without_code_names(text: str) -> str:
    # a test file may be named for what it replays (tests/test_seed_presence_locks.py); names are not references
    return re.sub(r"`tests/[\w/.]+`", "`tests/…`", text)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_cites_nothing_outside_the_repository(page: Path) -> None:
    text = without_code_names(page.read_text())
    for line_no, line in enumerate(text.splitlines(), 1):
        for pattern, what in OUTSIDE:
            match = pattern.search(line)
            assert match is None, f"{page.relative_to(ROOT)}:{line_no} refers to {what} ({match.group(0)!r}): {line.strip()}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_paths_and_links_exist(page: Path) -> None:
    text = page.read_text()
    for path in REPO_PATH.findall(text):
        if any(c in path for c in "*{<"):
            continue
        assert (ROOT / path).exists(), f"{page.relative_to(ROOT)} names {path}, which is not in the repository"
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


def test_license_and_python_version_are_stated() -> None:
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "3.11" in readme and "venv" in readme


def test_first_look_does_not_start_a_second_server() -> None:
    """The set-up command already runs `tether serve` on the default port; the first look uses it."""
    readme = (ROOT / "README.md").read_text()
    first_look = readme.split("## A first look", 1)[1].split("\n## ", 1)[0]
    assert "tether serve" not in first_look


def test_one_command_runs_the_whole_suite_and_ci_runs_it() -> None:
    readme = (ROOT / "README.md").read_text()
    script = (ROOT / "scripts" / "test").read_text()
    assert "\n    scripts/test\n" in readme
    assert "exec scripts/test" in (ROOT / ".ci" / "run").read_text()
    assert all(step in script for step in ("clients/js web", "npm ci", "npm test", "python -m pytest -n 2"))


def test_source_cites_no_contract_or_seed_file() -> None:
    """Docstrings and comments are read by users too (help(), an IDE): they say the thing itself."""
    outside = re.compile(r"\bSPEC\b|SPEC\.md|\bseeds?/|[\w-]+-ios\.md|\bthe seed's\b|\(seed\b")
    for path in sorted([*(ROOT / "src" / "tether").rglob("*.py"), *(ROOT / "examples").glob("*.py")]):
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            match = outside.search(line)
            assert match is None, f"{path.relative_to(ROOT)}:{line_no} cites {match.group(0)!r}: {line.strip()}"
