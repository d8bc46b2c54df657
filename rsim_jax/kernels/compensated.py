"""Compensated (TwoSum) summation for streaming statistics kept in float32.

A running float32 total loses the low-order bits of every addend once it is much larger than them; over
thousands of minibatches this drifts by ~1e-5 relative. Carrying the rounding error of each addition in a
second array (Knuth's TwoSum; Ogita, Rump & Oishi 2005, "Accurate sum and dot product") keeps the total
accurate to about one float32 rounding of the final value, at the cost of a few extra flops per element. When `jax_enable_x64` is on,
the same code runs in float64.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def accumulation_dtype():
  """float64 when `jax_enable_x64` is on, else float32 (then compensated)."""
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


class CompensatedSum(NamedTuple):
  """A running sum `high + low`, with `low` the accumulated rounding error of `high`."""

  high: jax.Array
  low: jax.Array


def two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Error-free transformation: `s = fl(a + b)` and `e` with `a + b = s + e` exactly (Knuth 1969)."""
  s = a + b
  b_virtual = s - a
  a_virtual = s - b_virtual
  return s, (a - a_virtual) + (b - b_virtual)


def zeros(shape, dtype=None) -> CompensatedSum:
  dtype = accumulation_dtype() if dtype is None else dtype
  return CompensatedSum(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def add(total: CompensatedSum, value: jax.Array) -> CompensatedSum:
  """`total + value` as a double-word sum: `low` is renormalised into `high` each time (a second TwoSum), so
  it stays below one ulp of `high` and its own rounding never accumulates (double-word arithmetic, Dekker 1971)."""
  high, err = two_sum(total.high, value.astype(total.high.dtype))
  return CompensatedSum(*two_sum(high, err + total.low))


def merge(a: CompensatedSum, b: CompensatedSum) -> CompensatedSum:
  """`a + b` for two partial sums (e.g. from two hosts)."""
  high, err = two_sum(a.high, b.high)
  return CompensatedSum(*two_sum(high, err + (a.low + b.low)))


def value(total: CompensatedSum) -> jax.Array:
  """The sum, rounded once to the accumulation dtype."""
  return total.high + total.low
