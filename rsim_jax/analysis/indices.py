"""Every similarity index of the kernels behind one call: the `(L_x, L_y)` matrix of all layer pairs.

    matrix = indices.all_pairs(sample_a, sample_b, index="pwcca")      # layer name → (n, ...) per model

All indices are full-batch: they see one set of n examples of every layer at once (e.g. the activation sample
of `extract.compare_models(..., sample_size=n)`), unlike the streamed minibatch CKA. Entry `[i, j]` compares
layer i of the first model with layer j of the second (or of the same model, `layers_y=None`).

  linear_cka     `⟨K_c, L_c⟩ / (‖K_c‖_F ‖L_c‖_F)`, `K = X̃X̃ᵀ` of centred features (biased HSIC;
                 Kornblith et al. 2019), as `kernels.cka`
  debiased_cka   the same with U-centred Grams (unbiased HSIC, Song et al. 2012), as `kernels.cka(debiased=True)`
  procrustes     `‖X̂ᵀŶ‖_*` ∈ [0, 1], X̂ centred and of unit Frobenius norm (Schönemann 1966; Ding et al. 2021;
                 Williams et al. 2021), `kernels.procrustes_all_pairs(...).similarity`
  cca            mean canonical correlation ρ̄ (Hotelling 1936), `kernels.cca_all_pairs(...).mean`;
                 option `ridge`
  svcca          mean canonical correlation of each layer's top singular directions (Raghu et al. 2017),
                 `kernels.svcca_all_pairs(...).mean`; options `variance_kept` (0.99), `num_components`
  pwcca          projection-weighted CCA (Morcos et al. 2018), weighted by the row layer's neurons,
                 `kernels.pwcca_all_pairs`; options `ridge`, `variance_kept`, `num_components`
  rsa_pearson    Pearson r between the layers' RDMs (Kriegeskorte et al. 2008), `kernels.rsa_all_pairs`;
                 option `metric` ("correlation" or "euclidean")
  rsa_spearman   the same with Spearman's ρ

Every index is 1 for a layer compared with itself (CCA without ridge or truncation needs n > d + 1 examples
per layer: with fewer, every canonical correlation is 1 whatever the data, and the kernels refuse).

References:
  Kornblith, Norouzi, Lee & Hinton (2019). Similarity of Neural Network Representations Revisited. ICML.
  Song, Smola, Gretton, Bedo & Borgwardt (2012). Feature Selection via Dependence Maximization. JMLR 13.
  Ding, Denain & Steinhardt (2021). Grounding Representation Similarity with Statistical Testing. NeurIPS.
  Raghu, Gilmer, Yosinski & Sohl-Dickstein (2017). SVCCA. NeurIPS.
  Morcos, Raghu & Bengio (2018). Insights on representational similarity in neural networks with canonical
    correlation. NeurIPS.
  Kriegeskorte, Mur & Bandettini (2008). Representational similarity analysis. Front. Syst. Neurosci. 2:4.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rsim_jax import kernels
from rsim_jax.kernels import _checks, _pairs
from rsim_jax.kernels.gram import DEFAULT_PRECISION

INDICES = ("linear_cka", "debiased_cka", "procrustes", "cca", "svcca", "pwcca", "rsa_pearson", "rsa_spearman")

# One line per index, for plot titles and command-line help.
DESCRIPTIONS = {
    "linear_cka": "linear CKA (full batch)",
    "debiased_cka": "debiased linear CKA (full batch)",
    "procrustes": "Procrustes similarity ‖X̂ᵀŶ‖*",
    "cca": "CCA, mean canonical correlation",
    "svcca": "SVCCA (99% variance)",
    "pwcca": "PWCCA (weighted by the x-axis layer)",
    "rsa_pearson": "RSA, Pearson r of RDMs",
    "rsa_spearman": "RSA, Spearman ρ of RDMs",
}

# The keyword options each index passes on to its kernel.
OPTIONS = {
    "linear_cka": (),
    "debiased_cka": (),
    "procrustes": (),
    "cca": ("ridge",),
    "svcca": ("variance_kept", "num_components"),
    "pwcca": ("ridge", "variance_kept", "num_components"),
    "rsa_pearson": ("metric",),
    "rsa_spearman": ("metric",),
}


def check_index(index: str) -> str:
  """`index` if it is one of `INDICES`, else a ValueError naming the choices."""
  if index not in INDICES:
    raise ValueError(f"Unknown similarity `index` {index!r}; choose one of {', '.join(INDICES)}.")
  return index


def all_pairs(layers_x, layers_y=None, *, index: str, **options) -> np.ndarray:
  """The `(L_x, L_y)` matrix of one similarity index between all layer pairs (see the module docstring).

  Args:
    layers_x: the first model's layers over n examples: an ordered dict (layer name → `(n, ...)`), a list, or
      a stacked `(L, n, ...)` array; flattened per example.
    layers_y: a second model's layers over the same n examples, or None to compare `layers_x` with itself.
    index: one of `INDICES`.
    **options: the index's kernel options (`OPTIONS[index]`), e.g. `ridge=0.1` for "cca", `metric=
      "euclidean"` for the RSA indices; the kernels' defaults otherwise.

  Returns:
    `(L_x, L_y)` float64 NumPy array; symmetric for one model except "pwcca" (row layer's weights).

  Raises:
    ValueError: an unknown index or option, or the kernel's errors (mismatched example counts, constant
      layers, NaN/Inf, too few examples for CCA), naming the layer.
  """
  check_index(index)
  unknown = sorted(set(options) - set(OPTIONS[index]))
  if unknown:
    allowed = ", ".join(OPTIONS[index]) or "none"
    raise ValueError(f"`index`={index!r} takes no option(s) {unknown}; its options: {allowed}.")
  if index in ("linear_cka", "debiased_cka"):
    out = linear_cka_all_pairs(layers_x, layers_y, debiased=index == "debiased_cka")
  elif index == "procrustes":
    out = kernels.procrustes_all_pairs(layers_x, layers_y).similarity
  elif index == "cca":
    out = kernels.cca_all_pairs(layers_x, layers_y, **options).mean
  elif index == "svcca":
    out = kernels.svcca_all_pairs(layers_x, layers_y, **options).mean
  elif index == "pwcca":
    out = kernels.pwcca_all_pairs(layers_x, layers_y, **options)
  else:
    method = index.removeprefix("rsa_")
    out = kernels.rsa_all_pairs(layers_x, layers_y, method=method, **options)
  return np.asarray(out, np.float64)


@functools.partial(jax.jit, static_argnames="debiased")
def _unit_gram(x, debiased):
  """`K_c/‖K_c‖_F` flattened, `K_c` the Gram of centred features (U-centred when `debiased`), and `‖K_c‖_F`."""
  gram = kernels.gram_linear(x, center=True)  # of centred features: already double centred
  if debiased:
    gram = kernels.center_gram(gram, unbiased=True)
  norm = jnp.sqrt(jnp.sum(jnp.sum(gram * gram, axis=1)))
  return (gram / jnp.where(norm > 0, norm, 1.0)).reshape(-1), norm


def linear_cka_all_pairs(layers_x, layers_y=None, *, debiased: bool = False) -> np.ndarray:
  """Full-batch linear CKA of all layer pairs in one contraction of normalised Gram matrices.

  `CKA_ij = ⟨K_i, L_j⟩ / (‖K_i‖_F ‖L_j‖_F)` (Kornblith et al. 2019, Eq. 4) with `K = X̃X̃ᵀ` the Gram of
  centred features (`HKH = K`), or its U-centring when `debiased` (unbiased HSIC, Song et al. 2012; the
  `1/(n(n−3))` factors cancel). Each layer's Gram is formed once (`O(n²d)`), scaled to unit norm, and all
  pairs are one `(L_x, n²)·(n², L_y)` product. Equal to `kernels.cka(x, y, debiased=debiased)` per pair up
  to float32 rounding.

  Memory: `4·n²·(L_x + L_y)` bytes (1 GB for 60 layers of 2,000 examples).

  Args:
    layers_x: list / ordered dict / stacked array of `(n, ...)` activations.
    layers_y: optional second model over the same examples (None: `layers_x` with itself).
    debiased: unbiased HSIC (needs n ≥ 4).

  Returns:
    `(L_x, L_y)` float64 NumPy array.

  Raises:
    ValueError: mismatched example counts, NaN/Inf, fewer than 2 (4 when debiased) examples, or a constant
      layer (zero centred Gram), naming the layer.
  """
  xs = _pairs.as_layers(layers_x, "layers_x")
  ys = None if layers_y is None else _pairs.as_layers(layers_y, "layers_y")
  if ys is not None:
    _checks.check_same_examples(xs[0], ys[0], "layers_x[0]", "layers_y[0]")
  minimum, why = (4, "debiased CKA (unbiased HSIC)") if debiased else (2, "centring")
  _checks.check_min_examples(xs[0].shape[0], minimum, "layers_x[0]", why=why)

  def unit_grams(layers, name):
    out = []
    for i, layer in enumerate(layers):
      gram, norm = _unit_gram(layer, debiased)
      if not float(norm) > 0:
        raise ValueError(
            f"CKA is undefined: `{name}[{i}]` has zero variance across examples (its centred Gram is 0). Drop "
            "constant layers before comparing."
        )
      out.append(gram)
    return jnp.stack(out)

  gx = unit_grams(xs, "layers_x")
  gy = gx if ys is None else unit_grams(ys, "layers_y")
  matrix = np.asarray(jnp.matmul(gx, gy.T, precision=DEFAULT_PRECISION), np.float64)
  if ys is None:
    matrix = 0.5 * (matrix + matrix.T)
  return matrix
