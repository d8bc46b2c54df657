"""Is the block structure an artefact of CKA? Five similarity indices of two wide_deep models, inside vs outside.

    python experiments/wide_deep/compare_indices.py --workdir runs/wide_deep_local \\
        --models resnet56_x1_seed0 resnet20_x1_seed0 [--block 21 37] [--sample-size 2000]

For each model (a trained run under `WORKDIR/models/NAME`, as `rsim study wide_deep` stores it) the evaluation
split is streamed once (`extract.compare_models(..., sample_size=N, stderr_groups=G)`): all-pairs minibatch CKA
over the whole split with its jackknife standard error (`kernels.minibatch_cka_jackknife`, G groups of batches),
and a seeded random sample of N examples of every layer (the same examples for both models). On the sample,
`analysis.indices.all_pairs` gives full-batch linear CKA (Kornblith et al. 2019), the Procrustes similarity
`‖X̂ᵀŶ‖_*` (Ding et al. 2021), PWCCA (Morcos et al. 2018) and RSA with Spearman's ρ (Kriegeskorte et al. 2008).

Output: one figure (rows: the models; columns: minibatch CKA, its standard error, then the four indices; the
block outlined) at `--figure` (default `experiments/wide_deep/figures/local_indices.png`), and a markdown table
of each index's mean over distinct layer pairs inside the block, outside it (both layers outside), and between
the block and the rest.

The block of each model is `--block START END` (first model) / `--block-b START END` (second), layer indices
inclusive, else the detected block in `WORKDIR/analysis/NAME.json` (`blocks.trained` when `blocks.has_block`),
else none (then only "outside" = all pairs is reported).

PWCCA: conv layers are wider than the sample (ResNet-20 on 8×8 digits: 1,024 features, 360 test images), where
CCA is undefined without a truncation, so each layer keeps the singular directions that hold `--pwcca-variance`
of its variance (SVCCA's truncation, Raghu et al. 2017). When the two layers keep `k_x + k_y ≥ n − 1`
directions, their subspaces must intersect in the (n − 1)-dimensional centred sample space and some canonical
correlations are 1 whatever the data: those entries are masked (grey, and left out of the means) unless
`--keep-inflated`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence

import numpy as np

INDICES = ("linear_cka", "procrustes", "pwcca", "rsa_spearman")
COLUMNS = ("cka", "cka_stderr") + INDICES
TITLES = {"cka": "minibatch CKA", "cka_stderr": "CKA std. error (jackknife)", "linear_cka": "linear CKA (sample)",
          "procrustes": "Procrustes ‖X̂ᵀŶ‖*", "pwcca": "PWCCA", "rsa_spearman": "RSA (Spearman)"}


def kept_components(x: np.ndarray, variance_kept: float) -> int:
  """Singular directions SVCCA's truncation keeps (`kernels.svcca`): the fewest whose variance reaches
  `variance_kept` of the centred `(n, d)` layer's total (from the eigenvalues of its `n × n` Gram)."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  x = x - x.mean(0)
  gram = x @ x.T if x.shape[1] > x.shape[0] else x.T @ x
  values = np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None)
  nonzero = values > max(x.shape) * np.finfo(np.float32).eps * values[0]
  before = (np.cumsum(values) - values) / values.sum()
  return int(np.sum((before < variance_kept) & nonzero))


def index_matrices(sample: Mapping[str, np.ndarray], *, pwcca_variance: float = 0.99,
                   keep_inflated: bool = False) -> dict[str, np.ndarray]:
  """The `(L, L)` matrix of every index of `INDICES` on one model's sample (layer name → `(n, ...)`).

  PWCCA entries whose layers keep `k_i + k_j ≥ n − 1` directions are NaN unless `keep_inflated`.
  """
  from rsim_jax.analysis import indices

  out = {}
  for name in INDICES:
    options = {"variance_kept": pwcca_variance} if name == "pwcca" else {}
    out[name] = indices.all_pairs(sample, index=name, **options)
  if not keep_inflated:
    n = len(next(iter(sample.values())))
    k = np.array([kept_components(x, pwcca_variance) for x in sample.values()])
    inflated = k[:, None] + k[None, :] >= n - 1
    out["pwcca"] = np.where(inflated, np.nan, out["pwcca"])
  return out


def block_means(matrix: np.ndarray, block: tuple[int, int] | None) -> dict[str, float]:
  """Mean over distinct layer pairs `i ≠ j` (NaN entries left out): `inside` (both layers in the block
  `[start, end]`), `outside` (both outside; all pairs without a block), `between` (one in, one out)."""
  matrix = np.asarray(matrix, np.float64)
  num = matrix.shape[0]
  inside = np.zeros(num, bool)
  if block is not None:
    inside[block[0] : block[1] + 1] = True
  distinct = ~np.eye(num, dtype=bool)

  def mean(mask):
    values = matrix[mask & distinct]
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")

  return {"inside": mean(np.outer(inside, inside)) if block is not None else float("nan"),
          "outside": mean(np.outer(~inside, ~inside)),
          "between": mean(np.outer(inside, ~inside) | np.outer(~inside, inside)) if block is not None
          else float("nan")}


def read_block(workdir: pathlib.Path, name: str) -> tuple[int, int] | None:
  """The detected block of model `name` from the study's `analysis/NAME.json`, or None (no block, no file)."""
  path = workdir / "analysis" / f"{name}.json"
  if not path.exists():
    print(f"note: {path} not found; {name} is treated as having no block (pass --block / --block-b)")
    return None
  blocks = json.loads(path.read_text())["blocks"]
  trained = blocks["trained"]
  return (trained["start"], trained["end"]) if blocks.get("has_block") and trained["size"] > 1 else None


def stream_model(run_dir: pathlib.Path, *, sample_size: int, batch_size: int, stderr_groups: int,
                 max_examples: int | None = None, split: str | None = None):
  """One pass of the evaluation split through a trained model: `(CKAResult with stderr, sample dict)`."""
  from rsim_jax import extract
  from rsim_jax.train import load_model

  model, config = load_model(run_dir)
  batches, total = extract.split_batches(config, split=split, batch_size=batch_size, max_examples=max_examples)
  comparison = extract.compare_models(model, batches, total=total, sample_size=sample_size,
                                      stderr_groups=stderr_groups)
  return comparison.within[0], comparison.samples[0]


def compare(models: Sequence[tuple[str, object, Mapping[str, np.ndarray], tuple[int, int] | None]], *,
            pwcca_variance: float = 0.99, keep_inflated: bool = False) -> list[dict]:
  """Per model `(label, CKAResult, sample, block)`: every column's matrix and its block means.

  Returns:
    Per model a dict: `label`, `block`, `names`, `n` (sample size), `matrices` (column name → `(L, L)`),
    `means` (column name → `block_means`; for "cka" also `stderr_inside`/`stderr_outside`, the mean entry SE),
    `pwcca_components` (directions each layer keeps for PWCCA).
  """
  rows = []
  for label, cka, sample, block in models:
    names = list(sample)
    if list(cka.x_names) != names:
      raise ValueError(f"{label}: the CKA layers {list(cka.x_names)[:3]}… and the sampled layers {names[:3]}… differ.")
    if block is not None and not 0 <= block[0] <= block[1] < len(names):
      raise ValueError(f"{label}: block {block} is outside the model's {len(names)} layers (0 … {len(names) - 1}).")
    matrices = {"cka": np.asarray(cka.matrix, np.float64)}
    if cka.stderr is not None:
      matrices["cka_stderr"] = np.asarray(cka.stderr, np.float64)
    matrices.update(index_matrices(sample, pwcca_variance=pwcca_variance, keep_inflated=keep_inflated))
    means = {c: block_means(m, block) for c, m in matrices.items() if c != "cka_stderr"}
    if "cka_stderr" in matrices:
      se = block_means(matrices["cka_stderr"], block)
      means["cka"]["stderr_inside"], means["cka"]["stderr_outside"] = se["inside"], se["outside"]
    components = [kept_components(x, pwcca_variance) for x in sample.values()]
    rows.append({"label": label, "block": block, "names": names, "n": len(next(iter(sample.values()))),
                 "matrices": matrices, "means": means, "pwcca_components": components})
  return rows


def markdown_table(rows: Sequence[dict]) -> str:
  """One line per model and index: mean similarity inside the block, outside, and block ↔ rest."""
  fmt = lambda v: "—" if not np.isfinite(v) else f"{v:.3f}"
  lines = ["| model | block | index | inside block | outside block | block ↔ rest |", "|---|---|---|---|---|---|"]
  for row in rows:
    block = "none" if row["block"] is None else f"{row['block'][0]}–{row['block'][1]}"
    for column in ("cka",) + INDICES:
      m = row["means"][column]
      inside, outside = fmt(m["inside"]), fmt(m["outside"])
      if column == "cka" and "stderr_inside" in m:  # mean jackknife SE of the entries averaged
        inside += f" (SE {fmt(m['stderr_inside'])})" if np.isfinite(m["inside"]) else ""
        outside += f" (SE {fmt(m['stderr_outside'])})"
      lines.append(f"| {row['label']} | {block} | {TITLES[column]} | {inside} | {outside} | {fmt(m['between'])} |")
  return "\n".join(lines)


def draw(rows: Sequence[dict], path: pathlib.Path) -> pathlib.Path:
  """Rows: the models; columns: `COLUMNS` (CKA, its SE on its own scale, the indices on 0..1); block outlined."""
  from rsim_jax import plotting  # noqa: F401  (chooses a headless backend unless one was chosen)

  import matplotlib.patches
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(len(rows), len(COLUMNS), figsize=(2.5 * len(COLUMNS) + 1.2, 2.6 * len(rows)),
                           squeeze=False)
  cmap = plt.get_cmap("magma").copy()
  cmap.set_bad("0.75")  # masked (NaN) entries in grey
  vmax_se = max([float(np.nanmax(r["matrices"]["cka_stderr"])) for r in rows if "cka_stderr" in r["matrices"]]
                + [1e-12])
  similarity = None
  for i, row in enumerate(rows):
    for j, column in enumerate(COLUMNS):
      ax = axes[i][j]
      matrix = row["matrices"].get(column)
      if matrix is None:
        ax.axis("off")
        continue
      is_se = column == "cka_stderr"
      # Column j of the image is layer j of the matrix's rows (PWCCA: weighted by the x-axis layer).
      image = ax.imshow(matrix.T, origin="lower", cmap=cmap, vmin=0.0, vmax=vmax_se if is_se else 1.0,
                        interpolation="nearest")
      if is_se:  # its own scale, in a colour bar beside the panel
        bar = fig.colorbar(image, cax=ax.inset_axes([1.03, 0.0, 0.05, 1.0]))
        bar.ax.tick_params(labelsize=6)
      else:
        similarity = image
      if row["block"] is not None:
        s, e = row["block"]
        ax.add_patch(matplotlib.patches.Rectangle((s - 0.5, s - 0.5), e - s + 1, e - s + 1, fill=False,
                                                  edgecolor="cyan", lw=1.0, ls="--"))
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(TITLES[column], fontsize=8)
      if j == 0:
        block = "no block" if row["block"] is None else f"block {row['block'][0]}–{row['block'][1]}"
        ax.set_ylabel(f"{row['label']}\n{len(row['names'])} layers, {block}", fontsize=8)
  fig.subplots_adjust(wspace=0.3)
  if similarity is not None:
    fig.colorbar(similarity, ax=axes.ravel().tolist(), fraction=0.015, pad=0.01, label="similarity (SE: own scale)")
  n = ", ".join(f"{r['label']}: {r['n']}" for r in rows)
  fig.suptitle(f"minibatch CKA on the whole split; the other indices on a sample of examples ({n})", fontsize=9)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=150, bbox_inches="tight")
  plt.close(fig)
  return path


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/wide_deep_local", help="the study's work directory")
  parser.add_argument("--models", nargs=2, default=("resnet56_x1_seed0", "resnet20_x1_seed0"), metavar="NAME",
                      help="two models under WORKDIR/models (default: resnet56_x1_seed0 resnet20_x1_seed0)")
  parser.add_argument("--block", nargs=2, type=int, metavar=("START", "END"),
                      help="the first model's block (layer indices, inclusive); default: from WORKDIR/analysis")
  parser.add_argument("--block-b", nargs=2, type=int, metavar=("START", "END"), help="the second model's block")
  parser.add_argument("--sample-size", type=int, default=2000,
                      help="examples the full-batch indices see (a seeded random sample; all if the split is smaller)")
  parser.add_argument("--batch-size", type=int, default=128, help="minibatch CKA batch per device (the study's: 128)")
  parser.add_argument("--stderr-groups", type=int, default=20, help="groups of batches for the jackknife SE (≥ 2)")
  parser.add_argument("--max-examples", type=int, default=None, help="a class-balanced subset of the split")
  parser.add_argument("--split", default=None, help="split to stream (default: the models' evaluation split)")
  parser.add_argument("--pwcca-variance", type=float, default=0.99,
                      help="fraction of each layer's variance PWCCA keeps (SVCCA truncation; default 0.99)")
  parser.add_argument("--keep-inflated", action="store_true",
                      help="keep PWCCA entries with k_x + k_y ≥ n − 1 kept directions (masked by default)")
  parser.add_argument("--figure", default="experiments/wide_deep/figures/local_indices.png", help="output figure")
  parser.add_argument("--json", default=None, help="also write every matrix and mean to this JSON file")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  workdir = pathlib.Path(args.workdir)
  if args.stderr_groups < 2:
    raise SystemExit(f"--stderr-groups {args.stderr_groups}: the jackknife needs G ≥ 2 groups (some 20 or more).")
  blocks = [tuple(args.block) if args.block else None, tuple(args.block_b) if args.block_b else None]
  inputs = []
  for name, block in zip(args.models, blocks):
    run_dir = workdir / "models" / name
    if not (run_dir / "config.json").exists():
      raise SystemExit(f"{run_dir} is not a trained model's directory (no config.json); the models in "
                       f"{workdir / 'models'}: {sorted(p.name for p in (workdir / 'models').glob('*'))}")
    cka, sample = stream_model(run_dir, sample_size=args.sample_size, batch_size=args.batch_size,
                               stderr_groups=args.stderr_groups, max_examples=args.max_examples, split=args.split)
    inputs.append((name, cka, sample, block if block is not None else read_block(workdir, name)))
  rows = compare(inputs, pwcca_variance=args.pwcca_variance, keep_inflated=args.keep_inflated)
  print(markdown_table(rows))
  print(f"\nPWCCA keeps {args.pwcca_variance:g} of each layer's variance; directions kept per layer:")
  for r in rows:
    masked = int(np.isnan(r["matrices"]["pwcca"]).sum())
    print(f"  {r['label']} (n = {r['n']}): {r['pwcca_components']}"
          + (f"; {masked} entries with k_x + k_y ≥ n − 1 masked" if masked else ""))
  print(f"\nwrote {draw(rows, pathlib.Path(args.figure))}")
  if args.json:
    out = [{**{k: r[k] for k in ("label", "block", "names", "n", "means", "pwcca_components")},
            "matrices": {c: np.where(np.isfinite(m), m, None).tolist() for c, m in r["matrices"].items()}}
           for r in rows]
    pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
