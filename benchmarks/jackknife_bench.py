"""Extra cost of the jackknife state: a minibatch CKA pass with and without per-group sums, side by side.

Workload: two models of `--layers` layers each (widths cycling through 512, 1024, 2048, 4096), batches of
`--batch` examples, `--batches` batches per pass, activations already on the device. Each pass is a Python
loop over a jit-compiled step, as a streaming run would do. Printed (medians of `--repeats`, interleaved so
that load on the shared machine hits every variant alike):
  plain            step = `minibatch_hsic` + `minibatch_cka_accumulate` (the CKA pass)
  plain+groups     the same step also feeding `minibatch_cka_groups_accumulate` with the same terms
  groups_only      `minibatch_cka_groups_accumulate` alone on precomputed terms, one jitted call per batch
                   (the isolated cost of keeping per-group sums, dispatch included)
  jackknife        one `minibatch_cka_jackknife` of the final state (host-side, once per pass)
and the extra cost `(plain+groups − plain) / plain` (target <= 5%) from the pass medians and minima, and
`groups_only / plain`. On a loaded machine pass times swing by tens of percent between rounds, so the extra cost
is also measured paired step by step: each batch runs through `plain_step` and `both_step` back to back (order
alternating, each blocked on), and the median of the per-step relative differences is printed.

  python benchmarks/jackknife_bench.py            # 10+10 layers, batch 256, 40 batches, 32 groups
  python benchmarks/jackknife_bench.py --quick    # a smoke run in seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from rsim_jax import kernels

WIDTHS = (512, 1024, 2048, 4096)


def make_activations(key, num_distinct, layers, batch, offset):
  """`acts[b][l]`: (batch, width) float32 on device, ReLU layers of one model; `offset` picks the widths."""
  acts = []
  for b in range(num_distinct):
    batch_layers = []
    for l in range(layers):
      width = WIDTHS[(l + offset) % len(WIDTHS)]
      x = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, b), l), (batch, width))
      batch_layers.append(jax.nn.relu(x + 0.3))
    acts.append(jax.block_until_ready(batch_layers))
  return acts


@jax.jit
def plain_step(state, xs, ys):
  return kernels.minibatch_cka_accumulate(state, kernels.minibatch_hsic(xs, ys))


@jax.jit
def both_step(state, groups, xs, ys):
  terms = kernels.minibatch_hsic(xs, ys)
  return kernels.minibatch_cka_accumulate(state, terms), kernels.minibatch_cka_groups_accumulate(groups, terms)


groups_step = jax.jit(kernels.minibatch_cka_groups_accumulate)


def time_interleaved(fns: dict, *, repeats: int) -> dict:
  """Median wall time of each function over `repeats` rounds, run round-robin after one warm-up call."""
  for fn in fns.values():
    fn()  # compile / warm up
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: (statistics.median(t), min(t), max(t)) for name, t in times.items()}


def paired_step_cost(batches, nl, num_groups, *, repeats: int) -> tuple[float, int]:
  """Median over all steps of `(t_both − t_plain) / t_plain`, the two steps run back to back on each batch."""
  state = kernels.minibatch_cka_init(nl, nl)
  groups = kernels.minibatch_cka_groups_init(nl, nl, num_groups=num_groups)
  relative = []
  for r in range(repeats):
    for i, (xs, ys) in enumerate(batches):
      t = {}
      for name in (("plain", "both") if (r + i) % 2 == 0 else ("both", "plain")):
        start = time.perf_counter()
        if name == "plain":
          jax.block_until_ready(plain_step(state, xs, ys))
        else:
          jax.block_until_ready(both_step(state, groups, xs, ys))
        t[name] = time.perf_counter() - start
      relative.append((t["both"] - t["plain"]) / t["plain"])
  return statistics.median(relative), len(relative)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--layers", type=int, default=10, help="layers per model (two models)")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--batches", type=int, default=40, help="batches per pass")
  parser.add_argument("--distinct", type=int, default=8, help="distinct batches held in memory, cycled")
  parser.add_argument("--groups", type=int, default=32, help="num_groups of the jackknife state")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--quick", action="store_true", help="4+4 layers, batch 64, 10 batches: a smoke run")
  args = parser.parse_args()
  if args.quick:
    args.layers, args.batch, args.batches, args.distinct, args.repeats = 4, 64, 10, 2, 3
  nl = args.layers
  widths = [WIDTHS[l % len(WIDTHS)] for l in range(nl)]
  print(
      f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}: {nl}+{nl} layers "
      f"(widths {widths[:4]}...), batch={args.batch}, {args.batches} batches/pass, num_groups={args.groups}, "
      f"median of {args.repeats}",
      flush=True,
  )
  xs_batches = make_activations(jax.random.key(1), args.distinct, nl, args.batch, 0)
  ys_batches = make_activations(jax.random.key(2), args.distinct, nl, args.batch, 2)
  batches = [(xs_batches[i % args.distinct], ys_batches[i % args.distinct]) for i in range(args.batches)]
  terms = [jax.block_until_ready(kernels.minibatch_hsic(xs, ys)) for xs, ys in batches[: args.distinct]]
  terms = [terms[i % args.distinct] for i in range(args.batches)]
  final = {}

  def run_plain():
    state = kernels.minibatch_cka_init(nl, nl)
    for xs, ys in batches:
      state = plain_step(state, xs, ys)
    final["plain"] = jax.block_until_ready(state)

  def run_both():
    state = kernels.minibatch_cka_init(nl, nl)
    groups = kernels.minibatch_cka_groups_init(nl, nl, num_groups=args.groups)
    for xs, ys in batches:
      state, groups = both_step(state, groups, xs, ys)
    final["both"] = jax.block_until_ready((state, groups))

  def run_groups_only():
    groups = kernels.minibatch_cka_groups_init(nl, nl, num_groups=args.groups)
    for t in terms:
      groups = groups_step(groups, t)
    final["groups_only"] = jax.block_until_ready(groups)

  def run_jackknife():
    final["jackknife"] = jax.block_until_ready(kernels.minibatch_cka_jackknife(final["both"][1]))

  run_both()
  results = time_interleaved(
      {"plain": run_plain, "plain+groups": run_both, "groups_only": run_groups_only, "jackknife": run_jackknife},
      repeats=args.repeats,
  )
  paired, num_pairs = paired_step_cost(batches, nl, args.groups, repeats=max(1, args.repeats // 2))
  plain = results["plain"][0]
  flops = 2 * 2 * args.batch**2 * sum(widths) * args.batches
  print()
  print("| variant | median (s) | min (s) | max (s) | / plain |")
  print("|---|---:|---:|---:|---:|")
  for name, (med, lo, hi) in results.items():
    print(f"| {name} | {med:.4f} | {lo:.4f} | {hi:.4f} | {med / plain:.4f} |")
  print()
  extra = (results["plain+groups"][0] - plain) / plain
  print(f"Gram GEMM rate of the plain pass: {flops / plain / 1e9:.1f} GFLOP/s")
  extra_min = (results["plain+groups"][1] - results["plain"][1]) / results["plain"][1]
  print(f"extra cost of the groups state, pass medians ((plain+groups - plain) / plain): {100 * extra:+.2f}%")
  print(f"extra cost of the groups state, pass minima:                                 {100 * extra_min:+.2f}%")
  print(f"extra cost of the groups state, paired steps (median of {num_pairs}):              {100 * paired:+.2f}%  "
        f"(target <= 5%: {'met' if paired <= 0.05 else 'NOT met'})")
  print(f"isolated cost (groups_only / plain):                                          {100 * results['groups_only'][0] / plain:.2f}%")

  state, groups = final["both"]
  jk = final["jackknife"]
  same = np.abs(np.asarray(jk.cka) - np.asarray(kernels.minibatch_cka_result(state))).max()
  print(f"jackknife: {jk.num_groups_used} groups; max |cka(groups) - cka(plain)| = {same:.1e}; "
        f"median SE {float(np.median(np.asarray(jk.stderr))):.2e}")


if __name__ == "__main__":
  main()
