"""Pure-`jnp` statistics of layer activations.  Imports only JAX and NumPy.

Every function takes `(n, d)` arrays: n examples (rows) by d features.  Options are keyword-only.
Streaming statistics follow `*_init / *_update / *_merge / *_result` with pytree states.
"""
