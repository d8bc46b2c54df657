"""Geometry kernels: TwoNN intrinsic dimension and PCA, rsim_jax against the usual tools, side by side in one run.

Workloads (issue 4):
  TwoNN  N × D float32 points on a curved 16-dimensional manifold (default 50,000 × 512)
  PCA    n × d float32 activations with a power-law spectrum (default 10,000 × 16,384: a wide layer), top k

Printed, as markdown tables:
  TwoNN  rsim_jax `kernels.twonn` (exact first/second neighbours by the symmetric blocked product, jit-compiled)
         against scikit-learn `NearestNeighbors(algorithm="brute", n_neighbors=2)` (self excluded) followed by
         the same estimator in NumPy, timed round-robin (best of --repeats), and the ratio rsim_jax / sklearn
         (target ≤ 0.5). dadapy (`Data.compute_id_2NN`) and scikit-dimension (`skdim.id.TwoNN`) are timed too
         when a separate Python has them (--peers-python; they are no dependency of rsim_jax), e.g.
           python3 -m venv /tmp/geompeers && /tmp/geompeers/bin/pip install dadapy scikit-dimension
         and skipped otherwise.
  PCA    rsim_jax `kernels.pca(x, k=k)` (the Gram route, since n < d) against `numpy.linalg.eigh` of the
         float64 covariance (d × d) — and of the float64 Gram matrix (n × n), the same route in NumPy — with the
         relative error of the top-k variances and the overlap of the leading directions against the float64
         covariance result. The NumPy baselines take minutes at full size and run once.
  --tune-blocks  `knn_distances(x, k=2)` time per tile size (the default, 1024, comes from this).

  python benchmarks/geometry_bench.py --quick       # seconds: 5,000 × 128 and 1,000 × 2,048
  python benchmarks/geometry_bench.py               # the issue's sizes (tens of minutes on 2 cores)

LAPACK (`eigh`, for NumPy and for JAX on CPU) runs on OpenBLAS threads; on a loaded machine they busy-wait and
`eigh` can be several times slower with 2 threads than with 1 — set OPENBLAS_NUM_THREADS=1 there (the header
line records the setting).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_PEERS_PYTHON = "/tmp/geompeers/bin/python"


# --- Data ---


def manifold_points(n: int, ambient: int, *, intrinsic: int = 16, seed: int = 0) -> np.ndarray:
  """`(n, ambient)` float32 points on a smooth embedding of R^intrinsic: Gaussian latents through a random
  tanh layer (64 units) and a random linear map, like a layer's activations on a low-dimensional input set."""
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((n, intrinsic)).astype(np.float32)
  hidden = np.tanh(z @ rng.standard_normal((intrinsic, 64)).astype(np.float32) / np.sqrt(intrinsic))
  return (hidden @ rng.standard_normal((64, ambient)).astype(np.float32) / 8.0).astype(np.float32)


def wide_activations(n: int, d: int, *, rank: int = 512, seed: int = 1) -> np.ndarray:
  """`(n, d)` float32 with a power-law spectrum (`σ_i ∝ i^−0.75` over `rank` directions), small isotropic
  noise and an offset, like a wide conv layer's flattened activations."""
  rng = np.random.default_rng(seed)
  rank = min(rank, n, d)
  latent = rng.standard_normal((n, rank)).astype(np.float32) * (np.arange(1, rank + 1) ** -0.75).astype(np.float32)
  mixing = rng.standard_normal((rank, d)).astype(np.float32) / np.sqrt(d, dtype=np.float32)
  x = latent @ mixing * np.sqrt(d, dtype=np.float32) / 4
  x += 0.01 * rng.standard_normal((n, d)).astype(np.float32)
  return x + 0.5


# --- Reference computations ---


def twonn_numpy(r1: np.ndarray, r2: np.ndarray, discard_fraction: float = 0.1) -> float:
  """Facco et al. (2017) fit from neighbour distances (the estimator of `kernels.twonn`, in float64 NumPy)."""
  mu = np.sort(np.log(r2.astype(np.float64) / r1.astype(np.float64)))
  n = len(mu)
  m = min(n - 1, int(np.floor(n * (1 - discard_fraction))))
  y = -np.log1p(-np.arange(1, m + 1) / n)
  return float(np.sum(mu[:m] * y) / np.sum(mu[:m] ** 2))


def sklearn_twonn(x: np.ndarray) -> float:
  from sklearn.neighbors import NearestNeighbors

  # kneighbors() without X: the query points are the fitted ones, each excluded as its own neighbour.
  distances, _ = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(x).kneighbors()
  return twonn_numpy(distances[:, 0], distances[:, 1])


def best_of_interleaved(fns: dict, *, repeats: int) -> tuple[dict, dict, dict]:
  """Round-robin timing so that load on the (shared) machine affects every method alike: best wall time of
  `repeats`, the first call's time (compile included), and each method's last value."""
  first, best, value = {}, {name: float("inf") for name in fns}, {}
  for name, fn in fns.items():
    start = time.perf_counter()
    value[name] = fn()
    first[name] = time.perf_counter() - start
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      value[name] = fn()
      best[name] = min(best[name], time.perf_counter() - start)
  return best, first, value


# --- Peers in a separate Python (dadapy, scikit-dimension) ---


def peer_worker(directory: str, repeats: int) -> None:
  """Runs inside the peers' Python: times each installed TwoNN implementation, prints JSON lines."""
  x = np.load(Path(directory) / "points.npy")
  peers = {}
  try:
    from dadapy import Data

    def run_dadapy():
      data = Data(coordinates=x, maxk=2, verbose=False)
      return float(data.compute_id_2NN(algorithm="base", mu_fraction=0.9)[0])

    peers["dadapy"] = run_dadapy
  except Exception as e:  # noqa: BLE001 - report and go on
    print(json.dumps({"name": "dadapy", "error": f"{type(e).__name__}: {e}"}), flush=True)
  try:
    import skdim

    peers["skdim"] = lambda: float(skdim.id.TwoNN(discard_fraction=0.1).fit(x).dimension_)
  except Exception as e:  # noqa: BLE001
    print(json.dumps({"name": "skdim", "error": f"{type(e).__name__}: {e}"}), flush=True)
  for name, fn in peers.items():
    try:
      best = float("inf")
      for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
      print(json.dumps({"name": name, "time": best, "id": value}), flush=True)
    except Exception as e:  # noqa: BLE001
      print(json.dumps({"name": name, "error": f"{type(e).__name__}: {e}"}), flush=True)


def run_peers(peers_python: str, x: np.ndarray, repeats: int) -> list[dict]:
  if not (peers_python and Path(peers_python).exists()):
    return [{"name": "dadapy / skdim", "error": f"skipped: no peers Python at {peers_python!r}"}]
  with tempfile.TemporaryDirectory() as directory:
    np.save(Path(directory) / "points.npy", x)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAX_PLATFORMS")}
    proc = subprocess.run(
        [peers_python, __file__, "--peer-worker", directory, "--repeats", str(repeats)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, check=False,
    )
  records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode and not records:
    records = [{"name": "dadapy / skdim", "error": proc.stderr.strip().splitlines()[-1:]}]
  return records


# --- Sections ---


def bench_twonn(args) -> None:
  import jax

  from rsim_jax import kernels

  n, dim = args.twonn_n, args.twonn_d
  x = manifold_points(n, dim)
  x_device = jax.device_put(x)
  fns = {
      "rsim_jax": lambda: kernels.twonn(x_device, block_size=args.block_size),
      "sklearn": lambda: sklearn_twonn(x),
  }
  best, first, value = best_of_interleaved(fns, repeats=args.repeats)
  peers = run_peers(args.peers_python, x, args.peer_repeats) if not args.no_peers else []
  print(f"\n### TwoNN, {n:,} × {dim} float32 (curved 16-dimensional manifold)\n")
  print("| method | time (s) | time / rsim_jax | rsim_jax / method | ID estimate |")
  print("|---|---:|---:|---:|---:|")
  ours = best["rsim_jax"]
  print(f"| **rsim_jax** `kernels.twonn` (first call incl. compile: {first['rsim_jax']:.1f} s) | {ours:.2f} | 1.00 | 1.00 | {value['rsim_jax']:.3f} |")
  print(
      f"| scikit-learn `NearestNeighbors(algorithm=\"brute\")`, 2 neighbours, + NumPy fit | {best['sklearn']:.2f} | "
      f"{best['sklearn'] / ours:.2f} | {ours / best['sklearn']:.2f} | {value['sklearn']:.3f} |"
  )
  for record in peers:
    if "error" in record:
      print(f"| {record['name']} | — | — | — | {record['error']} |")
    else:
      print(
          f"| {record['name']} (separate venv, best of {args.peer_repeats}, not interleaved) | {record['time']:.2f} | "
          f"{record['time'] / ours:.2f} | {ours / record['time']:.2f} | {record['id']:.3f} |"
      )
  print(f"\nrsim_jax / scikit-learn time: **{ours / best['sklearn']:.2f}** (target ≤ 0.5).")


def bench_blocks(args) -> None:
  import jax

  from rsim_jax import kernels

  x = jax.device_put(manifold_points(args.twonn_n, args.twonn_d))
  sizes = [int(s) for s in args.tune_blocks.split(",")]
  fns = {b: (lambda b=b: jax.block_until_ready(kernels.knn_distances(x, k=2, block_size=b))) for b in sizes}
  best, _, _ = best_of_interleaved(fns, repeats=args.repeats)
  flops = args.twonn_n**2 * args.twonn_d  # n²·d/2 multiply-adds = n²·d flops (symmetric tiles)
  print(f"\n### knn_distances(k=2) tile size, {args.twonn_n:,} × {args.twonn_d}\n")
  print("| tile B | time (s) | GEMM GFLOP/s |")
  print("|---:|---:|---:|")
  for b in sizes:
    print(f"| {b} | {best[b]:.2f} | {flops / best[b] / 1e9:.1f} |")


def bench_pca(args) -> None:
  import jax

  from rsim_jax import kernels

  n, d, k = args.pca_n, args.pca_d, args.pca_k
  x = wide_activations(n, d)
  x_device = jax.device_put(x)

  def rsim():
    return jax.block_until_ready(kernels.pca(x_device, k=k))

  best, first, value = best_of_interleaved({"rsim_jax": rsim}, repeats=args.pca_repeats)
  ours = value["rsim_jax"]
  rows = [("**rsim_jax** `kernels.pca` (Gram route, float32)", best["rsim_jax"], np.asarray(ours.eigenvalues, np.float64),
           np.asarray(ours.components, np.float64))]

  def numpy_covariance():
    xc = x.astype(np.float64)
    xc -= xc.mean(0)
    cov = xc.T @ xc / (n - 1)  # NumPy uses a symmetric rank-k update for a.T @ a
    del xc
    w, v = np.linalg.eigh(cov)
    return w[::-1][:k], v[:, ::-1][:, :k]

  def numpy_gram():
    xc = x.astype(np.float64)
    xc -= xc.mean(0)
    w, u = np.linalg.eigh(xc @ xc.T)
    w, u = w[::-1][:k], u[:, ::-1][:, :k]
    return w / (n - 1), (xc.T @ u) / np.sqrt(w)

  reference = None
  if not args.skip_numpy_covariance:
    start = time.perf_counter()
    w, v = numpy_covariance()
    rows.append(("`numpy.linalg.eigh` of the float64 covariance (d × d)", time.perf_counter() - start, w, v))
    reference = (w, v)
  start = time.perf_counter()
  w, v = numpy_gram()
  rows.append(("`numpy.linalg.eigh` of the float64 Gram matrix (n × n)", time.perf_counter() - start, w, v))
  if reference is None:
    reference = (w, v)
  ref_w, ref_v = reference
  lead = min(10, k)
  print(f"\n### PCA, {n:,} × {d:,} float32, top {k} (rsim_jax first call incl. compile: {first['rsim_jax']:.1f} s)\n")
  print("| method | time (s) | time / rsim_jax | max rel. error of top-k variances | min overlap of top-10 directions |")
  print("|---|---:|---:|---:|---:|")
  for name, seconds, w, v in rows:
    error = np.max(np.abs(w - ref_w) / ref_w)
    overlap = np.min(np.abs(np.sum(v[:, :lead] * ref_v[:, :lead], axis=0)))
    print(f"| {name} | {seconds:.2f} | {seconds / best['rsim_jax']:.2f} | {error:.1e} | {overlap:.7f} |")
  print(
      f"\nErrors and overlaps are against the {'covariance' if not args.skip_numpy_covariance else 'Gram'} float64 "
      "result; the NumPy baselines ran once."
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="small sizes, seconds")
  parser.add_argument("--twonn-n", type=int, default=None)
  parser.add_argument("--twonn-d", type=int, default=None)
  parser.add_argument("--pca-n", type=int, default=None)
  parser.add_argument("--pca-d", type=int, default=None)
  parser.add_argument("--pca-k", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=None, help="interleaved timed runs after a warm-up")
  parser.add_argument("--pca-repeats", type=int, default=1)
  parser.add_argument("--peer-repeats", type=int, default=1)
  parser.add_argument("--block-size", type=int, default=None, help="knn tile size for rsim_jax (default 1024)")
  parser.add_argument("--tune-blocks", default="", help="comma-separated tile sizes to time, e.g. 512,1024,2048")
  parser.add_argument("--only", choices=("twonn", "pca"), default=None)
  parser.add_argument("--skip-numpy-covariance", action="store_true", help="skip the d × d float64 eigh")
  parser.add_argument("--peers-python", default=DEFAULT_PEERS_PYTHON)
  parser.add_argument("--no-peers", action="store_true")
  parser.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.peer_worker:
    peer_worker(args.peer_worker, args.repeats or 1)
    return
  quick = args.quick
  args.twonn_n = args.twonn_n or (5_000 if quick else 50_000)
  args.twonn_d = args.twonn_d or (128 if quick else 512)
  args.pca_n = args.pca_n or (1_000 if quick else 10_000)
  args.pca_d = args.pca_d or (2_048 if quick else 16_384)
  args.pca_k = min(args.pca_k, args.pca_n, args.pca_d)
  args.repeats = args.repeats or (3 if quick else 2)

  import jax

  blas_threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
  print(
      f"# rsim_jax geometry benchmark — {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
      f"jax {jax.__version__} on {jax.devices()[0].platform}, OPENBLAS_NUM_THREADS={blas_threads}"
  )
  if args.tune_blocks:
    bench_blocks(args)
  if args.only in (None, "twonn"):
    bench_twonn(args)
  if args.only in (None, "pca"):
    bench_pca(args)


if __name__ == "__main__":
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  main()
