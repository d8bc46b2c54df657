"""Analyses of the three papers, one module per question: arrays and kernel results in, results out.

No file paths, no plotting (see `rsim_jax.plotting`), no training (see `rsim_jax.train`).
"""
