"""The `rsim` command.

  rsim cka X.npz [Y.npz] --out DIR      all-layer minibatch CKA heatmap of stored activations
  rsim cka RUN_A [RUN_B] --out DIR      ... or of trained models (`rsim train` / study work directories)
  rsim study wide_deep --config local --workdir DIR   a study end to end (train, extract, analyse, report)
  rsim train --config FILE[:VARIANT] --workdir DIR    one training run (see `python -m rsim_jax.train -h`)
  rsim rehearse [--workdir DIR]         2 local JAX processes × 4 CPU devices vs 1 × 8: a multi-host rehearsal

`rsim cka --batch-size b` is the CKA minibatch per device, for both inputs: with --sharded each global batch
holds b × (devices of all hosts) examples, one minibatch of b per device, which gives the same matrix as one
device with b. Paths (runs, .npz files, --out, work directories) may be local or gs://… . On a multi-host slice
every host runs the same command with `rsim --multihost ...`; process 0 writes the files.
"""

from __future__ import annotations

import argparse
import io as _bytes_io
import json
import os
import sys


def _load_npz_layers(path: str) -> dict:
  import numpy as np

  from rsim_jax import io

  with np.load(_bytes_io.BytesIO(io.path(path).read_bytes()), allow_pickle=False) as data:
    return {name: data[name] for name in data.files}


def _is_run(path: str) -> bool:
  from rsim_jax import io

  return (io.path(path) / "config.json").exists()


def _models_cka(args, mesh):
  """Streams a trained model's evaluation split (or `--split`) through one or two trained models."""
  from rsim_jax import extract
  from rsim_jax.train import load_model

  model_x, config = load_model(args.x)
  models = [model_x] + ([load_model(args.y)[0]] if args.y else [])
  batches, total = extract.split_batches(config, split=args.split, batch_size=args.batch_size, mesh=mesh,
                                         max_examples=args.max_examples)
  comparison = extract.compare_models(models, batches, mesh=mesh, total=total)
  return comparison.cross if args.y else comparison.within[0]


def cmd_cka(args) -> int:
  import jax

  from rsim_jax import extract, io, parallel, plotting

  if args.batch_size < 4:
    raise SystemExit(f"rsim cka: --batch-size {args.batch_size} is the CKA minibatch per device and must be at "
                     "least 4 (unbiased HSIC).")
  runs = [_is_run(p) for p in (args.x, args.y) if p]
  if any(runs) and not all(runs):
    raise SystemExit("rsim cka: give two .npz activation files or two trained-model work directories "
                     "(holding config.json), not one of each.")
  # On several hosts every device must take part (the numbers do not depend on the device count: the batch
  # size is per device).
  sharded = args.sharded or jax.process_count() > 1
  if all(runs):
    result = _models_cka(args, parallel.data_mesh() if sharded else parallel.data_mesh(1))
  else:
    xs = _load_npz_layers(args.x)
    ys = _load_npz_layers(args.y) if args.y else None
    result = extract.minibatch_cka_of_arrays(xs, ys, batch_size=args.batch_size,
                                             mesh=parallel.data_mesh() if sharded else None)
  out = io.path(args.out)
  io.write_json(out / "cka.json", result.to_json(), indent=1)
  figure = out / "cka.png"
  if io.is_writer():
    local = io.local_copy_for_plotting(figure)
    plotting.cka_heatmap(
        result.matrix.T, local, x_labels=result.x_names, y_labels=result.y_names,
        title=f"minibatch CKA, {result.num_examples} examples",
        x_name=_stem(args.x), y_name=_stem(args.y or args.x),
    )
    io.upload(local, figure)
    print(f"wrote {out / 'cka.json'} and {figure}")
  io.barrier("rsim cka written")
  return 0


def _stem(path: str) -> str:
  from rsim_jax import io

  p = io.path(path)
  return p.stem or p.parent.name


def cmd_study(args) -> int:
  import importlib

  module = importlib.import_module(f"rsim_jax.studies.{args.name}")
  cfg = module.get_config(args.config)
  if args.dry_run:
    # What would be trained, from the config alone: no data is read and nothing is written.
    rows = module.plan(cfg) if hasattr(module, "plan") else [{"config": repr(cfg)}]
    for row in rows:
      print(json.dumps(row, default=str))
    print(f"{len(rows)} model(s) in {args.name}:{args.config}")
    return 0
  report = module.run(cfg, args.workdir or f"runs/{args.name}_{args.config}")
  print(f"wrote {report}")
  return 0


def cmd_train(args) -> int:
  from rsim_jax.train.__main__ import main as train_main

  return train_main(args.rest)


def cmd_rehearse(args) -> int:
  from rsim_jax import rehearse

  return rehearse.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rsim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--multihost", action="store_true",
                      help="join the other hosts first (jax.distributed.initialize(); also RSIM_MULTIHOST=1): give it "
                      "on every worker of a multi-host TPU slice")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("cka", help="minibatch CKA heatmap of stored activations (.npz: layer name -> (N, ...)) "
                     "or of trained models (work directories)")
  p.add_argument("x", help=".npz of the first model's activations, or a trained model's work directory")
  p.add_argument("y", nargs="?", help="the same for a second model (same examples / same data)")
  p.add_argument("--split", default=None, help="trained models: split to stream (default: the evaluation split)")
  p.add_argument("--max-examples", type=int, default=None,
                 help="trained models: a class-balanced subset of the split of this size")
  p.add_argument("--out", default="runs/cka", help="output directory")
  p.add_argument("--batch-size", type=int, default=256,
                 help="CKA minibatch per device, for .npz and trained models alike (default 256); with --sharded "
                 "each global batch is this × the number of devices of all hosts, and the matrix is the same as "
                 "with one device")
  p.add_argument("--sharded", action="store_true",
                 help="use every device of every host (one minibatch each); always on with several processes")
  p.set_defaults(func=cmd_cka)

  from rsim_jax.studies import STUDIES

  p = sub.add_parser("study", help="run (or resume) a study end to end")
  p.add_argument("name", choices=STUDIES)
  p.add_argument("--config", default="local", help="the study's variant (e.g. local, cifar10)")
  p.add_argument("--workdir", default=None, help="output directory (default runs/NAME_CONFIG)")
  p.add_argument("--dry-run", action="store_true", help="list the models the variant would train, then stop")
  p.set_defaults(func=cmd_study)

  p = sub.add_parser("train", help="one training run; arguments as `python -m rsim_jax.train`", add_help=False)
  p.add_argument("rest", nargs=argparse.REMAINDER)
  p.set_defaults(func=cmd_train)

  p = sub.add_parser("rehearse", help="multi-host rehearsal on this machine: train + resume + CKA in 2 JAX "
                     "processes × 4 CPU devices, compared with 1 × 8 (see rsim_jax.rehearse)", add_help=False)
  p.add_argument("rest", nargs=argparse.REMAINDER)
  p.set_defaults(func=cmd_rehearse)
  return parser


def _initialize_distributed(args) -> None:
  """Joins the other hosts of a slice (`jax.distributed.initialize()`, which finds the coordinator itself on
  Cloud TPU, SLURM and other clusters it knows) before JAX's first use."""
  if args.multihost or os.environ.get("RSIM_MULTIHOST", "") not in ("", "0"):
    import jax

    jax.distributed.initialize()


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  _initialize_distributed(args)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
