"""PyTorch side of `cka_peers.py`: all-pairs minibatch CKA with PyTorch CKA libraries, on saved activations.

Run with a Python that has torch (and whichever peers are installed), never the project's venv; it imports
neither jax nor rsim_jax:

  /tmp/torchpeers/bin/python benchmarks/cka_peers_worker.py DIR [--repeats 3] [--slow-batches K]

DIR holds `x_<batch>_<layer>.npy` and `y_<batch>_<layer>.npy`, float32 `(batch, features)`: model X's and
model Y's layers on the same minibatches. Every method computes the 10x10 cross-model minibatch CKA of
Nguyen et al. (2021): Σ_batches HSIC₁(K_a, L_b) / sqrt(Σ HSIC₁(K_a, K_a) · Σ HSIC₁(L_b, L_b)), each the way a
user of that library would for this job. One JSON line per method on stdout:

  {"method", "seconds", "cka": [[...]], "note", "version", "batches_timed", "num_batches", "scaled", "runs"}

`seconds` is the best of `--repeats` timed runs after one warm-up run (fewer, reported as `runs`, once a
method's timed runs exceed `--time-budget` seconds). Methods listed in `SLOW` (per-pair
APIs that recompute Gram matrices for every pair) are run on the first `--slow-batches` batches only when
that flag is given; their `seconds` is then scaled to all batches (`scaled: true`) and their `cka` is the
CKA of those batches only (the driver compares it with rsim_jax on the same batches).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

SLOW = ("torch-cka", "ckatorch.cka_batch")


def version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def load(directory: Path):
  """`xs[b][l]`, `ys[b][l]`: float32 torch tensors (batch, features)."""
  pattern = re.compile(r"([xy])_(\d+)_(\d+)\.npy$")
  found = {}
  for path in directory.iterdir():
    m = pattern.match(path.name)
    if m:
      found[(m.group(1), int(m.group(2)), int(m.group(3)))] = path
  if not found:
    raise SystemExit(f"No x_<batch>_<layer>.npy / y_<batch>_<layer>.npy files in {directory}.")
  num_batches = 1 + max(b for _, b, _ in found)
  out = {}
  for model in "xy":
    layers = 1 + max(l for m, _, l in found if m == model)
    out[model] = [
        [torch.from_numpy(np.load(found[(model, b, l)]).astype(np.float32, copy=False)) for l in range(layers)]
        for b in range(num_batches)
    ]
  return out["x"], out["y"]


# ---------------------------------------------------------------------------------------------------------------
# Plain torch: the same stacked-Gram algorithm as rsim_jax (Gram per layer, U-centre the stack, one GEMM for all
# pairs), float32 throughout, sums over batches in float64.


def _u_centre(g):
  """U-centring of a stack of Grams (Székely & Rizzo 2014): ⟨Ũ_K, Ũ_L⟩ / (n(n−3)) = HSIC₁(K, L)."""
  n = g.shape[-1]
  g = g.clone()
  g.diagonal(dim1=-2, dim2=-1).zero_()
  row = g.sum(-1)
  total = row.sum(-1)
  g -= row[:, :, None] / (n - 2)
  g -= row[:, None, :] / (n - 2)
  g += (total / ((n - 1) * (n - 2)))[:, None, None]
  g.diagonal(dim1=-2, dim2=-1).zero_()
  return g


def torch_stacked(xs_batches, ys_batches):
  lx, ly = len(xs_batches[0]), len(ys_batches[0])
  xy, xx, yy = torch.zeros(lx, ly, dtype=torch.float64), torch.zeros(lx, dtype=torch.float64), torch.zeros(ly, dtype=torch.float64)
  with torch.inference_mode():
    for xs, ys in zip(xs_batches, ys_batches):
      n = xs[0].shape[0]
      gx = _u_centre(torch.stack([a @ a.T for a in xs])).reshape(lx, -1)
      gy = _u_centre(torch.stack([a @ a.T for a in ys])).reshape(ly, -1)
      scale = 1.0 / (n * (n - 3))
      xy += (gx @ gy.T).double() * scale
      xx += (gx * gx).sum(1).double() * scale
      yy += (gy * gy).sum(1).double() * scale
  return xy / torch.sqrt(torch.outer(xx, yy))


# ---------------------------------------------------------------------------------------------------------------
# The libraries' model-level APIs take models and a data loader and hook the layers. To feed them the saved
# activations, "replay" models return them: the data set is the example indices, and layer l of the replay model
# outputs the stored activations of the batch those indices belong to. The forward pass costs nothing.


class _ReplayLayer(nn.Module):
  def __init__(self, model, index):
    super().__init__()
    self.model = [model]  # not a submodule (no recursion into the parent)
    self.index = index

  def forward(self, batch):
    return self.model[0].batches[batch][self.index]


class ReplayModel(nn.Module):
  def __init__(self, batches):
    super().__init__()
    self.batches = batches
    self.batch_size = batches[0][0].shape[0]
    self.layers = nn.ModuleList(_ReplayLayer(self, l) for l in range(len(batches[0])))
    self.anchor = nn.Parameter(torch.zeros(()))  # some libraries read the device off the first parameter

  def forward(self, idx):
    b = int(idx[0]) // self.batch_size
    for layer in self.layers:
      layer(b)
    return None


def index_loader(num_batches, batch_size, with_labels):
  from torch.utils.data import DataLoader, TensorDataset

  idx = torch.arange(num_batches * batch_size)
  tensors = (idx, torch.zeros_like(idx)) if with_labels else (idx,)
  return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=False)


def layer_names(batches):
  return [f"layers.{l}" for l in range(len(batches[0]))]


def pytorch_cka(xs_batches, ys_batches):
  """pytorch-cka (import `cka`): `compute_cka(model1, model2, loader, layers=...)`, its end-to-end API."""
  import cka

  m1, m2 = ReplayModel(xs_batches), ReplayModel(ys_batches)
  loader = index_loader(len(xs_batches), m1.batch_size, with_labels=False)
  (result,) = cka.compute_cka(
      m1, m2, loader, layers=layer_names(xs_batches), model2_layers=layer_names(ys_batches), device="cpu", progress=False
  )
  return result


def cka_pytorch(xs_batches, ys_batches):
  """cka-pytorch: `CKACalculator(...).calculate_cka_matrix(loader, num_epochs=1)`."""
  from cka_pytorch import CKACalculator

  m1, m2 = ReplayModel(xs_batches), ReplayModel(ys_batches)
  calc = CKACalculator(
      m1, m2, model1_layers=layer_names(xs_batches), model2_layers=layer_names(ys_batches),
      device=torch.device("cpu"), verbose=False,
  )
  loader = index_loader(len(xs_batches), m1.batch_size, with_labels=True)
  try:
    return calc.calculate_cka_matrix(loader, num_epochs=1)
  finally:
    calc.hook_manager1.clear_all()
    calc.hook_manager2.clear_all()


def torch_cka(xs_batches, ys_batches):
  """torch-cka: `CKA(model1, model2, ...).compare(loader)`, then `.export()["CKA"]`."""
  import warnings

  from torch_cka import CKA

  m1, m2 = ReplayModel(xs_batches), ReplayModel(ys_batches)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    c = CKA(m1, m2, model1_name="X", model2_name="Y", model1_layers=layer_names(xs_batches),
            model2_layers=layer_names(ys_batches), device="cpu")
    loader = index_loader(len(xs_batches), m1.batch_size, with_labels=False)
    import torch_cka.cka as tc  # its compare() wraps the loop in tqdm; silence it
    tc.tqdm = lambda it, **kw: it
    with torch.no_grad():
      c.compare(loader)
  return c.export()["CKA"]


# ckatorch: its `CKA` class takes (batch, tokens, hidden) outputs (a Gram over tokens per example) and keeps only
# the last batch's value, so it does not fit this job. Its function `cka_batch(x, y)` is its minibatch CKA:
# x, y `(num_batches, n, d)`, one pair of layers per call, in float64.


def _stack_layers(batches):
  return [torch.stack([b[l] for b in batches]) for l in range(len(batches[0]))]


def ckatorch_cka_batch(xs_stacked, ys_stacked):
  from ckatorch import cka_batch

  out = torch.empty(len(xs_stacked), len(ys_stacked), dtype=torch.float64)
  with torch.inference_mode():
    for i, x in enumerate(xs_stacked):
      for j, y in enumerate(ys_stacked):
        out[i, j] = cka_batch(x, y)
  return out


def ckatorch_hsic1(xs_batches, ys_batches):
  """ckatorch's `hsic1` kernel used as well as the library allows: each Gram once per batch (float64 like
  `cka_batch`), all pairs of one batch in one `hsic1` call."""
  from ckatorch import hsic1

  lx, ly = len(xs_batches[0]), len(ys_batches[0])
  xy, xx, yy = torch.zeros(lx, ly, dtype=torch.float64), torch.zeros(lx, dtype=torch.float64), torch.zeros(ly, dtype=torch.float64)
  with torch.inference_mode():
    for xs, ys in zip(xs_batches, ys_batches):
      gx = torch.stack([a.double() @ a.double().T for a in xs])
      gy = torch.stack([a.double() @ a.double().T for a in ys])
      xx += hsic1(gx, gx)
      yy += hsic1(gy, gy)
      xy += hsic1(gx.repeat_interleave(ly, 0), gy.repeat(lx, 1, 1)).reshape(lx, ly)
  return xy / torch.sqrt(torch.outer(xx, yy))


def methods(xs, ys, slow_batches):
  """(name, distribution, fn, note, batches used) for the available methods."""
  out = [("torch_stacked_f32", "torch", lambda: torch_stacked(xs, ys),
          "plain torch float32, same stacked-Gram algorithm as rsim_jax (Gram per layer, U-centre, one GEMM)", len(xs))]
  if version("pytorch-cka"):
    out.append(("pytorch-cka", "pytorch-cka", lambda: pytorch_cka(xs, ys),
                "cka.compute_cka over replay models (its stacked Grams + cka.hsic, float32); clamps CKA to [0, 1], so "
                "slightly negative unbiased estimates (unrelated layers) read 0",
                len(xs)))
  if version("cka-pytorch"):
    out.append(("cka-pytorch", "cka-pytorch", lambda: cka_pytorch(xs, ys),
                "CKACalculator.calculate_cka_matrix(num_epochs=1) over replay models (hsic1 per pair via bmm K@L, "
                "float32); adds eps=1e-4 under the sqrt", len(xs)))
  k = min(slow_batches or len(xs), len(xs))
  if version("torch-cka"):
    sub_x, sub_y = xs[:k], ys[:k]
    out.append(("torch-cka", "torch-cka", lambda: torch_cka(sub_x, sub_y),
                "CKA.compare over replay models: recomputes Y's Gram for every pair, _HSIC with .item() per pair, "
                "float32", k))
  if version("ckatorch"):
    sx, sy = _stack_layers(xs[:k]), _stack_layers(ys[:k])
    out.append(("ckatorch.cka_batch", "ckatorch", lambda: ckatorch_cka_batch(sx, sy),
                f"cka_batch(x_stack, y_stack) once per pair ({len(sx) * len(sy)} calls): its API recomputes both Gram "
                "stacks per pair, float64", k))
    out.append(("ckatorch.hsic1", "ckatorch", lambda: ckatorch_hsic1(xs, ys),
                "not its CKA API: its hsic1 kernel with each Gram formed once per batch, all pairs per call, float64",
                len(xs)))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("directory", type=Path)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--slow-batches", type=int, default=None,
                      help=f"time {', '.join(SLOW)} on this many batches and scale the time to all")
  parser.add_argument("--time-budget", type=float, default=180.0,
                      help="stop repeating a method once its timed runs add up to this many seconds (best of fewer)")
  parser.add_argument("--methods", default=None, help="comma-separated subset of method names")
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  if "jax" in sys.modules or "rsim_jax" in sys.modules:
    raise SystemExit("cka_peers_worker must run without jax / rsim_jax.")
  xs, ys = load(args.directory)
  wanted = None if args.methods is None else set(args.methods.split(","))
  print(json.dumps({"info": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                             "num_batches": len(xs), "layers": [len(xs[0]), len(ys[0])],
                             "batch": tuple(xs[0][0].shape)}}), flush=True)
  for name, dist, fn, note, k in methods(xs, ys, args.slow_batches):
    if wanted is not None and name not in wanted:
      continue
    record = {"method": name, "version": version(dist), "note": note, "batches_timed": k, "num_batches": len(xs)}
    try:
      cka = fn()  # warm-up; also the value reported
      best, spent, runs = float("inf"), 0.0, 0
      while runs < args.repeats and (runs == 0 or spent < args.time_budget):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
      record.update(seconds=best * len(xs) / k, scaled=k != len(xs), runs=runs,
                    cka=np.asarray(torch.as_tensor(cka).detach().double()).tolist())
      if k != len(xs):
        record["note"] += f"; timed on {k} of {len(xs)} batches, time scaled x{len(xs) / k:g}"
    except Exception as e:  # one broken peer must not hide the others
      record.update(seconds=None, cka=None, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=3))
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
  main()
