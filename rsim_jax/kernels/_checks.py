"""Input validation shared by the kernels.

Checks on *values* (NaN/Inf, zero variance, duplicates) need concrete arrays: they run when the input is
concrete and are skipped under `jit` tracing, where the kernels instead propagate a flag or document NaN.
Checks on *shapes* always run, since shapes are static.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rsim_jax.kernels import _sharding


def is_concrete(x: Any) -> bool:
  """True when `x` holds values now (not a tracer inside `jit`/`vmap`/`grad`)."""
  return not isinstance(x, jax.core.Tracer)


def as_float_array(x: Any, name: str) -> jax.Array:
  """`x` as a floating JAX array; integers and bools are promoted to float32."""
  arr = jnp.asarray(x)
  if not jnp.issubdtype(arr.dtype, jnp.floating):
    arr = arr.astype(jnp.float32)
  return arr


def check_rank(x: jax.Array, rank: int | tuple[int, ...], name: str, *, hint: str = "") -> None:
  ranks = (rank,) if isinstance(rank, int) else tuple(rank)
  if x.ndim not in ranks:
    want = " or ".join(str(r) for r in ranks)
    msg = f"`{name}` must have rank {want}, got shape {tuple(x.shape)} (rank {x.ndim})."
    if hint:
      msg += " " + hint
    raise ValueError(msg)


def check_2d(x: jax.Array, name: str) -> None:
  """Activations enter the kernels as (examples, features)."""
  check_rank(
      x, 2, name,
      hint="Pass activations as (num_examples, num_features); flatten conv maps per example with "
      "`rsim_jax.kernels.flatten_features`.",
  )


def check_square(gram: jax.Array, name: str) -> None:
  check_rank(gram, 2, name, hint="A Gram matrix is (n, n).")
  if gram.shape[0] != gram.shape[1]:
    raise ValueError(f"`{name}` must be a square (n, n) Gram matrix, got shape {tuple(gram.shape)}.")


def check_same_examples(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
  if a.shape[0] != b.shape[0]:
    raise ValueError(
        f"`{name_a}` and `{name_b}` must hold the same examples in the same order: got "
        f"{a.shape[0]} and {b.shape[0]} rows."
    )


def check_min_examples(n: int, minimum: int, name: str, *, why: str) -> None:
  if n < minimum:
    raise ValueError(f"`{name}` has {n} examples; {why} needs at least {minimum}.")


_all_finite_jit = jax.jit(lambda x: jnp.all(jnp.isfinite(x)))


def _all_finite(x: jax.Array) -> bool:
  """On one CPU device NumPy reads the buffer in place (no compilation per new shape, which costs more than the
  check); elsewhere one jitted reduction."""
  if _sharding.on_one_cpu_device(x):
    return bool(np.isfinite(np.asarray(x)).all())
  return bool(_all_finite_jit(x))


def check_finite(x: jax.Array, name: str) -> None:
  """Raises when a concrete `x` holds NaN or Inf (no-op under tracing)."""
  if is_concrete(x) and not _all_finite(x):
    bad = int(np.asarray(jnp.sum(~jnp.isfinite(x))))
    raise ValueError(
        f"`{name}` contains {bad} NaN/Inf value(s); statistics of such activations are undefined. "
        "Check the model (diverged training, overflow in low precision) or drop those examples."
    )


def validated_pair(x: Any, y: Any, *, min_examples: int | None = None, why: str = "") -> tuple[jax.Array, jax.Array]:
  """Two `(n, d_x)`, `(n, d_y)` float arrays of the same examples, finite; with `min_examples`, at least that
  many rows (`why` says what needs them). Raises ValueError naming `x` or `y`."""
  x, y = as_float_array(x, "x"), as_float_array(y, "y")
  check_2d(x, "x")
  check_2d(y, "y")
  check_same_examples(x, y, "x", "y")
  if min_examples is not None:
    check_min_examples(x.shape[0], min_examples, "x", why=why)
  check_finite(x, "x")
  check_finite(y, "y")
  return x, y


def check_centring_precision(error: jax.Array, tolerance: float, name: str, dtype) -> None:
  """Raises when a concrete estimate of the relative rounding error of a centred Gram (`gram.centring_error`)
  exceeds `tolerance` (no-op under tracing, where the kernels return NaN instead)."""
  if not is_concrete(error):
    return
  err = float(np.asarray(error))
  if not err <= tolerance:  # NaN included
    raise ValueError(
        f"`{name}` has lost its centred part to {jnp.dtype(dtype).name} rounding: centring it leaves an "
        f"estimated relative error of {err:.2g} (at most {tolerance:g} is accepted), so HSIC/CKA from it would "
        "be noise. This happens with the Gram of raw features that share a large offset (entries ~ d·offset², "
        "signal ~ d·variance), or of a (nearly) constant representation. Centre the features before forming "
        "the Gram — `kernels.gram_linear(x, center=True)` or `gram_linear(center_features(x))` — or pass the "
        "features to `kernels.cka(x, y)`, which centres them, or form the Gram in float64."
    )
