"""All-pairs minibatch CKA: rsim_jax against the baselines that bound it, measured side by side in one run.

Workload (issue 3): 10 + 10 layers (two models), N examples, d features per layer, batch b, one pass,
activations already on the device as they come out of a model. Printed:
  rsim_jax        `minibatch_cka_update` over all batches (all 10x10 cross pairs + 20 self terms)
  numpy_f64       a float64 NumPy stacked-Gram reference (cast, centre, `a @ a.T` = SYRK, U-centre, one GEMM)
  naive_pairs     a per-pair loop: each of the 120 HSIC terms recomputes its two Grams (jit-compiled)
  bare_gemm       the float32 Gram GEMMs alone, `einsum("lnd,lmd->lnm")` over the stacked 20 layers: the floor
and the ratios `bare_gemm / rsim_jax` (fraction of the GEMM rate; target >= 0.7) and `rsim_jax / numpy_f64`
(target <= 0.75).

  python benchmarks/cka_bench.py            # the issue's size: N=10000, d=4096, b=250
  python benchmarks/cka_bench.py --quick    # a smoke run in seconds
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from rsim_jax import kernels


def make_activations(key, model_key, num_batches, layers, batch, features):
  """`acts[b][l]`: (batch, features) float32 on device, like a ReLU network's layers on shared inputs.

  Both models see the same inputs (`key`), so their early layers are similar and cross-model CKA values
  are far from 0, which makes the accuracy comparison meaningful.
  """
  acts = []
  for b in range(num_batches):
    h = jax.random.normal(jax.random.fold_in(key, b), (batch, features), jnp.float32)
    batch_layers = []
    for l in range(layers):
      noise = jax.random.normal(jax.random.fold_in(jax.random.fold_in(model_key, b), l), (batch, features))
      h = jax.nn.relu(0.9 * h + 0.5 * noise)
      h = h - 0.5 * jnp.mean(h)
      batch_layers.append(h)
    acts.append(jax.block_until_ready(batch_layers))
  return acts


def time_interleaved(fns: dict, *, repeats: int) -> dict:
  """Best-of-`repeats` wall time of each function, measured round-robin so that load on the machine
  affects every method alike."""
  for fn in fns.values():
    fn()  # compile / warm up
  best = {name: float("inf") for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def run_rsim(xs_batches, ys_batches):
  state = kernels.minibatch_cka_init(len(xs_batches[0]), len(ys_batches[0]))
  for xs, ys in zip(xs_batches, ys_batches):
    state = kernels.minibatch_cka_update(state, xs, ys)
  return jax.block_until_ready(kernels.minibatch_cka_result(state))


def numpy_u_centred_grams(layers):
  grams = []
  for a in layers:
    a = a.astype(np.float64)
    a -= a.mean(0)
    grams.append(a @ a.T)  # NumPy dispatches a @ a.T to a symmetric rank-k update (SYRK)
  g = np.stack(grams)
  n = g.shape[1]
  idx = np.arange(n)
  g[:, idx, idx] = 0.0
  row = g.sum(2)
  total = row.sum(1)
  g -= row[:, :, None] / (n - 2)
  g -= row[:, None, :] / (n - 2)
  g += (total / ((n - 1) * (n - 2)))[:, None, None]
  g[:, idx, idx] = 0.0
  return g.reshape(len(layers), -1), n


def run_numpy(xs_batches, ys_batches):
  lx, ly = len(xs_batches[0]), len(ys_batches[0])
  xy, xx, yy = np.zeros((lx, ly)), np.zeros(lx), np.zeros(ly)
  for xs, ys in zip(xs_batches, ys_batches):
    gx, n = numpy_u_centred_grams(xs)
    gy, _ = numpy_u_centred_grams(ys)
    scale = 1.0 / (n * (n - 3))
    xy += gx @ gy.T * scale
    xx += np.einsum("ij,ij->i", gx, gx) * scale
    yy += np.einsum("ij,ij->i", gy, gy) * scale
  return xy / np.sqrt(np.outer(xx, yy))


@jax.jit
def _pair_hsic(a, b):
  ka = kernels.center_gram(kernels.gram_linear(a - a.mean(0)), unbiased=True)
  kb = kernels.center_gram(kernels.gram_linear(b - b.mean(0)), unbiased=True)
  n = a.shape[0]
  return jnp.sum(ka * kb) / (n * (n - 3))


def run_naive(xs_batches, ys_batches):
  lx, ly = len(xs_batches[0]), len(ys_batches[0])
  xy, xx, yy = np.zeros((lx, ly)), np.zeros(lx), np.zeros(ly)
  for xs, ys in zip(xs_batches, ys_batches):
    for i in range(lx):
      xx[i] += float(_pair_hsic(xs[i], xs[i]))
      for j in range(ly):
        xy[i, j] += float(_pair_hsic(xs[i], ys[j]))
    for j in range(ly):
      yy[j] += float(_pair_hsic(ys[j], ys[j]))
  return xy / np.sqrt(np.outer(xx, yy))


@jax.jit
def _bare_gemm(stacked):
  return jnp.einsum("lnd,lmd->lnm", stacked, stacked)


def run_bare(stacked_batches):
  out = None
  for s in stacked_batches:
    out = _bare_gemm(s)
  return jax.block_until_ready(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--examples", type=int, default=10_000)
  parser.add_argument("--features", type=int, default=4096)
  parser.add_argument("--batch", type=int, default=250)
  parser.add_argument("--layers", type=int, default=10, help="layers per model (two models)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--naive-batches", type=int, default=None, help="time the naive loop on this many batches (default 8) and scale to all")
  parser.add_argument("--quick", action="store_true", help="N=1000, d=512 smoke run")
  args = parser.parse_args()
  if args.quick:
    args.examples, args.features, args.repeats = 1000, 512, 1
  num_batches = args.examples // args.batch
  print(
      f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}: {args.layers}+{args.layers} layers, "
      f"N={args.examples}, d={args.features}, batch={args.batch} ({num_batches} batches)",
      flush=True,
  )
  key = jax.random.key(0)
  xs_batches = make_activations(key, jax.random.key(1), num_batches, args.layers, args.batch, args.features)
  ys_batches = make_activations(key, jax.random.key(2), num_batches, args.layers, args.batch, args.features)
  host_x = [[np.asarray(a) for a in b] for b in xs_batches]
  host_y = [[np.asarray(a) for a in b] for b in ys_batches]
  stacked = [jnp.stack(bx + by) for bx, by in zip(xs_batches, ys_batches)]
  jax.block_until_ready(stacked)

  cka_rsim = run_rsim(xs_batches, ys_batches)
  cka_numpy = run_numpy(host_x, host_y)
  results = time_interleaved(
      {
          "rsim_jax": lambda: run_rsim(xs_batches, ys_batches),
          "numpy_f64": lambda: run_numpy(host_x, host_y),
          "bare_gemm": lambda: run_bare(stacked),
      },
      repeats=args.repeats,
  )
  for name, t in results.items():
    print(f"  {name:12s} {t:.3f} s", flush=True)
  nb = min(args.naive_batches or 8, num_batches)
  naive_time = time_interleaved({"naive": lambda: run_naive(xs_batches[:nb], ys_batches[:nb])}, repeats=1)["naive"]
  results["naive_pairs"] = naive_time * num_batches / nb
  print(f"  naive_pairs  {results['naive_pairs']:.3f} s" + (f" (timed on {nb} batches, scaled)" if nb != num_batches else ""), flush=True)

  diff = np.abs(np.asarray(cka_rsim, np.float64) - cka_numpy)
  max_abs = float(diff.max())
  sizeable = np.abs(cka_numpy) > 0.05  # relative error is meaningless for CKA ~ 0 (unrelated layers)
  max_rel = float((diff[sizeable] / np.abs(cka_numpy[sizeable])).max()) if sizeable.any() else float("nan")
  flops = 2 * (2 * args.layers) * args.batch**2 * args.features * num_batches
  print()
  print("| method | time (s) | Gram GFLOP/s | time / rsim_jax |")
  print("|---|---:|---:|---:|")
  for name in ("rsim_jax", "numpy_f64", "naive_pairs", "bare_gemm"):
    t = results[name]
    print(f"| {name} | {t:.3f} | {flops / t / 1e9:.1f} | {t / results['rsim_jax']:.2f} |")
  print()
  frac = results["bare_gemm"] / results["rsim_jax"]
  vs_numpy = results["rsim_jax"] / results["numpy_f64"]
  print(f"fraction of bare-GEMM rate (bare_gemm / rsim_jax): {frac:.2f}  (target >= 0.70: {'met' if frac >= 0.7 else 'NOT met'})")
  print(f"rsim_jax / numpy_f64 time:                       {vs_numpy:.2f}  (target <= 0.75: {'met' if vs_numpy <= 0.75 else 'NOT met'})")
  print(f"rsim_jax vs float64 NumPy: max |diff| {max_abs:.1e}, max relative diff where CKA > 0.05: {max_rel:.1e}")


if __name__ == "__main__":
  main()
