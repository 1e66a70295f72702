"""MkDocs hooks (mkdocs.yml `hooks:`): text the site takes from its sources
at build time, so that no page keeps a second copy that could drift.

- `<!-- experiments-yaml-reference -->`: every key experiments.yaml accepts,
  from the schema's own help text (orchestrator/schema_doc.py).
- `<!-- readme: HEADING -->`: the README's section under `## HEADING` (the
  quickstart's output, the Python API example, the verbs table), whose
  `docs/` links are rewritten to be relative to the docs folder and whose
  escaped pipes in table cells (GitHub's form) are unescaped. The README
  is where tests/integration/test_readme.py checks those blocks.
"""
from __future__ import annotations

import os
import re
import sys

REFERENCE = "<!-- experiments-yaml-reference -->"
README_SECTION = re.compile(r"<!-- readme: (.+?) -->")


def _root(config) -> str:
    return os.path.dirname(os.path.abspath(config.config_file_path))


def readme_section(readme: str, heading: str) -> str:
    """The body of the README's `## heading` section (without the heading)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    if match is None:
        raise ValueError(f"README.md has no section '## {heading}'")
    text = re.sub(r"\]\(docs/", "](", match.group(1))
    # GitHub needs a pipe inside a table's code span escaped; Python-Markdown
    # keeps code spans whole and would print the backslash.
    text = "\n".join(line.replace("\\|", "|") if line.startswith("|") else line for line in text.split("\n"))
    return text.strip() + "\n"


def on_page_markdown(markdown, page, config, files):
    root = _root(config)
    if REFERENCE in markdown:
        if root not in sys.path:  # a checkout that is not installed
            sys.path.insert(0, root)
        from orchestrator.schema_doc import reference
        markdown = markdown.replace(REFERENCE, reference())
    if README_SECTION.search(markdown):
        with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        markdown = README_SECTION.sub(lambda m: readme_section(readme, m.group(1)), markdown)
    return markdown
