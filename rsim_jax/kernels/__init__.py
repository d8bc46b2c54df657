"""Pure-`jnp` statistics of layer activations.  Imports only JAX and NumPy.

Every function takes `(n, d)` arrays: n examples (rows) by d features.  Options are keyword-only.
Streaming statistics follow `*_init / *_update / *_merge / *_result` with pytree states.
"""

# --- Similarity: Gram matrices, HSIC, CKA (full batch and streamed minibatch) ---
from rsim_jax.kernels.cka import cka, cka_from_grams, linear_cka_features
from rsim_jax.kernels.features import center_features, flatten_features
from rsim_jax.kernels.gram import center_gram, gram_linear, gram_rbf, squared_distances
from rsim_jax.kernels.hsic import hsic
from rsim_jax.kernels.minibatch import (
    MinibatchCKAState,
    MinibatchHSIC,
    minibatch_cka_accumulate,
    minibatch_cka_init,
    minibatch_cka_merge,
    minibatch_cka_result,
    minibatch_cka_update,
    minibatch_hsic,
)

# --- Geometry: PCA, nearest neighbours, intrinsic dimension ---
from rsim_jax.kernels.intrinsic_dim import (
    DuplicatePointsWarning,
    TwoNNScaling,
    TwoNNSubsampled,
    twonn,
    twonn_from_distances,
    twonn_scaling,
    twonn_subsampled,
)
from rsim_jax.kernels.neighbors import knn_distances
from rsim_jax.kernels.pca import (
    PCAResult,
    PCAState,
    first_pc_fraction,
    participation_ratio,
    pca,
    pca_init,
    pca_merge,
    pca_result,
    pca_update,
    project_top_pcs,
    remove_top_pcs,
)

# --- Other similarity indices ---
from rsim_jax.kernels.cca import (
    CCAPairs,
    CCAResult,
    PWCCAResult,
    cca,
    cca_all_pairs,
    pwcca,
    pwcca_all_pairs,
    svcca,
    svcca_all_pairs,
)
from rsim_jax.kernels.procrustes import ProcrustesResult, procrustes, procrustes_all_pairs
from rsim_jax.kernels.rsa import rdm, rdm_similarity, rsa, rsa_all_pairs

# --- Uncertainty of minibatch CKA: leave-one-group-out jackknife from the same pass ---
from rsim_jax.kernels.jackknife import (
    CKAWithError,
    MinibatchCKAGroupsState,
    minibatch_cka_groups_accumulate,
    minibatch_cka_groups_init,
    minibatch_cka_groups_merge,
    minibatch_cka_groups_total,
    minibatch_cka_groups_update,
    minibatch_cka_jackknife,
)
