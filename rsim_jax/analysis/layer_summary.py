"""Any model's layers at a glance: all-pairs CKA, the PC1 fraction and the intrinsic dimension per layer.

The three measurements the studies make of rsim_jax's own ResNets, for a model of yours (through
`rsim_jax.capture`), from one streamed pass:

    captured = capture.nnx_model(my_model, module_types=MyBlock)
    summary = analysis.layer_summary.summarize(captured, batches, inputs=lambda b: b["image"])
    plotting.layer_summary(summary)                       # or plotting.layer_summary(summary, "summary.png")

- CKA: minibatch linear CKA between all pairs of layers over the whole stream (Nguyen, Raghu & Kornblith
  2021), with a jackknife standard error per entry when `stderr_groups ≥ 2`.
- PC1 fraction: `λ₁ / Σλ` of each layer on a fixed random sample of m examples (Nguyen et al. 2021, Sec. 4:
  close to 1 inside a block structure).
- Intrinsic dimension: TwoNN (Facco et al. 2017) on the same sample, mean ± std over random 90% subsets
  (Ansuini et al. 2019); it rises then falls with depth in trained networks (Recanatesi et al. 2019).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from rsim_jax import streaming
from rsim_jax.analysis import intrinsic_dim, principal_components


@dataclasses.dataclass(frozen=True)
class LayerSummary:
  """Per-layer summary of one model.

  Attributes:
    layer_names: `(L,)` names, input to output (call order).
    cka: the all-pairs minibatch `CKAResult` (`matrix (L, L)`, `stderr` or None).
    pc1_fraction: `(L,)` fraction of variance on the first principal component (sample of `num_sampled`).
    intrinsic_dim: `(L,)` TwoNN mean; `intrinsic_dim_std` its std over subsets.
    num_examples: examples streamed for CKA; `num_sampled` examples in the sample.
    model_name: the captured model's label.
  """

  layer_names: tuple[str, ...]
  cka: streaming.CKAResult
  pc1_fraction: np.ndarray
  intrinsic_dim: np.ndarray
  intrinsic_dim_std: np.ndarray
  num_examples: int
  num_sampled: int
  model_name: str = "model"

  def to_json(self) -> dict:
    return {"layer_names": list(self.layer_names), "cka": self.cka.to_json(),
            "pc1_fraction": self.pc1_fraction.tolist(), "intrinsic_dim": self.intrinsic_dim.tolist(),
            "intrinsic_dim_std": self.intrinsic_dim_std.tolist(), "num_examples": self.num_examples,
            "num_sampled": self.num_sampled, "model_name": self.model_name}


def from_result(result: streaming.StreamResult, *, cka: str = "cka", sample: str = "sample", model: int = 0,
                id_repeats: int = 5, seed: int = 0) -> LayerSummary:
  """A `LayerSummary` from a `streaming.analyze` result that holds a `CKA` and a `Sample` statistic.

  Args:
    result: the stream's result.
    cka, sample: the names the `CKA` and `Sample` statistics were given.
    model: which model of the stream.
    id_repeats: random 90% subsets for TwoNN's mean ± std.
    seed: seed of those subsets.
  """
  for name, kind in ((cka, "CKA"), (sample, "Sample")):
    if name not in result:
      raise ValueError(f"The stream result has no {kind} statistic named {name!r} (it has {list(result)}); "
                       f"pass `{kind.lower()}=` with its name or add `streaming.{kind}()` to the stats.")
  cka_result = result[cka]
  sampled = result[sample]
  names = cka_result.x_names
  acts = sampled.activations[model] if len(sampled.activations) > model else {}
  missing = [n for n in names if n not in acts]
  if missing:
    raise ValueError(f"The sample lacks layers {missing} of the CKA statistic: sample the same layers.")
  layers = {n: acts[n] for n in names}
  pc1 = principal_components.pc1_fractions(layers)
  ids = intrinsic_dim.id_profile(layers, repeats=id_repeats, seed=seed)
  return LayerSummary(tuple(names), cka_result, np.array([pc1[n] for n in names]), ids.intrinsic_dim,
                      ids.intrinsic_dim_std, cka_result.num_examples, len(sampled.positions),
                      result.context.model_names[model])


def summarize(model, batches, *, sample_size: int = 1000, stderr_groups: int = 0,
              inputs: Callable[[Any], Any] = streaming.default_inputs,
              mask: Callable[[Any], Any] = streaming.default_mask,
              labels: Callable[[Any], Any] = streaming.default_labels,
              mesh=None, total: int | None = None, progress: bool = True, id_repeats: int = 5,
              seed: int = 0) -> LayerSummary:
  """Streams `batches` through `model` once (all-pairs CKA + a sample of `sample_size` examples) and
  summarises every captured layer.

  Args:
    model: a `capture.CapturedModel` (or anything `capture.auto` takes), in the mode you want.
    batches: iterable of batches (any pytree), with `inputs`, `mask`, `labels` accessors as in
      `streaming.analyze`.
    sample_size: m, examples kept for PC1 and TwoNN (TwoNN wants m ≫ the ID; 1000 is Ansuini et al.'s scale).
    stderr_groups: G ≥ 2 adds jackknife standard errors to the CKA matrix.
    mesh, total, progress: as in `streaming.analyze`.
    id_repeats, seed: TwoNN subsets.
  """
  stats = {"cka": streaming.CKA(stderr_groups=stderr_groups), "sample": streaming.Sample(size=sample_size,
                                                                                          seed=seed)}
  result = streaming.analyze(model, batches, stats, inputs=inputs, mask=mask, labels=labels, mesh=mesh,
                             total=total, progress=progress, desc="layer summary")
  return from_result(result, id_repeats=id_repeats, seed=seed)
