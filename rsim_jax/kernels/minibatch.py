"""Minibatch CKA over all pairs of layers, streamed (Nguyen, Raghu & Kornblith 2021, Sec. 3.1).

Full-batch CKA needs the `(N, N)` Gram matrix of every layer over the whole data set. Minibatch CKA instead
averages the unbiased HSIC estimator (Song et al. 2012) over k minibatches of n examples:

  `CKA_mb(X_a, Y_b) = mean_i HSIC₁(K_a^i, L_b^i) / sqrt(mean_i HSIC₁(K_a^i, K_a^i) · mean_i HSIC₁(L_b^i, L_b^i))`

with `K_a^i` the Gram of layer a on batch i. Because HSIC₁ is unbiased, the result does not depend on the
batch size in expectation, and memory is `O(L·n²)` whatever N is.

Each update forms the Gram of every layer once, U-centres the stack `(L, n, n)` so that
`HSIC₁(K, L) = ⟨K̃, L̃⟩ / (n(n−3))` (Székely & Rizzo 2014), and contracts all pairs in one matrix product
`(L_x, n²) · (n², L_y)`: the cost is the Gram GEMMs, `O(L·n²·d)`, never a loop over pairs.

Streaming API (state is a pytree; every function is pure and jit-able):

  state = minibatch_cka_init(num_x, num_y=None)           # None: compare one model with itself
  for batch in data:
    state = minibatch_cka_update(state, xs, ys, mask=...)  # xs: num_x arrays (n, ...) for the same n examples
  cka = minibatch_cka_result(state)                         # (num_x, num_y)

`minibatch_cka_merge` combines states from different hosts or data shards; `rsim_jax.parallel` runs the
update over a mesh, one minibatch per device.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsim_jax.kernels import _checks
from rsim_jax.kernels import _sharding
from rsim_jax.kernels import compensated
from rsim_jax.kernels.features import flatten_features
from rsim_jax.kernels.gram import DEFAULT_PRECISION, u_center_masked

MIN_EXAMPLES = 4  # HSIC₁ divides by n(n−3).


class MinibatchCKAState(NamedTuple):
  """Running sums of minibatch HSIC₁ values for all layer pairs.

  Attributes:
    hsic_xy: `(num_x, num_y)` Σ over batches of HSIC₁(K_a, L_b) (for one model, num_y = num_x).
    hsic_xx: `(num_x,)` Σ over batches of HSIC₁(K_a, K_a).
    hsic_yy: `(num_y,)` Σ of HSIC₁(L_b, L_b); shape `(0,)` when a model is compared with itself.
    num_batches: batches accumulated (those with at least 4 valid examples).
    num_skipped: masked batches skipped because fewer than 4 examples were valid.
    nonfinite_x: `(num_x,)` number of batches in which layer a held NaN/Inf (or overflowed its Gram).
    nonfinite_y: `(num_y,)` likewise for the second model (`(0,)` for one model).
  """

  hsic_xy: compensated.CompensatedSum
  hsic_xx: compensated.CompensatedSum
  hsic_yy: compensated.CompensatedSum
  num_batches: jax.Array
  num_skipped: jax.Array
  nonfinite_x: jax.Array
  nonfinite_y: jax.Array

  @property
  def num_x(self) -> int:
    return self.hsic_xy.high.shape[0]

  @property
  def num_y(self) -> int:
    return self.hsic_xy.high.shape[1]

  @property
  def compares_two_models(self) -> bool:
    """False when initialised with `num_y=None` (one model compared with itself)."""
    return self.hsic_yy.high.shape[0] > 0


class MinibatchHSIC(NamedTuple):
  """HSIC₁ values of one minibatch (or their sum over devices); the increment of a `MinibatchCKAState`."""

  hsic_xy: jax.Array
  hsic_xx: jax.Array
  hsic_yy: jax.Array
  num_batches: jax.Array
  num_skipped: jax.Array
  nonfinite_x: jax.Array
  nonfinite_y: jax.Array


def minibatch_cka_init(num_x: int, num_y: int | None = None) -> MinibatchCKAState:
  """An empty accumulator for `num_x` layers against `num_y` layers (None: the same `num_x` layers).

  Sums are kept in float64 when `jax_enable_x64` is on, else in compensated float32.
  """
  for name, value in (("num_x", num_x), ("num_y", num_y)):
    if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
      raise ValueError(f"`{name}` must be a positive number of layers, got {value!r}.")
  cross = num_y is not None
  ny = num_y if cross else num_x
  return MinibatchCKAState(
      hsic_xy=compensated.zeros((num_x, ny)),
      hsic_xx=compensated.zeros((num_x,)),
      hsic_yy=compensated.zeros((ny if cross else 0,)),
      num_batches=jnp.zeros((), jnp.int32),
      num_skipped=jnp.zeros((), jnp.int32),
      nonfinite_x=jnp.zeros((num_x,), jnp.int32),
      nonfinite_y=jnp.zeros((ny if cross else 0,), jnp.int32),
  )


def _as_layer_list(layers, name: str) -> list[jax.Array]:
  if isinstance(layers, Mapping):
    layers = list(layers.values())
  if isinstance(layers, (jax.Array, np.ndarray)):
    raise ValueError(
        f"`{name}` must be a sequence (list/tuple/dict) of per-layer activation arrays, got one array of shape "
        f"{tuple(layers.shape)}. Wrap a single layer as [{name}]."
    )
  layers = list(layers)
  if not layers:
    raise ValueError(f"`{name}` is empty: pass at least one layer's activations.")
  out = []
  for i, x in enumerate(layers):
    arr = _checks.as_float_array(x, f"{name}[{i}]")
    if arr.ndim < 2:
      raise ValueError(
          f"`{name}[{i}]` must be (num_examples, ...) with at least one feature axis, got shape {tuple(arr.shape)}."
      )
    out.append(arr)
  return out


def prepare_batch(xs, ys, mask, state: MinibatchCKAState | None):
  """Validates one minibatch (layer lists, example counts, mask, layout against `state`) and returns
  `(xs, ys, mask)` as lists of float arrays and a bool mask. Shape checks are static, so they run under jit."""
  xs = _as_layer_list(xs, "xs")
  ys = None if ys is None else _as_layer_list(ys, "ys")
  if mask is not None:
    mask = jnp.asarray(mask, dtype=bool)
  _check_batch(xs, ys, mask, state)
  return xs, ys, mask


def _check_batch(xs, ys, mask, state: MinibatchCKAState | None):
  """Shape checks (static, so they run under jit too); returns the batch size."""
  n = xs[0].shape[0]
  for name, layers in (("xs", xs), ("ys", ys or [])):
    for i, x in enumerate(layers):
      if x.shape[0] != n:
        raise ValueError(
            f"All layers must hold the same minibatch: `xs[0]` has {n} examples but `{name}[{i}]` has "
            f"{x.shape[0]}."
        )
  _checks.check_min_examples(n, MIN_EXAMPLES, "xs[0]", why="minibatch CKA (unbiased HSIC divides by n(n−3))")
  if mask is not None:
    if mask.shape != (n,):
      raise ValueError(f"`mask` must have shape ({n},) to match the minibatch, got {tuple(mask.shape)}.")
    if _checks.is_concrete(mask) and int(np.asarray(mask).sum()) < MIN_EXAMPLES:
      raise ValueError(
          f"`mask` marks {int(np.asarray(mask).sum())} valid examples; minibatch CKA needs at least "
          f"{MIN_EXAMPLES} per batch. Merge the ragged tail into the previous batch or drop it."
      )
  if state is not None:
    if len(xs) != state.num_x:
      raise ValueError(f"The state was initialised for num_x={state.num_x} layers but `xs` has {len(xs)}.")
    if state.compares_two_models:
      if ys is None:
        raise ValueError(
            f"The state compares two models (num_y={state.num_y}); pass the second model's layers as `ys`."
        )
      if len(ys) != state.num_y:
        raise ValueError(f"The state was initialised for num_y={state.num_y} layers but `ys` has {len(ys)}.")
    elif ys is not None:
      raise ValueError(
          "The state compares one model with itself (num_y=None); to compare two models initialise it with "
          "minibatch_cka_init(num_x, num_y)."
      )
  return n


# Largest tr(K) / tr(HKH) = 1 + ‖mean‖² / (total variance) for which the Gram of the raw features is formed
# directly: float32 rounding of K grows with ‖x_i‖‖x_j‖ while the signal grows with the centred norms, so
# the error is amplified by about this ratio (post-ReLU activations sit near 2–4).
MAX_OFFSET_RATIO = 8.0


def _shifted_gram(x, valid, precision):
  """Gram of `x − x_p` over valid rows, with p the first valid row.

  U-centring is exactly invariant to `K_ij → K_ij + a_i + a_j + c`, which is what shifting every feature by a
  constant does to a linear Gram, so any shift gives the same HSIC₁ mathematically. Shifting by one of the
  examples puts the features within their own spread of zero, which is what float32 needs to avoid the
  cancellation of large offsets (a mean would cost a second pass over the activations).
  """
  pivot = _sharding.row(x, jnp.argmax(valid))[None, :]
  shifted = _sharding.where(valid[:, None], x - pivot, 0.0)
  return _sharding.gram(shifted, shifted, precision=precision)


def _gram(x, valid, precision):
  """Linear Gram of one layer, accurate for features with large offsets, at the cost of one GEMM when not.

  The raw Gram `XXᵀ` needs no pass over the activations besides the GEMM. Its own entries tell whether the
  features carry an offset large enough to spoil it: `tr(K) / (tr(K) − 1ᵀK1/m)` is `1 + ‖μ‖²/Σ var`. Only
  then (or when that test is NaN) is the Gram recomputed from shifted features (`_shifted_gram`).
  """
  both_valid = valid[:, None] & valid[None, :]
  raw = _sharding.where(both_valid, _sharding.gram(x, x, precision=precision), 0.0)
  m = jnp.maximum(jnp.sum(valid), 1).astype(raw.dtype)
  trace = _sharding.trace(raw)
  centred_trace = trace - jnp.sum(raw) / m
  accurate = centred_trace * MAX_OFFSET_RATIO >= trace  # False for NaN too
  return jax.lax.cond(accurate, lambda: raw, lambda: _shifted_gram(x, valid, precision))


def _u_centred_grams(layers, mask, precision):
  """`(L, n, n)` U-centred linear Grams of the layers, and `(L,)` flags for non-finite layers."""
  n = layers[0].shape[0]
  # The (n,) flags index rows and columns of every Gram, so a mask split over devices is replicated.
  valid = jnp.ones((n,), bool) if mask is None else _sharding.replicated(mask)
  grams = []
  previous = None
  for x in layers:
    x = flatten_features(x)
    if previous is not None:
      # Order the per-layer GEMMs one after another: left independent, XLA:CPU runs several at once and each
      # asks for every core, which oversubscribes them (~30% slower on 2 cores). The barrier adds no work.
      previous, x = jax.lax.optimization_barrier((previous, x))
    previous = _gram(x, valid, precision)
    grams.append(previous)
  grams = jnp.stack(grams)
  # Any NaN/Inf in a valid row of a layer (or an overflowing square) shows on its Gram's diagonal.
  nonfinite = ~jnp.all(jnp.isfinite(_sharding.diagonal(grams)), axis=1)
  grams = _sharding.where(~nonfinite[:, None, None], grams, 0.0)
  return u_center_masked(grams, valid), nonfinite


def _pair_inner_products(a, b, precision):
  """`(L_a, L_b)` Frobenius inner products of two stacks of `(n, n)` matrices, as one GEMM.

  With the Gram rows split over devices, each device contracts its own rows and XLA adds the partial
  products (a psum of `L_a·L_b` values); the result is replicated.
  """
  acc = compensated.accumulation_dtype()
  a2 = a.reshape(a.shape[0], -1).astype(acc)
  b2 = b.reshape(b.shape[0], -1).astype(acc)
  return _sharding.contract_examples(a2.T, b2.T, precision=precision)


def minibatch_hsic(
    xs: Sequence[jax.Array],
    ys: Sequence[jax.Array] | None = None,
    *,
    mask: jax.Array | None = None,
    precision=DEFAULT_PRECISION,
) -> MinibatchHSIC:
  """HSIC₁ of all layer pairs on one minibatch; the increment that `minibatch_cka_update` accumulates.

  Args:
    xs: `num_x` activation arrays `(n, ...)` of the same n examples (each layer its own feature shape).
    ys: optional `num_y` arrays `(n, ...)` of a second model on the same examples; None compares `xs` with
      themselves.
    mask: optional `(n,)` bool, False for padding rows of a ragged last batch.
    precision: matmul precision of the Gram matrices.

  Returns:
    A `MinibatchHSIC` with `hsic_xy (num_x, num_y)`, `hsic_xx (num_x,)`, `hsic_yy (num_y,)` (empty for one
    model), `num_batches` 1 (0 when fewer than 4 examples are valid: the batch then adds nothing),
    `num_skipped`, and per-layer non-finite flags.
  """
  xs, ys, mask = prepare_batch(xs, ys, mask, None)
  return _jitted_minibatch_hsic(xs, ys, mask, precision)


def _minibatch_hsic(xs, ys, mask, precision) -> MinibatchHSIC:
  n = xs[0].shape[0]
  m = jnp.asarray(n, jnp.float32) if mask is None else jnp.sum(mask).astype(jnp.float32)
  usable = m >= MIN_EXAMPLES
  acc = compensated.accumulation_dtype()
  # Batches with fewer than 4 valid rows get weight 0 rather than a division by ≤ 0.
  scale = jnp.where(usable, 1.0 / jnp.maximum(m * (m - 3.0), 1.0), 0.0).astype(acc)
  gx, bad_x = _u_centred_grams(xs, mask, precision)
  if ys is None:
    hsic_xy = _pair_inner_products(gx, gx, precision) * scale
    hsic_xx = jnp.diagonal(hsic_xy)
    hsic_yy = jnp.zeros((0,), acc)
    bad_y = jnp.zeros((0,), bool)
  else:
    gy, bad_y = _u_centred_grams(ys, mask, precision)
    hsic_xy = _pair_inner_products(gx, gy, precision) * scale
    hsic_xx = _sharding.einsum_replicated("anm,anm->a", gx.astype(acc), gx.astype(acc)) * scale
    hsic_yy = _sharding.einsum_replicated("anm,anm->a", gy.astype(acc), gy.astype(acc)) * scale
  return MinibatchHSIC(
      hsic_xy=hsic_xy,
      hsic_xx=hsic_xx,
      hsic_yy=hsic_yy,
      num_batches=usable.astype(jnp.int32),
      num_skipped=(~usable).astype(jnp.int32),
      nonfinite_x=(bad_x & usable).astype(jnp.int32),
      nonfinite_y=(bad_y & usable).astype(jnp.int32),
  )


def minibatch_cka_accumulate(state: MinibatchCKAState, terms: MinibatchHSIC) -> MinibatchCKAState:
  """Adds one minibatch's (or one device-summed set of) HSIC₁ values to the running sums."""
  return MinibatchCKAState(
      hsic_xy=compensated.add(state.hsic_xy, terms.hsic_xy),
      hsic_xx=compensated.add(state.hsic_xx, terms.hsic_xx),
      hsic_yy=compensated.add(state.hsic_yy, terms.hsic_yy),
      num_batches=state.num_batches + terms.num_batches,
      num_skipped=state.num_skipped + terms.num_skipped,
      nonfinite_x=state.nonfinite_x + terms.nonfinite_x,
      nonfinite_y=state.nonfinite_y + terms.nonfinite_y,
  )


# One compiled computation, as in `minibatch_cka_update` (op by op, arrays split over devices would pay a
# dispatch with collectives for every small step of the U-centring).
_jitted_minibatch_hsic = jax.jit(_minibatch_hsic, static_argnames=("precision",))


@functools.partial(jax.jit, static_argnames=("precision",))
def _update(state, xs, ys, mask, precision):
  return minibatch_cka_accumulate(state, _minibatch_hsic(xs, ys, mask, precision))


def minibatch_cka_update(
    state: MinibatchCKAState,
    xs: Sequence[jax.Array],
    ys: Sequence[jax.Array] | None = None,
    *,
    mask: jax.Array | None = None,
    precision=DEFAULT_PRECISION,
) -> MinibatchCKAState:
  """Accumulates one minibatch into `state` (one fused, jit-compiled computation over all layers).

  Args:
    state: from `minibatch_cka_init` (or a previous update).
    xs: `num_x` activation arrays `(n, ...)` for the same n ≥ 4 examples; a dict's values are taken in order.
      Feature shapes may differ between layers; conv maps are flattened per example.
    ys: `num_y` arrays `(n, ...)` of a second model on the same examples, iff the state has `num_y`.
    mask: optional `(n,)` bool marking the valid rows of a padded (ragged) last batch.
    precision: matmul precision of the Gram matrices (`lax.Precision.HIGHEST` by default; on TPU,
      `DEFAULT` trades accuracy for speed).

  Returns:
    The updated state. NaN/Inf in a layer is recorded per layer and reported by `minibatch_cka_result`.
  """
  xs, ys, mask = prepare_batch(xs, ys, mask, state)
  return _update(state, xs, ys, mask, precision)


def minibatch_cka_merge(a: MinibatchCKAState, b: MinibatchCKAState) -> MinibatchCKAState:
  """Combines two accumulators over disjoint minibatches (e.g. from two hosts): as if one had seen all."""
  if a.hsic_xy.high.shape != b.hsic_xy.high.shape or a.compares_two_models != b.compares_two_models:
    raise ValueError(
        f"Cannot merge states of different layouts: {a.hsic_xy.high.shape} (two models: "
        f"{a.compares_two_models}) vs {b.hsic_xy.high.shape} (two models: {b.compares_two_models})."
    )
  return MinibatchCKAState(
      hsic_xy=compensated.merge(a.hsic_xy, b.hsic_xy),
      hsic_xx=compensated.merge(a.hsic_xx, b.hsic_xx),
      hsic_yy=compensated.merge(a.hsic_yy, b.hsic_yy),
      num_batches=a.num_batches + b.num_batches,
      num_skipped=a.num_skipped + b.num_skipped,
      nonfinite_x=a.nonfinite_x + b.nonfinite_x,
      nonfinite_y=a.nonfinite_y + b.nonfinite_y,
  )


def _raise_on_bad_state(state: MinibatchCKAState, xx, yy) -> None:
  """Value checks on a concrete state: what cannot be reported from inside jit is reported here."""
  if int(state.num_batches) == 0:
    raise ValueError(
        "No minibatch was accumulated (or every batch had fewer than 4 valid examples); call "
        "minibatch_cka_update with batches of at least 4 examples before minibatch_cka_result."
    )
  for name, counts in (("xs", state.nonfinite_x), ("ys", state.nonfinite_y)):
    counts = np.asarray(counts)
    if counts.any():
      layers = ", ".join(f"{name}[{i}] ({c} batches)" for i, c in enumerate(counts) if c)
      raise ValueError(
          f"NaN/Inf (or float overflow in the Gram matrix) in layer activations: {layers}. CKA of such "
          "layers is undefined; check the model (diverged training, low-precision overflow) or its inputs."
      )
  for name, self_hsic in (("xs", xx), ("ys", yy)):
    self_hsic = np.asarray(self_hsic)
    bad = np.flatnonzero(~(self_hsic > 0))
    if bad.size:
      layers = ", ".join(f"{name}[{i}]" for i in bad)
      raise ValueError(
          f"CKA is undefined for {layers}: the accumulated self-HSIC is not positive (a constant, "
          "zero-variance layer, or too few examples). Drop those layers, or pass on_undefined='nan'."
      )


def minibatch_cka_result(state: MinibatchCKAState, *, on_undefined: str = "raise") -> jax.Array:
  """Minibatch CKA of all accumulated layer pairs: `Σ HSIC₁(K_a, L_b) / sqrt(Σ HSIC₁(K_a,K_a) Σ HSIC₁(L_b,L_b))`.

  (The ratio of sums equals the ratio of means over batches of Nguyen et al. 2021.)

  Args:
    state: an accumulated `MinibatchCKAState`.
    on_undefined: "raise" — a ValueError for layers with NaN/Inf, zero variance or no batches (checked when
      the state is concrete); "nan" — NaN in those entries.

  Returns:
    `(num_x, num_y)` CKA matrix (`(num_x, num_x)` with a unit diagonal for one model).
  """
  if on_undefined not in ("raise", "nan"):
    raise ValueError(f"`on_undefined` must be 'raise' or 'nan', got {on_undefined!r}.")
  xy = compensated.value(state.hsic_xy)
  xx = compensated.value(state.hsic_xx)
  yy = compensated.value(state.hsic_yy) if state.compares_two_models else xx
  bad_x = state.nonfinite_x > 0
  bad_y = state.nonfinite_y > 0 if state.compares_two_models else bad_x
  if on_undefined == "raise" and _checks.is_concrete(xy):
    _raise_on_bad_state(state, xx, yy if state.compares_two_models else jnp.zeros((0,)))
  defined = (xx[:, None] > 0) & (yy[None, :] > 0) & ~bad_x[:, None] & ~bad_y[None, :]
  denominator = jnp.sqrt(jnp.where(defined, xx[:, None] * yy[None, :], 1.0))
  return jnp.where(defined, xy / denominator, jnp.nan)
