"""Fixtures shared by every test directory.

``path``: the five ways a step can be taken (rows, gramian, features, single, accumulate;
``tests/paths.py``), for tests that run the same case on every path (the conformance
matrix, ``tests/wrapper/test_conformance.py``).
"""

from __future__ import annotations

import pytest

from tests.paths import PATHS, StepPath


@pytest.fixture(params=PATHS, ids=[p.name for p in PATHS])
def path(request: pytest.FixtureRequest) -> StepPath:
    """One step path (``StepPath``): build the wrapper with ``path.wrap`` and write the
    gradients with ``path.backward`` (or ``path.closure``)."""
    return request.param
