"""rsim_jax: how neural-network representations change with width and depth, in JAX.

`rsim_jax.kernels` holds the pure-`jnp` statistics (CKA, HSIC, PCA, intrinsic dimension) and imports only
JAX and NumPy.  Models, data, training, extraction and analyses live in their own subpackages, imported
explicitly (`from rsim_jax import models`) so that importing the kernels stays light.
"""

from rsim_jax import kernels

__version__ = "0.1.0"
__all__ = ["kernels", "__version__"]
