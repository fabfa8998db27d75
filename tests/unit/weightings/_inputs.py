"""Shared inputs of the weighting tests: Jacobians, scales and degenerate Gram matrices, and
the matrix families of TorchJD's aggregator property tests (written from their definitions:
normal, strongly stationary, strictly weakly stationary and non-weakly stationary matrices of
given shape and rank, in float32, at scales 0 to 1e15)."""

from __future__ import annotations

import torch

#: Scales of the gradients (the Gram matrix is scaled by their squares).
SCALES = (1e-10, 1e-5, 1.0, 1e5, 1e15)

#: Sizes of the well-conditioned problems compared against TorchJD.
KS = (2, 3, 5, 8)

#: Sizes from 1 to 32, for the oracle tests that are cheap enough to run on all of them.
KS_WIDE = (1, 2, 3, 5, 8, 16, 32)


def jacobian(k: int, seed: int, n: int | None = None, conflict: bool = True) -> torch.Tensor:
    """A well-conditioned ``(k, n)`` float64 Jacobian; with ``conflict`` some rows conflict."""
    gen = torch.Generator().manual_seed(seed)
    n = 2 * k + 3 if n is None else n
    j = torch.randn(k, n, generator=gen, dtype=torch.float64)
    if conflict and k >= 2:
        j[1] = -0.7 * j[0] + 0.5 * j[1]
    if conflict and k >= 4:
        j[3] = -0.5 * j[2] + 0.6 * j[3]
    return j


def gram(k: int, seed: int, conflict: bool = True) -> torch.Tensor:
    """The Gram matrix of :func:`jacobian`."""
    j = jacobian(k, seed, conflict=conflict)
    return j @ j.T


def _rows(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def degenerate_jacobians() -> dict[str, torch.Tensor]:
    """Jacobians whose Gram matrices are singular or extreme (float64, unit scale)."""
    gen = torch.Generator().manual_seed(123)
    low = torch.randn(8, 3, generator=gen, dtype=torch.float64) @ torch.randn(
        3, 10, generator=gen, dtype=torch.float64
    )
    g = torch.randn(5, generator=gen, dtype=torch.float64)
    return {
        "k1": _rows([1.0, 2.0]),
        "zero_k2": torch.zeros(2, 3, dtype=torch.float64),
        "zero_k5": torch.zeros(5, 3, dtype=torch.float64),
        "one_zero_row": _rows([1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.5, -1.0, 1.0]),
        "identical_k2": torch.stack([g, g]),
        "identical_k4": torch.stack([g, g, g, g]),
        "opposed_k2": torch.stack([g, -g]),
        "opposed_scaled": torch.stack([g, -3.0 * g]),
        "opposed_plus_one": torch.stack([g, -g, torch.roll(g, 1)]),
        "rank3_k8": low,
        "all_opposed_k8": torch.cat([torch.stack([g] * 4), torch.stack([-g] * 4)]),
        "magnitudes_1e-8_1e8": torch.stack([1e-8 * g, 1e8 * torch.roll(g, 2)]),
        "nearly_parallel": torch.stack([g, g + 1e-9 * torch.roll(g, 1)]),
    }


def degenerate_grams() -> dict[str, torch.Tensor]:
    """The Gram matrices of :func:`degenerate_jacobians`."""
    return {name: j @ j.T for name, j in degenerate_jacobians().items()}


def jacobians(max_k: int = 6, max_n: int = 6, full_rank: bool = False, exp: int = 3):
    """Hypothesis strategy: float64 Jacobians ``(k, n)`` with rows of scales 10**-exp..10**exp.

    With ``full_rank``, ``n >= k`` and ``3 [I 0]`` is added before the row scaling, so that the
    rows are linearly independent and the Gram matrix has a moderate condition number.
    """
    from hypothesis import strategies as st

    entries = st.floats(-1.0, 1.0, allow_nan=False, allow_subnormal=False)

    def build(k: int, n: int):
        def make(t):
            j = torch.tensor(t[0], dtype=torch.float64)
            if full_rank:
                j[:, :k] += 3.0 * torch.eye(k, dtype=torch.float64)
            return j * torch.tensor([10.0**e for e in t[1]], dtype=torch.float64)[:, None]

        return st.tuples(
            st.lists(st.lists(entries, min_size=n, max_size=n), min_size=k, max_size=k),
            st.lists(st.integers(-exp, exp), min_size=k, max_size=k),
        ).map(make)

    def sizes(k: int):
        lo = k if full_rank else 1
        return st.integers(lo, max(lo, max_n)).map(lambda n: (k, n))

    return st.integers(1, max_k).flatmap(sizes).flatmap(lambda kn: build(*kn))


# ----------------------------------------------------------------- TorchJD-style families
def _complement(q: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random orthonormal basis of the orthogonal complement of the orthonormal ``q``."""
    m, k = q.shape
    a = torch.randn(m, m - k, generator=gen, dtype=q.dtype)
    a = a - q @ (q.T @ a)
    out, _ = torch.linalg.qr(a)
    return out


def _orthonormal(m: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return _complement(torch.zeros(m, 0, dtype=dtype), gen)


def _singular(r: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return torch.diag(torch.randn(r, generator=gen, dtype=dtype).abs())


def normal_matrix(m: int, n: int, r: int, gen: torch.Generator, dtype=torch.float32):
    """A random ``(m, n)`` matrix of rank ``r``."""
    u, v = _orthonormal(m, gen, dtype), _orthonormal(n, gen, dtype)
    return u[:, :r] @ _singular(r, gen, dtype) @ v[:r]


def strong_matrix(m: int, n: int, r: int, gen: torch.Generator, dtype=torch.float32):
    """Rank ``r``, strongly stationary: some ``v > 0`` has ``v^T A = 0``."""
    v = torch.randn(m, generator=gen, dtype=dtype).abs()
    u = _complement((v / v.norm())[:, None], gen)
    return u[:, :r] @ _singular(r, gen, dtype) @ _orthonormal(n, gen, dtype)[:r]


def strictly_weak_matrix(m: int, n: int, r: int, gen: torch.Generator, dtype=torch.float32):
    """Rank ``r``, weakly but not strongly stationary: ``v >= 0`` (not all positive) has
    ``v^T A = 0``, and a non-negative ``v'`` orthogonal to ``v`` is a left singular vector
    with a positive singular value, so no ``w > 0`` has ``w^T A = 0``."""
    u = torch.randn(m, generator=gen, dtype=dtype).abs()
    split = int(torch.randint(1, m, (), generator=gen))
    perm = torch.randperm(m, generator=gen)
    v, vp = torch.zeros(m, dtype=dtype), torch.zeros(m, dtype=dtype)
    v[perm[:split]] = u[perm[:split]] / u[perm[:split]].norm()
    vp[perm[split:]] = u[perm[split:]] / u[perm[split:]].norm()
    q = torch.stack([v, vp], 1)
    basis = torch.cat([q, _complement(q, gen)], 1)
    return basis[:, 1 : r + 1] @ _singular(r, gen, dtype) @ _orthonormal(n, gen, dtype)[:r]


def non_weak_matrix(m: int, n: int, r: int, gen: torch.Generator, dtype=torch.float32):
    """Rank ``r``, not weakly stationary: a positive ``u`` is a left singular vector with a
    positive singular value, so no ``v >= 0``, ``v != 0`` has ``v^T A = 0``."""
    u = torch.randn(m, generator=gen, dtype=dtype).abs()
    u = (u / u.norm())[:, None]
    basis = torch.cat([u, _complement(u, gen)], 1)
    return basis[:, :r] @ _singular(r, gen, dtype) @ _orthonormal(n, gen, dtype)[:r]


NORMAL_DIMS = ((1, 1, 1), (4, 3, 1), (4, 3, 2), (4, 3, 3), (9, 11, 5), (9, 11, 9))
ZERO_DIMS = ((1, 1), (4, 3), (9, 11))
STATIONARY_DIMS = ((20, 10, 10), (20, 10, 5), (20, 10, 1), (20, 100, 1), (20, 100, 19))
PROPERTY_SCALES = (0.0, 1e-10, 1e3, 1e5, 1e10, 1e15)


def property_matrices() -> dict[str, dict[str, torch.Tensor]]:
    """The float32 Jacobians of the property tests, by family and name."""
    gen = torch.Generator().manual_seed(0)
    normal = {f"normal{d}": normal_matrix(*d, gen) for d in NORMAL_DIMS}
    fams = {
        "strong": strong_matrix,
        "strictly_weak": strictly_weak_matrix,
        "non_weak": non_weak_matrix,
    }
    out = {"normal": normal, "zero": {f"zero{d}": torch.zeros(d) for d in ZERO_DIMS}}
    for fam, make in fams.items():
        out[fam] = {f"{fam}{d}": make(*d, gen) for d in STATIONARY_DIMS}
    out["scaled"] = {f"{s:g}*{name}": s * j for s in PROPERTY_SCALES for name, j in normal.items()}
    return out
