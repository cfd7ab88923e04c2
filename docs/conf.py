"""Sphinx's configuration of Taskyard's documentation (Markdown pages, read by MyST).

Built in strict mode by tests/unit/test_docs_site.py:
`sphinx-build -W --keep-going -n -b html docs OUT`.
"""

from __future__ import annotations

project = "Taskyard"
extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
# Headings up to ### get anchors, as GitHub gives them, so `page.md#section` links resolve
# (and a link to a missing section fails the build).
myst_heading_anchors = 3
# No `:` roles or `{...}` directives in the pages but the toctrees: they read as plain
# Markdown on GitHub too.
myst_enable_extensions: list[str] = []
html_theme = "furo"
html_title = "Taskyard"
# Every page is in a toctree; a cross-reference that does not resolve is a warning,
# and a warning fails the strict build.
nitpicky = True
