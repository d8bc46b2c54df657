"""Leave-one-group-out jackknife of minibatch CKA (rsim_jax.kernels.jackknife).

The references here are independent: per-batch HSIC₁ from `reference.hsic_unbiased` (float64 NumPy, the
formula of Song et al. 2012 term by term) and the jackknife written out with explicit loops over the groups.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsim_jax import kernels
from tests.kernels import reference


def _layers(rng, n, dims, *, shared=None):
  """Layers of different widths driven by a common latent (so CKA is far from 0 and from 1)."""
  latent = rng.standard_normal((n, 5)) if shared is None else shared
  return [
      (np.tanh(latent @ rng.standard_normal((5, d)) / 2) + 0.7 * rng.standard_normal((n, d))).astype(np.float32)
      for d in dims
  ]


def _batches(layers, size):
  n = len(layers[0])
  return [[a[i : i + size] for a in layers] for i in range(0, n, size)]


def _reference_terms(batches_x, batches_y):
  """Float64 per-batch HSIC₁: `(B, Lx, Ly)`, `(B, Lx)`, `(B, Ly)`."""
  xy, xx, yy = [], [], []
  for bx, by in zip(batches_x, batches_y):
    kx = [reference.linear_gram(a, center=True) for a in bx]
    ky = [reference.linear_gram(b, center=True) for b in by]
    xy.append([[reference.hsic_unbiased(k, l) for l in ky] for k in kx])
    xx.append([reference.hsic_unbiased(k, k) for k in kx])
    yy.append([reference.hsic_unbiased(l, l) for l in ky])
  return np.array(xy), np.array(xx), np.array(yy)


def _reference_jackknife(xy, xx, yy, groups):
  """Delete-a-group jackknife of `Σxy / sqrt(Σxx Σyy)`, one group at a time; `groups[t]` is batch t's group."""
  estimates = []
  for g in np.unique(groups):
    keep = groups != g
    estimates.append(xy[keep].sum(0) / np.sqrt(np.outer(xx[keep].sum(0), yy[keep].sum(0))))
  estimates = np.array(estimates)
  m = len(estimates)
  full = xy.sum(0) / np.sqrt(np.outer(xx.sum(0), yy.sum(0)))
  return full, np.sqrt((m - 1) / m * ((estimates - estimates.mean(0)) ** 2).sum(0))


def _stream(batches_x, batches_y, *, num_groups):
  two = batches_y is not batches_x
  num_y = len(batches_y[0]) if two else None
  groups = kernels.minibatch_cka_groups_init(len(batches_x[0]), num_y, num_groups=num_groups)
  plain = kernels.minibatch_cka_init(len(batches_x[0]), num_y)
  for bx, by in zip(batches_x, batches_y):
    groups = kernels.minibatch_cka_groups_update(groups, bx, by if two else None)
    plain = kernels.minibatch_cka_update(plain, bx, by if two else None)
  return groups, plain


def _two_models(seed, n, size):
  rng = np.random.default_rng(seed)
  latent = rng.standard_normal((n, 5))
  xs = _layers(rng, n, (24, 40, 9), shared=latent)
  ys = _layers(rng, n, (16, 30), shared=latent)
  return _batches(xs, size), _batches(ys, size)


@pytest.mark.parametrize("num_groups", [12, 16])  # 12 batches: one batch per group, also with spare groups
def test_leave_one_batch_out_matches_float64_reference(num_groups):
  bx, by = _two_models(0, 12 * 32, 32)
  state, plain = _stream(bx, by, num_groups=num_groups)
  result = kernels.minibatch_cka_jackknife(state)
  assert result.num_groups_used == 12 and result.cka.shape == result.stderr.shape == (3, 2)
  # (a) the full estimate is the plain minibatch CKA of the same batches
  np.testing.assert_allclose(result.cka, kernels.minibatch_cka_result(plain), rtol=1e-6)
  # (b) the SE is the leave-one-batch-out jackknife of independent float64 HSIC₁ values
  as64 = lambda batches: [[a.astype(np.float64) for a in b] for b in batches]
  full, stderr = _reference_jackknife(*_reference_terms(as64(bx), as64(by)), np.arange(12))
  np.testing.assert_allclose(result.cka, full, rtol=1e-5)
  np.testing.assert_allclose(result.stderr, stderr, rtol=1e-5)
  assert np.all(np.asarray(result.stderr) > 1e-3)  # a real spread, not a trivially matched 0


def test_fewer_groups_than_batches_is_round_robin_delete_a_group():
  bx, by = _two_models(1, 23 * 24, 24)
  state, plain = _stream(bx, by, num_groups=5)
  np.testing.assert_array_equal(state.num_batches, [5, 5, 5, 4, 4])
  assert int(state.num_updates) == 23
  result = kernels.minibatch_cka_jackknife(state)
  assert result.num_groups_used == 5
  as64 = lambda batches: [[a.astype(np.float64) for a in b] for b in batches]
  full, stderr = _reference_jackknife(*_reference_terms(as64(bx), as64(by)), np.arange(23) % 5)
  np.testing.assert_allclose(result.cka, kernels.minibatch_cka_result(plain), rtol=1e-6)
  np.testing.assert_allclose(result.stderr, stderr, rtol=1e-5)


def test_one_model_with_itself():
  rng = np.random.default_rng(2)
  batches = _batches(_layers(rng, 10 * 32, (24, 40, 9, 60)), 32)
  state, plain = _stream(batches, batches, num_groups=32)
  assert state.hsic_yy.high.shape == (32, 0)
  result = kernels.minibatch_cka_jackknife(state)
  np.testing.assert_allclose(result.cka, kernels.minibatch_cka_result(plain), rtol=1e-6)
  as64 = [[a.astype(np.float64) for a in b] for b in batches]
  xy, xx, _ = _reference_terms(as64, as64)
  _, stderr = _reference_jackknife(xy, xx, xx, np.arange(10))
  np.testing.assert_allclose(result.stderr, stderr, rtol=1e-5, atol=1e-12)
  np.testing.assert_array_equal(np.diag(result.stderr), 0.0)  # CKA of a layer with itself is 1 in every subsample
  np.testing.assert_array_equal(result.stderr, np.asarray(result.stderr).T)


def test_float64_under_x64_matches_reference_to_double_precision():
  bx, by = _two_models(3, 10 * 24, 24)
  as64 = lambda batches: [[a.astype(np.float64) for a in b] for b in batches]
  full, stderr = _reference_jackknife(*_reference_terms(as64(bx), as64(by)), np.arange(10) % 7)
  with jax.enable_x64(True):
    state, _ = _stream(as64(bx), as64(by), num_groups=7)
    assert state.hsic_xy.high.dtype == jnp.float64
    result = kernels.minibatch_cka_jackknife(state)
    assert result.stderr.dtype == jnp.float64
  np.testing.assert_allclose(result.cka, full, rtol=1e-10)
  np.testing.assert_allclose(result.stderr, stderr, rtol=1e-8)


@pytest.mark.parametrize("num_groups", [4, 64])  # round-robin wrapping several times / never
def test_merge_of_two_halves_equals_one_pass(num_groups):
  bx, by = _two_models(4, 13 * 16, 16)
  single, _ = _stream(bx, by, num_groups=num_groups)
  a, _ = _stream(bx[:7], by[:7], num_groups=num_groups)
  b, _ = _stream(bx[7:], by[7:], num_groups=num_groups)
  for merged in (kernels.minibatch_cka_groups_merge(a, b), jax.jit(kernels.minibatch_cka_groups_merge)(a, b)):
    np.testing.assert_array_equal(merged.num_batches, single.num_batches)
    assert int(merged.num_updates) == 13
    # group by group: b's groups continue a's round-robin
    for field in ("hsic_xy", "hsic_xx", "hsic_yy"):
      np.testing.assert_allclose(
          *(np.asarray(getattr(s, field).high) + np.asarray(getattr(s, field).low) for s in (merged, single)), rtol=1e-6
      )
    got, want = kernels.minibatch_cka_jackknife(merged), kernels.minibatch_cka_jackknife(single)
    np.testing.assert_allclose(got.cka, want.cka, rtol=1e-6)
    np.testing.assert_allclose(got.stderr, want.stderr, rtol=1e-5)
    assert got.num_groups_used == want.num_groups_used == min(13, num_groups)


def test_accumulate_is_pure_under_jit_and_scan_and_skips_empty_updates():
  bx, _ = _two_models(5, 9 * 16, 16)
  stacked = [np.stack([b[i] for b in bx]) for i in range(3)]  # (9, 16, d) per layer
  masks = np.ones((9, 16), bool)
  masks[4, 3:] = False  # update 4 has 3 valid rows: skipped (num_batches 0)

  @jax.jit
  def run(stacked, masks):
    def body(state, batch):
      *layers, mask = batch
      return kernels.minibatch_cka_groups_accumulate(state, kernels.minibatch_hsic(list(layers), mask=mask)), None

    return jax.lax.scan(body, kernels.minibatch_cka_groups_init(3, num_groups=5), (*stacked, masks))[0]

  state = run(stacked, masks)
  assert int(state.num_updates) == 8 and int(state.num_skipped) == 1
  np.testing.assert_array_equal(state.num_batches, [2, 2, 2, 1, 1])  # the skipped batch took no group
  kept = bx[:4] + bx[5:]
  eager, plain = _stream(kept, kept, num_groups=5)
  np.testing.assert_allclose(state.hsic_xy.high + state.hsic_xy.low, eager.hsic_xy.high + eager.hsic_xy.low, rtol=1e-6)
  np.testing.assert_allclose(kernels.minibatch_cka_jackknife(state).cka, kernels.minibatch_cka_result(plain), rtol=1e-6)


def test_device_summed_terms_fill_one_group():
  bx, by = _two_models(6, 8 * 16, 16)
  state = kernels.minibatch_cka_groups_init(3, 2, num_groups=8)
  for i in range(0, 8, 2):  # a "step" of two devices: their terms summed, one group
    t0, t1 = kernels.minibatch_hsic(bx[i], by[i]), kernels.minibatch_hsic(bx[i + 1], by[i + 1])
    state = kernels.minibatch_cka_groups_accumulate(state, jax.tree.map(jnp.add, t0, t1))
  np.testing.assert_array_equal(state.num_batches, [2, 2, 2, 2, 0, 0, 0, 0])
  result = kernels.minibatch_cka_jackknife(state)
  assert result.num_groups_used == 4
  as64 = lambda batches: [[a.astype(np.float64) for a in b] for b in batches]
  _, stderr = _reference_jackknife(*_reference_terms(as64(bx), as64(by)), np.arange(8) // 2)
  np.testing.assert_allclose(result.stderr, stderr, rtol=1e-5)


# --- Coverage: intervals cka ± 1.96 SE around a known population value ---

_K, _DX, _DY, _SIGMA = 6, 16, 12, 1.0  # latent dim, widths, noise


def _population_model():
  """Layers `X_a = Z A_a + σE`, `Y_b = Z B_b + σE'` with Z, E, E' standard normal rows.

  For linear kernels HSIC is `‖Cov(X, Y)‖_F²` and HSIC₁ is unbiased for it at any batch size, so the value
  minibatch CKA estimates is `‖A_aᵀB_b‖_F² / (‖A_aᵀA_a + σ²I‖_F ‖B_bᵀB_b + σ²I‖_F)`, in closed form.
  """
  rng = np.random.default_rng(10)
  a = [rng.standard_normal((_K, _DX)), 0.5 * rng.standard_normal((_K, _DX))]
  a[1][:3] = 0.0  # the second layer sees only part of the latent
  b = [rng.standard_normal((_K, _DY)), 0.3 * rng.standard_normal((_K, _DY))]
  cov = lambda m, d: m.T @ m + _SIGMA**2 * np.eye(d)
  hsic = lambda cov_xy: np.sum(cov_xy**2)  # ‖Cov‖_F²
  target = np.array(
      [[hsic(ai.T @ bj) / np.sqrt(hsic(cov(ai, _DX)) * hsic(cov(bj, _DY))) for bj in b] for ai in a]
  )
  return a, b, target


def test_confidence_intervals_cover_the_population_cka():
  num_draws, num_batches, batch = 400, 20, 64
  a, b, target = _population_model()
  assert 0.15 < target.min() and target.max() < 0.7
  a = [jnp.asarray(m, jnp.float32) for m in a]
  b = [jnp.asarray(m, jnp.float32) for m in b]

  def draw(key):
    def body(states, k):
      kz, kx, ky = jax.random.split(k, 3)
      z = jax.random.normal(kz, (batch, _K))
      noise = lambda k, i, d: _SIGMA * jax.random.normal(jax.random.fold_in(k, i), (batch, d))
      xs = [z @ m + noise(kx, i, _DX) for i, m in enumerate(a)]
      ys = [z @ m + noise(ky, i, _DY) for i, m in enumerate(b)]
      terms = kernels.minibatch_hsic(xs, ys)
      return tuple(kernels.minibatch_cka_groups_accumulate(s, terms) for s in states), None

    # The same batches into leave-one-batch-out (20 groups) and delete-a-group (5 groups of 4 batches) states.
    init = tuple(kernels.minibatch_cka_groups_init(2, 2, num_groups=g) for g in (num_batches, 5))
    return jax.lax.scan(body, init, jax.random.split(key, num_batches))[0]

  states = jax.device_get(jax.jit(jax.vmap(draw))(jax.random.split(jax.random.key(0), num_draws)))
  estimates = []
  for states_g, quantile in zip(states, (1.96, 2.776)):  # 2.776: Student t, 4 degrees of freedom, 97.5%
    results = [kernels.minibatch_cka_jackknife(jax.tree.map(lambda x: x[i], states_g)) for i in range(num_draws)]
    cka = np.stack([np.asarray(r.cka) for r in results])
    stderr = np.stack([np.asarray(r.stderr) for r in results])
    error = np.abs(cka - target)
    coverage = np.mean(error <= quantile * stderr)
    assert 0.90 <= coverage <= 0.99, coverage
    # Per pair too, and the SE is the spread of the estimate over draws (not just wide enough).
    assert np.all(np.mean(error <= quantile * stderr, axis=0) >= 0.87)
    np.testing.assert_allclose(np.sqrt(np.mean(stderr**2, axis=0)) / cka.std(axis=0), 1.0, atol=0.2)
    # The check can fail: a third of the SE covers far less.
    assert np.mean(error <= quantile * stderr / 3) < 0.75
    estimates.append(cka)
  np.testing.assert_allclose(estimates[0], estimates[1], rtol=1e-5)  # the same batches: the same estimate


# --- Errors ---


def test_errors():
  rng = np.random.default_rng(11)
  layers = _layers(rng, 16, (8, 8, 8, 8))
  for bad in (1, 0, 2.5, True, None):
    with pytest.raises(ValueError, match="`num_groups` must be an integer ≥ 2"):
      kernels.minibatch_cka_groups_init(4, num_groups=bad)
  with pytest.raises(ValueError, match="positive number"):
    kernels.minibatch_cka_groups_init(0)
  state = kernels.minibatch_cka_groups_init(4, num_groups=4)
  with pytest.raises(ValueError, match="num_x=4 layers but `xs` has 3"):
    kernels.minibatch_cka_groups_update(state, layers[:3])
  with pytest.raises(ValueError, match="pass the second model"):
    kernels.minibatch_cka_groups_update(kernels.minibatch_cka_groups_init(4, 2), layers)
  with pytest.raises(ValueError, match=r"`terms.hsic_xy` has shape \(3, 3\)"):
    kernels.minibatch_cka_groups_accumulate(state, kernels.minibatch_hsic(layers[:3]))
  with pytest.raises(ValueError, match=r"`terms.hsic_yy` has shape \(4,\)"):
    kernels.minibatch_cka_groups_accumulate(state, kernels.minibatch_hsic(layers, layers))
  with pytest.raises(ValueError, match="different layouts"):
    kernels.minibatch_cka_groups_merge(state, kernels.minibatch_cka_groups_init(4, num_groups=5))
  with pytest.raises(ValueError, match="different layouts"):
    kernels.minibatch_cka_groups_merge(state, kernels.minibatch_cka_groups_init(4, 4, num_groups=4))
  with pytest.raises(ValueError, match="at least 2 non-empty groups, got 0"):
    kernels.minibatch_cka_jackknife(state)
  one = kernels.minibatch_cka_groups_update(state, layers)
  with pytest.raises(ValueError, match="at least 2 non-empty groups, got 1 .*stream more batches"):
    kernels.minibatch_cka_jackknife(one)
  two = kernels.minibatch_cka_groups_update(one, layers)
  assert kernels.minibatch_cka_jackknife(two).num_groups_used == 2
  with pytest.raises(ValueError, match="on_undefined"):
    kernels.minibatch_cka_jackknife(two, on_undefined="ignore")
  with pytest.raises(ValueError, match="outside"):
    jax.jit(kernels.minibatch_cka_jackknife)(two)


def test_nonfinite_and_constant_layers_are_reported_not_silent():
  rng = np.random.default_rng(12)
  batches = [_layers(rng, 16, (8, 8, 8, 8)) for _ in range(3)]
  nan = [[a.copy() for a in b] for b in batches]
  nan[1][1][5, 3] = np.nan
  state, _ = _stream(nan, nan, num_groups=4)
  with pytest.raises(ValueError, match=r"NaN/Inf .*xs\[1\] \(1 batches\)"):
    kernels.minibatch_cka_jackknife(state)

  constant = [[a.copy() for a in b] for b in batches]
  for b in constant:
    b[3][:] = 7.0
  state, _ = _stream(constant, constant, num_groups=4)
  with pytest.raises(ValueError, match=r"undefined for xs\[3\]"):
    kernels.minibatch_cka_jackknife(state)
  result = kernels.minibatch_cka_jackknife(state, on_undefined="nan")
  for field in (result.cka, result.stderr):
    field = np.asarray(field)
    assert np.isnan(field[3]).all() and np.isnan(field[:, 3]).all() and np.isfinite(field[:3, :3]).all()

  # Varies in the first batch only: CKA is defined, but not with that batch left out.
  constant[0][3] = batches[0][3]
  state, _ = _stream(constant, constant, num_groups=4)
  with pytest.raises(ValueError, match=r"leave-one-group-out CKA of xs\[3\] is undefined"):
    kernels.minibatch_cka_jackknife(state)
  result = kernels.minibatch_cka_jackknife(state, on_undefined="nan")
  assert np.isfinite(np.asarray(result.cka)).all()
  stderr = np.asarray(result.stderr)
  assert np.isnan(stderr[3, :3]).all() and np.isfinite(stderr[:3, :3]).all()
