import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsim_jax import kernels
from rsim_jax.kernels import compensated
from tests.kernels import reference


def _layers(rng, n, *, offset=0.0, dims=(24, 60, 9, 130)):
  """Correlated layers of different widths and scales, like successive layers of a network."""
  base = rng.standard_normal((n, 16))
  out = []
  for i, d in enumerate(dims):
    w = rng.standard_normal((16, d))
    layer = np.tanh(base @ w / 4) * 10.0 ** (i - 2) + 0.3 * rng.standard_normal((n, d)) * 10.0 ** (i - 2)
    out.append((layer + offset).astype(np.float32))
  return out


def _batches(layers, size):
  n = len(layers[0])
  return [[a[i : i + size] for a in layers] for i in range(0, n, size)]


# 2.5 takes the raw-Gram path for the wide-scale layers and the shifted path for the small ones.
@pytest.mark.parametrize("offset", [0.0, 2.5, 1e4])
def test_self_matches_float64_reference(offset):
  rng = np.random.default_rng(0)
  layers = _layers(rng, 320, offset=offset)
  state = kernels.minibatch_cka_init(len(layers))
  for batch in _batches(layers, 64):
    state = kernels.minibatch_cka_update(state, batch)
  got = np.asarray(kernels.minibatch_cka_result(state))
  batches64 = [[b.astype(np.float64) for b in batch] for batch in _batches(layers, 64)]
  expected = reference.minibatch_cka(batches64, batches64)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.diag(got), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(got, got.T)
  assert int(state.num_batches) == 5


def test_two_models_match_float64_reference():
  rng = np.random.default_rng(1)
  xs = _layers(rng, 192)
  ys = _layers(np.random.default_rng(2), 192, dims=(33, 7, 70))
  ys[0] = ys[0] + xs[1][:, :33]  # make some cross-model similarity
  state = kernels.minibatch_cka_init(4, 3)
  for bx, by in zip(_batches(xs, 48), _batches(ys, 48)):
    state = kernels.minibatch_cka_update(state, bx, by)
  got = kernels.minibatch_cka_result(state)
  assert got.shape == (4, 3)
  as64 = lambda layers: [[b.astype(np.float64) for b in batch] for batch in _batches(layers, 48)]
  np.testing.assert_allclose(got, reference.minibatch_cka(as64(xs), as64(ys)), rtol=1e-5, atol=1e-7)


def test_dict_inputs_and_conv_maps_are_flattened():
  rng = np.random.default_rng(3)
  conv = rng.standard_normal((32, 4, 4, 3)).astype(np.float32)
  dense = rng.standard_normal((32, 10)).astype(np.float32)
  s1 = kernels.minibatch_cka_update(kernels.minibatch_cka_init(2), {"conv": conv, "dense": dense})
  s2 = kernels.minibatch_cka_update(kernels.minibatch_cka_init(2), [conv.reshape(32, -1), dense])
  np.testing.assert_allclose(kernels.minibatch_cka_result(s1), kernels.minibatch_cka_result(s2), rtol=1e-6)


def test_mask_equals_truncated_batch():
  rng = np.random.default_rng(4)
  layers = _layers(rng, 100)
  full = kernels.minibatch_cka_update(kernels.minibatch_cka_init(4), [a[:64] for a in layers])
  full = kernels.minibatch_cka_update(full, [a[64:] for a in layers])  # ragged tail of 36
  padded_tail = [np.concatenate([a[64:], 1e3 * rng.standard_normal((28,) + a.shape[1:]).astype(np.float32)]) for a in layers]
  mask = np.arange(64) < 36
  masked = kernels.minibatch_cka_update(kernels.minibatch_cka_init(4), [a[:64] for a in layers])
  masked = kernels.minibatch_cka_update(masked, padded_tail, mask=mask)
  np.testing.assert_allclose(
      kernels.minibatch_cka_result(masked), kernels.minibatch_cka_result(full), rtol=1e-5, atol=1e-7
  )


def test_merge_equals_single_stream():
  rng = np.random.default_rng(5)
  batches = _batches(_layers(rng, 256), 32)
  single = kernels.minibatch_cka_init(4)
  for b in batches:
    single = kernels.minibatch_cka_update(single, b)
  a, b = kernels.minibatch_cka_init(4), kernels.minibatch_cka_init(4)
  for batch in batches[:3]:
    a = kernels.minibatch_cka_update(a, batch)
  for batch in batches[3:]:
    b = kernels.minibatch_cka_update(b, batch)
  merged = kernels.minibatch_cka_merge(a, b)
  assert int(merged.num_batches) == len(batches)
  np.testing.assert_allclose(kernels.minibatch_cka_result(merged), kernels.minibatch_cka_result(single), rtol=1e-6)


def test_update_runs_inside_jit_and_scan():
  rng = np.random.default_rng(6)
  layers = _layers(rng, 128, dims=(8, 8))
  stacked = [a.reshape(4, 32, -1) for a in layers]

  @jax.jit
  def run(stacked):
    def body(state, batch):
      return kernels.minibatch_cka_update(state, list(batch)), None

    state, _ = jax.lax.scan(body, kernels.minibatch_cka_init(2), tuple(stacked))
    return kernels.minibatch_cka_result(state)

  eager = kernels.minibatch_cka_init(2)
  for b in _batches(layers, 32):
    eager = kernels.minibatch_cka_update(eager, b)
  np.testing.assert_allclose(run(stacked), kernels.minibatch_cka_result(eager), rtol=1e-6)


def test_compensated_sum_beats_plain_float32():
  values = jnp.full((100_000,), 0.1, jnp.float32)
  total = jax.lax.fori_loop(
      0, values.shape[0], lambda i, t: compensated.add(t, values[i]), compensated.zeros((), jnp.float32)
  )
  plain = jax.lax.fori_loop(0, values.shape[0], lambda i, t: t + values[i], jnp.float32(0))
  exact = 100_000 * float(np.float32(0.1))
  assert abs(float(compensated.value(total)) - exact) / exact < 1e-7
  assert abs(float(plain) - exact) / exact > 1e-5  # the failure the compensation exists for


def test_minibatch_cka_estimates_full_batch_cka():
  # Unbiased HSIC makes the minibatch estimate close to full-batch debiased CKA.
  rng = np.random.default_rng(7)
  layers = _layers(rng, 2000, dims=(20, 40))
  state = kernels.minibatch_cka_init(2)
  for b in _batches(layers, 200):
    state = kernels.minibatch_cka_update(state, b)
  full = kernels.cka(layers[0], layers[1], debiased=True)
  np.testing.assert_allclose(kernels.minibatch_cka_result(state)[0, 1], full, atol=0.02)


def test_errors():
  rng = np.random.default_rng(8)
  layers = _layers(rng, 16)
  state = kernels.minibatch_cka_init(4)
  with pytest.raises(ValueError, match="num_x=4 layers but `xs` has 3"):
    kernels.minibatch_cka_update(state, layers[:3])
  with pytest.raises(ValueError, match=r"`xs\[2\]` has 15"):
    kernels.minibatch_cka_update(state, [layers[0], layers[1], layers[2][:15], layers[3]])
  with pytest.raises(ValueError, match="at least 4"):
    kernels.minibatch_cka_update(state, [a[:3] for a in layers])
  with pytest.raises(ValueError, match="valid examples"):
    kernels.minibatch_cka_update(state, layers, mask=np.arange(16) < 3)
  with pytest.raises(ValueError, match="shape \\(16,\\)"):
    kernels.minibatch_cka_update(state, layers, mask=np.ones(8, bool))
  with pytest.raises(ValueError, match="one model with itself"):
    kernels.minibatch_cka_update(state, layers, layers)
  with pytest.raises(ValueError, match="pass the second model"):
    kernels.minibatch_cka_update(kernels.minibatch_cka_init(4, 2), layers)
  with pytest.raises(ValueError, match="sequence"):
    kernels.minibatch_cka_update(state, layers[0])
  with pytest.raises(ValueError, match="No minibatch"):
    kernels.minibatch_cka_result(state)
  with pytest.raises(ValueError, match="positive number"):
    kernels.minibatch_cka_init(0)
  with pytest.raises(ValueError, match="different layouts"):
    kernels.minibatch_cka_merge(state, kernels.minibatch_cka_init(3))


def test_nonfinite_and_constant_layers_are_reported_not_silent():
  rng = np.random.default_rng(9)
  layers = _layers(rng, 32)
  bad = [layers[0], layers[1].copy(), layers[2], np.full_like(layers[3], 7.0)]
  bad[1][5, 3] = np.nan
  state = kernels.minibatch_cka_update(kernels.minibatch_cka_init(4), bad)
  with pytest.raises(ValueError, match=r"NaN/Inf .*xs\[1\] \(1 batches\)"):
    kernels.minibatch_cka_result(state)
  bad[1][5, 3] = 0.0
  state = kernels.minibatch_cka_update(kernels.minibatch_cka_init(4), bad)
  with pytest.raises(ValueError, match=r"undefined for xs\[3\]"):
    kernels.minibatch_cka_result(state)
  result = np.asarray(kernels.minibatch_cka_result(state, on_undefined="nan"))
  assert np.isnan(result[3]).all() and np.isnan(result[:, 3]).all()
  assert np.isfinite(result[:3, :3]).all()
