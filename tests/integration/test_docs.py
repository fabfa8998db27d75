"""The ```python blocks of README.md and docs/**/*.md run as written; the site renders its math.

A block written as a doctest (``>>>`` prompts) is checked with doctest, output included;
any other block is executed as a script.

``test_site_renders_its_math`` builds the site (``mkdocs build --strict``) and checks that
every page's math became arithmatex markup (no ``$`` left in the text outside code), that
the pages load KaTeX from the site itself, and, in headless Chromium (Debian's
``chromium``, which ``make test`` installs), that KaTeX drew every formula of the
derivation, API, docstring-reference and Pareto pages without a parse error.
"""

from __future__ import annotations

import doctest
import html.parser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    out = []
    for path in FILES:
        if path.exists():
            for i, code in enumerate(BLOCK.findall(path.read_text())):
                out.append((f"{path.relative_to(ROOT)}#{i}", code))
    return out


@pytest.mark.parametrize(("where", "code"), blocks(), ids=[b[0] for b in blocks()])
def test_doc_block_runs(where: str, code: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    if code.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(code, {}, where, where, 0)
        flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        runner = doctest.DocTestRunner(optionflags=flags)
        runner.run(test)
        result = runner.summarize(verbose=False)
        assert result.failed == 0 and result.attempted > 0, f"{where}: doctest failed"
    else:
        exec(compile(code, where, "exec"), {"__name__": "__doc_example__"})


def test_docs_have_examples() -> None:
    names = {w.split("#")[0] for w, _ in blocks()}
    assert {"README.md", "docs/quickstart.md", "docs/api.md", "docs/pareto.md"} <= names


SKIP = frozenset({"code", "pre", "script", "style"})
VOID = frozenset({"br", "img", "hr", "meta", "link", "input", "source", "wbr", "area", "col"})


class _Text(html.parser.HTMLParser):
    """The text of a page outside code, scripts and (optionally) rendered KaTeX, and the
    number of math elements and of KaTeX's elements in it."""

    def __init__(self, skip_classes: tuple[str, ...]) -> None:
        super().__init__()
        self.skip_classes = skip_classes
        self.stack: list[bool] = []  # per open element: does it start a skipped subtree
        self.depth = 0  # skipped subtrees open
        self.text: list[str] = []
        self.counts = {"arithmatex": 0, "katex": 0, "katex-display": 0, "katex-error": 0}
        self.assets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "link") and (a.get("src") or a.get("href")):
            self.assets.append(a.get("src") or a.get("href") or "")
        if tag in VOID:
            return
        classes = (a.get("class") or "").split()
        for c in classes:
            if c in self.counts:
                self.counts[c] += 1
        skip = tag in SKIP or any(c in self.skip_classes for c in classes)
        self.stack.append(skip)
        self.depth += skip

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID or not self.stack:
            return
        self.depth -= self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.depth == 0:
            self.text.append(data)


def _read(page: str | Path, skip_classes: tuple[str, ...]) -> _Text:
    parser = _Text(skip_classes)
    parser.feed(Path(page).read_text(encoding="utf-8") if isinstance(page, Path) else page)
    return parser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_site_renders_its_math(tmp_path) -> None:
    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                            "-d", str(site)], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]

    # every page: the math is arithmatex markup, nothing else in the text holds a `$`
    pages = sorted(site.rglob("index.html"))
    assert len(pages) >= 12
    with_math = 0
    for page in pages:
        parsed = _read(page, skip_classes=("arithmatex",))
        text = "".join(parsed.text)
        assert "$" not in text, f"{page.relative_to(site)}: raw math: " + text[
            max(0, text.index("$") - 80):text.index("$") + 80]
        with_math += parsed.counts["arithmatex"] > 0
        for asset in parsed.assets:  # KaTeX and everything else come from the site itself
            assert not asset.startswith(("http:", "https:", "//")), (page, asset)
    assert with_math >= 8, f"only {with_math} pages have math"
    assert (site / "assets" / "katex" / "fonts" / "KaTeX_Main-Regular.woff2").is_file()

    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (make docs-browser installs it)")
        pytest.skip("needs chromium (make docs-browser)")
    for name in ("derivation", "api", "reference", "pareto"):
        page = site / name / "index.html"
        static = _read(page, skip_classes=()).counts["arithmatex"]
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                              "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        rendered = _read(dom.stdout, skip_classes=("katex",))
        counts = rendered.counts
        assert static >= 5 and counts["arithmatex"] == static, (name, static, counts)
        # each math element holds one KaTeX rendering (display math one more wrapper)
        assert counts["katex"] == static, (name, static, counts)
        assert counts["katex-error"] == 0, (name, counts)
        text = "".join(rendered.text)
        for raw in ("\\(", "\\[", "$"):
            assert raw not in text, f"{name}: unrendered math {raw!r}"
