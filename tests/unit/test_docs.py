"""The README and docs/ name only files that exist: every relative link and every path in
backticks that starts at a folder of the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Paths are checked when they start at one of the repository's own folders; generated folders
# (outputs/, runs/, data/) and placeholders (<run>, *) are not files of the checkout.
TOP = ("cgsgan/", "orchestration/", "sweeps/", "infra/", "benchmarks/", "tests/", "docs/", "scripts/", ".ci/")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
CODE = re.compile(r"`([^`\s]+)`")


def named_paths(page: Path) -> list[tuple[str, Path]]:
    """(as written, resolved) for each relative link and each repository path in backticks."""
    text = page.read_text()
    found = []
    for target in LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        found.append((target, (page.parent / target).resolve()))
    for token in CODE.findall(text):
        token = token.rstrip(".,:;)")
        if not token.startswith(TOP) or any(c in token for c in "<>*{}$"):
            continue
        found.append((token, (ROOT / token.split("::")[0]).resolve()))
    return found


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move details to a docs/ page"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_file_exists(page: Path):
    missing = sorted({written for written, path in named_paths(page) if not path.exists()})
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"


def test_the_checker_sees_a_missing_file(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("See [a](nothing-here.md) and `cgsgan/no_such_module.py`, not `outputs/x`.\n")
    written = [w for w, p in named_paths(page) if not p.exists()]
    assert written == ["nothing-here.md", "cgsgan/no_such_module.py"]
