"""Standard errors of minibatch CKA from the same pass: the leave-one-group-out (delete-a-group) jackknife.

Minibatch CKA (`rsim_jax.kernels.minibatch`, Nguyen, Raghu & Kornblith 2021) is a ratio of means of per-batch
unbiased HSIC₁ values,

  `θ = mean_i h_i^xy / sqrt(mean_i h_i^xx · mean_i h_i^yy)`,

so its sampling error comes from the batch-to-batch variation of the `h_i`. Keeping the HSIC₁ sums per group
of batches, besides their total, gives the jackknife standard error of θ without a second pass over the data
(Quenouille 1956; Tukey 1958; Efron & Stein 1981, "The jackknife estimate of variance"; groups of
observations as the deleted unit: Kott 2001, "The delete-a-group jackknife"):

  `θ_(g)` = CKA of the sums with group g left out (`total − group g`), for each of the G' non-empty groups,
  `SE = sqrt((G'−1)/G' · Σ_g (θ_(g) − θ_(·))²)`, with `θ_(·) = mean_g θ_(g)`.

Batch t goes to group `t mod G` (round-robin): the state has a fixed size whatever the number of batches,
which need not be known in advance, and groups differ in size by at most one batch. With `G ≥` the number of
batches every group holds one batch: the exact leave-one-batch-out jackknife. With fewer groups than batches it
is the delete-a-group jackknife, as good for a smooth statistic such as this ratio once G' is a few tens.

The SE is that of θ as an estimate of its population value `E h^xy / sqrt(E h^xx · E h^yy)` (what θ converges
to over infinitely many batches of the same size) for the networks at hand: it treats batches as independent
draws of examples (shuffled data), and says nothing about the variation over training seeds. With few groups,
an interval `θ ± t_{G'−1, 0.975}·SE` (Student t with G'−1 degrees of freedom) covers better than `± 1.96·SE`.

Streaming API (the state is a pytree; init/accumulate/update/merge are pure and jit-able):

  state = minibatch_cka_groups_init(num_x, num_y=None, num_groups=32)
  for batch in data:
    state = minibatch_cka_groups_update(state, xs, ys, mask=...)  # or, with terms from `minibatch_hsic`:
    # state = minibatch_cka_groups_accumulate(state, terms)
  result = minibatch_cka_jackknife(state)   # host-side: cka (num_x, num_y), stderr, num_groups_used

Accumulating the same terms into a `MinibatchCKAState` as well costs only `O(G·L_x·L_y)` memory and
`O(L_x·L_y)` flops per batch; the Gram matrices, `O(L·n²·d)`, dominate the pass.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsim_jax.kernels import compensated
from rsim_jax.kernels import minibatch
from rsim_jax.kernels.gram import DEFAULT_PRECISION

DEFAULT_NUM_GROUPS = 32


class MinibatchCKAGroupsState(NamedTuple):
  """Per-group running sums of minibatch HSIC₁ values for all layer pairs (G groups, round-robin over batches).

  Attributes:
    hsic_xy: `(G, num_x, num_y)` Σ over the batches of group g of HSIC₁(K_a, L_b) (one model: num_y = num_x).
    hsic_xx: `(G, num_x)` Σ over the batches of group g of HSIC₁(K_a, K_a).
    hsic_yy: `(G, num_y)` likewise for the second model; `(G, 0)` when a model is compared with itself.
    num_batches: `(G,)` minibatches in each group (a device-summed update of D minibatches adds D to one group).
    num_updates: `()` accumulated updates with at least one usable minibatch; the next goes to group
      `num_updates mod G`.
    num_skipped: `()` masked minibatches skipped because fewer than 4 examples were valid.
    nonfinite_x: `(num_x,)` number of batches in which layer a held NaN/Inf (as in `MinibatchCKAState`).
    nonfinite_y: `(num_y,)` likewise for the second model (`(0,)` for one model).
  """

  hsic_xy: compensated.CompensatedSum
  hsic_xx: compensated.CompensatedSum
  hsic_yy: compensated.CompensatedSum
  num_batches: jax.Array
  num_updates: jax.Array
  num_skipped: jax.Array
  nonfinite_x: jax.Array
  nonfinite_y: jax.Array

  @property
  def num_groups(self) -> int:
    return self.hsic_xy.high.shape[0]

  @property
  def num_x(self) -> int:
    return self.hsic_xy.high.shape[1]

  @property
  def num_y(self) -> int:
    return self.hsic_xy.high.shape[2]

  @property
  def compares_two_models(self) -> bool:
    """False when initialised with `num_y=None` (one model compared with itself)."""
    return self.hsic_yy.high.shape[1] > 0


class CKAWithError(NamedTuple):
  """Minibatch CKA with its jackknife standard error.

  Attributes:
    cka: `(num_x, num_y)` the minibatch CKA of all batches (what `minibatch_cka_result` gives).
    stderr: `(num_x, num_y)` its leave-one-group-out jackknife standard error (0 on the diagonal of one model).
    num_groups_used: G', the number of non-empty groups the jackknife left out in turn.
  """

  cka: jax.Array
  stderr: jax.Array
  num_groups_used: int


def minibatch_cka_groups_init(
    num_x: int, num_y: int | None = None, *, num_groups: int = DEFAULT_NUM_GROUPS
) -> MinibatchCKAGroupsState:
  """An empty per-group accumulator for `num_x` layers against `num_y` layers (None: the same `num_x` layers).

  Args:
    num_x: layers of the first model.
    num_y: layers of the second model; None compares the first model with itself.
    num_groups: G ≥ 2, the number of groups the batches are dealt to round-robin. Memory is
      `G·num_x·num_y` sums; with G ≥ the number of batches the jackknife leaves out one batch at a time.

  Sums are kept in float64 when `jax_enable_x64` is on, else in compensated float32.
  """
  if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 2:
    raise ValueError(
        f"`num_groups` must be an integer ≥ 2 (the jackknife leaves out one group at a time), got {num_groups!r}."
    )
  plain = minibatch.minibatch_cka_init(num_x, num_y)  # validates num_x, num_y
  grouped = lambda total: compensated.zeros((int(num_groups),) + total.high.shape)
  return MinibatchCKAGroupsState(
      hsic_xy=grouped(plain.hsic_xy),
      hsic_xx=grouped(plain.hsic_xx),
      hsic_yy=grouped(plain.hsic_yy),
      num_batches=jnp.zeros((int(num_groups),), jnp.int32),
      num_updates=jnp.zeros((), jnp.int32),
      num_skipped=plain.num_skipped,
      nonfinite_x=plain.nonfinite_x,
      nonfinite_y=plain.nonfinite_y,
  )


def _check_terms(state: MinibatchCKAGroupsState, terms: minibatch.MinibatchHSIC) -> None:
  """Static shape checks (they run under jit too)."""
  ny = state.num_y if state.compares_two_models else 0
  expected = {
      "hsic_xy": (state.num_x, state.num_y),
      "hsic_xx": (state.num_x,),
      "hsic_yy": (ny,),
      "num_batches": (),
      "nonfinite_x": (state.num_x,),
      "nonfinite_y": (ny,),
  }
  for name, shape in expected.items():
    got = tuple(jnp.shape(getattr(terms, name)))
    if got != shape:
      raise ValueError(
          f"`terms.{name}` has shape {got} but the state (num_x={state.num_x}, num_y="
          f"{state.num_y if state.compares_two_models else None}) needs {shape}: pass the `MinibatchHSIC` of one "
          "minibatch (or its sum over devices) from `minibatch_hsic` on the same layers as the state."
      )


def _add_to_group(total: compensated.CompensatedSum, group, value, use) -> compensated.CompensatedSum:
  """`total[group] += value` when `use`, as a compensated sum; touches only row `group`."""
  row = compensated.CompensatedSum(total.high[group], total.low[group])
  added = compensated.add(row, value)
  high = jnp.where(use, added.high, row.high)
  low = jnp.where(use, added.low, row.low)
  return compensated.CompensatedSum(total.high.at[group].set(high), total.low.at[group].set(low))


def minibatch_cka_groups_accumulate(
    state: MinibatchCKAGroupsState, terms: minibatch.MinibatchHSIC
) -> MinibatchCKAGroupsState:
  """Adds one update's HSIC₁ values to group `state.num_updates mod G`. Pure and jit-able; no value checks.

  Args:
    state: from `minibatch_cka_groups_init`.
    terms: the `MinibatchHSIC` of one minibatch (`minibatch_hsic`), or their sum over the devices of one
      data-parallel step: one call is one unit of the round-robin. An update whose `num_batches` is 0 (every
      minibatch skipped for having fewer than 4 valid examples) changes only `num_skipped`: it takes no group
      and does not advance the round-robin.

  Returns:
    The updated state. Only one group's row of `O(num_x·num_y)` sums is written.
  """
  _check_terms(state, terms)
  use = terms.num_batches > 0
  group = jnp.mod(state.num_updates, state.num_groups)
  return MinibatchCKAGroupsState(
      hsic_xy=_add_to_group(state.hsic_xy, group, terms.hsic_xy, use),
      hsic_xx=_add_to_group(state.hsic_xx, group, terms.hsic_xx, use),
      hsic_yy=_add_to_group(state.hsic_yy, group, terms.hsic_yy, use),
      num_batches=state.num_batches.at[group].add(jnp.where(use, terms.num_batches, 0).astype(jnp.int32)),
      num_updates=state.num_updates + use.astype(jnp.int32),
      num_skipped=state.num_skipped + terms.num_skipped,
      nonfinite_x=state.nonfinite_x + terms.nonfinite_x,
      nonfinite_y=state.nonfinite_y + terms.nonfinite_y,
  )


@functools.partial(jax.jit, static_argnames=("precision",))
def _update(state, xs, ys, mask, precision):
  return minibatch_cka_groups_accumulate(state, minibatch.minibatch_hsic(xs, ys, mask=mask, precision=precision))


def minibatch_cka_groups_update(
    state: MinibatchCKAGroupsState,
    xs: Sequence[jax.Array],
    ys: Sequence[jax.Array] | None = None,
    *,
    mask: jax.Array | None = None,
    precision=DEFAULT_PRECISION,
) -> MinibatchCKAGroupsState:
  """Accumulates one minibatch into `state` (one jit-compiled computation), like `minibatch_cka_update`.

  Args:
    state: from `minibatch_cka_groups_init` (or a previous update).
    xs: `num_x` activation arrays `(n, ...)` for the same n ≥ 4 examples; a dict's values are taken in order.
    ys: `num_y` arrays `(n, ...)` of a second model on the same examples, iff the state has `num_y`.
    mask: optional `(n,)` bool marking the valid rows of a padded (ragged) last batch.
    precision: matmul precision of the Gram matrices.

  Returns:
    The updated state.
  """
  xs, ys, mask = minibatch.prepare_batch(xs, ys, mask, state)
  return _update(state, xs, ys, mask, precision)


def minibatch_cka_groups_merge(a: MinibatchCKAGroupsState, b: MinibatchCKAGroupsState) -> MinibatchCKAGroupsState:
  """Combines two accumulators over disjoint batches (e.g. two hosts or data shards), group by group; jit-able.

  The groups of `b` are first rotated by `a.num_updates` (b's group g becomes group `(g + a.num_updates) mod G`),
  so the result is exactly the state of one stream that saw a's updates and then b's: the round-robin carries
  on, groups stay within one update of each other in size, and merging is associative (a tree of merges over
  hosts gives the same groups as a chain). Each group is then a union of batches from the shards; the jackknife
  stays valid, as it only needs the groups to be disjoint sets of independent batches of about the same size.
  """
  if a.hsic_xy.high.shape != b.hsic_xy.high.shape or a.compares_two_models != b.compares_two_models:
    raise ValueError(
        f"Cannot merge states of different layouts: (num_groups, num_x, num_y) = {a.hsic_xy.high.shape} (two "
        f"models: {a.compares_two_models}) vs {b.hsic_xy.high.shape} (two models: {b.compares_two_models}). "
        "Initialise both with the same minibatch_cka_groups_init arguments."
    )
  shift = jnp.mod(a.num_updates, a.num_groups)
  rotate = lambda x: jnp.roll(x, shift, axis=0)
  rotate_sum = lambda total: compensated.CompensatedSum(rotate(total.high), rotate(total.low))
  return MinibatchCKAGroupsState(
      hsic_xy=compensated.merge(a.hsic_xy, rotate_sum(b.hsic_xy)),
      hsic_xx=compensated.merge(a.hsic_xx, rotate_sum(b.hsic_xx)),
      hsic_yy=compensated.merge(a.hsic_yy, rotate_sum(b.hsic_yy)),
      num_batches=a.num_batches + rotate(b.num_batches),
      num_updates=a.num_updates + b.num_updates,
      num_skipped=a.num_skipped + b.num_skipped,
      nonfinite_x=a.nonfinite_x + b.nonfinite_x,
      nonfinite_y=a.nonfinite_y + b.nonfinite_y,
  )


def _sum_groups(total: compensated.CompensatedSum) -> compensated.CompensatedSum:
  """Compensated sum over the leading (group) axis: a pairwise tree of `compensated.merge`, log2(G) levels."""
  high, low = total.high, total.low
  while high.shape[0] > 1:
    if high.shape[0] % 2:
      pad = [(0, 1)] + [(0, 0)] * (high.ndim - 1)
      high, low = jnp.pad(high, pad), jnp.pad(low, pad)
    half = high.shape[0] // 2
    merged = compensated.merge(
        compensated.CompensatedSum(high[:half], low[:half]), compensated.CompensatedSum(high[half:], low[half:])
    )
    high, low = merged.high, merged.low
  return compensated.CompensatedSum(high[0], low[0])


def minibatch_cka_groups_total(state: MinibatchCKAGroupsState) -> minibatch.MinibatchCKAState:
  """The plain `MinibatchCKAState` of all accumulated batches (sums over the groups); jit-able.

  `minibatch_cka_result` of it is the minibatch CKA of the whole pass (equal, up to float rounding of the
  summation order, to that of a `MinibatchCKAState` fed the same batches).
  """
  return minibatch.MinibatchCKAState(
      hsic_xy=_sum_groups(state.hsic_xy),
      hsic_xx=_sum_groups(state.hsic_xx),
      hsic_yy=_sum_groups(state.hsic_yy),
      num_batches=jnp.sum(state.num_batches),
      num_skipped=state.num_skipped,
      nonfinite_x=state.nonfinite_x,
      nonfinite_y=state.nonfinite_y,
  )


_jitted_total = jax.jit(minibatch_cka_groups_total)


def _as_float64(total: compensated.CompensatedSum) -> np.ndarray:
  """`high + low` in float64 on the host: exact for a float32 double-word sum (48 significant bits)."""
  return np.asarray(total.high, np.float64) + np.asarray(total.low, np.float64)


def _leave_one_out_cka(xy, xx, yy, total_xy, total_xx, total_yy):
  """`(G', num_x, num_y)` CKA of `total − group` for each group, in float64 (inf/NaN where a self-sum is ≤ 0),
  and the `(num_x,)`, `(num_y,)` flags of layers whose self-sum is ≤ 0 with some group left out."""
  loo_xy = total_xy[None] - xy
  loo_xx = total_xx[None] - xx
  loo_yy = total_yy[None] - yy
  with np.errstate(divide="ignore", invalid="ignore"):
    cka = loo_xy / np.sqrt(loo_xx[:, :, None] * loo_yy[:, None, :])
  return cka, np.any(~(loo_xx > 0), axis=0), np.any(~(loo_yy > 0), axis=0)


def minibatch_cka_jackknife(state: MinibatchCKAGroupsState, *, on_undefined: str = "raise") -> CKAWithError:
  """Minibatch CKA of all accumulated batches and its leave-one-group-out jackknife standard error.

  `θ = Σ h^xy / sqrt(Σ h^xx Σ h^yy)` over all batches; `θ_(g)` the same with the sums of group g removed
  (`total − group`, from the compensated totals); over the G' non-empty groups
  `SE = sqrt((G'−1)/G' · Σ_g (θ_(g) − θ_(·))²)` (Efron & Stein 1981; Kott 2001).

  A host-side function: it reads the (small) state and raises on its values, so call it outside `jit`. The
  jackknife is computed in float64 NumPy whatever `jax_enable_x64` (a float32 double-word sum converts
  exactly), so that `θ_(g) − θ_(·)`, often 1e-3 of θ, keeps its digits.

  Args:
    state: an accumulated `MinibatchCKAGroupsState` (concrete, not traced).
    on_undefined: as in `minibatch_cka_result`: "raise" — a ValueError for layers with NaN/Inf, zero variance
      (also: non-zero variance in only one group), or no batches; "nan" — NaN in those entries of `cka` and
      `stderr`. Fewer than 2 non-empty groups always raise.

  Returns:
    `CKAWithError(cka (num_x, num_y), stderr (num_x, num_y), num_groups_used)`, arrays in the accumulation
    dtype (float64 under x64, else float32).
  """
  if on_undefined not in ("raise", "nan"):
    raise ValueError(f"`on_undefined` must be 'raise' or 'nan', got {on_undefined!r}.")
  if isinstance(state.num_batches, jax.core.Tracer):
    raise ValueError(
        "minibatch_cka_jackknife reads the state's values on the host and cannot run inside jit/vmap; return "
        "the state from the jitted function and call it outside."
    )
  counts = np.asarray(state.num_batches)
  nonempty = counts > 0
  used = int(nonempty.sum())
  if used < 2:
    raise ValueError(
        f"The jackknife needs at least 2 non-empty groups, got {used} ({int(state.num_updates)} update(s), "
        f"{int(counts.sum())} minibatch(es)): each update fills the next of the num_groups={state.num_groups} "
        "groups, so stream more batches (split the data into smaller ones if need be; a useful SE needs some 20 "
        "groups or more)."
    )
  total = _jitted_total(state)
  cka = minibatch.minibatch_cka_result(total, on_undefined=on_undefined)  # raises on NaN/Inf, constant layers

  xy = _as_float64(state.hsic_xy)[nonempty]
  xx = _as_float64(state.hsic_xx)[nonempty]
  yy = _as_float64(state.hsic_yy)[nonempty] if state.compares_two_models else xx
  total_xy = _as_float64(total.hsic_xy)
  total_xx = _as_float64(total.hsic_xx)
  total_yy = _as_float64(total.hsic_yy) if state.compares_two_models else total_xx
  leave_out, loo_bad_x, loo_bad_y = _leave_one_out_cka(xy, xx, yy, total_xy, total_xx, total_yy)
  with np.errstate(invalid="ignore", over="ignore"):  # undefined entries (inf/NaN) are masked below
    deviations = leave_out - leave_out.mean(axis=0)
    stderr = np.sqrt((used - 1) / used * np.sum(deviations**2, axis=0))

  defined = np.isfinite(np.asarray(cka))
  undefined_loo = defined & (loo_bad_x[:, None] | loo_bad_y[None, :])
  if on_undefined == "raise" and undefined_loo.any():
    rows, cols = np.any(undefined_loo, axis=1), np.any(undefined_loo, axis=0)
    names = [f"xs[{i}]" for i in np.flatnonzero(rows & loo_bad_x)]
    if state.compares_two_models:
      names += [f"ys[{j}]" for j in np.flatnonzero(cols & loo_bad_y)]
    raise ValueError(
        f"The leave-one-group-out CKA of {', '.join(names)} is undefined: the self-HSIC of that layer is zero in "
        "every group but one (it varies in only a few batches), so the jackknife cannot leave that group out. "
        "Drop the layer, or pass on_undefined='nan' (NaN standard errors for it)."
    )
  stderr = np.where(defined & ~undefined_loo, stderr, np.nan)
  return CKAWithError(cka=cka, stderr=jnp.asarray(stderr, dtype=cka.dtype), num_groups_used=used)
