"""mkdocs hooks: the docstrings' Sphinx roles rendered as code on the API page.

The package's docstrings cross-reference in Sphinx's form (:class:`~desertmind.x.Y`), which
mkdocstrings shows as typed; a reader sees ``Y`` as code (``~`` keeps the last name only, as
Sphinx does).
"""

from __future__ import annotations

import re

# as typed (the page's markdown) and as markdown renders the backquotes (docstrings)
_ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):(?:`|<code>)(~?)([^`<]+)"
                   r"(?:`|</code>)")


def _code(match: re.Match) -> str:
    name = match[2].rsplit(".", 1)[-1] if match[1] else match[2]
    return f"<code>{name}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub(_code, html)
