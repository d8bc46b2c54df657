"""The `rsim` command.

  rsim cka X.npz [Y.npz] --out DIR      all-layer minibatch CKA heatmap of stored activations
  rsim cka RUN_A [RUN_B] --out DIR      ... or of trained models (`rsim train` / study work directories)
      [--stderr G] [--index NAME ...]   ... with jackknife standard errors, and other similarity indices
  rsim study wide_deep --config local --workdir DIR   a study end to end (train, extract, analyse, report)
  rsim train --config FILE[:VARIANT] --workdir DIR    one training run (see `python -m rsim_jax.train -h`)
  rsim rehearse [--workdir DIR]         2 local JAX processes × 4 CPU devices vs 1 × 8: a multi-host rehearsal

`rsim cka --batch-size b` is the CKA minibatch per device, for both inputs: with --sharded each global batch
holds b × (devices of all hosts) examples, one minibatch of b per device, which gives the same matrix as one
device with b. Paths (runs, .npz files, --out, work directories) may be local or gs://… . On a multi-host slice
every host runs the same command with `rsim --multihost ...`; process 0 writes the files.

`rsim cka --index NAME` (repeatable) adds a full-batch index (`rsim_jax.analysis.indices`: linear/debiased CKA,
Procrustes, CCA, SVCCA, PWCCA, RSA) computed on a sample of --sample-size examples, the first N of the .npz
arrays or a seeded random N of the split, into NAME.json and NAME.png beside cka.json.
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


def _models_cka(args, mesh, sample_size: int):
  """Streams a trained model's evaluation split (or `--split`) through one or two trained models: the CKA
  result and, when `sample_size`, per model a seeded random sample of every layer (`compare_models`)."""
  from rsim_jax import extract
  from rsim_jax.train import load_model

  model_x, config = load_model(args.x)
  models = [model_x] + ([load_model(args.y)[0]] if args.y else [])
  batches, total = extract.split_batches(config, split=args.split, batch_size=args.batch_size, mesh=mesh,
                                         max_examples=args.max_examples)
  comparison = extract.compare_models(models, batches, mesh=mesh, total=total, stderr_groups=args.stderr,
                                      sample_size=sample_size)
  return (comparison.cross if args.y else comparison.within[0]), comparison.samples


def _index_matrices(args, samples, out, x_name: str, y_name: str, mesh=None) -> None:
  """Each `--index` on the sample (`samples`: one or two dicts layer name → `(m, ...)`): NAME.json, NAME.png.
  With a `mesh` of several devices the sample is placed whole on each of them (every host fills its own), so
  that the indices' pair loops split over all devices of all hosts instead of each host repeating them."""
  import numpy as np

  from rsim_jax import io, parallel, plotting
  from rsim_jax.analysis import indices

  if mesh is not None and mesh.size > 1:
    samples = tuple(parallel.replicate(sample, mesh) for sample in samples)
  sample_x, sample_y = samples[0], (samples[1] if len(samples) > 1 else None)
  x_names, y_names = list(sample_x), list(sample_y if sample_y is not None else sample_x)
  n = len(next(iter(sample_x.values())))
  for name in dict.fromkeys(args.index):
    try:
      matrix = indices.all_pairs(sample_x, sample_y, index=name)
    except ValueError as e:
      raise SystemExit(f"rsim cka --index {name} ({n} examples): {e} (rsim cka uses each index's default options; "
                       "call rsim_jax.analysis.indices.all_pairs for others)") from None
    io.write_json(out / f"{name}.json", {"index": name, "description": indices.DESCRIPTIONS[name],
                                         "matrix": matrix.tolist(), "x_names": x_names, "y_names": y_names, "n": n},
                  indent=1)
    plotting.cka_heatmap(matrix.T, out / f"{name}.png", x_labels=x_names, y_labels=y_names,
                         title=f"{indices.DESCRIPTIONS[name]}, {n} examples", x_name=x_name, y_name=y_name,
                         label=name, vmin=min(0.0, float(np.nanmin(matrix))))
    if io.is_writer():
      print(f"wrote {out / f'{name}.json'} and {out / f'{name}.png'}")


def cmd_cka(args) -> int:
  import jax
  import numpy as np

  from rsim_jax import extract, io, parallel, plotting

  if args.batch_size < 4:
    raise SystemExit(f"rsim cka: --batch-size {args.batch_size} is the CKA minibatch per device and must be at "
                     "least 4 (unbiased HSIC).")
  if args.stderr != 0 and args.stderr < 2:
    raise SystemExit(f"rsim cka: --stderr {args.stderr}: the jackknife leaves out one of G ≥ 2 groups of batches "
                     "at a time; give G ≥ 2 (some 20 or more for a useful standard error), or 0 for none.")
  if args.index and args.sample_size < 4:
    raise SystemExit(f"rsim cka: --sample-size {args.sample_size}: the indices need at least 4 examples.")
  sample_size = args.sample_size if args.index else 0
  runs = [_is_run(p) for p in (args.x, args.y) if p]
  if any(runs) and not all(runs):
    raise SystemExit("rsim cka: give two .npz activation files or two trained-model work directories "
                     "(holding config.json), not one of each.")
  # On several hosts every device must take part (the numbers do not depend on the device count: the batch
  # size is per device).
  sharded = args.sharded or jax.process_count() > 1
  if all(runs):
    result, samples = _models_cka(args, parallel.data_mesh() if sharded else parallel.data_mesh(1), sample_size)
  else:
    xs = _load_npz_layers(args.x)
    ys = _load_npz_layers(args.y) if args.y else None
    result = extract.minibatch_cka_of_arrays(xs, ys, batch_size=args.batch_size,
                                             mesh=parallel.data_mesh() if sharded else None, stderr_groups=args.stderr)
    # The first `--sample-size` examples (all if fewer), the same rows of both files.
    samples = tuple({k: v[:sample_size] for k, v in layers.items()} for layers in (xs, ys) if layers is not None)
  out = io.path(args.out)
  payload = result.to_json()
  if args.stderr:
    payload["stderr_groups"] = args.stderr
  io.write_json(out / "cka.json", payload, indent=1)
  figure = out / "cka.png"
  x_name, y_name = _stem(args.x), _stem(args.y or args.x)
  if io.is_writer():
    local = io.local_copy_for_plotting(figure)
    plotting.cka_heatmap(
        result.matrix.T, local, x_labels=result.x_names, y_labels=result.y_names,
        title=f"minibatch CKA, {result.num_examples} examples", x_name=x_name, y_name=y_name,
    )
    io.upload(local, figure)
    print(f"wrote {out / 'cka.json'} and {figure}")
  if result.stderr is not None:
    stderr = np.asarray(result.stderr, np.float64)
    plotting.cka_heatmap(stderr.T, out / "cka_stderr.png", x_labels=result.x_names, y_labels=result.y_names,
                         title=f"minibatch CKA: jackknife standard error ({args.stderr} groups)", x_name=x_name,
                         y_name=y_name, label="standard error", vmax=max(float(np.nanmax(stderr)), 1e-12))
    if io.is_writer():
      print(f"wrote {out / 'cka_stderr.png'}")
  if args.index:
    _index_matrices(args, samples, out, x_name, y_name, mesh=parallel.data_mesh() if sharded else None)
  io.barrier("rsim cka written")
  return 0


def _stem(path: str) -> str:
  from rsim_jax import io

  p = io.path(path)
  return p.stem or p.parent.name


def cmd_study(args) -> int:
  import importlib

  from rsim_jax import configs

  module = importlib.import_module(f"rsim_jax.studies.{args.name}")
  base = module.get_config(args.config)
  where = f"{args.name}:{args.config}"
  try:
    cfg = configs.apply_overrides(base, args.set)
    # What would be trained, from the config alone (no data is read, nothing is written); building every
    # model's TrainConfig validates the overrides before anything trains.
    rows = module.plan(cfg) if hasattr(module, "plan") else [{"config": repr(cfg)}]
  except ValueError as e:
    raise SystemExit(f"rsim study {where}: {e}") from None
  changed = configs.differences(configs.config_to_dict(base), configs.config_to_dict(cfg))
  if changed:
    print(f"{where} with {len(changed)} field(s) overridden (default → now):\n{configs.format_differences(changed)}")
  if args.dry_run:
    for row in rows:
      print(json.dumps(row, default=str))
    print(f"{len(rows)} model(s) in {where}" + (f" with --set {' --set '.join(args.set)}" if args.set else ""))
    return 0
  workdir = args.workdir or f"runs/{args.name}_{args.config}"
  try:
    configs.check_resume(workdir, cfg)  # records the effective config; refuses one that changes the results
  except ValueError as e:
    raise SystemExit(f"rsim study {where}: {e}") from None
  report = module.run(cfg, workdir)
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
  p.add_argument("--stderr", type=int, default=0, metavar="G",
                 help="also the jackknife standard error of every CKA entry, leaving out one of G ≥ 2 groups of "
                 "batches at a time (batch t → group t mod G; some 20 or more for a useful error; with --sharded "
                 "a batch is one global batch): 'stderr' in cka.json and cka_stderr.png (default 0: none)")
  from rsim_jax.analysis.indices import DESCRIPTIONS, INDICES

  p.add_argument("--index", action="append", choices=INDICES, default=None, metavar="NAME",
                 help="also this full-batch similarity index on --sample-size examples, into NAME.json (matrix, "
                 "layer names, n) and NAME.png; repeatable. One of: " +
                 "; ".join(f"{k} ({v})" for k, v in DESCRIPTIONS.items()))
  p.add_argument("--sample-size", type=int, default=2000,
                 help="examples the --index indices see: the first N of the .npz arrays, or a seeded random N of "
                 "the split for trained models (default 2000, or all if fewer)")
  p.set_defaults(func=cmd_cka)

  from rsim_jax.studies import STUDIES

  p = sub.add_parser("study", help="run (or resume) a study end to end")
  p.add_argument("name", choices=STUDIES)
  p.add_argument("--config", default="local", help="the study's variant (e.g. local, cifar10)")
  p.add_argument("--workdir", default=None, help="output directory (default runs/NAME_CONFIG)")
  p.add_argument("--dry-run", action="store_true", help="list the models the variant would train, then stop")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override a config field after --config (repeatable; dotted paths into fields and dicts, VALUE "
                 "parsed as JSON, else a string), e.g. --set train.num_epochs=40 --set widths=[1,2,4]. The effective "
                 "config is kept in WORKDIR/study_config.json; a rerun there whose config changes the results is "
                 "refused")
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
