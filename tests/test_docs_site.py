"""The docs site: Getting started is its first page, it works opened from disk, and the API
page shows no raw docstring markup."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # builds the whole site (and imports the package for the API page)
def test_the_site_opens_on_getting_started_and_its_links_work_from_disk(tmp_path: Path):
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                    "docs/mkdocs.yml", "-d", str(site)], check=True,  # relative: mkdocs asks
                   capture_output=True, cwd=REPO, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    home = (site / "index.html").read_text()
    assert re.search(r"<h1[^>]*>Getting started", home)
    for page in set(site.glob("*.html")) - {site / "404.html"}:  # 404: served sites only
        for href in re.findall(r'href="([^"#]+)', page.read_text()):
            if href.startswith(("http", "mailto:", "data:")):
                continue
            # from file:// a link to a folder opens a listing: every link names a file
            assert not href.endswith("/") and (site / href).exists(), (page.name, href)
    api = (site / "api.html").read_text()
    assert not re.search(r":(class|meth|func|mod|attr):", api)


def test_code_blocks_fit_the_page_without_a_scroll_bar():
    """The material theme shows about 100 characters of code at 1366 px; longer lines are cut
    off behind a scroll bar (the inference page's commands were)."""
    for page in (REPO / "docs").glob("*.md"):
        blocks = re.findall(r"```\w*\n(.*?)```", page.read_text(), flags=re.S)
        long = [line for block in blocks for line in block.splitlines() if len(line) > 100]
        assert not long, (page.name, long)
