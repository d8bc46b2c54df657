import numpy as np
import pytest

from rsim_jax.analysis import probes


def _data(rng, n, d, informative, seed=123):
  labels = rng.integers(0, 3, n)
  x = rng.standard_normal((n, d))
  if informative:  # class means 4 noise-s.d. apart along fixed random directions (same for train and test)
    means = np.random.default_rng(seed).standard_normal((3, d))
    x += 4.0 * (means / np.linalg.norm(means, axis=1, keepdims=True))[labels]
  return x.astype(np.float32), labels


@pytest.mark.parametrize("d", [10, 600])  # primal (d < n) and dual (d > n) forms
def test_probe_separates_informative_from_noise(d):
  rng = np.random.default_rng(0)
  xtr, ytr = _data(rng, 300, d, True)
  xte, yte = _data(rng, 300, d, True)
  good = probes.linear_probe_accuracy(xtr, ytr, xte, yte, l2=1e-2)
  ntr, nytr = _data(rng, 300, d, False)
  nte, nyte = _data(rng, 300, d, False)
  chance = probes.linear_probe_accuracy(ntr, nytr, nte, nyte, l2=1e-2)
  assert good > 0.85 and chance < 0.5


def test_primal_and_dual_agree_in_the_limit():
  # With the same data and λ, the primal and dual ridge solutions are identical.
  rng = np.random.default_rng(1)
  x, y = _data(rng, 80, 60, True)
  acc_primal = probes.linear_probe_accuracy(x, y, x, y, l2=1e-1)
  acc_dual = probes.linear_probe_accuracy(x[:50], y[:50], x, y, l2=1e-1)
  assert 0.5 < acc_dual <= acc_primal + 0.2


def test_probe_all_layers_and_errors():
  rng = np.random.default_rng(2)
  x, y = _data(rng, 50, 5, True)
  out = probes.probe_all_layers({"a": x, "b": x[:, :2]}, y, {"a": x, "b": x[:, :2]}, y)
  assert set(out) == {"a", "b"} and out["a"] >= out["b"]
  with pytest.raises(ValueError, match="same examples"):
    probes.linear_probe_accuracy(x, y[:10], x, y)
  with pytest.raises(ValueError, match="same layers"):
    probes.probe_all_layers({"a": x}, y, {"b": x}, y)
