"""Activation streaming cost: one pass of a split through a model with all-pairs minibatch CKA of every layer,
against the forward pass alone (issue 5 target: extraction + CKA ≤ 1.5× the forward pass).

Rows: CIFAR ResNets (32×32×3 random images, eval mode) at several widths and CKA minibatch sizes. For each, in
one run and interleaved (best of --repeats):
  forward      a jit-compiled `model(images)` over the batches (logits only, blocked on the result);
  extract+CKA  `rsim_jax.extract.compare_models(model, batches)`: the forward pass with every layer captured,
               one Gram per layer, U-centring and the all-pairs HSIC update, per batch, in one compiled step,
               plus the predictions copied to the host;
  + PCA/sample the same with a streamed PCA of the pooled features and a 512-example activation sample;
  hand-fused   the floor the streaming API is held to (issue 14): one hand-written jitted step per batch,
               `model(images, capture=True)` + `parallel.sharded_minibatch_hsic` + accumulate + argmax, no
               capture adapter, no statistics objects, no host bookkeeping. "API / fused" near 1 means the
               adapter and the `streaming` machinery cost nothing measurable;
  streaming    `streaming.Stream(capture.rsim_model(model), {CKA, Predictions})` reused across passes (its step
               compiled once), timed over the same B batches as the fused step.
`compare_models` compiles a fresh step on every call, so its steady-state time is taken as the difference
between a pass over 2B and over B batches (the compile and first-batch costs cancel).

Cost model (why the ratio depends on width and minibatch size b): a 3×3 conv with C channels costs 18·C² flops
per output position and example, a Gram of its output b·C per position and example (b·C for the full
product; the SYRK half would be b·C/2). The ratio of Gram to conv work is therefore about b / (18·C) per
captured layer: at width 1× (C = 16) and b = 256 the CKA costs as much as the convolutions; at 4× it is a
quarter. The paper's protocol (b = 256, every layer, narrow nets) is the worst case.

  python benchmarks/extract_bench.py           # ResNet-20 ×1/×4, b = 128 and 256
  python benchmarks/extract_bench.py --quick   # ResNet-20 ×1, b = 128
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def make_batches(num_batches: int, batch: int, size: int = 32):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, 10, size=batch).astype(np.int32)
  # The same arrays each batch: the transfer and the compute per batch are those of real data.
  return [{"image": images, "label": labels, "mask": np.ones(batch, bool)} for _ in range(num_batches)]


def bench_row(depth: int, width: int, batch: int, num_batches: int, repeats: int) -> dict:
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from rsim_jax import extract  # noqa: PLC0415
  from rsim_jax.models import ResNet  # noqa: PLC0415

  model = ResNet(depth=depth, width=width, num_classes=10, rngs=nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  short, long = make_batches(num_batches, batch), make_batches(2 * num_batches, batch)
  jax.block_until_ready(forward(state, short[0]["image"]))

  def run_forward():
    out = None
    for b in short:
      out = forward(state, b["image"])
    jax.block_until_ready(out)

  import jax.numpy as jnp  # noqa: PLC0415

  from rsim_jax import kernels, parallel  # noqa: PLC0415

  mesh = parallel.data_mesh()

  @jax.jit
  def fused_step(state, cka_state, images, mask):
    logits, acts = nnx.merge(graphdef, state)(images, capture=True)
    terms = parallel.sharded_minibatch_hsic(list(acts.values()), None, mask, mesh=mesh)
    return kernels.minibatch_cka_accumulate(cka_state, terms), jnp.argmax(logits, -1)

  sharding = parallel.batch_sharding(mesh)

  def run_fused():
    cka_state = kernels.minibatch_cka_init(len(model.layer_names))
    preds = []
    for b in short:
      images, mask = jax.device_put((b["image"], b["mask"]), sharding)
      cka_state, p = fused_step(state, cka_state, images, mask)
      preds.append(p)
    np.asarray(kernels.minibatch_cka_result(cka_state))
    [np.asarray(p) for p in preds]

  from rsim_jax import capture, streaming  # noqa: PLC0415

  stream = streaming.Stream(capture.rsim_model(model), {"cka": streaming.CKA(), "pred": streaming.Predictions()},
                            mesh=mesh)

  def run_stream():  # the streaming API with its step compiled once (a Stream reused across passes)
    state = None
    for b in short:
      state = stream.update(state, b)
    stream.result(state)

  def run_extract(batches, **kw):
    extract.compare_models(model, batches, progress=False, **kw)

  extra = dict(pca_layers=("pool",), sample_size=512)
  fns = {
      "forward": run_forward,
      "fused": run_fused,
      "stream": run_stream,
      "cka_short": lambda: run_extract(short),
      "cka_long": lambda: run_extract(long),
      "all_short": lambda: run_extract(short, **extra),
      "all_long": lambda: run_extract(long, **extra),
  }
  best = {k: float("inf") for k in fns}
  for fn in fns.values():  # warm-up (compiles the forward; compare_models compiles on every call anyway)
    fn()
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - start)
  forward_t = best["forward"]
  cka_t = best["cka_long"] - best["cka_short"]
  all_t = best["all_long"] - best["all_short"]
  return {"model": f"ResNet-{depth} ×{width}", "b": batch, "layers": len(model.layer_names),
          "forward": forward_t, "fused": best["fused"], "stream": best["stream"], "cka": cka_t, "all": all_t, "images": num_batches * batch}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--batches", type=int, default=4, help="B: batches in the short pass")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  import jax  # noqa: PLC0415

  rows = [(20, 1, 128)] if args.quick else [(20, 1, 128), (20, 1, 256), (20, 4, 128), (20, 4, 256)]
  print(f"# rsim_jax extraction benchmark — {platform.machine()}, {os.cpu_count()} CPU(s), jax {jax.__version__} on "
        f"{jax.default_backend()}, {args.batches} batches timed (difference of 2B and B), best of {args.repeats}\n")
  print("| model | CKA minibatch b | layers | forward (img/s) | hand-fused CKA step (img/s) | streaming API, "
        "compiled once (img/s) | API / fused | compare_models (img/s) | ratio to forward | + PCA + sample | ratio to forward |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for depth, width, batch in rows:
    r = bench_row(depth, width, batch, args.batches, args.repeats)
    n = r["images"]
    print(f"| {r['model']} | {r['b']} | {r['layers']} | {n / r['forward']:.0f} | {n / r['fused']:.0f} | "
          f"{n / r['stream']:.0f} | {r['stream'] / r['fused']:.2f} | {n / r['cka']:.0f} | {r['cka'] / r['forward']:.2f} | "
          f"{n / r['all']:.0f} | {r['all'] / r['forward']:.2f} |", flush=True)


if __name__ == "__main__":
  main()
