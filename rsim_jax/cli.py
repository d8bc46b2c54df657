"""The `rsim` command.

  rsim cka X.npz [Y.npz] --out DIR      all-layer minibatch CKA heatmap of stored activations
  rsim cka RUN_A [RUN_B] --out DIR      ... or of trained models (`rsim train` / study work directories)
  rsim study wide_deep --config local --workdir DIR   a study end to end (train, extract, analyse, report)
  rsim train --config FILE[:VARIANT] --workdir DIR    one training run (see `python -m rsim_jax.train -h`)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def _load_npz_layers(path: str) -> dict:
  import numpy as np

  with np.load(path, allow_pickle=False) as data:
    return {name: data[name] for name in data.files}


def _is_run(path: str) -> bool:
  return pathlib.Path(path, "config.json").is_file()


def _models_cka(args, mesh):
  """Streams a trained model's evaluation split (or `--split`) through one or two trained models."""
  from rsim_jax import extract
  from rsim_jax.train import load_model

  model_x, config = load_model(args.x)
  models = [model_x] + ([load_model(args.y)[0]] if args.y else [])
  batches, total = extract.split_batches(config, split=args.split, batch_size=args.batch_size,
                                         max_examples=args.max_examples)
  comparison = extract.compare_models(models, batches, mesh=mesh, total=total)
  return comparison.cross if args.y else comparison.within[0]


def cmd_cka(args) -> int:
  from rsim_jax import extract, parallel, plotting

  runs = [_is_run(p) for p in (args.x, args.y) if p]
  if any(runs) and not all(runs):
    raise SystemExit("rsim cka: give two .npz activation files or two trained-model work directories "
                     "(holding config.json), not one of each.")
  mesh = parallel.data_mesh() if args.sharded else None
  if all(runs):
    result = _models_cka(args, mesh)
  else:
    xs = _load_npz_layers(args.x)
    ys = _load_npz_layers(args.y) if args.y else None
    result = extract.minibatch_cka_of_arrays(xs, ys, batch_size=args.batch_size, mesh=mesh)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "cka.json").write_text(json.dumps(result.to_json(), indent=1))
  title = f"minibatch CKA, {result.num_examples} examples"
  figure = plotting.cka_heatmap(
      result.matrix.T, out / "cka.png", x_labels=result.x_names, y_labels=result.y_names, title=title,
      x_name=pathlib.Path(args.x).stem, y_name=pathlib.Path(args.y or args.x).stem,
  )
  print(f"wrote {out / 'cka.json'} and {figure}")
  return 0


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


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rsim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("cka", help="minibatch CKA heatmap of stored activations (.npz: layer name -> (N, ...)) "
                     "or of trained models (work directories)")
  p.add_argument("x", help=".npz of the first model's activations, or a trained model's work directory")
  p.add_argument("y", nargs="?", help="the same for a second model (same examples / same data)")
  p.add_argument("--split", default=None, help="trained models: split to stream (default: the evaluation split)")
  p.add_argument("--max-examples", type=int, default=None,
                 help="trained models: a class-balanced subset of the split of this size")
  p.add_argument("--out", default="runs/cka", help="output directory")
  p.add_argument("--batch-size", type=int, default=256, help="CKA minibatch size (per device when --sharded)")
  p.add_argument("--sharded", action="store_true", help="split batches over all devices (one minibatch each)")
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
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
