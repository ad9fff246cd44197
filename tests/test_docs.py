"""The README is a front door of at most 200 lines, and every relative link of the documentation leads somewhere.

Checked files: README.md, docs/*.md and experiments/README.md. A relative link must name an existing file or
folder; a ``#fragment`` into a Markdown file must name one of its headings, as GitHub makes heading anchors.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "experiments" / "README.md", *(ROOT / "docs").glob("*.md")])
README_MAX_LINES = 200

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target); group 1: the target
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def links(text: str) -> list[str]:
    """Link targets of a Markdown text, outside code blocks and code spans (a span may be a link's text)."""
    text = FENCE.sub("", text)
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`").replace("](", "] ("), text)
    return LINK.findall(text)


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def test_anchors_follow_githubs_rule():
    text = "# The main job's regime (2026-12-02): DATE, `x=1`\n## Data\n## Data\n```\n# not a heading\n```\n"
    assert anchors(text) == {"the-main-jobs-regime-2026-12-02-date-x1", "data", "data-1"}


def test_links_skip_code_and_keep_code_spans_as_link_text():
    text = "[`a/`](a/README.md) `[x](no.md)` ![f](f.png)\n```\n[y](nor.md)\n```\n[z](https://x.org) [w](#h)"
    assert links(text) == ["a/README.md", "f.png", "https://x.org", "#h"]


def test_the_checked_documents_exist():
    assert (ROOT / "README.md") in DOCUMENTS and (ROOT / "experiments" / "README.md").is_file()
    assert [p.name for p in DOCUMENTS if p.parent.name == "docs"], "docs/ holds no Markdown file"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(document):
    broken = []
    for target in links(document.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not a file of this repository
            continue
        path, _, fragment = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{target} (no heading #{fragment} in {linked.relative_to(ROOT)})")
    assert not broken, f"{document.relative_to(ROOT)}: broken links: " + "; ".join(broken)


def test_readme_is_a_front_door_of_at_most_200_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; depth goes to docs/*.md"


def test_every_page_of_docs_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links((ROOT / "README.md").read_text())}
    unlinked = [p.name for p in DOCUMENTS if p.parent.name == "docs" and p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
