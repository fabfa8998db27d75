"""Tests of mograd.pareto: dominance, 2-D hypervolume, IGD, Front and trace_front."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mograd
from mograd import pareto
from mograd.pareto import Front, hypervolume, igd, non_dominated, trace_front

# ----------------------------------------------------------------------------- brute force


def brute_non_dominated(p: np.ndarray) -> np.ndarray:
    """Direct double loop over the definition of Pareto dominance."""
    out = []
    for i in range(len(p)):
        dominated = False
        for j in range(len(p)):
            if all(p[j] <= p[i]) and any(p[j] < p[i]):
                dominated = True
                break
        out.append(not dominated)
    return np.array(out, dtype=bool)


def grid_hypervolume(p: np.ndarray, ref: np.ndarray) -> float:
    """Area of the union of boxes [p, ref] by coordinate compression: every cell of the grid
    spanned by all coordinates is either fully covered or not; sum the covered cells."""
    p = p[np.all(p < ref, axis=1)]
    if len(p) == 0:
        return 0.0
    xs = np.unique(np.append(p[:, 0], ref[0]))
    ys = np.unique(np.append(p[:, 1], ref[1]))
    area = 0.0
    for i in range(len(xs) - 1):
        for j in range(len(ys) - 1):
            # The cell [xs[i], xs[i+1]] x [ys[j], ys[j+1]] is covered iff some box contains its
            # lower-left corner.
            if np.any((p[:, 0] <= xs[i]) & (p[:, 1] <= ys[j])):
                area += (xs[i + 1] - xs[i]) * (ys[j + 1] - ys[j])
    return float(area)


def inclusion_exclusion_hypervolume(p: np.ndarray, ref: np.ndarray) -> float:
    """Union area by inclusion-exclusion over all subsets (small sets only)."""
    total = 0.0
    for r in range(1, len(p) + 1):
        for subset in itertools.combinations(range(len(p)), r):
            corner = p[list(subset)].max(axis=0)
            side = np.clip(ref - corner, 0.0, None)
            total += (-1) ** (r + 1) * float(side[0] * side[1])
    return total


# ------------------------------------------------------------------------------ non_dominated


@pytest.mark.parametrize("m", [1, 2, 3])
def test_non_dominated_matches_brute_force_with_ties(m: int) -> None:
    rng = np.random.default_rng(m)
    for _ in range(200):
        n = int(rng.integers(0, 30))
        p = rng.integers(0, 4, size=(n, m)).astype(float)  # many ties and duplicates
        np.testing.assert_array_equal(non_dominated(p), brute_non_dominated(p))


def test_non_dominated_large_chunks_3d() -> None:
    rng = np.random.default_rng(0)
    p = rng.random((1500, 3))  # more rows than one comparison chunk
    mask = non_dominated(p)
    # Spot-check against the definition for a sample of rows.
    for i in rng.choice(len(p), 60, replace=False):
        dominated = np.any(np.all(p <= p[i], axis=1) & np.any(p < p[i], axis=1))
        assert mask[i] == (not dominated)


def test_non_dominated_keeps_duplicates_and_accepts_tensors() -> None:
    pts = [[1.0, 2.0], [1.0, 2.0], [2.0, 2.0], [0.5, 3.0]]
    assert non_dominated(pts).tolist() == [True, True, False, True]
    t = torch.tensor(pts, dtype=torch.float32, requires_grad=True)
    assert non_dominated(t).tolist() == [True, True, False, True]
    assert non_dominated(np.zeros((0, 2))).shape == (0,)


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=25).filter(
            lambda s: s[1] <= 4
        ),
        elements=st.floats(-5, 5, allow_nan=False).map(lambda v: round(v, 1)),
    )
)
def test_non_dominated_properties(p: np.ndarray) -> None:
    mask = non_dominated(p)
    np.testing.assert_array_equal(mask, brute_non_dominated(p))
    front = p[mask]
    assert len(front) >= 1
    # The filtered set is its own front, and every removed point is dominated by a kept one.
    assert non_dominated(front).all()
    for q in p[~mask]:
        assert np.any(np.all(front <= q, axis=1) & np.any(front < q, axis=1))
    # Permutation equivariance.
    perm = np.random.default_rng(0).permutation(len(p))
    np.testing.assert_array_equal(non_dominated(p[perm]), mask[perm])


# -------------------------------------------------------------------------------- hypervolume


def test_hypervolume_known_values() -> None:
    assert hypervolume([[0.0, 0.0]], [1.0, 2.0]) == pytest.approx(2.0)
    assert hypervolume([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]], [2.0, 2.0]) == pytest.approx(3.25)
    assert hypervolume(np.zeros((0, 2)), [1.0, 1.0]) == 0.0
    assert hypervolume([[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0]) == 0.0  # on the boundary: empty


def test_hypervolume_matches_two_brute_forces() -> None:
    rng = np.random.default_rng(1)
    for _ in range(150):
        n = int(rng.integers(1, 9))
        p = np.round(rng.random((n, 2)) * 4, 1) - 0.5  # ties, some outside the ref box
        ref = np.array([3.0, 2.5])
        hv = hypervolume(p, ref)
        assert hv == pytest.approx(grid_hypervolume(p, ref), abs=1e-12)
        assert hv == pytest.approx(inclusion_exclusion_hypervolume(p, ref), abs=1e-9)


def test_hypervolume_of_dense_linear_front() -> None:
    # Points on f1 + f2 = 1: the staircase area tends to the triangle + the two side strips.
    t = np.linspace(0.0, 1.0, 20001)
    p = np.stack([t, 1.0 - t], axis=1)
    assert hypervolume(p, [1.0, 1.0]) == pytest.approx(0.5, abs=1e-4)


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 30), st.just(2)),
        elements=st.floats(0, 10, allow_nan=False),
    ),
    st.floats(-3, 3),
    st.floats(0.1, 4),
)
def test_hypervolume_properties(p: np.ndarray, shift: float, scale: float) -> None:
    ref = np.array([10.5, 11.0])
    hv = hypervolume(p, ref)
    assert 0.0 <= hv <= 10.5 * 11.0 + 1e-9
    assert hv == pytest.approx(grid_hypervolume(p, ref), rel=1e-9, abs=1e-9)
    # Only the front matters; order does not; translating and scaling both axes transforms
    # the area accordingly.
    assert hypervolume(p[non_dominated(p)], ref) == pytest.approx(hv, rel=1e-12, abs=1e-12)
    assert hypervolume(p[::-1], ref) == pytest.approx(hv, rel=1e-12, abs=1e-12)
    assert hypervolume(p + shift, ref + shift) == pytest.approx(hv, rel=1e-9, abs=1e-9)
    assert hypervolume(p * scale, ref * scale) == pytest.approx(hv * scale**2, rel=1e-9, abs=1e-9)
    # Adding a point never decreases the hypervolume.
    extra = np.vstack([p, p.mean(axis=0, keepdims=True) - 0.1])
    assert hypervolume(extra, ref) >= hv - 1e-12


def test_hypervolume_torch_equals_numpy() -> None:
    p = np.random.default_rng(2).random((50, 2))
    assert hypervolume(torch.from_numpy(p), torch.tensor([1.0, 1.0])) == hypervolume(p, [1, 1])
    assert hypervolume(torch.from_numpy(p).float(), [1.0, 1.0]) == pytest.approx(
        hypervolume(p, [1.0, 1.0]), rel=1e-6
    )


def test_hypervolume_strict_rejects_points_outside() -> None:
    with pytest.raises(ValueError, match=r"ref \[1.0, 1.0\] is not strictly dominated by point 1"):
        hypervolume([[0.0, 0.0], [2.0, 0.0]], [1.0, 1.0], strict=True)
    assert hypervolume([[0.0, 0.0]], [1.0, 1.0], strict=True) == 1.0


# ------------------------------------------------------------------------------------ igd


def test_igd_values() -> None:
    front = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert igd(front, front) == 0.0
    assert igd([[0.0, 0.0]], front) == pytest.approx(1.0)
    assert igd([[0.0, 1.0]], front) == pytest.approx(math.sqrt(2) / 2)


# ------------------------------------------------------------------------------- bad input

BAD_INPUTS = [
    (lambda: non_dominated([1.0, 2.0]), r"points must be a 2-D array .* got shape \(2,\)"),
    (lambda: non_dominated(np.zeros((2, 2, 2))), r"points must be a 2-D array"),
    (lambda: non_dominated(np.zeros((3, 0))), r"at least one objective"),
    (lambda: non_dominated([[0.0, math.nan]]), r"points must be finite; entry \(0, 1\) is nan"),
    (lambda: non_dominated([["a", "b"]]), r"points must be numeric"),
    (lambda: hypervolume([[0.0, 1.0, 2.0]], [1, 1]), r"points must have 2 objective columns"),
    (lambda: hypervolume([[0.0, math.inf]], [1, 1]), r"points must be finite"),
    (lambda: hypervolume([[0.0, 0.0]], [1.0]), r"ref must have shape \(2,\), got shape \(1,\)"),
    (lambda: hypervolume([[0.0, 0.0]], [[1.0, 1.0]]), r"ref must have shape \(2,\)"),
    (lambda: hypervolume([[0.0, 0.0]], [1.0, math.nan]), r"ref must be finite"),
    (lambda: hypervolume([[0.0, 2.0]], [1.0, 1.0], strict=True), r"not strictly dominated"),
    (lambda: igd([[0.0, 1.0]], [[0.0, 1.0, 2.0]]), r"front must have 2 objective columns"),
    (lambda: igd(np.zeros((0, 2)), [[0.0, 1.0]]), r"igd needs non-empty sets"),
    (lambda: trace_front(lambda c: [c, c], []), r"configs is empty"),
    (
        lambda: trace_front(lambda c: [c, math.nan], [1.0], progress=False),
        r"non-finite .* config 0",
    ),
    (
        lambda: trace_front(lambda c: [[c, c]], [1.0], progress=False),
        r"1-D sequence .* shape \(1, 2\)",
    ),
    (
        lambda: trace_front(lambda c: [c] * (c + 1), [1, 2], progress=False),
        r"returned 3 objectives for config 1 \(2\) but 2 for config 0",
    ),
    (lambda: trace_front(lambda c: [c] * 3, [1], ref=[2, 2], progress=False), r"implemented for 2"),
    (
        lambda: trace_front(lambda c: [c, c], [1], ref=[2, 2, 2], progress=False),
        r"ref must have shape",
    ),
    (lambda: Front.from_points([[0.0, 1.0]], configs=["a", "b"]), r"configs has 2 entries"),
    (
        lambda: trace_front(lambda c: [torch.ones(2), 1.0], [0], progress=False),
        r"train_fn result for config 0 \(0\) must be numeric",
    ),
]


@pytest.mark.parametrize(("call", "message"), BAD_INPUTS)
def test_bad_inputs_raise_clear_value_errors(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()


def test_public_api() -> None:
    assert set(pareto.__all__) >= {"non_dominated", "hypervolume", "igd", "trace_front", "Front"}
    for name in pareto.__all__:
        assert hasattr(pareto, name)


# ------------------------------------------------------------------------------ trace_front


def _train_mgda(x0: float) -> list[float]:
    """Plain MGDA (mograd.MOWrapper, power 1, no smoothing) on f1 = x^2, f2 = (x - 2)^2."""
    x = torch.tensor([x0], dtype=torch.float64, requires_grad=True)
    opt = mograd.MOWrapper(torch.optim.Adam([x], lr=0.05), weights="min_norm", power=1.0, mu=None)
    for _ in range(300):
        opt.zero_grad()
        opt.step([(x**2).sum(), ((x - 2.0) ** 2).sum()])
    with torch.no_grad():
        return [float((x**2).sum()), float(((x - 2.0) ** 2).sum())]


def test_trace_front_on_a_toy_problem_with_mgda() -> None:
    starts = [-1.0, 0.3, 1.0, 1.7, 3.0]
    front = trace_front(_train_mgda, starts, ref=[5.0, 5.0], progress=False)
    assert front.points.shape == (5, 2)
    assert front.configs == starts
    # The Pareto set is x in [0, 2]: every run ends on the front sqrt(f1) + sqrt(f2) = 2.
    assert np.allclose(np.sqrt(front.points).sum(axis=1), 2.0, atol=2e-2)
    # Starts inside [0, 2] are already Pareto-optimal, so MGDA leaves them (nearly) in place.
    assert np.sqrt(front.points[1, 0]) == pytest.approx(0.3, abs=2e-2)
    assert front.mask.all()
    assert front.hypervolume == pytest.approx(hypervolume(front.points, [5.0, 5.0]))
    assert front.seconds.shape == (5,) and (front.seconds > 0).all()
    np.testing.assert_array_equal(front.pareto_points[:, 0], np.sort(front.points[:, 0]))
    assert len(front) == 5


def test_trace_front_marks_dominated_configs_and_sorts() -> None:
    table = {"a": (1.0, 3.0), "b": (2.0, 2.0), "c": (2.5, 2.5), "d": (0.5, 4.0)}
    front = trace_front(lambda k: torch.tensor(table[k]), list(table), progress=False)
    assert front.mask.tolist() == [True, True, False, True]
    assert front.pareto_configs == ["d", "a", "b"]
    assert front.hypervolume is None


def test_trace_front_seed_makes_runs_reproducible() -> None:
    def noisy(scale: float) -> list[torch.Tensor]:
        z = torch.randn(2) * scale
        return [z[0], z[1]]

    a = trace_front(noisy, [1.0, 2.0], seed=3, progress=False)
    b = trace_front(noisy, [1.0, 2.0], seed=3, progress=False)
    np.testing.assert_array_equal(a.points, b.points)
    assert not np.array_equal(a.points[0], a.points[1] / 2.0)  # different seed per config


def test_trace_front_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    trace_front(lambda c: [c, -c], [1.0, 2.0, 3.0], progress=True, desc="toy-sweep")
    err = capsys.readouterr().err
    assert "toy-sweep" in err and "3/3" in err


def test_front_from_points() -> None:
    f = Front.from_points(torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]), ref=[2.0, 2.0])
    assert f.mask.tolist() == [True, True, False]
    assert f.hypervolume == pytest.approx(3.0)
    assert f.configs == [0, 1, 2]


# ------------------------------------------------------------------ preference rays and angles


def test_preference_rays_are_unit_and_evenly_spaced() -> None:
    for n in (1, 2, 5, 9):
        r = pareto.preference_rays(n)
        assert r.shape == (n, 2)
        np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0)
        t = np.arctan2(r[:, 1], r[:, 0])
        np.testing.assert_allclose(t, (np.arange(n) + 0.5) * (np.pi / 2) / n)
        assert (r > 0).all()  # interior rays: every objective weighs
        np.testing.assert_allclose(r, r[::-1, ::-1])  # symmetric under swapping objectives
    e = pareto.preference_rays(5, endpoints=True)
    np.testing.assert_allclose(e[0], [1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(e[-1], [0.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(e[2], [math.sqrt(0.5)] * 2)


def test_ray_angles_known_values_and_conventions() -> None:
    # EPO's convention: r1 f1 = r2 f2 is on the ray; f parallel to r is on the "direct" ray.
    assert pareto.ray_angles([[1.0, 3.0]], [0.75, 0.25])[0] == pytest.approx(0.0, abs=1e-12)
    assert pareto.ray_angles([[3.0, 1.0]], [0.75, 0.25], target="direct")[0] == pytest.approx(
        0.0, abs=1e-12
    )
    assert pareto.ray_angles([[1.0, 0.0]], [0.5, 0.5])[0] == pytest.approx(45.0)
    assert pareto.ray_angles([[0.0, 2.0]], [1.0, 0.0], target="direct")[0] == pytest.approx(90.0)
    # Scale-invariant in the point and in the ray; per-point rays.
    p = np.array([[0.3, 0.7], [2.0, 1.0], [1.0, 1.0]])
    rays = pareto.preference_rays(3)
    a = pareto.ray_angles(p, rays)
    np.testing.assert_allclose(pareto.ray_angles(p * 7.0, rays * 0.1), a)
    # Against a direct atan2 computation in 2-D.
    d = 1.0 / rays
    expect = np.degrees(np.abs(np.arctan2(p[:, 1], p[:, 0]) - np.arctan2(d[:, 1], d[:, 0])))
    np.testing.assert_allclose(a, expect, atol=1e-9)
    # Accurate near zero (no arccos cancellation).
    tiny = pareto.ray_angles([[1.0, 1.0 + 1e-9]], [1.0, 1.0])[0]
    assert 0.0 < tiny < 1e-6


def _exact_ray_train(ray: np.ndarray) -> list[float]:
    """A 'perfect' preference method: ends exactly where r1 f1 = r2 f2 on f1 + f2 = 1."""
    d = 1.0 / np.asarray(ray)
    return list(d / d.sum())


def test_trace_front_along_rays_passes_rays_and_measures_angles() -> None:
    seen: list[np.ndarray] = []

    def train(ray: np.ndarray) -> list[float]:
        seen.append(ray)
        return _exact_ray_train(ray)

    front = trace_front(train, rays=4, ref=[1.0, 1.0], progress=False)
    assert len(seen) == 4
    np.testing.assert_allclose(np.stack(seen), pareto.preference_rays(4))
    np.testing.assert_allclose(front.rays, pareto.preference_rays(4))
    assert front.ray_target == "inverse"
    np.testing.assert_allclose(front.angles, 0.0, atol=1e-7)
    assert front.mask.all() and front.hypervolume > 0
    # The same points measured with the other convention are off their rays (but the middle).
    direct = pareto.ray_angles(front.points, front.rays, target="direct")
    assert direct[0] > 10 and direct[-1] > 10
    # Without rays, nothing changes (the original behaviour).
    plain = trace_front(_exact_ray_train, list(pareto.preference_rays(4)), progress=False)
    assert plain.rays is None and plain.angles is None and plain.ray_target is None
    np.testing.assert_allclose(plain.points, front.points)


def test_trace_front_rays_with_configs_and_linear_scalarization_misses_rays() -> None:
    rays = pareto.preference_rays(5)
    configs = [{"w": float(r[0] / r.sum()), "steps": 300} for r in rays]

    def linear(cfg: dict) -> list[float]:
        x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = mograd.MOWrapper(
            torch.optim.SGD([x], lr=0.1), weights=[cfg["w"], 1.0 - cfg["w"]], power=1.0, mu=None
        )
        for _ in range(cfg["steps"]):
            opt.zero_grad()
            opt.step([(x**2).sum(), ((x - 2.0) ** 2).sum()])
        return [float(x.detach() ** 2), float((x.detach() - 2.0) ** 2)]

    front = trace_front(linear, configs, rays=rays, ref=[5.0, 5.0], progress=False)
    assert front.configs == configs
    # Weighted sums end at x = 2 (1 - w): on the front, but away from the rays except the
    # middle one (closed form: f = (4 w2^2, 4 w1^2)).
    w = rays / rays.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(front.points, 4.0 * w[:, ::-1] ** 2, atol=1e-6)
    assert front.angles[2] == pytest.approx(0.0, abs=1e-4)
    assert (front.angles[[0, 1, 3, 4]] > 5.0).all()
    np.testing.assert_allclose(front.angles, front.angles[::-1], atol=1e-4)


def test_trace_front_rays_with_negative_objectives_gives_nan_angles() -> None:
    front = trace_front(lambda r: [r[0], r[1] - 0.6], rays=[[0.5, 0.5], [0.2, 0.8]], progress=False)
    assert math.isnan(front.angles[0]) and not math.isnan(front.angles[1])


def test_front_from_points_with_rays() -> None:
    f = Front.from_points([[1.0, 3.0], [2.0, 2.0]], rays=[[0.75, 0.25], [0.5, 0.5]])
    np.testing.assert_allclose(f.angles, 0.0, atol=1e-7)
    g = Front.from_points([[1.0, 3.0], [2.0, 2.0]], rays=[0.5, 0.5], ray_target="direct")
    assert g.rays.shape == (2, 2) and g.angles[1] == pytest.approx(0.0, abs=1e-7)


RAY_BAD_INPUTS = [
    (lambda: pareto.preference_rays(0), r"n must be an int >= 1"),
    (lambda: pareto.preference_rays(1, endpoints=True), r"n must be an int >= 2"),
    (lambda: pareto.preference_rays(2.5), r"n must be an int"),
    (lambda: pareto.ray_angles([[1.0, 1.0]], [[1.0, -1.0]]), r"rays must be finite, >= 0"),
    (lambda: pareto.ray_angles([[1.0, 1.0]], [[1.0, 0.0]]), r"needs positive rays"),
    (lambda: pareto.ray_angles([[1.0, 1.0]], [1.0, 1.0, 1.0]), r"rays have 3 components"),
    (lambda: pareto.ray_angles([[1.0, 1.0]] * 3, [[1.0, 1.0]] * 2), r"2 rays were given for 3"),
    (lambda: pareto.ray_angles([[-1.0, 1.0]], [1.0, 1.0]), r"non-negative points"),
    (lambda: pareto.ray_angles([[0.0, 0.0]], [1.0, 1.0]), r"non-negative points"),
    (lambda: pareto.ray_angles([[1.0, 1.0]], [1.0, 1.0], target="up"), r"target must be one"),
    (lambda: trace_front(lambda c: [1.0, 1.0]), r"needs configs or rays"),
    (
        lambda: trace_front(lambda c: [1.0, 1.0], [1, 2, 3], rays=2, progress=False),
        r"configs has 3 entries but 2 rays",
    ),
    (
        lambda: trace_front(lambda c: [1.0, 1.0, 1.0], rays=2, progress=False),
        r"rays have 2 components but train_fn returned 3",
    ),
    (
        lambda: trace_front(lambda c: [1.0, 1.0], rays=2, ray_target="x", progress=False),
        r"ray_target must be one of",
    ),
]


@pytest.mark.parametrize(("call", "message"), RAY_BAD_INPUTS)
def test_ray_bad_inputs_raise_clear_value_errors(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()
