"""Build helpers for the documentation site (``mkdocs.yml``; ``make docs``).

* mkdocs hooks: a page in ``docs/`` may link to a file of the repository outside ``docs/``
  (a figure under ``benchmarks/results/``, an example script), as the pages do so that they
  also read well on a code host. Such a file is copied into the site under ``_repo/`` and the
  link is rewritten to it. A link to a file that does not exist is left alone, so that
  ``mkdocs build --strict`` still fails on it.
* :class:`GoogleExampleSections`, a griffe extension for mkdocstrings: mograd's docstrings
  title their doctests ``Example:``, which Google style allows; griffe only recognizes
  ``Examples:``, so the section is renamed before parsing and rendered as code.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Any

import griffe
from mkdocs.structure.files import File, Files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "_repo"
LINK = re.compile(r"(\]\()(\.\./[^)\s#]+)")
EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


def _outside_target(page_uri: str, link: str, docs_dir: str) -> str | None:
    """The repository path (posix, from the root) of a link leaving docs/, if it exists."""
    target = posixpath.normpath(posixpath.join(posixpath.dirname(page_uri), link))
    path = os.path.normpath(os.path.join(docs_dir, *target.split("/")))
    rel = os.path.relpath(path, ROOT)
    if rel.startswith("..") or rel.endswith(".md") or not os.path.isfile(path):
        return None
    return rel.replace(os.sep, "/")


def on_files(files: Files, config: Any) -> Files:
    docs_dir = config["docs_dir"]
    wanted: set[str] = set()
    for f in files.documentation_pages():
        with open(f.abs_src_path, encoding="utf-8") as fh:
            text = fh.read()
        for _, link in LINK.findall(text):
            rel = _outside_target(f.src_uri, link, docs_dir)
            if rel is not None:
                wanted.add(rel)
    for rel in sorted(wanted):
        files.append(
            File.generated(config, f"{PREFIX}/{rel}", abs_src_path=os.path.join(ROOT, rel))
        )
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    docs_dir = config["docs_dir"]
    page_uri = page.file.src_uri

    def rewrite(m: re.Match[str]) -> str:
        rel = _outside_target(page_uri, m.group(2), docs_dir)
        if rel is None:
            return m.group(0)
        new = posixpath.relpath(f"{PREFIX}/{rel}", posixpath.dirname(page_uri) or ".")
        return m.group(1) + new

    return LINK.sub(rewrite, markdown)


class GoogleExampleSections(griffe.Extension):
    """Read an ``Example:`` docstring section as Google style's ``Examples:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        doc = obj.docstring
        if doc is not None and "Example:" in doc.value:
            doc.value = EXAMPLE.sub(r"\1Examples:", doc.value)
