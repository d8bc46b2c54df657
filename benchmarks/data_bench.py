"""Host input-pipeline throughput (images/s) of `rsim_jax.data.train_batches`, side by side.

Rows: the vectorised NumPy backend vs the grain backend (per-example reads on threads) on the same in-memory
split, with CIFAR pad-crop-flip augmentation and normalisation; CIFAR-10 from ../shared/data when present,
else digits upsampled to 32×32×3. Also the ImageNet transforms (Inception crop, resize-256/centre-224) on one
synthetic 375×500 image per call. The ratio column is against the first row. Nothing here touches a device.

  python benchmarks/data_bench.py            # 50 batches of 128 per row
  python benchmarks/data_bench.py --quick    # 10 batches
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import numpy as np


def _split():
  from rsim_jax import data  # noqa: PLC0415

  try:
    return "cifar10 (npz)", data.load("cifar10", "train")
  except Exception:  # noqa: BLE001 - no shared data on this machine
    return "digits→32×32×3", data.load("digits", "train", image_size=32, channels=3)


def _rate(batches, steps: int, batch: int) -> float:
  next(batches)  # start-up (threads, first permutation) not timed
  start = time.perf_counter()
  for _ in itertools.islice(batches, steps):
    pass
  return steps * batch / (time.perf_counter() - start)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--batch", type=int, default=128)
  args = parser.parse_args(argv)
  steps = 10 if args.quick else 50
  from rsim_jax import data  # noqa: PLC0415

  name, ds = _split()
  cpus = os.cpu_count() or 1
  rows = [("numpy", {"backend": "numpy"})]
  rows += [(f"grain, {t} threads", {"backend": "grain", "num_threads": t}) for t in sorted({1, min(4, cpus), min(16, cpus)})]
  print(f"train_batches on {name}: batch {args.batch}, augment=True, {steps} batches, {cpus} CPUs")
  print(f"{'backend':<22}{'images/s':>12}{'ratio':>8}")
  base = None
  for label, kwargs in rows:
    rate = _rate(data.train_batches(ds, batch_size=args.batch, seed=0, augment=True, **kwargs), steps, args.batch)
    base = base or rate
    print(f"{label:<22}{rate:>12,.0f}{rate / base:>8.2f}")

  image = np.random.default_rng(0).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
  n = 20 if args.quick else 100
  keys = data.example_keys(0, 0, np.arange(n))
  start = time.perf_counter()
  for k in keys:
    data.inception_crop(image, k)
  crop = n / (time.perf_counter() - start)
  start = time.perf_counter()
  for _ in range(n):
    data.center_crop(image)
  centre = n / (time.perf_counter() - start)
  print(f"ImageNet transforms on one thread (375×500 → 224×224, excluding JPEG decode): inception_crop "
        f"{crop:,.0f}/s, center_crop {centre:,.0f}/s")


if __name__ == "__main__":
  main()
