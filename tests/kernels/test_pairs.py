"""The all-pairs machinery (`rsim_jax.kernels._pairs`): how the pairs are spread over CPU threads or a mesh's
devices must not change any value, every pair is computed once, and the settings of the calling thread reach
the compiled programs."""

import importlib

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rsim_jax import kernels
from rsim_jax.kernels import _pairs

procrustes_module = importlib.import_module("rsim_jax.kernels.procrustes")


def layers(seed=0, n=90, widths=(12, 40, 70, 150, 33)):
  rng = np.random.default_rng(seed)
  base = rng.standard_normal((n, 6))
  return [
      np.tanh(base @ rng.standard_normal((6, d)) + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
      for d in widths
  ]


ALL_PAIRS = {
    "procrustes": lambda xs, ys=None: kernels.procrustes_all_pairs(xs, ys).similarity,
    "cca_ridge": lambda xs, ys=None: kernels.cca_all_pairs(xs, ys, ridge=0.1).mean,
    "svcca": lambda xs, ys=None: kernels.svcca_all_pairs(xs, ys, num_components=4).mean,
    "pwcca": lambda xs, ys=None: kernels.pwcca_all_pairs(xs, ys, ridge=0.1),
}  # (RSA's all pairs are one matrix product of the layers' ranked RDM vectors: no pair loop.)


def _spy(monkeypatch, name):
  calls = []
  original = getattr(_pairs, name)

  def wrapper(*args, **kwargs):
    calls.append(args)
    return original(*args, **kwargs)

  monkeypatch.setattr(_pairs, name, wrapper)
  return calls


@pytest.mark.parametrize("index", list(ALL_PAIRS))
def test_threads_give_the_one_worker_result(monkeypatch, index):
  xs, ys = layers(1), layers(2, widths=(25, 60))
  fn = ALL_PAIRS[index]
  monkeypatch.setattr(_pairs, "cpu_workers", lambda stack: 1)
  want_within, want_across = fn(xs), fn(xs, ys)
  monkeypatch.setattr(_pairs, "cpu_workers", lambda stack: 3)
  calls = _spy(monkeypatch, "_run_local")
  got_within, got_across = fn(xs), fn(xs, ys)
  assert [call[3] for call in calls] == [3, 3]  # both calls ran on three threads
  # Each pair is the same program on one BLAS thread whichever worker runs it: the same bits.
  np.testing.assert_array_equal(got_within, want_within)
  np.testing.assert_array_equal(got_across, want_across)
  assert np.all(np.isfinite(got_within)) and np.all(np.isfinite(got_across))


def test_assignment_covers_every_pair_once_and_balances_the_cost():
  stacks = [np.zeros((k, 4, w), np.float32) for k, w in ((3, 8), (2, 32), (1, 64))]
  tasks = []
  for a in range(3):
    for b in range(a, 3):
      pi, pj = np.triu_indices(len(stacks[a])) if a == b else np.nonzero(np.ones((len(stacks[a]), len(stacks[b]))))
      tasks.append(_pairs._Task(stacks[a], stacks[b], pi, pj))
  for workers in (1, 2, 3, 7):
    shares = _pairs._assign(tasks, workers)
    for t, task in enumerate(tasks):
      positions = np.concatenate([share[t] for share in shares])
      assert sorted(positions.tolist()) == list(range(len(task.index_x)))
    loads = [sum(_pairs._pair_cost(task) * len(share[t]) for t, task in enumerate(tasks)) for share in shares]
    largest = max(_pairs._pair_cost(task) for task in tasks)
    assert max(loads) - min(loads) <= largest  # greedy LPT: no worker is more than one pair behind


def test_the_calling_threads_x64_setting_reaches_the_pair_programs(monkeypatch):
  # Worker threads do not inherit `jax.enable_x64(True)`: the programs must be traced in the calling thread.
  monkeypatch.setattr(_pairs, "cpu_workers", lambda stack: 2)
  xs = [x.astype(np.float64) for x in layers(4)]
  with jax.enable_x64(True):
    got = kernels.procrustes_all_pairs(xs).similarity
  assert got.dtype == np.float64
  for i, a in enumerate(xs):
    for j, b in enumerate(xs):
      ac, bc = a - a.mean(0), b - b.mean(0)
      ac, bc = ac / np.linalg.norm(ac), bc / np.linalg.norm(bc)
      want = np.linalg.svd(ac.T @ bc, compute_uv=False).sum()
      np.testing.assert_allclose(got[i, j], want, rtol=1e-12)  # float32 would be ~1e-6


def test_closed_form_diagonal_equals_the_decomposition():
  xs = layers(5)
  n = xs[0].shape[0]
  factors = [
      procrustes_module._padded_factor(x, width=w)[0]
      for x, w in zip(xs, _pairs.group_widths([min(x.shape) for x in xs], n))
  ]
  decomposed = _pairs.all_pairs(factors, None, procrustes_module._pair)["similarity"]
  closed = _pairs.all_pairs(factors, None, procrustes_module._pair, self_pair=procrustes_module._self_pair)
  np.testing.assert_allclose(np.diag(decomposed), 1.0, rtol=2e-6)
  np.testing.assert_array_equal(np.diag(closed["similarity"]), 1.0)
  off = ~np.eye(len(xs), dtype=bool)
  np.testing.assert_allclose(closed["similarity"][off], decomposed[off], rtol=1e-6)
  # A single layer: no pair to decompose at all.
  np.testing.assert_array_equal(kernels.procrustes_all_pairs(xs[:1]).similarity, [[1.0]])
  assert kernels.cca_all_pairs(xs[:1], ridge=0.1).mean.shape == (1, 1)


@pytest.mark.parametrize("index", ["procrustes", "cca_ridge", "pwcca"])
def test_layers_split_over_a_mesh_split_the_pairs_over_its_devices(monkeypatch, index):
  xs = layers(6, n=96)
  fn = ALL_PAIRS[index]
  want = fn(xs)
  mesh = jax.make_mesh((8,), ("data",))
  split = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in xs]
  calls = _spy(monkeypatch, "_run_on_mesh")
  local = _spy(monkeypatch, "_run_local")
  got = fn(split)
  assert len(calls) == 1 and calls[0][3].size == 8 and not local
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(
    "widths, cap",
    [
        (np.geomspace(256, 2048, 20).round().astype(int).clip(max=2000).tolist(), 2000),
        ([5, 5, 7, 90, 91, 300, 301, 302, 1000], 400),
        ([64] * 4, 100),
        ([17], 2000),
    ],
)
def test_group_widths_pad_no_more_than_the_ladder(widths, cap):
  got = _pairs.group_widths(widths, cap)
  ladder = [_pairs.bucket_width(w, cap) for w in widths]
  widths = [min(w, cap) for w in widths]
  assert all(w <= g <= cap and (g % 32 == 0 or g == cap) for w, g in zip(widths, got))
  assert len(set(got)) <= len(set(ladder))  # no more compiled pair loops than the ladder's groups
  order = np.argsort(widths, kind="stable")
  assert np.all(np.diff(np.asarray(got)[order]) >= 0)  # groups are contiguous in width
  assert sum(g**3 for g in got) <= sum(g**3 for g in ladder)
