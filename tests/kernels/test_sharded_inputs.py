"""Every public kernel accepts activations split over examples, on Explicit and on Auto meshes.

Inputs are placed with `jax.device_put(x, NamedSharding(mesh, P("data")))` on 8 simulated devices. Each kernel
is called (a) eagerly outside any mesh context and (b) under `jax.jit` inside `jax.set_mesh(mesh)` (host-level
functions such as `twonn`, which drop duplicates on the host, eagerly inside the context instead), and must
give the numbers of the unsharded call (float32 rounding: rtol 1e-5). On the Explicit mesh, where the
sharding is part of the type, results of reductions must come back unsplit and per-example results
(Gram rows, centred or projected features) split along examples as their input was.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from rsim_jax import kernels
from tests.kernels import reference
from tests.kernels.test_pca import data

N = 64  # examples: 8 per device
KEY = jax.random.key(0)


def make_mesh(kind: str) -> jax.sharding.Mesh:
  if kind == "explicit":
    mesh = jax.make_mesh((8,), ("data",))  # Explicit axes: JAX's default
    assert mesh.axis_types == (AxisType.Explicit,)
    return mesh
  return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))


def split(a, mesh):
  return jax.device_put(a, NamedSharding(mesh, P("data")))


def features(seed=0):
  """x: anisotropic (well-separated leading variances), y: a noisy linear image of x, z: conv maps."""
  x = data(N, 12, offset=3.0, seed=seed)
  rng = np.random.default_rng(seed + 1)
  y = (x @ rng.standard_normal((12, 6)) + 0.5 * rng.standard_normal((N, 6))).astype(np.float32)
  return x, y


def manifold_points(seed=0, *, duplicate=False):
  """Points on a 3-dimensional linear manifold in 6 dimensions (one duplicated pair if asked)."""
  rng = np.random.default_rng(seed)
  x = (rng.standard_normal((N, 3)) @ rng.standard_normal((3, 6))).astype(np.float32)
  if duplicate:
    x[40] = x[3]
  return x


def _mask(n=N):
  return np.arange(n) % 5 != 2


def _minibatch_two_models(x, y):
  """init, update, minibatch_hsic (masked), accumulate, merge and result, for two models."""
  state = kernels.minibatch_cka_update(kernels.minibatch_cka_init(2, 1), [x, x * x], [y])
  terms = kernels.minibatch_hsic([y, x], [x[:, :6] * y], mask=_mask())
  other = kernels.minibatch_cka_accumulate(kernels.minibatch_cka_init(2, 1), terms)
  merged = kernels.minibatch_cka_merge(state, other)
  return kernels.minibatch_cka_result(merged), terms.hsic_xy, terms.hsic_yy


def _pca_stream(x, y):
  state = kernels.pca_update(kernels.pca_init(12), x)
  state = kernels.pca_merge(state, kernels.pca_update(kernels.pca_init(12), x * 0.5 + 1.0, mask=_mask()))
  result = kernels.pca_result(state, k=4)
  return result.eigenvalues, result.mean, jnp.abs(result.components[:, :3])


def _pca_gram(x):
  result = kernels.pca(x, k=4, method="gram")
  return result.eigenvalues, result.total_variance, jnp.abs(result.components)


def _twonn_no_warning(fn):
  def run(x, y):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", kernels.DuplicatePointsWarning)
      return np.asarray(fn(x), np.float64)

  return run


class Case(NamedTuple):
  fn: Callable  # (x, y) -> pytree of arrays
  per_example: bool = False  # the result has one row per example (and keeps the split on Explicit meshes)
  jit: bool = True  # False: a host-level function (value checks, duplicates dropped on the host)
  points: bool = False  # manifold points instead of features
  duplicate: bool = False  # the points hold a duplicated pair (dropped on the host by TwoNN)


CASES = {
    "gram_linear": Case(lambda x, y: kernels.gram_linear(x), per_example=True),
    "gram_rbf": Case(lambda x, y: kernels.gram_rbf(x, threshold=0.8), per_example=True),
    "center_gram_unbiased": Case(
        lambda x, y: kernels.center_gram(kernels.gram_linear(x), unbiased=True), per_example=True
    ),
    "squared_distances": Case(lambda x, y: kernels.squared_distances(x), per_example=True),
    "hsic": Case(lambda x, y: kernels.hsic(kernels.gram_linear(x), kernels.gram_linear(y))),
    # (Grams of centred features: the unbiased estimator of raw Grams with an offset cancels digits in float32.)
    "hsic_unbiased": Case(
        lambda x, y: kernels.hsic(
            kernels.gram_linear(kernels.center_features(x)), kernels.gram_linear(kernels.center_features(y)),
            unbiased=True,
        )
    ),
    "cka": Case(lambda x, y: kernels.cka(x, y)),
    "cka_rbf": Case(lambda x, y: kernels.cka(x, y, kernel="rbf", threshold=0.5)),
    "cka_debiased": Case(lambda x, y: kernels.cka(x, y, debiased=True)),
    "cka_from_grams": Case(lambda x, y: kernels.cka_from_grams(kernels.gram_linear(x), kernels.gram_rbf(y))),
    "linear_cka_features": Case(lambda x, y: kernels.linear_cka_features(x, y)),
    "linear_cka_features_debiased": Case(lambda x, y: kernels.linear_cka_features(x, y, debiased=True)),
    "center_features": Case(lambda x, y: kernels.center_features(x), per_example=True),
    "center_features_mask": Case(lambda x, y: kernels.center_features(x, mask=_mask()), per_example=True),
    "flatten_features": Case(lambda x, y: kernels.flatten_features(x.reshape(N, 2, 3, 2)), per_example=True),
    "minibatch_cka_update": Case(
        lambda x, y: kernels.minibatch_cka_result(
            kernels.minibatch_cka_update(kernels.minibatch_cka_init(3), [x, y, x.reshape(N, 3, 4) + 1e3])
        )
    ),
    "minibatch_hsic_accumulate_merge_two_models": Case(_minibatch_two_models),
    "pca_covariance": Case(lambda x, y: kernels.pca(x, k=4).eigenvalues),
    "pca_gram": Case(lambda x, y: _pca_gram(jnp.tile(x, (1, 8)))),  # n = 64 < d = 96
    "pca_update_merge_result": Case(_pca_stream),
    "participation_ratio": Case(lambda x, y: kernels.participation_ratio(x)),
    # The other indices gather an example-split input (QR, eigh, sorts and the n × n RDM need every example).
    "procrustes": Case(lambda x, y: kernels.procrustes(x, y)),
    "cca": Case(lambda x, y: kernels.cca(x, y).correlations),
    "svcca": Case(lambda x, y: kernels.svcca(x, y, num_components=4).mean),
    "rdm": Case(lambda x, y: kernels.rdm(x)),
    "rsa_spearman": Case(lambda x, y: kernels.rsa(x, y)),
    "cca_all_pairs": Case(lambda x, y: kernels.cca_all_pairs([x, y]).mean, jit=False),
    "participation_ratio_gram": Case(lambda x, y: kernels.participation_ratio(jnp.tile(x, (1, 8)))),
    "first_pc_fraction": Case(lambda x, y: kernels.first_pc_fraction(x)),
    "first_pc_fraction_gram": Case(lambda x, y: kernels.first_pc_fraction(jnp.tile(x, (1, 8)))),
    "remove_top_pcs": Case(lambda x, y: kernels.remove_top_pcs(x, k=2), per_example=True),
    "project_top_pcs": Case(lambda x, y: kernels.project_top_pcs(x, k=2), per_example=True),
    "knn_distances": Case(lambda x, y: kernels.knn_distances(x, k=3, block_size=16), points=True),
    "twonn_from_distances": Case(
        lambda x, y: kernels.twonn_from_distances(kernels.knn_distances(x + y, k=2)[0]), points=True
    ),
    "twonn": Case(_twonn_no_warning(lambda x: kernels.twonn(x)), jit=False, points=True, duplicate=True),
    "twonn_scaling": Case(
        _twonn_no_warning(lambda x: kernels.twonn_scaling(x, key=KEY, num_scales=2).intrinsic_dim),
        jit=False,
        points=True,
    ),
    "twonn_subsampled": Case(
        _twonn_no_warning(lambda x: kernels.twonn_subsampled(x, key=KEY, repeats=2).estimates),
        jit=False,
        points=True,
    ),
}


def _inputs(case):
  if case.points:
    x = manifold_points(duplicate=case.duplicate)
    return x, np.random.default_rng(5).standard_normal(x.shape).astype(np.float32) * 1e-3
  return features()


def assert_same(got, want):
  got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(got_leaves) == len(want_leaves)
  for g, w in zip(got_leaves, want_leaves):
    g, w = np.asarray(g), np.asarray(w)
    assert g.shape == w.shape and g.dtype == w.dtype
    scale = np.max(np.abs(w)) if w.size else 0.0
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * scale)


def assert_layout(result, *, per_example: bool):
  """On an Explicit mesh: reductions come back unsplit, per-example results split along examples only."""
  for leaf in jax.tree.leaves(result):
    if not isinstance(leaf, jax.Array):
      continue
    spec = tuple(jax.typeof(leaf).sharding.spec)
    if per_example:
      assert spec[0] == "data" and all(s is None for s in spec[1:]), spec
    else:
      assert all(s is None for s in spec), spec


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_sharded_input_gives_the_unsharded_result(kind, name):
  case = CASES[name]
  mesh = make_mesh(kind)
  x, y = _inputs(case)
  want = case.fn(x, y)
  xs, ys = split(x, mesh), split(y, mesh)
  assert len(xs.sharding.device_set) == 8

  eager = case.fn(xs, ys)  # no mesh context: the mesh comes with the arrays
  assert_same(eager, want)
  with jax.set_mesh(mesh):
    traced = jax.jit(case.fn)(xs, ys) if case.jit else case.fn(xs, ys)
  assert_same(traced, want)
  if kind == "explicit":
    assert_layout(eager, per_example=case.per_example)
    assert_layout(traced, per_example=case.per_example)


# --- Independent float64 references for a few kernels, on split inputs ---


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_split_inputs_match_float64_references(kind):
  mesh = make_mesh(kind)
  x, y = features(seed=3)
  xs, ys = split(x, mesh), split(y, mesh)
  kx, ky = reference.linear_gram(x, center=True), reference.linear_gram(y, center=True)
  np.testing.assert_allclose(kernels.cka(xs, ys), reference.cka(kx, ky), rtol=1e-5)
  np.testing.assert_allclose(kernels.linear_cka_features(xs, ys, debiased=True), reference.cka(kx, ky, debiased=True), rtol=1e-5)
  # Minibatch CKA of one batch: the mean of HSIC₁ over one batch.
  state = kernels.minibatch_cka_update(kernels.minibatch_cka_init(1, 1), [xs], [ys])
  np.testing.assert_allclose(kernels.minibatch_cka_result(state), reference.minibatch_cka([[x]], [[y]]), rtol=1e-5)
  # PCA variances: eigh of the float64 covariance.
  x64 = np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(0)
  variances = np.linalg.eigvalsh(x64.T @ x64 / (N - 1))[::-1]
  np.testing.assert_allclose(kernels.pca(xs, k=4).eigenvalues, variances[:4], rtol=2e-5)
  np.testing.assert_allclose(kernels.participation_ratio(xs), variances.sum() ** 2 / (variances**2).sum(), rtol=2e-5)
  # Nearest neighbours: brute force in float64.
  p = manifold_points(seed=4)
  d = np.sqrt(((p[:, None, :].astype(np.float64) - p[None, :, :]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  dist, idx = kernels.knn_distances(split(p, mesh), k=2)
  np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :2], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(idx)[:, 0], np.argsort(d, axis=1, kind="stable")[:, 0])


# --- Example counts that do not divide over the devices ---


def test_splitting_needs_a_divisible_example_count():
  mesh = make_mesh("explicit")
  with pytest.raises(ValueError, match="does not evenly divide the dimension size 60"):
    split(np.zeros((N - 4, 3), np.float32), mesh)


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_padding_with_a_mask_equals_the_unpadded_batch(kind):
  """60 examples padded to 64 (so they split over 8 devices) with a mask give the 60-example results."""
  mesh = make_mesh(kind)
  x, y = features(seed=6)
  n = N - 4
  mask = np.arange(N) < n
  padded_x, padded_y = x.copy(), y.copy()
  padded_x[n:], padded_y[n:] = 1e6, -1e6  # padding rows that would spoil every statistic if used
  xs, ys, ms = split(padded_x, mesh), split(padded_y, mesh), split(mask, mesh)

  with jax.set_mesh(mesh):
    state = jax.jit(kernels.minibatch_cka_update)(kernels.minibatch_cka_init(2, 1), [xs, xs * xs], [ys], mask=ms)
  want = kernels.minibatch_cka_update(kernels.minibatch_cka_init(2, 1), [x[:n], x[:n] * x[:n]], [y[:n]])
  assert_same(kernels.minibatch_cka_result(state), kernels.minibatch_cka_result(want))

  got = kernels.pca_result(kernels.pca_update(kernels.pca_init(12), xs, mask=ms), k=4)
  want = kernels.pca_result(kernels.pca_update(kernels.pca_init(12), x[:n]), k=4)
  assert_same((got.eigenvalues, got.mean, got.num_examples), (want.eigenvalues, want.mean, want.num_examples))

  centred = kernels.center_features(xs, mask=ms)
  assert_same(np.asarray(centred)[:n], kernels.center_features(x[:n]))
  np.testing.assert_array_equal(np.asarray(centred)[n:], 0.0)


# --- Work that splits over examples stays split ---


@pytest.mark.parametrize("kind", ["explicit", "auto"])
@pytest.mark.parametrize(
    "name, fn",
    [
        ("linear_cka_features", lambda x, y: kernels.linear_cka_features(x, y, on_undefined="nan")),
        ("pca_covariance", lambda x, y: kernels.pca(x, k=2).eigenvalues),
        ("pca_update", lambda x, y: kernels.pca_update(kernels.pca_init(12), x, mask=np.arange(N) > 2).scatter),
        ("participation_ratio", lambda x, y: kernels.participation_ratio(x)),
    ],
)
def test_contractions_over_examples_are_psums_not_gathers(kind, name, fn):
  """`XᵀX`-type statistics (n ≥ d): each device reduces its own rows and only `d × d` partial sums travel."""
  mesh = make_mesh(kind)
  x, y = features()
  hlo = jax.jit(fn).lower(split(x, mesh), split(y, mesh)).compile().as_text()
  assert "all-reduce" in hlo
  assert "all-gather" not in hlo, name
