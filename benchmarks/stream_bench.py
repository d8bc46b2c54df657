"""Streaming input-pipeline throughput (images/s) for ImageNet-like data: `rsim_jax.data.train_batches` and
`eval_batches` on a `TfdsSource` read record by record from ArrayRecord files through grain.

The files are made here (nothing downloads): 512 JPEG images (`--quick`: 64) of ImageNet-like sizes (sides
300–500, ≈ 65 kB; real ImageNet averages ≈ 400×350 at ≈ 110 kB, and decoding time follows the pixel count more
than the bytes) in 1000 classes, written by a tensorflow-datasets builder under `--workdir` (reused on a second
run). Rows: training batches (JPEG decode + Inception crop to 224 + flip + normalise) and evaluation batches
(decode + resize-256 / centre-crop-224) on 1 and on all host threads. The accelerator's ResNet-50 rate divided
by the per-thread rate is the number of host cores it needs. Nothing here touches a device.

  python benchmarks/stream_bench.py                 # 512 images, batches of 64
  python benchmarks/stream_bench.py --quick         # 64 images, batches of 16
"""

from __future__ import annotations

import argparse
import itertools
import os
import pathlib
import tempfile
import time

import numpy as np

GRAIN = 30.0  # std of the per-pixel noise added to each image


def _builder_class(num: int):
  import tensorflow_datasets as tfds  # noqa: PLC0415
  from PIL import Image  # noqa: PLC0415

  class RsimStreamBench(tfds.core.GeneratorBasedBuilder):
    """Random JPEG images of ImageNet-like sizes in 1000 classes."""

    VERSION = tfds.core.Version(f"1.2.{num}")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(num_classes=1000)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(num):
        rng = np.random.default_rng(i)
        h, w = rng.integers(300, 501, size=2)
        # A smooth field (low-resolution noise upsampled) plus fine grain: JPEG records of about ImageNet's
        # size (≈ 65 kB; pure noise would be far larger, a smooth field alone 20 kB).
        small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(small).resize((int(w), int(h)), Image.BILINEAR), np.float32)
        image = np.clip(image + rng.normal(0, GRAIN, size=image.shape), 0, 255).astype(np.uint8)
        yield i, {"image": Image.fromarray(image), "label": int(rng.integers(1000))}

  return RsimStreamBench


def _rate(batches, steps: int, batch: int) -> float:
  next(batches)  # start-up (threads, first reads) not timed
  start = time.perf_counter()
  for _ in itertools.islice(batches, steps):
    pass
  return steps * batch / (time.perf_counter() - start)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "rsim_stream_bench"))
  args = parser.parse_args(argv)
  num, batch = (64, 16) if args.quick else (512, 64)
  from rsim_jax import data  # noqa: PLC0415

  root = pathlib.Path(args.workdir)
  import tensorflow_datasets as tfds  # noqa: PLC0415

  tfds.disable_progress_bar()
  builder = _builder_class(num)(data_dir=str(root), file_format="array_record")
  began = time.perf_counter()
  builder.download_and_prepare()
  size = sum(f.stat().st_size for f in root.glob(f"rsim_stream_bench/{builder.version}/*array_record*"))
  print(f"{num} JPEG records ({size / num / 1e3:.0f} kB each) in {root} (prepared in "
        f"{time.perf_counter() - began:.1f} s)")
  src = data.open_source("tfds:rsim_stream_bench", "train", data_dir=str(root))
  cpus = os.cpu_count() or 1
  steps = num // batch - 1
  print(f"batch {batch}, {steps} timed batches, {cpus} CPUs; image_shape {src.image_shape}")
  print(f"{'pipeline':<34}{'images/s':>10}{'per thread':>12}")
  for threads in sorted({1, cpus}):
    for label, batches in (
        ("train (Inception crop + flip)", data.train_batches(src, batch_size=batch, seed=0, augment=True,
                                                             num_threads=threads)),
        ("eval (resize 256, centre 224)", data.eval_batches(src, batch_size=batch, num_threads=threads)),
    ):
      rate = _rate(batches, steps, batch)
      print(f"{label + f', {threads} thr':<34}{rate:>10,.0f}{rate / threads:>12,.0f}")


if __name__ == "__main__":
  main()
