"""The dimensionality study: intrinsic-dimension profiles of trained networks (Recanatesi et al. 2019, with
the per-layer protocol of Ansuini et al. 2019).

    rsim study intrinsic_dim --config local --workdir runs/intrinsic_dim_local

One network is trained with a checkpoint kept every epoch. For the network at initialisation and at every
checkpoint, a fixed random sample of test images (the same images each time) is streamed through it and
every layer's activations are kept (`extract.compare_models(..., sample_size=m)`); on them:

- the ID profile: TwoNN on random 90% subsets (mean ± std) and the participation ratio of each layer, the
  input included (`analysis.intrinsic_dim.id_profile`), and its shape: does the ID expand over the first
  layers and compress towards the output (`profile_shape`)?
- ID of the input and of the last hidden layer against test accuracy across checkpoints;
- SGD noise: the same network trained with other batch sizes / learning rates (noise scale lr/B), its
  last-hidden-layer ID and generalisation gap (train − test accuracy) at the end;
- scale dependence: TwoNN against neighbourhood size (`kernels.twonn_scaling`) for the input, a middle and
  the last hidden layer of the trained network.

Variants: `local` (a small conv DeepNet on scikit-learn digits, minutes; runs anywhere), `fmnist_local`
(DeepNet on 6,000 Fashion-MNIST images from `../shared/data`), `cifar10_local` (ResNet-20 on 2,500 CIFAR-10
images at 16×16), `paper` (the DeepNet of Recanatesi et al. on all of Fashion-MNIST, for accelerators),
`tiny` (every stage in seconds: the multi-host test).
Everything is cached in the work directory: a re-run trains nothing twice and re-analyses nothing.
Overrides: `--set train.num_epochs=40 --set sample_size=200` (`rsim_jax.configs`); a work directory refuses a
rerun whose config differs in a field outside `IntrinsicDimConfig.RUN_ONLY_FIELDS`.

Multi-host (`rsim --multihost study intrinsic_dim ...` on every host): training and extraction span all
hosts' devices; the sample is gathered to every process, so every process computes the same profiles;
process 0 writes every file (`rsim_jax.io`); the work directory may be a `gs://` bucket.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from rsim_jax import configs, extract, io, plotting
from rsim_jax.analysis import intrinsic_dim
from rsim_jax.studies import skeleton


@dataclasses.dataclass(frozen=True)
class IntrinsicDimConfig:
  """The study.

  Attributes:
    train: keyword arguments of `rsim_jax.train.TrainConfig` for the main network (a checkpoint is kept
      per epoch unless `checkpoint_every_steps` says otherwise).
    sample_size: test examples sampled (the same for every checkpoint); ≤ the test split.
    fraction, repeats: TwoNN subsets (Ansuini et al. 2019: 90%, a few repeats).
    noise: `(batch_size, lr)` of the extra runs of the SGD-noise comparison (the main run is included).
    scale_layers: layers of the scale curves (None: input, the middle layer, the last hidden layer).
    num_scales: scales of `twonn_scaling` (None: automatic).
    seed: seed of the sample and of the subsets.
  """

  # `train` fields a work directory may change on resume (`configs.check_resume`). Not the checkpoint and
  # evaluation intervals or the checkpoints kept: every checkpoint is profiled against its test accuracy.
  RUN_ONLY_FIELDS = skeleton.RUN_ONLY

  train: dict = configs.kwargs_of("rsim_jax.train.config:TrainConfig")
  sample_size: int = 1000
  fraction: float = 0.9
  repeats: int = 5
  noise: tuple[tuple[int, float], ...] = ()
  scale_layers: tuple[str, ...] | None = None
  num_scales: int | None = None
  seed: int = 0


variants = skeleton.Variants("intrinsic_dim")
get_config = variants.get  # get_config(variant="local"): `rsim study intrinsic_dim --config VARIANT`


@variants("local")
def _local() -> IntrinsicDimConfig:
  # Digits at 16×16 through conv(16) → pool → conv(32) → pool → dense(128) → dense(64); 20 epochs ≈ 1 min.
  # The test split has 360 images: the ID sample is all of them.
  return IntrinsicDimConfig(
      train=dict(model="deepnet", model_kwargs={"conv_features": (16, 32), "dense_features": (128, 64),
                                                "kernel_size": 3},
                 data="digits", data_kwargs={"image_size": 16}, batch_size=64, eval_batch_size=360,
                 num_epochs=20, lr=0.05, schedule="cosine", weight_decay=1e-4, keep_checkpoints=100,
                 progress=True),
      sample_size=360,
      # lr/B four times larger (B=16), four times smaller by two routes (B=256; lr/4). lr=0.2 at B=64
      # diverged (every ReLU of the dense layers dead).
      noise=((16, 0.05), (256, 0.05), (64, 0.0125)),
  )


@variants("fmnist_local")
def _fmnist_local() -> IntrinsicDimConfig:
  return IntrinsicDimConfig(
      train=dict(model="deepnet", model_kwargs={"conv_features": (16, 32), "dense_features": (128, 64)},
                 data="fashion_mnist", train_subset=6000, batch_size=128, eval_batch_size=1000, num_epochs=12,
                 lr=0.05, schedule="cosine", weight_decay=1e-4, keep_checkpoints=100, progress=True),
      sample_size=1000, noise=((32, 0.05), (512, 0.05)),
  )


@variants("cifar10_local")
def _cifar10_local() -> IntrinsicDimConfig:
  return IntrinsicDimConfig(
      train=dict(model="resnet", model_kwargs={"depth": 20, "zero_init_last_bn": True}, data="cifar10",
                 data_kwargs={"image_size": 16}, train_subset=2500, batch_size=128, eval_batch_size=1000,
                 num_epochs=40, lr=0.1, warmup_epochs=1, weight_decay=5e-4, augment=False,
                 checkpoint_every_steps=100, eval_every_steps=100, keep_checkpoints=100,
                 progress=True),  # eval at every checkpoint: the ID-vs-accuracy curve needs both
      sample_size=1000,
  )


@variants("paper")
def _paper() -> IntrinsicDimConfig:
  # Recanatesi et al. 2019: a conv net on Fashion-MNIST, plain SGD; noise scale varied through B and lr.
  return IntrinsicDimConfig(
      train=dict(model="deepnet", model_kwargs={"conv_features": (32, 64), "dense_features": (256, 128)},
                 data="fashion_mnist", batch_size=64, eval_batch_size=1000, num_epochs=30, lr=0.01,
                 schedule="constant", weight_decay=0.0, keep_checkpoints=100),
      sample_size=2000, noise=((16, 0.01), (256, 0.01), (64, 0.04), (64, 0.0025)),
  )


@variants("tiny")
def _tiny() -> IntrinsicDimConfig:
  # Every stage (checkpoints, profiles, an SGD-noise run, scale curves, figures) in seconds on a CPU; no claim
  # about intrinsic dimension. The multi-host test runs it in 2 processes and in 1.
  return IntrinsicDimConfig(
      train=dict(model="deepnet", model_kwargs={"conv_features": (4, 8), "dense_features": (16,),
                                                "kernel_size": 3},
                 data="digits", data_kwargs={"image_size": 8}, batch_size=64, eval_batch_size=360,
                 num_epochs=1, num_steps=6, checkpoint_every_steps=3, eval_every_steps=3, lr=0.05,
                 keep_checkpoints=10, progress=False),
      sample_size=200, repeats=2, noise=((128, 0.05),), num_scales=2,
  )


def _train_config(cfg: IntrinsicDimConfig, **overrides):
  from rsim_jax.train import TrainConfig

  return TrainConfig(**{**cfg.train, **overrides})


def plan(cfg: IntrinsicDimConfig) -> list[dict]:
  """The runs `run` would train (a dry run)."""
  return skeleton.plan_rows(_runs(cfg), ("model", "model_kwargs", "data", "batch_size", "lr", "num_epochs"))


def _runs(cfg: IntrinsicDimConfig):
  main = _train_config(cfg)
  runs = [("main", main)]
  for batch_size, lr in cfg.noise:
    if (batch_size, lr) != (main.batch_size, main.lr):
      # Not every step needs a checkpoint here: only the end is analysed.
      runs.append((f"noise_b{batch_size}_lr{lr:g}", _train_config(cfg, batch_size=batch_size, lr=lr,
                                                                    keep_checkpoints=1)))
  return runs


def _sample(cfg: IntrinsicDimConfig, model, config) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Every layer's activations on the fixed test sample, with the input images first ("input")."""
  from rsim_jax import data

  ds = data.load(config.data, config.eval_split, **config.data_kwargs)
  batches, total, _ = skeleton.eval_batches(config)
  comparison = extract.compare_models(model, batches, cka=False, sample_size=cfg.sample_size, sample_seed=cfg.seed,
                                      total=total, progress=False)
  # Raw pixels: the model's per-channel normalisation is affine, and TwoNN is invariant to a global one.
  images = np.asarray(ds.images)[comparison.sample_positions].astype(np.float32)
  return {"input": images.reshape(len(images), -1).astype(np.float32), **comparison.samples[0]}, \
      comparison.sample_labels


def _test_metrics(run_dir) -> dict[int, dict]:
  from rsim_jax.train import read_metrics

  return {int(m["step"]): m for m in read_metrics(run_dir) if m.get("split") == "test"}


def _profile(cfg, model_fn, config, cache) -> dict:
  """The ID profile and its shape of the network `model_fn()` loads (loaded only when not cached)."""

  def compute():
    acts, _ = _sample(cfg, model_fn(), config)
    profile = intrinsic_dim.id_profile(acts, fraction=cfg.fraction, repeats=cfg.repeats, seed=cfg.seed)
    return {"profile": profile.to_json(), "shape": intrinsic_dim.profile_shape(profile).to_json()}

  return skeleton.cached_json(cache, compute)


def _last_hidden(names) -> str:
  hidden = [n for n in names if n not in ("input", "logits")]
  return hidden[-1]


def run(cfg: IntrinsicDimConfig, workdir: io.PathLike):
  """Runs (or resumes) the study in `workdir` (local or `gs://…`); returns the path of `report.md`."""
  from rsim_jax.train import checkpoint_steps, load_initial_model, load_model

  workdir = io.path(workdir)
  analysis = workdir / "analysis"
  runs = _runs(cfg)
  finals = skeleton.train_all(runs, workdir)
  main_dir = skeleton.model_dir(workdir, "main")
  config = runs[0][1]
  steps = checkpoint_steps(main_dir)
  tests = _test_metrics(main_dir)
  print(f"ID profiles: initialisation + {len(steps)} checkpoints", flush=True)
  profiles = {0: _profile(cfg, lambda: load_initial_model(main_dir), config, analysis / "profile_step0.json")}
  for step in steps:
    profiles[step] = _profile(cfg, lambda: load_model(main_dir, step=step)[0], config,
                              analysis / f"profile_step{step}.json")
  final_step = steps[-1]
  names = profiles[final_step]["profile"]["layer_names"]
  last = _last_hidden(names)
  trajectory = []
  for step, p in sorted(profiles.items()):
    ids = dict(zip(p["profile"]["layer_names"], p["profile"]["intrinsic_dim"]))
    test = tests.get(step, {})
    trajectory.append({"step": step, "test_accuracy": test.get("accuracy"), "input_id": ids["input"],
                       "last_hidden_id": ids[last], "peak_id": p["shape"]["peak"], "peak_layer": p["shape"]["peak_layer"]})

  def noise_entry(name, tc):
    entry = _profile(cfg, lambda: load_model(skeleton.model_dir(workdir, name))[0], tc,
                     analysis / f"profile_{name}_final.json")
    final = finals[name]
    return {"name": name, "batch_size": tc.batch_size, "lr": tc.lr, "noise_scale": tc.lr / tc.batch_size,
            "train_accuracy": final.get("train_accuracy"), "test_accuracy": final.get("test_accuracy"),
            "last_hidden_id": dict(zip(entry["profile"]["layer_names"], entry["profile"]["intrinsic_dim"]))[last],
            "collapsed_layers": entry["profile"].get("collapsed", [])}

  noise = [skeleton.cached_json(analysis / f"noise_{name}.json", lambda: noise_entry(name, tc)) for name, tc in runs]

  def scale_curves():
    acts, _ = _sample(cfg, load_model(main_dir)[0], config)
    layers = cfg.scale_layers or ("input", names[len(names) // 2], last)
    return intrinsic_dim.id_scale_curves(acts, layers, seed=cfg.seed, num_scales=cfg.num_scales)

  scales = skeleton.cached_json(analysis / "scale_curves.json", scale_curves)
  results = {"profiles": {str(k): v for k, v in profiles.items()}, "trajectory": trajectory, "noise": noise,
             "scale_curves": scales, "last_hidden_layer": last, "final": finals["main"]}
  skeleton.write_results(workdir, results, default=float)
  figures = _figures(results, final_step, workdir)
  return write_report(cfg, results, final_step, figures, workdir)


def _figures(results: dict, final_step: int, workdir) -> list[pathlib.Path]:
  init, final = results["profiles"]["0"]["profile"], results["profiles"][str(final_step)]["profile"]
  figures = [
      plotting.id_profiles(
          {"trained": (final["intrinsic_dim"], final["intrinsic_dim_std"]),
           "initialisation": (init["intrinsic_dim"], init["intrinsic_dim_std"])},
          final["layer_names"], workdir / "id_profile.png", ylabel="intrinsic dimension (TwoNN)",
          title="ID per layer (mean ± std over 90% subsets)"),
      plotting.id_profiles(
          {"trained": (final["participation_ratio"], None), "initialisation": (init["participation_ratio"], None)},
          final["layer_names"], workdir / "participation_ratio.png", ylabel="participation ratio",
          title="linear dimension (PR) per layer", log_y=True),
  ]
  traj = [t for t in results["trajectory"] if t["test_accuracy"] is not None]
  if len(traj) > 1:
    figures.append(plotting.metric_lines(
        [t["test_accuracy"] for t in traj],
        {"input": [t["input_id"] for t in traj], f"last hidden ({results['last_hidden_layer']})":
         [t["last_hidden_id"] for t in traj], "peak layer": [t["peak_id"] for t in traj]},
        workdir / "id_vs_accuracy.png", xlabel="test accuracy (checkpoints, in training order)",
        ylabel="intrinsic dimension", title="ID across training"))
  noise = sorted(results["noise"], key=lambda e: e["noise_scale"])
  if len(noise) > 1:
    x = [e["noise_scale"] for e in noise]
    figures.append(plotting.metric_lines(
        x, {"last hidden ID": [e["last_hidden_id"] for e in noise]}, workdir / "noise_id.png", log_x=True,
        xlabel="SGD noise scale lr / B", ylabel="intrinsic dimension", title="last hidden layer ID vs SGD noise"))
    figures.append(plotting.metric_lines(
        x, {"train − test accuracy": [e["train_accuracy"] - e["test_accuracy"] for e in noise]},
        workdir / "noise_gap.png", log_x=True, xlabel="SGD noise scale lr / B", ylabel="generalisation gap",
        title="generalisation gap vs SGD noise"))
  figures.append(plotting.scale_curves(results["scale_curves"], workdir / "scale_curves.png"))
  return figures


def write_report(cfg, results, final_step, figures, workdir):
  f = skeleton.fmt
  init, final = results["profiles"]["0"], results["profiles"][str(final_step)]
  p, q = init["profile"], final["profile"]
  layers = [[name, q["embedding_dim"][i], f"{p['intrinsic_dim'][i]:.1f} ± {p['intrinsic_dim_std'][i]:.1f}",
             f"{q['intrinsic_dim'][i]:.1f} ± {q['intrinsic_dim_std'][i]:.1f}", f"{p['participation_ratio'][i]:.1f}",
             f"{q['participation_ratio'][i]:.1f}"] for i, name in enumerate(q["layer_names"])]
  blocks = [
      "# Intrinsic dimension across layers (Recanatesi et al. 2019; Ansuini et al. 2019)",
      f"TwoNN on random {cfg.fraction:.0%} subsets of a fixed sample of {q['num_points']} test "
      f"examples ({cfg.repeats} repeats, mean ± std), participation ratio (PR) of each layer's covariance. "
      f"Final test accuracy {results['final'].get('test_accuracy', float('nan')):.3f}, train accuracy "
      f"{f(results['final'].get('train_accuracy'))}.",
      skeleton.table(["layer", "features", "ID at init", "ID trained", "PR at init", "PR trained"], layers, "lrrrrr"),
  ]
  for label, s in (("initialisation", init["shape"]), ("trained", final["shape"])):
    blocks.append(f"- Profile shape ({label}, logits excluded): peak at `{s['peak_layer']}` (ID {s['peak']:.1f}); "
                  f"expansion input → peak ×{s['expansion']:.2f} ({'yes' if s['expands'] else 'no'}), compression "
                  f"peak → last ×{s['compression']:.2f} ({'yes' if s['compresses'] else 'no'}).")
  trajectory = [[t["step"], f(t["test_accuracy"]), f"{t['input_id']:.1f}", f"{t['last_hidden_id']:.1f}",
                 f"{t['peak_id']:.1f} ({t['peak_layer']})"] for t in results["trajectory"]]
  blocks += ["## Across training", skeleton.table(["step", "test acc", "input ID", "last hidden ID",
                                                   "peak ID (layer)"], trajectory, "rrrrl")]
  noise = []
  for e in sorted(results["noise"], key=lambda e: e["noise_scale"]):
    gap = None if e["train_accuracy"] is None else e["train_accuracy"] - e["test_accuracy"]
    collapsed = f" (collapsed: {', '.join(e['collapsed_layers'])})" if e.get("collapsed_layers") else ""
    noise.append([e["name"], e["batch_size"], f"{e['lr']:g}", f"{e['noise_scale']:.2e}", f(e["train_accuracy"]),
                  f"{e['test_accuracy']:.3f}", f(gap), f"{e['last_hidden_id']:.1f}{collapsed}"])
  blocks += ["## SGD noise", skeleton.table(["run", "batch", "lr", "lr/B", "train acc", "test acc", "gap",
                                             "last hidden ID"], noise, "lrrrrrrr")]
  blocks += ["## Scale dependence (TwoNN on N, N/2, N/4, … points)",
             [f"- `{layer}`: " + ", ".join(f"{n}: {d:.1f}" for n, d in zip(c["num_points"], c["intrinsic_dim"]))
              for layer, c in results["scale_curves"].items()]]
  return skeleton.write_report(workdir, blocks, figures)
