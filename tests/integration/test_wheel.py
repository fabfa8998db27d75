"""The package as users get it: the built sdist and wheel, installed outside the checkout.

``test_installed_wheel_works_outside_the_checkout`` builds the sdist and, from it, the
wheel (``python -m build``, as a release would), checks what each holds, installs the
wheel with ``pip install --no-deps`` into a fresh virtual environment under a temporary
directory, and there, from a directory outside the checkout, runs the quickstart and the
docstring examples of the *installed* package (``pytest --doctest-modules --pyargs
mograd``), after checking that ``import mograd`` finds the installed copy. The fresh
environment reuses this environment's torch and the rest through a ``.pth`` line naming
its site-packages (appended after the fresh environment's own, and without this
environment's editable install of mograd), so nothing is downloaded. ``make wheel-test``
runs this file alone.

The other tests check the optional imports: ``import mograd`` imports neither Lightning
nor transformers, and importing an integration without its framework raises an
``ImportError`` that names the extra to install.
"""

from __future__ import annotations

import email.parser
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import mograd

ROOT = Path(__file__).resolve().parents[2]
EXTRA = 'pip install "mograd[integrations]"'


def run(cmd: list[str], cwd: Path, timeout: int = 300) -> str:
    """Run a command with a clean environment (no PYTHONPATH, no user site); return stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST"))}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def build(dist: Path) -> tuple[Path, Path]:
    """sdist, then the wheel built from that sdist (so the sdist must hold what a build needs)."""
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        cwd=dist.parent)
    (sdist,) = dist.glob("mograd-*.tar.gz")
    (wheel,) = dist.glob("mograd-*-py3-none-any.whl")
    return sdist, wheel


def check_sdist(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    top = f"mograd-{mograd.__version__}"
    assert sdist.name == f"{top}.tar.gz"
    for needed in ("LICENSE", "README.md", "pyproject.toml", "mograd/py.typed",
                   "mograd/__init__.py", "mograd/integrations/lightning.py",
                   "mograd/integrations/transformers.py"):
        assert needed in names, f"{needed} missing from the sdist"
    for left_out in ("benchmarks", "tests", "docs", "examples", "site", "runs", "data", "build"):
        assert not any(n == left_out or n.startswith(left_out + "/") for n in names), left_out


def check_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"mograd-{mograd.__version__}.dist-info"
        meta = email.parser.Parser().parsestr(zf.read(f"{info}/METADATA").decode())
    assert {"mograd/py.typed", f"{info}/licenses/LICENSE",
            "mograd/integrations/__init__.py"} <= names
    assert not any(n.startswith(("benchmarks/", "tests/", "examples/")) for n in names)
    assert meta["Version"] == mograd.__version__
    assert meta["License-Expression"] == "MIT"
    assert "integrations" in meta.get_all("Provides-Extra")
    requires = meta.get_all("Requires-Dist")
    assert any(re.fullmatch(r"torch>=[\d.]+", r) for r in requires), requires


def fresh_env(where: Path) -> Path:
    """A venv with no pip and no mograd, seeing this environment's packages after its own."""
    run([sys.executable, "-m", "venv", "--without-pip", str(where)], cwd=where.parent)
    python = where / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
               cwd=where).strip()
    (Path(site) / "_mograd_test_base_env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def test_installed_wheel_works_outside_the_checkout(tmp_path: Path) -> None:
    assert ROOT not in tmp_path.parents, "the temporary directory must lie outside the checkout"
    dist = tmp_path / "dist"
    dist.mkdir()
    sdist, wheel = build(dist)
    check_sdist(sdist)
    check_wheel(wheel)

    python = fresh_env(tmp_path / "venv")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel)], cwd=tmp_path)
    work = tmp_path / "work"  # the working directory: outside the checkout, empty
    work.mkdir()
    where = run([str(python), "-c", "import mograd; print(mograd.__file__, mograd.__version__)"],
                cwd=work).split()
    installed = Path(where[0]).resolve()
    assert tmp_path / "venv" in installed.parents and ROOT not in installed.parents, installed
    assert where[1] == mograd.__version__

    script = work / "quickstart.py"
    script.write_text((ROOT / "examples" / "quickstart.py").read_text())
    out = run([str(python), str(script), "--steps", "30"], cwd=work)
    assert re.search(r"mean weight on prediction, second half of training: [01]\.\d+", out), out

    # the doctests of every installed module, integrations included; the conftest reports
    # which files were collected
    (work / "conftest.py").write_text(
        "def pytest_collection_finish(session):\n"
        "    files = sorted({str(item.path) for item in session.items})\n"
        "    print('\\n'.join('collected ' + f for f in files))\n"
    )
    out = run([str(python), "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p",
               "no:xdist", "--doctest-modules", "--pyargs", "mograd", "-o",
               "doctest_optionflags=NORMALIZE_WHITESPACE ELLIPSIS", "--rootdir", str(work)],
              cwd=work, timeout=400)
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 20 and " failed" not in out, out[-3000:]
    files = [Path(line.split(" ", 1)[1]) for line in out.splitlines()
             if line.startswith("collected /")]
    assert installed.parent / "integrations" / "lightning.py" in files, out[-3000:]
    assert all(installed.parent in f.parents for f in files), files


def python_c(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_import_mograd_imports_no_framework() -> None:
    out = python_c(
        "import sys, mograd, mograd.integrations\n"
        "names = ('lightning', 'pytorch_lightning', 'transformers', 'accelerate')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in names))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(
    ("module", "framework", "blocked"),
    [
        ("mograd.integrations.lightning", "PyTorch Lightning", "lightning"),
        ("mograd.integrations.transformers", "Hugging Face transformers", "transformers"),
    ],
)
def test_integration_without_its_framework_names_the_extra(
    module: str, framework: str, blocked: str
) -> None:
    # None in sys.modules is how Python marks a module as not importable: `import blocked`
    # then raises ModuleNotFoundError, as when the package is not installed
    out = python_c(
        f"import sys\nsys.modules[{blocked!r}] = None\n"
        f"try:\n    import {module}\n"
        "except ImportError as e:\n    print(type(e).__name__, e.name, e, sep='|')\n"
        "else:\n    print('imported')"
    )
    assert out.returncode == 0, out.stderr
    kind, name, message = out.stdout.strip().split("|", 2)
    # the name is the module that failed to import: the package or a submodule of it
    assert kind == "ImportError" and name.partition(".")[0] == blocked, name
    assert message.startswith(f"{module} needs {framework}") and message.endswith(EXTRA), message
