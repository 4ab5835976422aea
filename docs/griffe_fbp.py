"""A griffe extension for the docs site: keep fbp's docstrings laid out as they are written.

fbp's docstrings are derivations set out line by line (``Forward:``, ``VJP:``, ``Saves:``,
aligned steps of a proof), in Unicode.  Markdown would run those lines into one paragraph,
so the first paragraph (the summary) stays Markdown and everything after it is shown as a
block of preformatted text, exactly as ``help(fbp.NAME)`` prints it.  The docstring style is
``null`` in mkdocs.yml: nothing is parsed, so no docstring can make the strict build warn.
"""

from __future__ import annotations

import re

import griffe

_CODE_SPAN = re.compile(r"(``?[^`]+``?)")
_MARKDOWN_SPECIAL = re.compile(r"([*_\[\]<|\\])")


def _escape(text: str) -> str:
    """Markdown-escape the characters that would turn into emphasis or links (not in code)."""
    parts = _CODE_SPAN.split(text)
    return "".join(p if i % 2 else _MARKDOWN_SPECIAL.sub(r"\\\1", p) for i, p in enumerate(parts))


def preformat(doc: str) -> str:
    """The summary paragraph as Markdown, the rest inside a ```` ````text ```` fence."""
    lines = doc.strip("\n").splitlines()
    cut = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    summary = " ".join(line.strip() for line in lines[:cut])
    rest = "\n".join(lines[cut:]).strip("\n")
    out = _escape(summary)
    if rest:
        out += "\n\n````text\n" + rest.replace("``", "") + "\n````"
    return out


class PreformattedDocstrings(griffe.Extension):
    """Rewrite every docstring of the loaded package with :func:`preformat`."""

    def on_instance(self, *, obj, **kwargs) -> None:   # a hook every griffe version has
        doc = obj.docstring
        if doc is not None and doc.value.strip() and "\n````text\n" not in doc.value:
            doc.value = preformat(doc.value)
