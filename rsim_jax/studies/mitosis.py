"""The representation-mitosis study (Doimo et al. 2021/2022): clones in the last hidden layer of wide networks.

    rsim study mitosis --config local --workdir runs/mitosis_local

A family of Wide ResNets (WRN-d-k, last hidden layer W = 64k) is trained to zero training error (the paper's
protocol; `TrainConfig.until_zero_train_error`) and, for comparison, stopped early after a few epochs. For
each network the last hidden layer ("pool") and the logits of every test image are extracted and:

- chunk accuracy: random chunks of c neurons read out by the trained head, rescaled by W/c
  (`analysis.mitosis.chunk_accuracy`), for c from 1 to W;
- the saturation chunk size c* (accuracy within `tolerance` of the full layer) and the clone count W / c*,
  against width, with the critical width marked (`critical_width`);
- R² of a ridge regression from a chunk to the full layer, and the correlation of the residuals of two
  disjoint chunks of size c* predicting the logits (≈ 0: independent noise);
- the wide network against an ensemble of narrow ones (seeds of the narrowest width) of the same total width.

Variants: `local` (WRN-10-k on scikit-learn digits, minutes), `cifar10_local` (WRN-10-k on 2,500 CIFAR-10
images at 16×16), `cifar10` (WRN-28-k, k = 1…16, the paper's scale, for accelerators), `tiny` (every stage
in seconds: the multi-host test). Overrides: `--set widths=[1,2] --set train.max_epochs=60` (`rsim_jax.configs`);
a work directory refuses a rerun whose config differs in a field outside `MitosisConfig.RUN_ONLY_FIELDS`.

Multi-host (`rsim --multihost study mitosis ...` on every host): training and extraction span all hosts'
devices; the analyses run on the features gathered to every process, so every process computes the same
numbers; process 0 writes every file (`rsim_jax.io`); the work directory may be a `gs://` bucket.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from rsim_jax import configs, extract, io, plotting
from rsim_jax.analysis import mitosis
from rsim_jax.studies import skeleton


@dataclasses.dataclass(frozen=True)
class MitosisConfig:
  """The study.

  Attributes:
    train: keyword arguments of `TrainConfig` shared by every network (data, schedule, `until_zero_train_error`,
      `max_epochs`, ...); `model_kwargs` holds the depth, the study sets `widen_factor`.
    widths: widen factors k (last hidden layer W = 64k).
    early_epochs: epochs of the early-stopped twin of each width (no continuation to zero training error);
      None = no comparison.
    ensemble_members: seeds of the narrowest width trained for the ensemble comparison (≥ 2 to compare).
    num_chunks: random chunks per chunk size.
    tolerance: accuracy gap that counts as saturated (c*).
    clone_threshold: clones a width must hold (and every wider one) to be at or above the critical width.
    layer: the last hidden layer's name.
  """

  # `train` fields a work directory may change on resume (`configs.check_resume`): only the final networks are
  # analysed, so evaluation and checkpoint intervals, like logging and device counts, leave the results alone.
  RUN_ONLY_FIELDS = skeleton.FINAL_MODELS_RUN_ONLY

  train: dict = configs.kwargs_of("rsim_jax.train.config:TrainConfig")
  widths: tuple[int, ...]
  early_epochs: int | None = None
  ensemble_members: int = 4
  num_chunks: int = 50
  tolerance: float = 0.01
  clone_threshold: float = 2.0
  layer: str = "pool"


variants = skeleton.Variants("mitosis")
get_config = variants.get  # get_config(variant="local"): `rsim study mitosis --config VARIANT`


@variants("local")
def _local() -> MitosisConfig:
  return MitosisConfig(
      train=dict(model="wide_resnet", model_kwargs={"depth": 10}, data="digits", data_kwargs={"image_size": 8},
                 batch_size=128, eval_batch_size=360, num_epochs=15, lr=0.05, warmup_epochs=1,
                 end_lr_fraction=0.02, weight_decay=5e-4, until_zero_train_error=True, max_epochs=40,
                 progress=True),
      # WRN-10-8 (W = 512) costs ~2.5 s a step on 2 cores, 7–15 min to fit: left to the accelerator variants.
      widths=(1, 2, 4), early_epochs=3, ensemble_members=4,
  )


@variants("cifar10_local")
def _cifar10_local() -> MitosisConfig:
  return MitosisConfig(
      train=dict(model="wide_resnet", model_kwargs={"depth": 10}, data="cifar10", data_kwargs={"image_size": 16},
                 train_subset=2500, batch_size=128, eval_batch_size=1000, num_epochs=30, lr=0.05, warmup_epochs=1,
                 end_lr_fraction=0.02, weight_decay=5e-4, augment=False, until_zero_train_error=True,
                 max_epochs=60, progress=True),
      widths=(1, 2, 4), early_epochs=5, ensemble_members=2,
  )


@variants("cifar10")
def _cifar10() -> MitosisConfig:
  # Doimo et al.: WRN-28-k on CIFAR-10, SGD momentum 0.9, lr 0.1 cosine, weight decay 5e-4, crop + flip,
  # trained on to zero training error.
  return MitosisConfig(
      train=dict(model="wide_resnet", model_kwargs={"depth": 28}, data="cifar10", batch_size=128,
                 eval_batch_size=1000, num_epochs=200, lr=0.1, warmup_epochs=1, end_lr_fraction=0.01,
                 weight_decay=5e-4, augment=True, until_zero_train_error=True, max_epochs=300),
      widths=(1, 2, 4, 8, 16), early_epochs=30, ensemble_members=4,
  )


@variants("tiny")
def _tiny() -> MitosisConfig:
  # Every stage (zero-error family with its early twin, an ensemble member, analyses, figures) in seconds on a
  # CPU; no claim about mitosis. The multi-host test runs it in 2 processes and in 1.
  return MitosisConfig(
      train=dict(model="wide_resnet", model_kwargs={"depth": 10}, data="digits", data_kwargs={"image_size": 8},
                 batch_size=64, eval_batch_size=360, num_epochs=1, num_steps=6, lr=0.05, warmup_epochs=0,
                 until_zero_train_error=False, progress=False),
      widths=(1,), early_epochs=None, ensemble_members=2, num_chunks=5,
  )


def _runs(cfg: MitosisConfig):
  """(name, width, kind, TrainConfig) of every network: zero-error family, early-stopped twins, ensemble."""
  from rsim_jax.train import TrainConfig

  def config(k, **overrides):
    kwargs = {**cfg.train, **overrides}
    kwargs["model_kwargs"] = {**dict(kwargs.get("model_kwargs", {})), "widen_factor": k}
    return TrainConfig(**kwargs)

  depth = dict(cfg.train.get("model_kwargs", {})).get("depth", 28)
  runs = [(f"wrn{depth}_{k}", k, "zero_error", config(k)) for k in cfg.widths]
  if cfg.early_epochs:
    runs += [(f"wrn{depth}_{k}_early", k, "early", config(k, num_epochs=cfg.early_epochs,
                                                           until_zero_train_error=False)) for k in cfg.widths]
  narrow = min(cfg.widths)
  runs += [(f"wrn{depth}_{narrow}_seed{s}", narrow, "ensemble", config(narrow, seed=s))
           for s in range(1, cfg.ensemble_members)]
  return runs


def plan(cfg: MitosisConfig) -> list[dict]:
  """The networks `run` would train (a dry run)."""
  runs = _runs(cfg)
  return skeleton.plan_rows([(name, tc) for name, _, _, tc in runs],
                            ("model", "model_kwargs", "data", "num_epochs", "until_zero_train_error"),
                            extra={name: {"kind": kind} for name, _, kind, _ in runs})


def _features(cfg, model, config):
  """The last hidden layer `(N, W)` and the logits `(N, classes)` of every test example, and the labels `(N,)`,
  the same arrays on every process (gathered from all hosts' devices)."""
  batches, total, batch_size = skeleton.eval_batches(config)
  n = total * batch_size  # ≥ the split: the sampler keeps every example when asked for more
  out = extract.compare_models(model, batches, layers=(cfg.layer, "logits"), cka=False, sample_size=n,
                               total=total, progress=False)
  return out.samples[0][cfg.layer], out.samples[0]["logits"], out.sample_labels


def analyse(cfg: MitosisConfig, name: str, width: int, run_dir: io.PathLike, cache: io.PathLike) -> dict:
  """Chunk accuracy, c*, clones, chunk R² and residual correlation of one trained network (cached)."""
  return skeleton.cached_json(cache, lambda: _analyse(cfg, name, width, io.path(run_dir)))


def _analyse(cfg: MitosisConfig, name: str, width: int, run_dir) -> dict:
  from rsim_jax.train import load_model

  model, config = load_model(run_dir)
  features, logits, labels = _features(cfg, model, config)
  kernel, bias = np.asarray(model.head.kernel[...]), np.asarray(model.head.bias[...])
  acc = mitosis.chunk_accuracy(features, labels, kernel, bias, num_chunks=cfg.num_chunks)
  c_star = mitosis.saturation_chunk_size(acc.chunk_sizes, acc.mean, full_accuracy=acc.full_accuracy,
                                         tolerance=cfg.tolerance)
  neurons = features.shape[1]
  final = io.read_json(run_dir / "final_metrics.json")
  out = {
      "name": name, "widen_factor": width, "neurons": neurons, "chunk_accuracy": acc.to_json(),
      "saturation_chunk_size": c_star, "clones": mitosis.num_clones(neurons, c_star),
      "test_accuracy": final["test_accuracy"], "train_accuracy": final.get("train_accuracy"),
      "reached_zero_train_error": final.get("reached_zero_train_error"), "epochs": final.get("epoch"),
      "r2": mitosis.chunk_regression_r2(features, chunk_sizes=mitosis.default_chunk_sizes(neurons, num=8),
                                        num_chunks=5),
      "logits": logits.tolist(), "labels": labels.tolist(),
  }
  if 2 * c_star <= neurons:
    out["residual_correlation"] = mitosis.chunk_residual_correlation(features, logits, chunk_size=c_star, num_pairs=5)
  return out


def run(cfg: MitosisConfig, workdir: io.PathLike):
  """Runs (or resumes) the study in `workdir` (local or `gs://…`); returns the path of `report.md`."""
  workdir = io.path(workdir)
  runs = _runs(cfg)
  widths, kinds = {name: w for name, w, _, _ in runs}, {name: kind for name, _, kind, _ in runs}

  def analysed(name, run_dir, _):
    return {"kind": kinds[name], **analyse(cfg, name, widths[name], run_dir, workdir / "analysis" / f"{name}.json")}

  results = skeleton.train_all([(name, tc) for name, _, _, tc in runs], workdir, then=analysed, notes=kinds)
  summary = _summary(cfg, runs, results)
  models = {n: {k: v for k, v in r.items() if k not in ("logits", "labels")} for n, r in results.items()}
  skeleton.write_results(workdir, {"summary": summary, "models": models})
  figures = _figures(cfg, runs, results, summary, workdir)
  return write_report(cfg, runs, results, summary, figures, workdir)


def _summary(cfg, runs, results) -> dict:
  summary = {}
  for kind in ("zero_error", "early"):
    family = [(r["neurons"], r["clones"]) for n, r in results.items() if r["kind"] == kind]
    if family:
      widths, clones = zip(*sorted(family))
      summary[kind] = {"neurons": list(widths), "clones": list(clones),
                       "critical_width": mitosis.critical_width(widths, clones, threshold=cfg.clone_threshold)}
  narrow = [n for n, w, kind, _ in runs if w == min(cfg.widths) and kind in ("zero_error", "ensemble")]
  if len(narrow) >= 2:
    labels = np.array(results[narrow[0]]["labels"])
    logits = [np.array(results[n]["logits"]) for n in narrow]
    base = results[narrow[0]]["neurons"]
    rows = []
    for m in range(1, len(narrow) + 1):
      wide = [r for r in results.values() if r["kind"] == "zero_error" and r["neurons"] == m * base]
      rows.append({"members": m, "total_neurons": m * base,
                   "ensemble_accuracy": mitosis.ensemble_accuracy(np.stack(logits[:m]), labels),
                   "wide_accuracy": wide[0]["test_accuracy"] if wide else None})
    summary["ensemble"] = rows
  return summary


def _figures(cfg, runs, results, summary, workdir) -> list[pathlib.Path]:
  figures = []
  family = sorted((r for r in results.values() if r["kind"] == "zero_error"), key=lambda r: r["neurons"])
  fig = plotting.chunk_accuracy_curves(
      {f"W = {r['neurons']}": r["chunk_accuracy"] for r in family}, workdir / "chunk_accuracy.png",
      title="random chunks of the last hidden layer, trained head (× W/c)")
  figures.append(fig)
  if "zero_error" in summary:
    z = summary["zero_error"]
    series = {"trained to zero training error": z["clones"]}
    if "early" in summary and summary["early"]["neurons"] == z["neurons"]:
      series[f"stopped after {cfg.early_epochs} epochs"] = summary["early"]["clones"]
    marks = {"critical width": z["critical_width"]} if z["critical_width"] else None
    figures.append(plotting.metric_lines(z["neurons"], series, workdir / "clones_vs_width.png", log_x=True,
                                         xlabel="last hidden layer width W", ylabel="clones W / c*", marks=marks,
                                         title=f"clones (c* = smallest chunk within {cfg.tolerance:g} of full accuracy)"))
  if "ensemble" in summary:
    rows = summary["ensemble"]
    figures.append(plotting.metric_lines(
        [r["total_neurons"] for r in rows],
        {"ensemble of narrow nets": [r["ensemble_accuracy"] for r in rows],
         "one wide net": [np.nan if r["wide_accuracy"] is None else r["wide_accuracy"] for r in rows]},
        workdir / "wide_vs_ensemble.png", xlabel="total last-layer width", ylabel="test accuracy",
        title="a wide network vs an ensemble of narrow ones"))
  return figures


def write_report(cfg, runs, results, summary, figures, workdir):
  f = skeleton.fmt
  rows = []
  for name, _, kind, _ in runs:
    r = results[name]
    r2_at = float(np.interp(r["saturation_chunk_size"], r["r2"]["chunk_sizes"], r["r2"]["mean"]))
    rc = r.get("residual_correlation")
    rows.append([name, kind, r["neurons"], f(r["epochs"], ".0f"), f(r["train_accuracy"]),
                 f"{r['test_accuracy']:.3f}", r["saturation_chunk_size"], f"{r['clones']:.1f}", f"{r2_at:.3f}",
                 f(rc["mean"] if rc else None, ".2f")])
  blocks = [
      "# Representation mitosis (Doimo et al.): clones in the last hidden layer",
      f"Chunk accuracy: {cfg.num_chunks} random chunks of c neurons of `{cfg.layer}` per size, read out by the "
      f"trained head with the chunk's contribution × W/c. c* = smallest c within {cfg.tolerance:g} of the full "
      "layer's accuracy; clones = W / c*. Residual correlation: two disjoint chunks of size c* predicting the "
      "logits by ridge regression, Pearson correlation of their held-out residuals.",
      skeleton.table(["network", "kind", "W", "epochs", "train acc", "test acc", "c*", "clones", "chunk R² at c*",
                      "residual corr."], rows, "llrrrrrrrr"),
  ]
  for kind, label in (("zero_error", "trained to zero training error"),
                      ("early", f"stopped after {cfg.early_epochs} epochs")):
    if kind in summary:
      s = summary[kind]
      blocks.append(f"- Clones vs width ({label}): " + ", ".join(f"W={w}: {c:.1f}" for w, c in zip(s["neurons"],
                                                                                                  s["clones"]))
                    + f"; critical width (≥ {cfg.clone_threshold:g} clones from there on): "
                    f"{s['critical_width'] or 'none'}.")
  if "ensemble" in summary:
    rows = [[r["members"], r["total_neurons"], f"{r['ensemble_accuracy']:.3f}", f(r["wide_accuracy"])]
            for r in summary["ensemble"]]
    blocks.append(skeleton.table(["members", "total W", "ensemble acc", "wide net acc"], rows, "rrrr"))
  return skeleton.write_report(workdir, blocks, figures)
