"""The ```python blocks of README.md and docs/*.md run as written.

A block written as a doctest (``>>>`` prompts) is checked with doctest, output included;
any other block is executed as a script.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
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
