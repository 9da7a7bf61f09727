"""README.md and docs/*.md hold together: every relative link reaches a file (and its anchor reaches a heading),
every docs page is in README's map, and README's two fresh-machine commands are the ones CI runs."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = ("http://", "https://", "mailto:", "file://")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines of a markdown text outside fenced code blocks, with their 1-based numbers."""
    lines, in_fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation and symbols dropped, each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    kept = (c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, repeated headings numbered as GitHub does (-1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path) -> list[str]:
    """Each relative link of a markdown file whose file, or whose anchor in a markdown file, does not exist."""
    problems = []
    for number, line in prose_lines(path.read_text()):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if target.startswith(EXTERNAL):
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{number}: {target}"
            if not resolved.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where} (no heading with that anchor in {resolved.name})")
    return problems


def markdown_files() -> list[Path]:
    return [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_reaches_a_file_and_heading(path):
    assert broken_links(path) == []


def test_the_checker_finds_a_missing_file_a_missing_anchor_and_skips_code(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## Sides: which `direction` fails\n\n## Repeat\n\n## Repeat\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#sides-which-direction-fails) [ok](other.md#repeat-1) [ok](#local) [web](https://x.org/y)\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) `[in code](missing.md)`\n"
        "## Local\n```\n[in a fence](missing.md)\n```\n"
    )
    assert [p.split(": ", 1)[1] for p in broken_links(page)] == [
        "missing.md (no such file)",
        "other.md#nowhere (no heading with that anchor in other.md)",
    ]
    assert slug("Reward ↔ drift: from how many saved steps (n = 7)") == "reward--drift-from-how-many-saved-steps-n--7"


def test_every_docs_page_is_in_readmes_map():
    readme = (REPO / "README.md").read_text()
    mapped = set(re.findall(r"^\| \[docs/([^\]]+\.md)\]\(docs/\1\) \| .+ \|$", readme, flags=re.M))
    assert mapped == {p.name for p in (REPO / "docs").glob("*.md")}


def test_readmes_fresh_machine_commands_are_what_ci_runs():
    readme_lines = (REPO / "README.md").read_text().splitlines()
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert "bash scripts/install.sh && python -m pytest" in readme_lines
    assert "bash scripts/install.sh && python -m pytest" in ci_lines
    assert "bash scripts/install.sh && drift-suite demo" in readme_lines
