"""All-pairs minibatch CKA: rsim_jax against PyTorch CKA libraries on the same activations.

The workload of `cka_bench.py` (10 + 10 layers of two models, N examples, d features, batch b, activations
from `cka_bench.make_activations`), written as `.npy` files to a temporary directory, is run here with rsim_jax
(`cka_bench.run_rsim`) and, in a separate Python that has torch, by `cka_peers_worker.py`: each installed PyTorch
CKA library through its own API (pytorch-cka, cka-pytorch, torch-cka, ckatorch) plus a plain-torch float32
implementation of the same stacked-Gram algorithm. Torch uses 2 threads. Printed: a markdown table of time,
time / rsim_jax and max |CKA difference| from rsim_jax.

The torch environment is kept apart from the project's venv (torch is no dependency of rsim_jax), e.g.:

  python3 -m venv /tmp/torchpeers
  /tmp/torchpeers/bin/pip install torch==2.13.0 pytorch-cka ckatorch torch-cka cka-pytorch
  /tmp/torchpeers/bin/pip uninstall -y torchvision   # cka-pytorch pulls a CUDA torchvision that cannot load on CPU torch

  python benchmarks/cka_peers.py --quick                       # N=1000, d=512, batch 250
  python benchmarks/cka_peers.py                               # N=10000, d=4096, batch 250
  python benchmarks/cka_peers.py --torch-python PATH/bin/python

Timing caveat: torch's OpenMP threads degrade badly when the cores are oversubscribed (on a shared, loaded
2-core machine 2 threads ran 3-4x slower than 1); `--threads 1` shows how much of a gap is that. The load
average is printed with the timings.

Peers that recompute Gram matrices for every pair are timed on the first `--slow-batches` batches at full size
(default 8 of 40) and their time scaled to all batches; their CKA is compared with rsim_jax on the same batches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import cka_bench  # noqa: E402

DEFAULT_TORCH_PYTHON = "/tmp/torchpeers/bin/python"


def load() -> str:
  """The 1-minute load average against the cores: timings on a shared machine are only as good as this."""
  return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def write_npy(directory: Path, xs_batches, ys_batches) -> None:
  for model, batches in (("x", xs_batches), ("y", ys_batches)):
    for b, layers in enumerate(batches):
      for l, a in enumerate(layers):
        np.save(directory / f"{model}_{b}_{l}.npy", np.asarray(a, dtype=np.float32))


def run_worker(torch_python: str, directory: Path, repeats: int, slow_batches: int | None,
               threads: int, methods: str | None) -> tuple[dict, list[dict]]:
  cmd = [torch_python, str(HERE / "cka_peers_worker.py"), str(directory), "--repeats", str(repeats),
         "--threads", str(threads)]
  if methods:
    cmd += ["--methods", methods]
  if slow_batches:
    cmd += ["--slow-batches", str(slow_batches)]
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, check=False)
  info, records = {}, []
  for line in proc.stdout.splitlines():
    line = line.strip()
    if not line.startswith("{"):
      continue
    rec = json.loads(line)
    if "info" in rec:
      info = rec["info"]
    else:
      records.append(rec)
  if proc.returncode != 0:
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    print(f"worker exited with {proc.returncode}:\n{tail}", file=sys.stderr, flush=True)
  return info, records


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--examples", type=int, default=10_000)
  parser.add_argument("--features", type=int, default=4096)
  parser.add_argument("--batch", type=int, default=250)
  parser.add_argument("--layers", type=int, default=10, help="layers per model (two models)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--slow-batches", type=int, default=None,
                      help="time per-pair peers on this many batches and scale (default: all with --quick, else 8)")
  parser.add_argument("--torch-python", default=DEFAULT_TORCH_PYTHON, help="a Python with torch and the peers")
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in the worker")
  parser.add_argument("--methods", default=None,
                      help="comma-separated subset of the worker's methods (torch_stacked_f32, pytorch-cka, cka-pytorch, "
                      "torch-cka, ckatorch.cka_batch, ckatorch.hsic1)")
  parser.add_argument("--quick", action="store_true", help="N=1000, d=512 smoke run")
  args = parser.parse_args()
  if args.quick:
    args.examples, args.features = 1000, 512
  elif args.slow_batches is None:
    args.slow_batches = 8
  num_batches = args.examples // args.batch
  print(
      f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}: {args.layers}+{args.layers} layers, "
      f"N={args.examples}, d={args.features}, batch={args.batch} ({num_batches} batches), best of {args.repeats}; "
      f"load average {load()}",
      flush=True,
  )
  key = jax.random.key(0)
  xs_batches = cka_bench.make_activations(key, jax.random.key(1), num_batches, args.layers, args.batch, args.features)
  ys_batches = cka_bench.make_activations(key, jax.random.key(2), num_batches, args.layers, args.batch, args.features)

  cka_rsim = np.asarray(cka_bench.run_rsim(xs_batches, ys_batches), np.float64)
  rsim_on_first = {num_batches: cka_rsim}

  def reference(k):
    if k not in rsim_on_first:
      rsim_on_first[k] = np.asarray(cka_bench.run_rsim(xs_batches[:k], ys_batches[:k]), np.float64)
    return rsim_on_first[k]

  def time_rsim():
    return cka_bench.time_interleaved({"rsim_jax": lambda: cka_bench.run_rsim(xs_batches, ys_batches)},
                                      repeats=args.repeats)["rsim_jax"]

  t_rsim = time_rsim()
  print(f"  rsim_jax           {t_rsim:.3f} s", flush=True)

  info, records = {}, []
  if not Path(args.torch_python).exists():
    print(f"  peers skipped: no Python at --torch-python {args.torch_python} (make the torch venv as in this "
          "file's docstring, or point --torch-python at one)", flush=True)
  else:
    with tempfile.TemporaryDirectory(prefix="cka_peers_") as tmp:
      write_npy(Path(tmp), xs_batches, ys_batches)
      info, records = run_worker(args.torch_python, Path(tmp), args.repeats, args.slow_batches, args.threads,
                                 args.methods)
    for rec in records:
      shown = f"{rec['seconds']:.3f} s" if rec.get("seconds") is not None else f"failed: {rec.get('error')}"
      print(f"  {rec['method']:18s} {shown}  (load average {load()})", flush=True)
    # Time rsim_jax again after the peers (the machine is shared: keep the better of the two windows).
    t_rsim = min(t_rsim, time_rsim())
    print(f"  rsim_jax (again)   best {t_rsim:.3f} s", flush=True)

  print()
  if info:
    print(f"torch {info.get('torch')}, {info.get('threads')} threads; load average at the end {load()}")
  print("| method | version | time (s) | time / rsim_jax | max abs CKA diff vs rsim_jax | note |")
  print("|---|---|---:|---:|---:|---|")
  print("| rsim_jax | — | {:.3f} | 1.00 | 0 | `minibatch_cka_update` over all batches (float32 Grams) |".format(t_rsim))
  for rec in records:
    name, ver, note = rec["method"], rec.get("version") or "?", rec.get("note", "")
    if rec.get("seconds") is None:
      print(f"| {name} | {ver} | failed | — | — | {rec.get('error')} |")
      continue
    k = rec.get("batches_timed", num_batches)
    if rec.get("runs", args.repeats) < args.repeats:
      note += f"; best of {rec['runs']} run(s)"
    diff = float(np.max(np.abs(np.asarray(rec["cka"], np.float64) - reference(k))))
    against = "" if k == num_batches else f" (vs rsim_jax on the same {k} batches)"
    print(f"| {name} | {ver} | {rec['seconds']:.3f} | {rec['seconds'] / t_rsim:.2f} | {diff:.1e}{against} | {note} |")


if __name__ == "__main__":
  main()
