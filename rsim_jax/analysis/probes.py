"""Linear probes per layer (Nguyen, Raghu & Kornblith 2021, Sec. 4, after Alain & Bengio 2016).

A linear classifier fitted on a layer's (frozen) representation measures how linearly decodable the labels
are there; inside a block structure probe accuracy plateaus. The probe here is a ridge-regression classifier
(one-hot targets, closed form, argmax prediction), which needs no optimiser and no tuning loop:

  `W = argmin ‖X̃W − Y‖² + λ‖W‖²`,  X̃ = standardised features with a bias column.

Primal form `(X̃ᵀX̃ + λI)⁻¹X̃ᵀY` when d ≤ n, dual form `X̃ᵀ(X̃X̃ᵀ + λI)⁻¹Y` when d > n (wide conv layers), so
the cost is `O(n·d·min(n, d))` either way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rsim_jax.kernels import flatten_features


def _standardise(train, test):
  mean = jnp.mean(train, axis=0)
  std = jnp.std(train, axis=0)
  std = jnp.where(std > 0, std, 1.0)
  return (train - mean) / std, (test - mean) / std


@jax.jit
def _ridge_predict(train, train_onehot, test, l2):
  train, test = _standardise(train, test)
  n, d = train.shape
  scale = l2 * n  # λ relative to the number of examples, so one value works across data set sizes
  bias_train = jnp.ones((n, 1), train.dtype)
  xt = jnp.concatenate([train, bias_train], axis=1)
  xs = jnp.concatenate([test, jnp.ones((test.shape[0], 1), test.dtype)], axis=1)
  hp = jax.lax.Precision.HIGHEST
  if d + 1 <= n:
    gram = jnp.matmul(xt.T, xt, precision=hp) + scale * jnp.eye(d + 1, dtype=xt.dtype)
    w = jax.scipy.linalg.solve(gram, jnp.matmul(xt.T, train_onehot, precision=hp), assume_a="pos")
  else:
    gram = jnp.matmul(xt, xt.T, precision=hp) + scale * jnp.eye(n, dtype=xt.dtype)
    w = jnp.matmul(xt.T, jax.scipy.linalg.solve(gram, train_onehot, assume_a="pos"), precision=hp)
  return jnp.argmax(jnp.matmul(xs, w, precision=hp), axis=1)


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels, *, l2: float = 1e-3) -> float:
  """Test accuracy of a ridge-regression classifier fitted on one layer's training-set features.

  Args:
    train_features: `(n, ...)` activations of the training examples (flattened per example).
    train_labels: `(n,)` int labels.
    test_features: `(m, ...)` activations of held-out examples.
    test_labels: `(m,)` int labels.
    l2: ridge strength λ, per training example.

  Returns:
    Accuracy in [0, 1].
  """
  xtr = flatten_features(jnp.asarray(train_features, jnp.float32))
  xte = flatten_features(jnp.asarray(test_features, jnp.float32))
  ytr = np.asarray(train_labels)
  yte = np.asarray(test_labels)
  if xtr.shape[0] != ytr.shape[0] or xte.shape[0] != yte.shape[0]:
    raise ValueError(
        f"Features and labels must hold the same examples: train {xtr.shape[0]} vs {ytr.shape[0]}, "
        f"test {xte.shape[0]} vs {yte.shape[0]}."
    )
  if xtr.shape[1] != xte.shape[1]:
    raise ValueError(f"Train and test features differ in size: {xtr.shape[1]} vs {xte.shape[1]}.")
  if l2 <= 0:
    raise ValueError(f"`l2` must be positive, got {l2}.")
  num_classes = int(max(ytr.max(), yte.max())) + 1
  onehot = jax.nn.one_hot(ytr, num_classes, dtype=jnp.float32)
  predictions = _ridge_predict(xtr, onehot, xte, jnp.float32(l2))
  return float(np.mean(np.asarray(predictions) == yte))


def probe_all_layers(train_layers: dict, train_labels, test_layers: dict, test_labels, *, l2: float = 1e-3) -> dict:
  """`{layer name: probe test accuracy}` for aligned dicts of per-layer activations."""
  missing = set(train_layers) ^ set(test_layers)
  if missing:
    raise ValueError(f"Train and test activations must have the same layers; differing: {sorted(missing)}.")
  return {
      name: linear_probe_accuracy(train_layers[name], train_labels, test_layers[name], test_labels, l2=l2)
      for name in train_layers
  }
