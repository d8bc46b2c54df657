"""Training-step throughput (images/s) of CIFAR ResNet-20 and ResNet-56 at batch 128, on 1 and 8 devices.

One compiled `rsim_jax.train.Program.train_step` (SGD momentum + weight decay, BatchNorm over the global batch)
on random 32×32×3 images, the batch split over the "data" mesh axis and the state replicated. The 8-device
rows run in a subprocess with `jax_num_cpu_devices=8` (simulated CPU devices, unless real accelerators are
present), so on a CPU they measure the cost of the sharded program on the same cores, not a speed-up.

  python benchmarks/train_bench.py            # 10 timed steps per row
  python benchmarks/train_bench.py --quick    # 3 timed steps, ResNet-20 only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def measure(depth: int, batch: int, steps: int, num_devices: int, dtype: str) -> dict:
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from rsim_jax import parallel  # noqa: PLC0415
  from rsim_jax.train import Program, TrainConfig  # noqa: PLC0415

  config = TrainConfig(model="resnet", model_kwargs={"depth": depth}, batch_size=batch, dtype=dtype,
                       num_devices=num_devices, progress=False)
  program = Program(config, (32, 32, 3), 10, total_steps=1000, warmup_steps=0)
  mesh = parallel.data_mesh(num_devices)
  rng = np.random.default_rng(0)
  batch_data = {"image": rng.normal(size=(batch, 32, 32, 3)).astype(np.float32),
                "label": rng.integers(0, 10, size=batch).astype(np.int32)}
  with jax.set_mesh(mesh):
    state = jax.device_put(program.init_state(), parallel.replicated(mesh))
    batch_data = parallel.shard_batch(batch_data, mesh)
    start = time.perf_counter()
    state, metrics = program.train_step(state, batch_data)  # compile + first step
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    state, metrics = program.train_step(state, batch_data)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = program.train_step(state, batch_data)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start
  return {"depth": depth, "devices": num_devices, "images_per_sec": steps * batch / elapsed,
          "step_ms": 1000 * elapsed / steps, "compile_s": compile_s, "platform": jax.devices()[0].platform}


def run_child(depths, batch, steps, num_devices, dtype) -> list[dict]:
  """Runs `measure` in a fresh process that sees `num_devices` (simulated) devices."""
  env = dict(os.environ)
  code = (
      "import jax, json, sys; "
      f"jax.config.update('jax_num_cpu_devices', {num_devices}); "
      "sys.path.insert(0, '.'); "
      "from benchmarks.train_bench import measure; "
      f"print(json.dumps([measure(d, {batch}, {steps}, {num_devices}, {dtype!r}) for d in {list(depths)!r}]))"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"benchmark subprocess failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="3 timed steps, ResNet-20 only")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = parser.parse_args(argv)
  depths = (20,) if args.quick else (20, 56)
  steps = 3 if args.quick else args.steps

  rows = run_child(depths, args.batch, steps, 1, args.dtype) + run_child(depths, args.batch, steps, 8, args.dtype)
  one = {r["depth"]: r["images_per_sec"] for r in rows if r["devices"] == 1}
  print(f"train step, batch {args.batch}, {args.dtype}, {rows[0]['platform']}, {steps} timed steps (best of one run)")
  print(f"{'model':<12}{'devices':>8}{'images/s':>12}{'ms/step':>10}{'compile s':>11}{'vs 1 device':>13}")
  for r in sorted(rows, key=lambda r: (r["depth"], r["devices"])):
    ratio = r["images_per_sec"] / one[r["depth"]]
    print(f"{'ResNet-' + str(r['depth']):<12}{r['devices']:>8}{r['images_per_sec']:>12.1f}{r['step_ms']:>10.1f}"
          f"{r['compile_s']:>11.1f}{ratio:>12.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
