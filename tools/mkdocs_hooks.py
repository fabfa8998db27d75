"""Build helpers for the documentation site (``mkdocs.yml``; ``make docs``).

* mkdocs hooks: a page in ``docs/`` may link to a file of the repository outside ``docs/``
  (a figure under ``benchmarks/results/``, an example script), as the pages do so that they
  also read well on a code host. Such a file is copied into the site under ``_repo/`` and the
  link is rewritten to it. A link to a file that does not exist is left alone, so that
  ``mkdocs build --strict`` still fails on it.
* :class:`GoogleExampleSections`, a griffe extension for mkdocstrings: mograd's docstrings
  title their doctests ``Example:``, which Google style allows; griffe only recognizes
  ``Examples:``, so the section is renamed before parsing and rendered as code. Sphinx roles
  (``:class:`~mograd.StepInfo```) become code spans (``StepInfo``).
* KaTeX, served from the site itself: the pages (and the docstrings on the reference page)
  write math as ``$...$`` inline and ``$$...$$`` on lines of their own; ``pymdownx.arithmatex``
  (generic mode) wraps it in ``.arithmatex`` elements, and KaTeX's auto-render draws it in
  the browser. The KaTeX release :data:`KATEX_VERSION` is fetched once from the npm registry
  (``npm pack``) into ``build/`` and copied into the site under ``assets/katex/``, with the
  script that starts it; no page loads anything from another host.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess
import tarfile
import tempfile
from typing import Any

import griffe
from mkdocs.exceptions import PluginError
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


ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    """A Sphinx role as a code span: ``:class:`~a.b.C``` reads ``C``, without ``~`` the path."""
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class GoogleExampleSections(griffe.Extension):
    """Read an ``Example:`` docstring section as Google style's ``Examples:``, and Sphinx
    roles (``:class:`...```, ``:func:`...```, ...) as code spans, which Markdown renders."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        doc = obj.docstring
        if doc is None:
            return
        if "Example:" in doc.value:
            doc.value = EXAMPLE.sub(r"\1Examples:", doc.value)
        if "`" in doc.value:
            doc.value = ROLE.sub(_role, doc.value)


KATEX_VERSION = "0.16.47"
KATEX_CACHE = os.path.join(ROOT, "build", f"katex-{KATEX_VERSION}")
KATEX_SITE_DIR = "assets/katex"
# mkdocs.yml's extra_javascript loads katex.min.js, contrib/auto-render.min.js, then this
KATEX_START = """\
// Render every math element that pymdownx.arithmatex (generic mode) wrote: \\(...\\) inline,
// \\[...\\] display. A formula KaTeX cannot parse is shown in red (.katex-error).
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".arithmatex").forEach(function (el) {
    renderMathInElement(el, {
      delimiters: [
        {left: "\\\\(", right: "\\\\)", display: false},
        {left: "\\\\[", right: "\\\\]", display: true},
      ],
      throwOnError: false,
    });
  });
});
"""


def _katex_dist() -> str:
    """KaTeX's ``dist/`` folder, fetched with ``npm pack`` into ``build/`` the first time."""
    dist = os.path.join(KATEX_CACHE, "package", "dist")
    if os.path.isfile(os.path.join(dist, "katex.min.js")):
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise PluginError(
            f"the site's math needs KaTeX {KATEX_VERSION}: install npm (Node.js) so that the "
            f"build can run `npm pack katex@{KATEX_VERSION}`, or unpack that tarball into "
            f"{KATEX_CACHE}"
        )
    os.makedirs(os.path.dirname(KATEX_CACHE), exist_ok=True)
    unpacked = f"{KATEX_CACHE}.part{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [npm, "pack", f"katex@{KATEX_VERSION}", "--pack-destination", tmp, "--silent"],
            check=True, cwd=tmp, stdout=subprocess.DEVNULL,
        )
        (tarball,) = (os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".tgz"))
        with tarfile.open(tarball) as tar:
            tar.extractall(unpacked, filter="data")
    try:
        os.rename(unpacked, KATEX_CACHE)
    except OSError:  # another build got there first
        shutil.rmtree(unpacked)
    return dist


def on_post_build(config: Any) -> None:
    """Copy KaTeX (script, auto-render, stylesheet, fonts) and its start script into the site."""
    dist = _katex_dist()
    out = os.path.join(config["site_dir"], *KATEX_SITE_DIR.split("/"))
    os.makedirs(os.path.join(out, "contrib"), exist_ok=True)
    for name in ("katex.min.js", "katex.min.css", os.path.join("contrib", "auto-render.min.js")):
        shutil.copyfile(os.path.join(dist, name), os.path.join(out, name))
    shutil.copytree(os.path.join(dist, "fonts"), os.path.join(out, "fonts"), dirs_exist_ok=True)
    with open(os.path.join(out, "start.js"), "w", encoding="utf-8") as fh:
        fh.write(KATEX_START)
